//! As PID 1 the agent is the parent of every orphan, and of the processes
//! it spawns: one thread reaps them all (waitpid(-1)), so nothing else may
//! wait (`std::process::Child::wait` would race it). Whoever needs a
//! process's status asks [`Reaper::wait`], before or after it exits.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

/// Statuses kept for processes no one has asked about yet.
const KEPT: usize = 4096;

#[derive(Debug, Clone, Default)]
pub struct Reaper {
    inner: Arc<(Mutex<HashMap<i32, i32>>, Condvar)>,
}

/// The raw wait status (as waitpid(2) reports it) of an ended process.
fn raw(status: WaitStatus) -> Option<(i32, i32)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw(), (code & 0xff) << 8)),
        WaitStatus::Signaled(pid, sig, core) => {
            Some((pid.as_raw(), sig as i32 | if core { 0x80 } else { 0 }))
        }
        _ => None,
    }
}

impl Reaper {
    /// Starts the reaping thread.
    pub fn start() -> Reaper {
        let r = Reaper::default();
        let inner = r.inner.clone();
        std::thread::spawn(move || loop {
            match waitpid(Pid::from_raw(-1), None) {
                Ok(status) => {
                    if let Some((pid, st)) = raw(status) {
                        let (map, cv) = &*inner;
                        let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
                        if m.len() >= KEPT {
                            m.clear();
                        }
                        m.insert(pid, st);
                        cv.notify_all();
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        });
        r
    }

    /// The raw wait status of `pid`, once it has ended.
    pub fn wait(&self, pid: u32) -> i32 {
        let (map, cv) = &*self.inner;
        let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(st) = m.remove(&(pid as i32)) {
                return st;
            }
            m = cv.wait(m).unwrap_or_else(|e| e.into_inner());
        }
    }
}
