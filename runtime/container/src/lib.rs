//! The rt container engine: spec validation, state, the processes of create,
//! namespaces, rootfs, identity, hooks, terminal and seccomp, behind an
//! [`backend::Isolation`] trait so that the microVM backend reuses it all.

pub mod backend;
pub mod channel;
pub mod container;
pub mod defaults;
pub mod error;
pub mod hooks;
pub mod identity;
pub mod idmap;
pub mod lsm;
pub mod namespaces;
pub mod network;
pub mod process;
pub mod rootfs;
pub mod sandbox;
pub mod seccomp;
pub mod spec;
pub mod state;
pub mod terminal;

pub use container::{CreateRequest, RestoreRequest, Runtime};
pub use sandbox::{Created, ExecHow, Options};
