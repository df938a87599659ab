//! podman as a caller of rt in the end-to-end suites (drop-in tests on the
//! host, the systemd suite in its guest), with throwaway state.

use std::path::PathBuf;
use std::process::{Command, Output};

use rt_testsupport::{output_via_files, rt_bin};

/// podman's `cgroup_manager`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manager {
    Cgroupfs,
    Systemd,
}

impl Manager {
    fn name(self) -> &'static str {
        match self {
            Manager::Cgroupfs => "cgroupfs",
            Manager::Systemd => "systemd",
        }
    }
}

/// Whether `bin` is on PATH.
pub fn have(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// stdout then stderr, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// podman with its own storage, run root and containers.conf, so nothing of
/// the host's podman is touched. Its locks are files under its own tmpdir
/// (`lock_type = "file"`): with the default shared-memory segment
/// /libpod_lock, two tests starting podman for the first time together
/// raced ("failed to create 2048 locks in /libpod_lock: file exists").
#[derive(Debug)]
pub struct Podman {
    pub dir: tempfile::TempDir,
    runtime: PathBuf,
}

impl Podman {
    /// A podman whose runtime is `runtime` (rt's path or a link to it),
    /// with the cgroup manager `manager`.
    pub fn with_runtime(runtime: PathBuf, manager: Manager) -> Podman {
        let dir = tempfile::Builder::new()
            .prefix("rt-podman-")
            .tempdir()
            .unwrap();
        let conf = format!(
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
             [engine]\ncgroup_manager = \"{}\"\nevents_logger = \"file\"\n\
             lock_type = \"file\"\n\
             runtime_supports_json = [\"rt\", \"rt-vm\"]\n\
             [engine.runtimes]\nrt = [\"{}\"]\n",
            manager.name(),
            rt_bin().display()
        );
        std::fs::write(dir.path().join("containers.conf"), conf).unwrap();
        Podman { dir, runtime }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .arg("--root")
            .arg(self.dir.path().join("storage"))
            .arg("--runroot")
            .arg(self.dir.path().join("run"))
            // Its own tmpdir too (exit files, locks): the default
            // /run/libpod is shared, and one test's `system reset` would
            // remove another's exit files mid-stop.
            .arg("--tmpdir")
            .arg(self.dir.path().join("tmp"))
            .args(["--storage-driver", "vfs", "--runtime"])
            .arg(&self.runtime);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        output_via_files(self.cmd().args(args))
    }

    /// A podman with the busybox image loaded as localhost/rt-busybox.
    pub fn with_busybox_on(runtime: PathBuf, manager: Manager) -> Podman {
        assert!(
            have("podman"),
            "podman missing: integration/install-deps installs it"
        );
        let p = Podman::with_runtime(runtime, manager);
        let archive = p.dir.path().join("busybox.tar");
        crate::image::busybox_oci_archive(&archive, "localhost/rt-busybox:latest");
        let out = p.run(&["load", "-i", archive.to_str().unwrap()]);
        assert!(out.status.success(), "podman load: {}", text(&out));
        // The locks are this podman's own files, not the shared segment.
        assert!(p.dir.path().join("tmp/locks").exists());
        p
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "--all", "--force"]);
        let _ = self.run(&["system", "reset", "--force"]);
        // conmon puts itself in /libpod_parent/conmon with the cgroupfs
        // manager and leaves it: remove what podman made, if now empty.
        for leaf in ["libpod_parent/conmon", "libpod_parent"] {
            for dir in rt_testsupport::cgroup_dirs_named(leaf) {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}
