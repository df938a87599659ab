//! One file per subcommand.

pub mod create;
pub mod delete;
pub mod features;
pub mod kill;
pub mod list;
pub mod run;
pub mod spec;
pub mod start;
pub mod state;
