//! The calls containerd, podman and `rt run` users make most, parsed
//! without clap.
//!
//! Building clap's command and matching argv cost 0.17 ms of a 4 ms `run`
//! here, nearly all of it first touches of clap's code, stack and heap
//! (0.03 ms when warm). This parser takes only argv in the canonical form
//! [`crate::argv::normalise`] leaves (global flags, the subcommand, its
//! flags, `--`, positionals) for `run`, `create`, `start`, `state`,
//! `delete` and `kill`, with the flags listed below spelled as clap takes
//! them, each at most once. Anything else — help, another flag, a repeated
//! one, a value clap would refuse or read differently — returns None, and
//! clap parses the call (and words its errors) as before.
//! `tests::agrees_with_clap` checks that whatever this accepts, clap parses
//! to the same [`Cli`].

use std::path::PathBuf;

use crate::argv::Lazy;
use crate::commands::{create, delete, kill, run, start, state};
use crate::{CgroupManager, Cli, Command, LogFormat};

/// A flag of a command: its long name, its short letter, whether it takes
/// a value.
type Spec = (&'static str, Option<char>, bool);

const GLOBAL: &[Spec] = &[
    ("root", None, true),
    ("log", None, true),
    ("log-format", None, true),
    ("debug", None, false),
    ("systemd-cgroup", None, false),
    ("cgroup-manager", None, true),
    ("store", None, true),
    ("rootless", None, true),
];

const CREATE: &[Spec] = &[
    ("bundle", Some('b'), true),
    ("console-socket", None, true),
    ("pid-file", None, true),
    ("preserve-fds", None, true),
    ("no-pivot", None, false),
    ("no-new-keyring", None, false),
];

const RUN_ONLY: &[Spec] = &[
    ("detach", Some('d'), false),
    ("keep", None, false),
    ("no-subreaper", None, false),
];

/// The flags found, by long name: Some(value) or None for a boolean.
#[derive(Default)]
struct Found<'a>(Vec<(&'static str, Option<&'a str>)>);

impl<'a> Found<'a> {
    fn value(&self, name: &str) -> Option<&'a str> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| *v)
    }

    fn path(&self, name: &str) -> Option<PathBuf> {
        self.value(name).map(PathBuf::from)
    }

    fn set(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| *n == name)
    }
}

/// Reads flags from `args[*i..]` while they are flags of `specs`; stops at
/// the first word that is not a flag. None for a flag outside `specs`, a
/// repeated one, or a value clap might read otherwise.
fn flags<'a>(args: &'a [String], i: &mut usize, specs: &[&[Spec]]) -> Option<Found<'a>> {
    let mut found = Found::default();
    while let Some(arg) = args.get(*i) {
        if !arg.starts_with('-') || arg == "--" {
            break;
        }
        *i += 1;
        let (spec, inline) = if let Some(body) = arg.strip_prefix("--") {
            let (name, inline) = body
                .split_once('=')
                .map_or((body, None), |(n, v)| (n, Some(v)));
            let spec = specs.iter().flat_map(|s| s.iter()).find(|s| s.0 == name)?;
            (spec, inline)
        } else {
            let mut chars = arg[1..].chars();
            let (Some(c), None) = (chars.next(), chars.next()) else {
                return None;
            };
            let spec = specs
                .iter()
                .flat_map(|s| s.iter())
                .find(|s| s.1 == Some(c))?;
            (spec, None)
        };
        if found.set(spec.0) {
            return None;
        }
        let value = match (spec.2, inline) {
            (false, None) => None,
            (false, Some(_)) => return None,
            (true, Some(v)) => Some(v),
            (true, None) => {
                let v = args.get(*i)?;
                *i += 1;
                Some(v.as_str())
            }
        };
        // Empty, or flag-like (clap reads a word after a flag as its value
        // only if it does not look like a flag).
        if value.is_some_and(|v| v.is_empty() || v.starts_with('-')) {
            return None;
        }
        found.0.push((spec.0, value));
    }
    Some(found)
}

/// `argv` (without argv[0]) as [`crate::argv::normalise`] left it, or None
/// for clap to parse.
pub fn parse(args: &[String]) -> Option<Cli> {
    let mut i = 0;
    let global = flags(args, &mut i, &[GLOBAL])?;
    let sub = args.get(i)?.as_str();
    i += 1;
    let specs: &[&[Spec]] = match sub {
        "run" => &[CREATE, RUN_ONLY],
        "create" => &[CREATE],
        "delete" => &[&[("force", Some('f'), false)]],
        "kill" => &[&[("all", Some('a'), false)]],
        "start" | "state" => &[],
        _ => return None,
    };
    let found = flags(args, &mut i, specs)?;
    let positional: &[String] = match args.get(i).map(String::as_str) {
        None => &[],
        Some("--") => &args[i + 1..],
        Some(_) => return None,
    };
    if positional.iter().any(String::is_empty) {
        return None;
    }
    let command = command(sub, &found, positional)?;
    Some(Cli {
        root: global.path("root"),
        log: global.path("log"),
        log_format: match global.value("log-format") {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(_) => return None,
        },
        debug: global.set("debug"),
        systemd_cgroup: global.set("systemd-cgroup"),
        cgroup_manager: match global.value("cgroup-manager") {
            None => None,
            Some("cgroupfs") => Some(CgroupManager::Cgroupfs),
            Some("systemd") => Some(CgroupManager::Systemd),
            Some("disabled") => Some(CgroupManager::Disabled),
            Some(_) => return None,
        },
        store: global.path("store"),
        rootless: global.value("rootless").unwrap_or("auto").to_string(),
        command,
    })
}

/// The subcommand's arguments.
fn command(sub: &str, found: &Found<'_>, positional: &[String]) -> Option<Command> {
    let one = |p: &[String]| match p {
        [id] => Some(id.clone()),
        _ => None,
    };
    Some(match sub {
        "run" => Command::Run(Lazy(run::Args {
            detach: found.set("detach"),
            keep: found.set("keep"),
            no_subreaper: found.set("no-subreaper"),
            flags: create_flags(found, one(positional)?)?,
        })),
        "create" => Command::Create(Lazy(create::Args {
            flags: create_flags(found, one(positional)?)?,
        })),
        "start" => Command::Start(Lazy(start::Args {
            id: one(positional)?,
        })),
        "state" => Command::State(Lazy(state::Args {
            id: one(positional)?,
        })),
        "delete" => Command::Delete(Lazy(delete::Args {
            force: found.set("force"),
            id: one(positional)?,
        })),
        "kill" => {
            let (id, signal) = match positional {
                [id] => (id.clone(), "SIGTERM".to_string()),
                [id, signal] => (id.clone(), signal.clone()),
                _ => return None,
            };
            Command::Kill(Lazy(kill::Args {
                all: found.set("all"),
                id,
                signal,
            }))
        }
        _ => return None,
    })
}

fn create_flags(found: &Found<'_>, id: String) -> Option<create::CreateFlags> {
    let preserve_fds = match found.value("preserve-fds") {
        None => 0,
        // Digits only: clap's integer parser also takes a sign.
        Some(n) if n.len() <= 9 && n.bytes().all(|b| b.is_ascii_digit()) => n.parse().ok()?,
        Some(_) => return None,
    };
    Some(create::CreateFlags {
        bundle: found.path("bundle").unwrap_or_else(|| PathBuf::from(".")),
        console_socket: found.path("console-socket"),
        pid_file: found.path("pid-file"),
        no_pivot: found.set("no-pivot"),
        no_new_keyring: found.set("no-new-keyring"),
        preserve_fds,
        isolation: None,
        image: None,
        overlay: false,
        network: create::NetworkFlags {
            network: None,
            publish: Vec::new(),
            ip: None,
            bridge: None,
            subnet: None,
        },
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn words(s: &str) -> Vec<String> {
        s.split(' ')
            .filter(|w| !w.is_empty())
            .map(String::from)
            .collect()
    }

    /// The quick parse of `line` (normalised first, as main does), checked
    /// against clap's when it gives one.
    fn check(line: &str) -> bool {
        let args = crate::argv::normalise(words(line));
        let Some(quick) = parse(&args) else {
            return false;
        };
        let clap = Cli::try_parse_from(std::iter::once("rt".to_string()).chain(args.clone()))
            .unwrap_or_else(|e| panic!("{line:?}: quick parsed {quick:?}, clap refused: {e}"));
        assert_eq!(format!("{quick:?}"), format!("{clap:?}"), "{line:?}");
        true
    }

    #[test]
    fn agrees_with_clap() {
        // What containerd's runc shim, podman and people type: all quick.
        for line in [
            "--root /run/containerd/runc/k8s.io --log /run/x/log.json --log-format json create --bundle /b --pid-file /b/init.pid c1",
            "--root /r --log /l --log-format json --systemd-cgroup create --bundle /b --pid-file /p --console-socket /s c1",
            "--root /r start c1",
            "--root /r --log /l --log-format json start c1",
            "--root /r state c1",
            "--root /r kill c1 9",
            "--root /r kill --all c1 SIGKILL",
            "--root /r kill c1",
            "--root /r delete --force c1",
            "--root /r delete c1",
            "run -b /b c1",
            "run --bundle /b c1",
            "run --bundle=/b --detach c1",
            "run -d -b /b --keep --no-subreaper --no-pivot --no-new-keyring c1",
            "--debug --cgroup-manager cgroupfs --store /s --rootless false run --preserve-fds 2 c1",
            "--cgroup-manager=systemd --root=/r run c1",
            "run c1 --bundle /b",
            "-root /r run -bundle /b c1",
            "run --detach=true c1",
            "run --detach=false c1",
            "kill c1 -9",
            "--log-format text state c1",
        ] {
            assert!(check(line), "{line:?} should take the quick path");
        }
        // Left to clap: other commands and flags, help, repeats, values
        // clap reads otherwise, wrong positionals (quick says None; clap
        // may accept or refuse).
        for line in [
            "exec c1 true",
            "list",
            "--help",
            "run --help",
            "run -h c1",
            "--version",
            "run --image alpine c1",
            "run --network nat c1",
            "run -p 80:80 c1",
            "run --isolation vm c1",
            "run -b /a -b /b c1",
            "run --detach --detach c1",
            "--root /a --root /b state c1",
            "run --preserve-fds +1 c1",
            "run --preserve-fds 1x c1",
            "run --preserve-fds 99999999999 c1",
            "run --bundle= c1",
            "--log-format JSON state c1",
            "--log-format xml state c1",
            "--cgroup-manager none state c1",
            "run -db /b c1",
            "run -b=/b c1",
            "state",
            "state c1 c2",
            "kill c1 9 extra",
            "start",
            "delete -x c1",
            "--root -r state c1",
            "--frobnicate state c1",
            "rm c1",
        ] {
            assert!(!check(line), "{line:?} should go to clap");
        }
    }

    /// Every combination of the accepted flags of `run` and the globals
    /// agrees with clap.
    #[test]
    fn agrees_with_clap_on_every_combination() {
        let globals = [
            "",
            "--root /r",
            "--log=/l --log-format json",
            "--debug --systemd-cgroup",
        ];
        let flags = [
            "-b /b",
            "--bundle=/b",
            "--console-socket /s",
            "--pid-file=/p",
            "--preserve-fds 3",
            "--no-pivot",
            "--no-new-keyring",
            "-d",
            "--keep",
            "--no-subreaper",
        ];
        let mut quick = 0;
        for g in globals {
            for mask in 0..(1u32 << flags.len()) {
                let picked: Vec<&str> = (0..flags.len())
                    .filter(|b| mask & (1 << b) != 0)
                    .map(|b| flags[b])
                    .collect();
                // -b and --bundle together are a repeat: clap refuses.
                let line = format!("{g} run {} c1", picked.join(" "));
                quick += usize::from(check(&line));
            }
        }
        // All but the lines with both spellings of --bundle.
        assert_eq!(quick, globals.len() * (1 << flags.len()) * 3 / 4);
    }
}
