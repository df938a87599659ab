//! One file per subcommand.

/// `--format` of `list` and `ps`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

pub mod checkpoint;
pub mod create;
pub mod delete;
pub mod dhcp_keeper;
pub mod events;
pub mod exec;
pub mod features;
pub mod image;
pub mod kill;
pub mod list;
pub mod migrate;
pub mod pause;
pub mod ps;
pub mod pull;
pub mod receive;
pub mod restore;
pub mod run;
pub mod spec;
pub mod start;
pub mod state;
pub mod update;
pub mod vm;
