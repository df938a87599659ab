//! Normalises argv before clap sees it, for the quirks of real callers
//! (see shared/contract.md): Go-style single-dash long flags (`-no-subreaper`),
//! flags after the container id (`create ID --bundle B`), and `exec`'s command
//! line, which must reach the container untouched.

/// Long flags of each subcommand that take a value (others are booleans).
fn value_flags(sub: &str) -> &'static [&'static str] {
    match sub {
        "create" => &[
            "bundle",
            "console-socket",
            "pid-file",
            "preserve-fds",
            "isolation",
            "image",
            "network",
            "publish",
            "ip",
            "bridge",
            "subnet",
        ],
        "run" => &[
            "bundle",
            "console-socket",
            "pid-file",
            "preserve-fds",
            "isolation",
            "image",
            "network",
            "publish",
            "ip",
            "bridge",
            "subnet",
        ],
        "list" => &["format"],
        "checkpoint" => &[
            "image-path",
            "work-path",
            "parent-path",
            "page-server",
            "manage-cgroups-mode",
            "empty-ns",
        ],
        "restore" => &[
            "image-path",
            "work-path",
            "bundle",
            "pid-file",
            "console-socket",
            "manage-cgroups-mode",
            "empty-ns",
            "lsm-profile",
            "lsm-mount-context",
            "incoming",
        ],
        "migrate" => &["to", "new-id"],
        "receive" => &["listen", "bundle"],
        "spec" => &["bundle"],
        "exec" => &[
            "console-socket",
            "cwd",
            "env",
            "user",
            "additional-gids",
            "process",
            "process-label",
            "apparmor",
            "cap",
            "preserve-fds",
            "pid-file",
            "cgroup",
        ],
        "ps" => &["format"],
        "events" => &["interval"],
        "update" => &[
            "resources",
            "memory",
            "memory-reservation",
            "memory-swap",
            "cpu-period",
            "cpu-quota",
            "cpu-share",
            "cpuset-cpus",
            "cpuset-mems",
            "pids-limit",
            "blkio-weight",
            "cpu-rt-period",
            "cpu-rt-runtime",
            "kernel-memory",
            "kernel-memory-tcp",
            "l3-cache-schema",
            "mem-bw-schema",
        ],
        "" => &[
            "root",
            "log",
            "log-format",
            "cgroup-manager",
            "rootless",
            "store",
        ],
        _ => &[],
    }
}

fn bool_flags(sub: &str) -> &'static [&'static str] {
    match sub {
        "create" => &["no-pivot", "no-new-keyring", "overlay"],
        "run" => &[
            "detach",
            "keep",
            "no-pivot",
            "no-new-keyring",
            "no-subreaper",
            "overlay",
        ],
        "kill" => &["all"],
        "checkpoint" => &[
            "leave-running",
            "tcp-established",
            "ext-unix-sk",
            "shell-job",
            "file-locks",
            "pre-dump",
            "lazy-pages",
            "auto-dedup",
            "help",
        ],
        "restore" => &[
            "detach",
            "no-subreaper",
            "no-pivot",
            "tcp-established",
            "ext-unix-sk",
            "shell-job",
            "file-locks",
            "lazy-pages",
            "auto-dedup",
        ],
        "events" => &["stats"],
        "delete" => &["force"],
        "list" => &["quiet"],
        "spec" => &["rootless"],
        "exec" => &["tty", "detach", "no-new-privs", "ignore-paused"],
        "" => &["debug", "systemd-cgroup", "help", "version"],
        _ => &["help"],
    }
}

/// Turns `-name`, `-name=v` into `--name`, `--name=v` when `name` is a known
/// long flag of the subcommand; a boolean given as `--name=true` becomes
/// `--name`, and `--name=false` disappears (an empty string).
fn long_form(arg: &str, sub: &str) -> Option<String> {
    let body = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-'))?;
    let (name, value) = body
        .split_once('=')
        .map_or((body, None), |(n, v)| (n, Some(v)));
    if name.len() < 2 {
        return None;
    }
    if bool_flags(sub).contains(&name) {
        return Some(match value {
            Some("false" | "0" | "f" | "F" | "FALSE" | "False") => String::new(),
            _ => format!("--{name}"),
        });
    }
    value_flags(sub)
        .contains(&name)
        .then(|| format!("--{body}"))
}

fn takes_value(arg: &str, sub: &str) -> bool {
    let Some(body) = arg.strip_prefix("--") else {
        // Short flags with values: -b (bundle), -f (list format).
        return matches!(
            (sub, arg),
            ("create" | "run" | "spec" | "restore", "-b")
                | ("create" | "run", "-p")
                | ("list" | "ps", "-f")
                | ("update", "-r")
                | ("exec", "-e" | "-u" | "-g" | "-p" | "-c")
        );
    };
    !body.contains('=') && value_flags(sub).contains(&body)
}

/// The subcommand of `args` as [`normalise`] left them: the first word that
/// is neither a global flag nor a global flag's value.
pub fn subcommand(args: &[String]) -> Option<&str> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if !(a.starts_with('-') && a.len() > 1) {
            return Some(a);
        }
        if takes_value(a, "") {
            it.next();
        }
    }
    None
}

/// Rewrites `args` (without `argv[0]`) into the canonical order:
/// global flags, subcommand, its flags, `--`, positionals.
pub fn normalise(args: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len() + 1);
    let mut it = args.into_iter().peekable();
    // Global flags up to the subcommand.
    while let Some(a) = it.next() {
        if a.starts_with('-') && a.len() > 1 {
            let a = long_form(&a, "").unwrap_or(a);
            if a.is_empty() {
                continue;
            }
            let needs = takes_value(&a, "");
            out.push(a);
            if needs {
                if let Some(v) = it.next() {
                    out.push(v);
                }
            }
            continue;
        }
        out.push(a.clone());
        let sub = a;
        if sub == "image" {
            // rt's own nested commands: no runc spellings to normalise.
            out.extend(it.by_ref());
            break;
        }
        let mut flags = Vec::new();
        let mut positional = Vec::new();
        while let Some(a) = it.next() {
            if a == "--" {
                positional.extend(it.by_ref());
                break;
            }
            // exec (and ps) take a command line after the id: stop at it.
            if matches!(sub.as_str(), "exec" | "ps") && !positional.is_empty() {
                positional.push(a);
                positional.extend(it.by_ref());
                break;
            }
            if a.starts_with('-') && a.len() > 1 && !(sub == "kill" && positional.len() == 1) {
                let a = long_form(&a, &sub).unwrap_or(a);
                if a.is_empty() {
                    continue;
                }
                let needs = takes_value(&a, &sub);
                flags.push(a);
                if needs {
                    if let Some(v) = it.next() {
                        flags.push(v);
                    }
                }
            } else {
                positional.push(a);
            }
        }
        out.extend(flags);
        if !positional.is_empty() {
            out.push("--".into());
            out.extend(positional);
        }
        break;
    }
    out
}

/// A subcommand's arguments, added to its clap command only when clap
/// enters that subcommand (`Command::defer`). Without it every call built
/// all the subcommands' arguments: `rt --version` took 0.65–0.74 ms
/// against 0.40 ms for a static C program that returns, much of it page
/// faults in clap's builders.
#[derive(Debug)]
pub struct Lazy<T>(pub T);

impl<T: clap::Args> clap::Args for Lazy<T> {
    fn group_id() -> Option<clap::Id> {
        T::group_id()
    }

    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.defer(keeping_about::<T, false>)
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        cmd.defer(keeping_about::<T, true>)
    }
}

/// `T`'s arguments added to `cmd`, later than `cmd`'s own description was
/// set: that description stays (the arguments struct's doc would replace
/// it).
fn keeping_about<T: clap::Args, const UPDATE: bool>(cmd: clap::Command) -> clap::Command {
    let about = cmd.get_about().cloned();
    let long_about = cmd.get_long_about().cloned();
    let cmd = if UPDATE {
        T::augment_args_for_update(cmd)
    } else {
        T::augment_args(cmd)
    };
    let cmd = match about {
        Some(a) => cmd.about(a),
        None => cmd,
    };
    match long_about {
        Some(a) => cmd.long_about(a),
        None => cmd,
    }
}

impl<T: clap::FromArgMatches> clap::FromArgMatches for Lazy<T> {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        T::from_arg_matches(m).map(Lazy)
    }

    fn from_arg_matches_mut(m: &mut clap::ArgMatches) -> Result<Self, clap::Error> {
        T::from_arg_matches_mut(m).map(Lazy)
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches(m)
    }

    fn update_from_arg_matches_mut(&mut self, m: &mut clap::ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches_mut(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> String {
        normalise(s.split_whitespace().map(String::from).collect()).join(" ")
    }

    #[test]
    fn single_dash_and_trailing_flags() {
        assert_eq!(
            n("-root /r create ID --bundle B"),
            "--root /r create --bundle B -- ID"
        );
        assert_eq!(
            n("--root=/r create -bundle=B -pid-file P ID"),
            "--root=/r create --bundle=B --pid-file P -- ID"
        );
        assert_eq!(n("delete -force x"), "delete --force -- x");
        assert_eq!(n("delete --force=true x"), "delete --force -- x");
        assert_eq!(n("delete -force=false x"), "delete -- x");
        assert_eq!(n("run -d -b B x"), "run -d -b B -- x");
    }

    #[test]
    fn the_subcommand_is_found_past_global_flags_and_their_values() {
        let sub = |s: &str| {
            let args = normalise(s.split_whitespace().map(String::from).collect());
            subcommand(&args).map(String::from)
        };
        assert_eq!(
            sub("--root /r --log run --debug run -b B x").as_deref(),
            Some("run")
        );
        assert_eq!(
            sub("-root=/r --systemd-cgroup exec x ls").as_deref(),
            Some("exec")
        );
        assert_eq!(sub("--log-format json create x").as_deref(), Some("create"));
        assert_eq!(sub("--root state").as_deref(), None);
        assert_eq!(sub("--version").as_deref(), None);
    }

    /// conmon's and go-runc's checkpoint and restore argv.
    #[test]
    fn checkpoint_and_restore_flags() {
        assert_eq!(
            n("restore --bundle B -no-subreaper --pid-file P --detach --image-path I --work-path W x"),
            "restore --bundle B --no-subreaper --pid-file P --detach --image-path I --work-path W -- x"
        );
        assert_eq!(
            n("checkpoint --image-path I --work-path W --leave-running x --tcp-established"),
            "checkpoint --image-path I --work-path W --leave-running --tcp-established -- x"
        );
        assert_eq!(n("migrate x --to /r2"), "migrate --to /r2 -- x");
    }

    #[test]
    fn kill_signal_may_look_like_a_flag() {
        assert_eq!(n("kill x -9"), "kill -- x -9");
        assert_eq!(n("kill --all x KILL"), "kill --all -- x KILL");
    }

    #[test]
    fn exec_command_untouched() {
        assert_eq!(
            n("exec --tty x ls -la --color"),
            "exec --tty -- x ls -la --color"
        );
        assert_eq!(
            n("exec -e A=1 -u 1:2 x sh -c 'a'"),
            "exec -e A=1 -u 1:2 -- x sh -c 'a'"
        );
        assert_eq!(n("exec x --env A=1 sh"), "exec -- x --env A=1 sh");
        assert_eq!(n("ps --format json x"), "ps --format json -- x");
        assert_eq!(n("ps x -ef"), "ps -- x -ef");
    }

    #[test]
    fn events_interval_takes_a_value() {
        assert_eq!(
            normalise(vec![n("events"), n("--interval"), n("100ms"), n("id")]),
            [n("events"), n("--interval"), n("100ms"), n("--"), n("id")]
        );
        assert_eq!(
            normalise(vec![n("events"), n("id"), n("-stats")]),
            [n("events"), n("--stats"), n("--"), n("id")]
        );
    }

    #[test]
    fn global_only() {
        assert_eq!(n("--version"), "--version");
        assert_eq!(
            n("-debug -log /l -log-format json state x"),
            "--debug --log /l --log-format json state -- x"
        );
    }
}
