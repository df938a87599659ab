//! Running a freshly cloned child on another CPU than its parent's, while
//! both have work to do.
//!
//! After a fork the scheduler often queues the child on the parent's CPU
//! (its cache is warm there), where it waits until the parent blocks. When
//! parent and child then work side by side — rt's parent making the cgroup
//! while the init it cloned mounts the rootfs — that wait serialises them.
//! [`Spread::away`] lets the child run anywhere but on the parent's CPU for
//! that stretch, and [`Spread::restore`], called by the child, gives it back
//! the affinity it inherited before anything of the user's runs.

use nix::errno::Errno;
use nix::sched::{sched_getaffinity, sched_getcpu, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// The CPUs the process may run on, as inherited.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    inherited: CpuSet,
}

impl Spread {
    /// The calling process's affinity; None when it allows a single CPU
    /// (there is nowhere else to go) or cannot be read.
    pub fn of_this_process() -> Option<Self> {
        let inherited = sched_getaffinity(Pid::from_raw(0)).ok()?;
        let several = cpus(&inherited).nth(1).is_some();
        several.then_some(Self { inherited })
    }

    /// In the parent, right after the clone: `child` may run on any of the
    /// inherited CPUs but the one the parent is on. Best effort: if it
    /// fails, the child only waits for the CPU as before. Returns the CPU
    /// the child was kept off.
    pub fn away(&self, child: Pid) -> Option<usize> {
        let here = sched_getcpu().ok()?;
        let mut elsewhere = self.inherited;
        elsewhere.unset(here).ok()?;
        cpus(&elsewhere).next()?;
        sched_setaffinity(child, &elsewhere).ok()?;
        Some(here)
    }

    /// In the parent, once it is about to block: `child` may run on every
    /// inherited CPU again, the parent's included (on a host whose other
    /// CPUs are busy it would otherwise wait there while the parent's CPU
    /// idles). Best effort; the child's own [`Spread::restore`] is what
    /// holds.
    pub fn release(&self, child: Pid) {
        let _ = sched_setaffinity(child, &self.inherited);
    }

    /// In the child: the inherited affinity again. EINVAL (none of the
    /// inherited CPUs is in the cpuset the child has joined since) leaves
    /// the cpuset's CPUs, which is where the kernel puts such a child
    /// anyway.
    pub fn restore(&self) -> crate::Result<()> {
        match sched_setaffinity(Pid::from_raw(0), &self.inherited) {
            Ok(()) | Err(Errno::EINVAL) => Ok(()),
            Err(e) => Err(crate::Error::Syscall("sched_setaffinity", e)),
        }
    }
}

/// The CPUs in `set`.
fn cpus(set: &CpuSet) -> impl Iterator<Item = usize> + '_ {
    (0..CpuSet::count()).filter(|&cpu| set.is_set(cpu).unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Affinity is per thread, and a thread id names one as a pid does: a
    /// thread stands for the child. `parent` gets its id and does the
    /// parent's part; then the thread runs `child` and returns its answer.
    /// None when this process may run on one CPU only.
    fn with_child<T: Send + 'static>(
        child: impl FnOnce(Spread) -> T + Send + 'static,
        parent: impl FnOnce(Spread, Pid),
    ) -> Option<T> {
        let Some(spread) = Spread::of_this_process() else {
            eprintln!("skipping: this process may run on one CPU only");
            return None;
        };
        let (tid_tx, tid_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            tid_tx.send(nix::unistd::gettid()).unwrap();
            go_rx.recv().unwrap();
            child(spread)
        });
        parent(spread, tid_rx.recv().unwrap());
        go_tx.send(()).unwrap();
        Some(thread.join().unwrap())
    }

    fn mine() -> CpuSet {
        sched_getaffinity(Pid::from_raw(0)).unwrap()
    }

    /// Away, the child is off the parent's CPU; restored, it has the
    /// inherited mask again.
    #[test]
    fn a_child_sent_away_gets_its_affinity_back() {
        let before = mine();
        let mut here = None;
        let answer = with_child(
            |spread| {
                let away = mine();
                spread.restore().unwrap();
                (away, mine())
            },
            |spread, tid| here = spread.away(tid),
        );
        let Some((away, back)) = answer else { return };
        let here = here.expect("the thread sent away");
        assert!(!away.is_set(here).unwrap(), "still allowed on CPU {here}");
        assert!(cpus(&away).next().is_some());
        assert!(cpus(&away).all(|c| before.is_set(c).unwrap()));
        assert_eq!(back, before);
    }

    /// `release` gives a child sent away the whole inherited set again.
    #[test]
    fn the_parent_releases_a_child_sent_away() {
        let before = mine();
        let answer = with_child(
            |_| mine(),
            |spread, tid| {
                spread.away(tid).expect("the thread sent away");
                assert_ne!(sched_getaffinity(tid).unwrap(), before);
                spread.release(tid);
            },
        );
        if let Some(after) = answer {
            assert_eq!(after, before);
        }
    }
}
