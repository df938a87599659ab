//! A containerd of a test's own (temporary root, state and socket, the
//! CRI plugin off), driven with `ctr`: the runc shim running rt, and
//! containerd-shim-rt-v2 (found in PATH, which is given the directory of
//! the rt under test).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

use rt_testsupport::{eventually, output_via_files, rt_bin};

use crate::podman::{have, text};

pub const BUSYBOX_CTR: &str = "docker.io/library/rt-busybox:latest";

/// A containerd of its own: temporary root, state and socket, the CRI plugin
/// off (no CNI, no network set up).
#[derive(Debug)]
pub struct Containerd {
    pub dir: tempfile::TempDir,
    child: Child,
    /// The containerd namespace, which is also the parent of the containers'
    /// cgroups: one per test, so that parallel tests never share (and leave
    /// behind) a parent cgroup.
    pub ns: String,
}

/// Starts containerd on the config in `dir`, its log appended to
/// `dir/containerd.log`, with the rt under test's directory first in PATH
/// (where containerd-shim-rt-v2 is built); once its socket answers.
fn daemon(dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("containerd.log"))
        .unwrap();
    let bin = rt_bin();
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let sock = dir.join("containerd.sock");
    let _ = std::fs::remove_file(&sock);
    let child = Command::new("containerd")
        .arg("--config")
        .arg(dir.join("config.toml"))
        .env("PATH", path)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    assert!(eventually(20, || sock.exists()), "containerd did not start");
    child
}

impl Containerd {
    /// Kills containerd (SIGKILL: no clean shutdown) and starts it again
    /// on the same state; shims keep running meanwhile.
    pub fn restart(&mut self) {
        self.restart_after(std::time::Duration::ZERO);
    }

    /// The same, with containerd down for `gap`.
    pub fn restart_after(&mut self, gap: std::time::Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(gap);
        self.child = daemon(self.dir.path());
    }

    pub fn start() -> Containerd {
        Containerd::start_with(None)
    }

    /// With `cri`, the CRI plugin on and that TOML (its `[plugins…]`
    /// tables) added to the config; `{dir}` in it is the daemon's own
    /// directory.
    pub fn start_with(cri: Option<&str>) -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("rt-containerd-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let disabled = if cri.is_some() {
            ""
        } else {
            "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n"
        };
        let config = format!(
            "version = 2\nroot = \"{r}\"\nstate = \"{s}\"\n{disabled}\
             [grpc]\n  address = \"{a}\"\n[ttrpc]\n  address = \"{a}.ttrpc\"\n{extra}",
            r = d.join("root").display(),
            s = d.join("state").display(),
            a = d.join("containerd.sock").display(),
            extra = cri
                .unwrap_or_default()
                .replace("{dir}", &d.display().to_string()),
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let child = daemon(d);
        Containerd {
            dir,
            child,
            ns: rt_testsupport::unique_id("rt-ns"),
        }
    }

    /// A started containerd with the busybox image imported as
    /// [`BUSYBOX_CTR`].
    pub fn with_busybox() -> Containerd {
        assert!(
            have("containerd") && have("ctr"),
            "containerd missing: integration/install-deps installs it"
        );
        let c = Containerd::start();
        let archive = c.dir.path().join("busybox.tar");
        crate::image::busybox_oci_archive(&archive, BUSYBOX_CTR);
        let out = c.ctr(&["images", "import", "--no-unpack", archive.to_str().unwrap()]);
        assert!(out.status.success(), "ctr import: {}", text(&out));
        c
    }

    /// `ctr run MODE --runc-binary rt BUSYBOX ID CMD...` (MODE: --rm or -d).
    pub fn run_busybox(&self, mode: &str, id: &str, cmd: &[&str]) -> Output {
        self.run_busybox_on(&rt_bin(), mode, id, cmd)
    }

    pub fn run_busybox_on(&self, rt: &Path, mode: &str, id: &str, cmd: &[&str]) -> Output {
        let mut args = vec![
            "run",
            mode,
            "--snapshotter",
            "native",
            "--runc-binary",
            rt.to_str().unwrap(),
            BUSYBOX_CTR,
            id,
        ];
        args.extend_from_slice(cmd);
        self.ctr(&args)
    }

    /// containerd's log so far (its shims' lines included).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Task `id`'s status in `ctr task ls` (empty: no such task).
    pub fn task_status(&self, id: &str) -> String {
        let out = self.ctr(&["task", "ls"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().last().map(str::to_string))
            .unwrap_or_default()
    }

    /// `ctr` in containerd namespace `ns` (CRI's is `k8s.io`).
    pub fn ctr_in(&self, ns: &str, args: &[&str]) -> Output {
        output_via_files(
            Command::new("ctr")
                .arg("--address")
                .arg(self.dir.path().join("containerd.sock"))
                .args(["--namespace", ns])
                .args(args),
        )
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        output_via_files(
            Command::new("ctr")
                .arg("--address")
                .arg(self.dir.path().join("containerd.sock"))
                .args(["--namespace", &self.ns])
                .args(args),
        )
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // A test that failed half-way leaves tasks: delete them with rt
        // under the shim's state root, then stop the shims of our socket.
        // (The runc shim's root, and containerd-shim-rt-v2's.)
        for shim_root in ["/run/containerd/runc", "/run/containerd/rt"] {
            let runc_root = Path::new(shim_root).join(&self.ns);
            for e in std::fs::read_dir(&runc_root)
                .into_iter()
                .flatten()
                .flatten()
            {
                let _ = output_via_files(
                    Command::new(rt_bin())
                        .arg("--root")
                        .arg(&runc_root)
                        .args(["delete", "--force"])
                        .arg(e.file_name()),
                );
            }
            let _ = std::fs::remove_dir_all(&runc_root);
        }
        let sock = self.dir.path().join("containerd.sock");
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let text = String::from_utf8_lossy(&cmdline);
            if text.contains("containerd-shim") && text.contains(sock.to_str().unwrap()) {
                if let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Anything the shims mounted under our state dir.
        unmount_below(self.dir.path());
    }
}

pub fn unmount_below(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut targets: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    targets.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for t in targets {
        let _ = nix::mount::umount2(&t, nix::mount::MntFlags::MNT_DETACH);
    }
}
