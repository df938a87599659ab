//! Exit statuses. The shim is the parent of every rt it runs and, as a
//! subreaper, of every process rt leaves behind (a container's init or
//! its VM supervisor, exec'd processes or their relays). containerd-shim's
//! SIGCHLD thread reaps them all (`waitpid(-1)`) and reports each to its
//! monitor; one thread here takes every report and hands it to whoever
//! expects that pid. A report nobody expects yet is kept: a process may
//! end before its pid has been read from rt's pid file.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use containerd_shim::monitor::{monitor_subscribe, Subject, Topic};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;

/// How many unexpected exits are kept (orphans nobody will ask about).
const KEPT: usize = 1024;

#[derive(Default)]
struct Inner {
    expected: HashMap<i32, Sender<i32>>,
    unclaimed: HashMap<i32, i32>,
    order: VecDeque<i32>,
}

/// The exit reports of the shim's children.
#[derive(Clone, Default)]
pub struct Exits {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for Exits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exits")
    }
}

impl Exits {
    /// Subscribes to the reaper's reports and starts routing them.
    pub fn start() -> std::io::Result<Exits> {
        let exits = Exits::default();
        let sub = monitor_subscribe(Topic::Pid).map_err(std::io::Error::other)?;
        let me = exits.clone();
        std::thread::Builder::new()
            .name("exits".into())
            .spawn(move || {
                for e in sub.rx.iter() {
                    if let Subject::Pid(pid) = e.subject {
                        me.report(pid, e.exit_code);
                    }
                }
            })?;
        Ok(exits)
    }

    fn report(&self, pid: i32, code: i32) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = inner.expected.remove(&pid) {
            let _ = tx.send(code);
            return;
        }
        inner.unclaimed.insert(pid, code);
        inner.order.push_back(pid);
        while inner.order.len() > KEPT {
            if let Some(old) = inner.order.pop_front() {
                inner.unclaimed.remove(&old);
            }
        }
    }

    /// The exit code (128+N for signal N) of `pid`, when it comes.
    pub fn expect(&self, pid: i32) -> Receiver<i32> {
        let (tx, rx) = channel();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match inner.unclaimed.remove(&pid) {
            Some(code) => {
                inner.order.retain(|p| *p != pid);
                let _ = tx.send(code);
            }
            None => {
                inner.expected.insert(pid, tx);
            }
        }
        rx
    }
}

/// Now, as containerd's timestamps.
pub fn now() -> Timestamp {
    containerd_shim::util::timestamp().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exit_before_or_after_it_is_expected_reaches_its_waiter() {
        let exits = Exits::default();
        exits.report(10, 3);
        assert_eq!(exits.expect(10).recv().unwrap(), 3);
        let rx = exits.expect(11);
        exits.report(11, 137);
        assert_eq!(rx.recv().unwrap(), 137);
        for pid in 0..(KEPT as i32 + 10) {
            exits.report(1000 + pid, 0);
        }
        let inner = exits.inner.lock().unwrap();
        assert_eq!(inner.unclaimed.len(), KEPT);
        assert!(inner.expected.is_empty());
    }
}
