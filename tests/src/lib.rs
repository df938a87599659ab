//! Shared test support: skip-unless-root, the rt binary, busybox bundles,
//! throwaway state roots.

pub mod oci;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use serde_json::Value;

/// True when running as root; otherwise prints why the test is skipped.
pub fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipping {test}: needs root (runs for real in CI)");
    false
}

/// The workspace's target directory of the running test binary's profile.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// The `rt` binary under test (`RT_BIN`, or the one built beside the tests).
pub fn rt_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("RT_BIN") {
        return PathBuf::from(p);
    }
    let p = target_dir().join("rt");
    assert!(
        p.exists(),
        "{} missing: run `cargo build --bins` first",
        p.display()
    );
    p
}

/// The host's static busybox.
pub fn busybox() -> PathBuf {
    for p in ["/bin/busybox", "/usr/bin/busybox"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("busybox not found: install busybox-static");
}

static ROOTFS: OnceLock<PathBuf> = OnceLock::new();

/// A busybox rootfs shared by every test (containers get it read-only unless
/// a test asks otherwise). Built once under the target directory, atomically
/// (in a temporary directory renamed into place), and reused by later runs.
pub fn shared_rootfs() -> &'static Path {
    ROOTFS.get_or_init(|| {
        let dir = target_dir().join("test-rootfs");
        if dir.join("bin/busybox").exists() {
            return dir;
        }
        let tmp = target_dir().join(format!("test-rootfs.{}", std::process::id()));
        make_rootfs(&tmp);
        if std::fs::rename(&tmp, &dir).is_err() {
            // Another test binary won the race.
            let _ = std::fs::remove_dir_all(&tmp);
        }
        dir
    })
}

/// Writes a busybox rootfs into `dir`: /bin/busybox, an applet symlink per
/// command, /etc/passwd and /etc/group, and the usual empty directories.
pub fn make_rootfs(dir: &Path) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(busybox(), bin.join("busybox")).unwrap();
    let list = Command::new(busybox()).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
    }
    for d in [
        "proc", "sys", "dev", "tmp", "etc", "root", "usr/bin", "sbin",
    ] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("etc/group"),
        "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n",
    )
    .unwrap();
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique container id for this test process.
pub fn unique_id(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// A bundle in a temporary directory, its config.json from `rt spec` with
/// `terminal` off and the shared busybox rootfs.
#[derive(Debug)]
pub struct Bundle {
    pub dir: tempfile::TempDir,
    pub config: Value,
}

impl Bundle {
    pub fn new(args: &[&str]) -> Bundle {
        let dir = tempfile::Builder::new()
            .prefix("rt-bundle-")
            .tempdir()
            .unwrap();
        let out = Command::new(rt_bin())
            .args(["spec", "--bundle"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rt spec: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
        let mut config: Value = serde_json::from_str(&text).unwrap();
        config["process"]["terminal"] = false.into();
        config["process"]["args"] = args.iter().map(|s| Value::from(*s)).collect();
        config["root"]["path"] = shared_rootfs().to_string_lossy().into_owned().into();
        let b = Bundle { dir, config };
        b.save();
        b
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn save(&self) {
        std::fs::write(
            self.dir.path().join("config.json"),
            serde_json::to_vec_pretty(&self.config).unwrap(),
        )
        .unwrap();
    }

    /// Edits the config and saves it.
    pub fn edit(&mut self, f: impl FnOnce(&mut Value)) {
        f(&mut self.config);
        self.save();
    }
}

/// A throwaway `--root` for one test, removed (after deleting leftovers)
/// on drop.
#[derive(Debug)]
pub struct Root {
    pub dir: tempfile::TempDir,
}

impl Default for Root {
    fn default() -> Self {
        Self::new()
    }
}

impl Root {
    pub fn new() -> Root {
        Root {
            dir: tempfile::Builder::new()
                .prefix("rt-root-")
                .tempdir()
                .unwrap(),
        }
    }

    /// `rt --root <this> ARGS...`
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(rt_bin());
        c.arg("--root").arg(self.dir.path());
        c
    }

    /// Runs rt, capturing its output through files rather than pipes: a
    /// detached container inherits rt's stdio, and a pipe it holds open would
    /// never reach end of file.
    pub fn rt(&self, args: &[&str]) -> Output {
        output_via_files(self.cmd().args(args))
    }

    /// Runs rt and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        expect_ok(args, self.rt(args))
    }

    pub fn status(&self, id: &str) -> String {
        let out = self.ok(&["state", id]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v["status"].as_str().unwrap().to_string()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = self.rt(&["delete", "--force", &id]);
            }
        }
    }
}

/// Asserts that `rt args` succeeded; returns its stdout.
pub fn expect_ok(args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "rt {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` with stdout and stderr in temporary files; waits for it only.
pub fn output_via_files(cmd: &mut Command) -> Output {
    let out = tempfile::tempfile().unwrap();
    let err = tempfile::tempfile().unwrap();
    let status = cmd
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap())
        .status()
        .expect("running command");
    let read = |mut f: std::fs::File| {
        use std::io::{Read, Seek};
        let mut v = Vec::new();
        f.rewind().unwrap();
        f.read_to_end(&mut v).unwrap();
        v
    };
    Output {
        status,
        stdout: read(out),
        stderr: read(err),
    }
}

/// Polls `f` every 10 ms for at most `secs` seconds.
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    f()
}

/// Every cgroup directory named `leaf` under the host's hierarchies.
pub fn cgroup_dirs_named(leaf: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        for h in entries.flatten() {
            let p = h.path().join(leaf);
            if p.exists() {
                out.push(p);
            }
        }
    }
    out
}

/// Returns from the calling test, with a message, unless running as root.
#[macro_export]
macro_rules! need_root {
    () => {
        if !$crate::root_or_skip(module_path!()) {
            return;
        }
    };
}

/// Receives one message and the descriptor riding with it (SCM_RIGHTS) on a
/// connected unix socket, as a console socket or a seccomp listener gets
/// them from rt: (the message's bytes, the descriptor).
pub fn recv_with_fd(conn: &std::os::unix::net::UnixStream) -> (Vec<u8>, std::os::fd::OwnedFd) {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut buf = vec![0u8; 65536];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
    .expect("recvmsg");
    let len = msg.bytes;
    let fd = msg
        .cmsgs()
        .expect("control messages")
        .find_map(|c| match c {
            ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
            _ => None,
        })
        .expect("a descriptor");
    buf.truncate(len);
    // SAFETY: the descriptor arrived through SCM_RIGHTS: it is new in this
    // process and owned by nothing else.
    (buf, unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Puts a spec's container in a new user namespace, container ids 0..65536
/// mapped to host ids 300000.. (rootfs files owned by the host's root then
/// show as the overflow id).
pub fn in_user_namespace(config: &mut Value) {
    config["linux"]["namespaces"]
        .as_array_mut()
        .expect("linux.namespaces")
        .push(serde_json::json!({"type": "user"}));
    let map = serde_json::json!([{"containerID": 0, "hostID": 300000, "size": 65536}]);
    config["linux"]["uidMappings"] = map.clone();
    config["linux"]["gidMappings"] = map;
}

/// The installed microVM guest kernel's version, which `uname -r` prints
/// in a VM container (and which is not the host's).
pub fn guest_kernel() -> String {
    rt_vm::guest::kernel(&rt_vm::guest::dir())
        .expect("no guest kernel: run integration/vm/install-guest")
        .version
}

/// Asserts that a command exited with `code` after printing only the guest
/// kernel's version (a VM container's `uname -r; exit CODE`).
pub fn assert_guest_uname(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\n", guest_kernel())
    );
}
