//! `rt`: a runc-compatible OCI runtime.

// The C library calls our own `main` (below), not Rust's start-up; see
// [`main`] for what that skips and what it keeps.
#![cfg_attr(not(test), no_main)]

mod argv;
mod commands;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod early;
mod logging;
mod quick;
mod sealed;
mod signal;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "rt",
    version,
    about = "An OCI container runtime",
    disable_help_subcommand = true
)]
struct Cli {
    /// Directory for container state (default /run/rt; $XDG_RUNTIME_DIR/rt
    /// when run by a user other than root).
    #[arg(long, global = false)]
    root: Option<PathBuf>,
    /// Log file (default: stderr).
    #[arg(long)]
    log: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Debug logging.
    #[arg(long)]
    debug: bool,
    /// Use the systemd cgroup driver: systemd owns each new container's
    /// cgroup as a transient unit (cgroupsPath `slice:prefix:name`).
    #[arg(long)]
    systemd_cgroup: bool,
    /// cgroup manager: cgroupfs, systemd or disabled.
    #[arg(long, value_enum)]
    cgroup_manager: Option<CgroupManager>,
    /// Image store (default /var/lib/rt; $XDG_DATA_HOME/rt for other users).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Rootless mode: auto, true or false.
    #[arg(long, default_value = "auto")]
    rootless: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum CgroupManager {
    Cgroupfs,
    Systemd,
    Disabled,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a container (its init waits for `start`).
    Create(argv::Lazy<commands::create::Args>),
    /// Start a created container.
    Start(argv::Lazy<commands::start::Args>),
    /// Create and start a container; wait for it unless --detach.
    Run(argv::Lazy<commands::run::Args>),
    /// Print a container's state as JSON.
    State(argv::Lazy<commands::state::Args>),
    /// Send a signal to a container's init (or, with --all, every process).
    Kill(argv::Lazy<commands::kill::Args>),
    /// Delete a container and everything rt made for it.
    Delete(argv::Lazy<commands::delete::Args>),
    /// List containers.
    #[command(alias = "ls")]
    List(argv::Lazy<commands::list::Args>),
    /// Run a process in a running container.
    Exec(argv::Lazy<commands::exec::Args>),
    /// Freeze every process of a container.
    Pause(argv::Lazy<commands::pause::Args>),
    /// Thaw a paused container.
    Resume(argv::Lazy<commands::pause::Args>),
    /// List a container's processes.
    Ps(argv::Lazy<commands::ps::Args>),
    /// Resource statistics and OOM events of a container, as JSON lines.
    Events(argv::Lazy<commands::events::Args>),
    /// Change a running container's resource limits.
    Update(argv::Lazy<commands::update::Args>),
    /// Save a running container into an image directory (VM containers:
    /// the whole VM; see docs/migration.md).
    Checkpoint(argv::Lazy<commands::checkpoint::Args>),
    /// Bring a checkpointed container back, running.
    Restore(argv::Lazy<commands::restore::Args>),
    /// Live-migrate a running VM container to another state root or to
    /// `rt receive` over TCP.
    Migrate(argv::Lazy<commands::migrate::Args>),
    /// Receive one live migration over TCP (the other end of `migrate
    /// --to tcp://…`).
    Receive(argv::Lazy<commands::receive::Args>),
    /// Write a default config.json.
    Spec(argv::Lazy<commands::spec::Args>),
    /// Print the runtime features JSON.
    Features,
    /// Manage images: import, pull, ls, inspect, rm, prune, unpack.
    #[command(subcommand)]
    Image(commands::image::Command),
    /// Keeps a bridged container's DHCP lease (started by create).
    #[command(hide = true)]
    DhcpKeeper(argv::Lazy<commands::dhcp_keeper::Args>),
    /// Stands for a VM container's init (started by create).
    #[command(hide = true)]
    VmSupervisor(argv::Lazy<commands::vm::SupervisorArgs>),
    /// Stands for a process exec'd in a VM container (started by exec).
    #[command(hide = true)]
    VmExec(argv::Lazy<commands::vm::ExecArgs>),
}

/// Whether rt was invoked as `rt-vm` (a link beside `rt`), whose containers
/// default to the VM backend.
pub fn invoked_as_vm() -> bool {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .is_some_and(|n| n == "rt-vm")
}

/// Global options every command gets.
#[derive(Debug)]
pub struct Global {
    pub root: PathBuf,
    pub cgroups: bool,
    /// `--systemd-cgroup`: systemd owns new containers' cgroups.
    pub systemd_cgroup: bool,
    /// Rootless mode: cgroups only where delegated.
    pub rootless: bool,
    /// The image store.
    pub store: PathBuf,
}

/// The process's `main`, which glibc's `__libc_start_main` calls.
///
/// Rust's own start-up (`std::rt::lang_start`) is skipped: it reads
/// /proc/self/maps (glibc's `pthread_getattr_np`, to find the main thread's
/// stack), maps a signal stack and installs SIGSEGV and SIGBUS handlers,
/// about 0.13 ms of every `rt` process here, all for the message a stack
/// overflow would print; without it, an overflow is still stopped by the
/// kernel's stack guard gap, as a plain SIGSEGV. What else it does is done
/// here ([`process_start`]): the standard descriptors made valid and SIGPIPE
/// ignored. Arguments need no help (std takes them from glibc's
/// `.init_array` call), and every way out of `rt` is `std::process::exit`,
/// which flushes stdout as a return from Rust's `main` would.
#[cfg(not(test))]
#[no_mangle]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    process_start();
    rt_main()
}

/// The part of Rust's start-up that rt keeps: descriptors 0, 1 and 2 open
/// (on /dev/null where closed, so that no file rt opens takes their number
/// and receives what is meant for them), and SIGPIPE ignored (a write to a
/// closed pipe is an EPIPE error, not a kill).
#[cfg_attr(test, allow(dead_code))]
fn process_start() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: `fds` is an array of three pollfd, as the count says; a zero
    // timeout returns at once.
    let polled = unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) };
    for pfd in fds {
        // poll cannot fail for three descriptors here but by a signal or a
        // lack of memory; then, as for a closed one, fcntl decides.
        let closed = if polled < 0 {
            nix::fcntl::fcntl(pfd.fd, nix::fcntl::FcntlArg::F_GETFD)
                == Err(nix::errno::Errno::EBADF)
        } else {
            pfd.revents & libc::POLLNVAL != 0
        };
        if closed {
            // The lowest free number is this one: 0, 1 and 2 in order.
            // SAFETY: a valid C string and flags.
            if unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) } == -1 {
                // Rust's start-up aborts here too: nothing safe is left.
                std::process::abort();
            }
        }
    }
    // SAFETY: SIG_IGN is a valid disposition for SIGPIPE, and no other
    // thread exists yet to race with it.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

#[cfg_attr(test, allow(dead_code))]
fn rt_main() -> ! {
    let args = argv::normalise(std::env::args().skip(1).collect());
    // Processes of these commands become visible inside the container: they
    // re-execute from a protected binary first. Before the parse, so that
    // only the re-executed process pays for it (0.3 ms here); the check
    // after it is what holds, should the word found here not be the one
    // clap finds.
    if matches!(argv::subcommand(&args), Some("create" | "run" | "exec")) {
        reexec_protected();
    }
    // The common calls without clap (see quick.rs); clap for the rest.
    let cli = match quick::parse(&args) {
        Some(cli) => cli,
        None => {
            Cli::try_parse_from(std::iter::once("rt".to_string()).chain(args)).unwrap_or_else(|e| {
                discard_early_work();
                e.exit()
            })
        }
    };
    if matches!(
        cli.command,
        Command::Create(_) | Command::Run(_) | Command::Exec(_)
    ) {
        reexec_protected();
    }
    let to_file = match logging::init(
        cli.log.as_deref(),
        matches!(cli.log_format, LogFormat::Json),
        cli.debug,
    ) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("rt: {e:#}");
            discard_early_work();
            std::process::exit(1);
        }
    };
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let msg = format!("{e:#}");
            tracing::error!("{msg}");
            if to_file {
                eprintln!("{msg}");
            }
            1
        }
    };
    discard_early_work();
    std::process::exit(code);
}

/// Reaps what the entry point started for a `run` or `create` that did not
/// take it over (a network namespace helper: see early/netns.rs), so that
/// no zombie of ours is left to whoever reaps after us.
fn discard_early_work() {
    rt_sys::netns_helper::discard_early();
}

/// Re-executes from a protected binary unless already running from one
/// (see [`sealed`]); exits with runc's wording if that fails.
fn reexec_protected() {
    if let Err(e) = sealed::reexec_protected() {
        eprintln!("rt: {e:#}");
        std::process::exit(1);
    }
}

/// /run/rt for root; for another user $XDG_RUNTIME_DIR/rt (falling back to
/// /run/user/UID/rt), as runc does with its own name.
fn default_root(root_user: bool) -> PathBuf {
    if root_user {
        return PathBuf::from("/run/rt");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("rt"),
        None => PathBuf::from(format!("/run/user/{}/rt", nix::unistd::geteuid())),
    }
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    let systemd_cgroup = match cli.cgroup_manager {
        Some(CgroupManager::Systemd) => true,
        Some(CgroupManager::Disabled) if cli.systemd_cgroup => {
            anyhow::bail!("--systemd-cgroup contradicts --cgroup-manager disabled")
        }
        Some(CgroupManager::Cgroupfs) if cli.systemd_cgroup => {
            anyhow::bail!("--systemd-cgroup contradicts --cgroup-manager cgroupfs")
        }
        _ => cli.systemd_cgroup,
    };
    let root_user = nix::unistd::geteuid().is_root();
    let rootless = match cli.rootless.as_str() {
        "auto" => !root_user,
        "true" => true,
        "false" => false,
        other => anyhow::bail!("invalid --rootless value {other:?}: use auto, true or false"),
    };
    // Absolute, as runc makes it: the state root is handed to helpers that
    // run elsewhere (a VM's virtiofsd and QEMU take socket paths in it).
    let root = cli.root.unwrap_or_else(|| default_root(root_user));
    let root = std::path::absolute(&root)
        .with_context(|| format!("making --root {} absolute", root.display()))?;
    let global = Global {
        root,
        cgroups: cli.cgroup_manager != Some(CgroupManager::Disabled),
        systemd_cgroup,
        rootless,
        store: cli.store.unwrap_or_else(rt_images::store::default_root),
    };
    // What these print goes to their caller alone: a caller that stops
    // reading ends them as it ends runc (SIGPIPE), not with a panic.
    if matches!(
        cli.command,
        Command::State(_)
            | Command::List(_)
            | Command::Ps(_)
            | Command::Events(_)
            | Command::Features
            | Command::Image(_)
    ) {
        rt_sys::default_sigpipe();
    }
    match cli.command {
        Command::Create(a) => commands::create::run(&global, a.0).map(|()| 0),
        Command::Start(a) => commands::start::run(&global, a.0).map(|()| 0),
        Command::Checkpoint(a) => commands::checkpoint::run(&global, a.0).map(|()| 0),
        Command::Restore(a) => commands::restore::run(&global, a.0),
        Command::Migrate(a) => commands::migrate::run(&global, a.0).map(|()| 0),
        Command::Receive(a) => commands::receive::run(&global, a.0).map(|()| 0),
        Command::Run(a) => commands::run::run(&global, a.0),
        Command::State(a) => commands::state::run(&global, a.0).map(|()| 0),
        Command::Kill(a) => commands::kill::run(&global, a.0).map(|()| 0),
        Command::Delete(a) => commands::delete::run(&global, a.0).map(|()| 0),
        Command::List(a) => commands::list::run(&global, a.0).map(|()| 0),
        Command::Exec(a) => commands::exec::run(&global, a.0),
        Command::Pause(a) => commands::pause::pause(&global, a.0).map(|()| 0),
        Command::Resume(a) => commands::pause::resume(&global, a.0).map(|()| 0),
        Command::Ps(a) => commands::ps::run(&global, a.0).map(|()| 0),
        Command::Update(a) => commands::update::run(&global, a.0).map(|()| 0),
        Command::Events(a) => commands::events::run(&global, a.0),
        Command::Spec(a) => commands::spec::run(a.0).map(|()| 0),
        Command::Features => commands::features::run().map(|()| 0),
        Command::Image(c) => commands::image::run(&global, c).map(|()| 0),
        Command::DhcpKeeper(a) => commands::dhcp_keeper::run(a.0).map(|()| 0),
        Command::VmSupervisor(a) => commands::vm::supervisor(a.0),
        Command::VmExec(a) => commands::vm::exec(a.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("rt").chain(args.iter().copied()))
    }

    #[test]
    fn subcommands_parse_with_their_arguments_built_on_entry() {
        let cli = parse(&["--root", "/r", "kill", "--all", "c1", "TERM"]).unwrap();
        assert!(matches!(cli.command, Command::Kill(_)));
        let cli = parse(&["run", "--bundle", "/b", "--detach", "c2"]).unwrap();
        assert!(matches!(cli.command, Command::Run(_)));
        let e = parse(&["kill", "--bogus", "c1"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
        // The top-level command carries no subcommand's arguments until
        // clap enters it.
        let top = Cli::command();
        let create = top.find_subcommand("create").unwrap();
        assert_eq!(create.get_arguments().count(), 0);
    }

    #[test]
    fn a_subcommand_s_help_keeps_its_own_description() {
        for (sub, about) in [
            ("create", "Create a container"),
            ("run", "Create and start a container"),
            ("exec", "Run a process in a running container"),
        ] {
            let e = parse(&[sub, "--help"]).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
            let text = e.to_string();
            assert!(text.starts_with(about), "{sub}: {text}");
            assert!(text.contains("--bundle") || sub == "exec", "{sub}: {text}");
        }
    }
}
