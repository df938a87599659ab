//! The shim's record of its containers and their processes: what
//! containerd's `State`, `Wait` and `Delete` report, kept under one lock
//! and a condition variable that `Wait` sleeps on. rt is never run with
//! the lock held.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard};

use containerd_shim::api::Status;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;

use crate::rt::Runner;
use crate::stdio::{Io, Paths};

/// One process: a container's init (its VM supervisor, for a VM) or an
/// exec'd one.
#[derive(Default)]
pub struct Proc {
    pub pid: u32,
    pub status: Status,
    pub exit: Option<(u32, Timestamp)>,
    pub paths: Paths,
    pub io: Io,
    /// An exec's process spec (JSON), from `Exec` until `Start`.
    pub spec: Vec<u8>,
}

impl Proc {
    pub fn new(paths: Paths) -> Proc {
        Proc {
            status: Status::CREATED,
            paths,
            ..Proc::default()
        }
    }
}

pub struct Container {
    pub bundle: PathBuf,
    pub runner: Runner,
    pub init: Proc,
    pub execs: HashMap<String, Proc>,
    /// The `rt events` that reports its OOM kills.
    pub events: Option<std::process::Child>,
}

impl Container {
    /// The process `exec_id` names (empty: the init).
    pub fn proc(&self, exec_id: &str) -> Option<&Proc> {
        if exec_id.is_empty() {
            Some(&self.init)
        } else {
            self.execs.get(exec_id)
        }
    }

    pub fn proc_mut(&mut self, exec_id: &str) -> Option<&mut Proc> {
        if exec_id.is_empty() {
            Some(&mut self.init)
        } else {
            self.execs.get_mut(exec_id)
        }
    }
}

#[derive(Default)]
pub struct Table {
    containers: Mutex<HashMap<String, Container>>,
    changed: Condvar,
}

impl Table {
    pub fn lock(&self) -> MutexGuard<'_, HashMap<String, Container>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an exit; wakes `Wait`. Whether the process was known.
    pub fn exited(&self, id: &str, exec_id: &str, code: u32, at: Timestamp) -> bool {
        let mut t = self.lock();
        let Some(p) = t.get_mut(id).and_then(|c| c.proc_mut(exec_id)) else {
            return false;
        };
        p.status = Status::STOPPED;
        p.exit = Some((code, at));
        drop(t);
        self.changed.notify_all();
        true
    }

    /// Waits until `exec_id` of `id` has exited; its status and time, or
    /// `None` when there is no such process.
    pub fn wait(&self, id: &str, exec_id: &str) -> Option<(u32, Timestamp)> {
        let mut t = self.lock();
        loop {
            match t.get(id).and_then(|c| c.proc(exec_id)) {
                None => return None,
                Some(p) => {
                    if let Some(e) = &p.exit {
                        return Some(e.clone());
                    }
                }
            }
            t = self.changed.wait(t).unwrap_or_else(|e| e.into_inner());
        }
    }
}
