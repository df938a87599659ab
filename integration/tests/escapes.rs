//! Regression tests for known runtime escapes: each attacks rt the way the
//! CVE attacked runc and fails on an implementation that is vulnerable.

use std::path::Path;

use rt_testsupport::{eventually, output_via_files, root_or_skip, unique_id, Bundle, Root};
use serde_json::{json, Value};

macro_rules! need_root {
    () => {
        if !root_or_skip(module_path!()) {
            return;
        }
    };
}

fn sha(path: &Path) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).unwrap()).to_vec()
}

/// Every way rt protects its binary: the default (a private read-only
/// mount of the file, made at rt's ELF entry point before glibc starts),
/// the same mount as `main` makes it (forced), the fallbacks (the read-only
/// overlay of the binary's directory, the sealed memfd), and a read-only
/// install (the binary on a read-only bind mount), from which rt runs as it
/// is, without re-executing.
const PROTECTIONS: [&str; 5] = ["default", "bind", "overlay", "memfd", "read-only install"];

/// CVE-2019-5736: a process in the container opens /proc/1/exe while the
/// init is still rt (the container is created, not started), waits until rt
/// is no longer running, and writes through the descriptor. rt runs from a
/// file no one can write, so the write fails and the binary on disk is
/// intact. Every protection is attacked.
#[test]
fn cve_2019_5736_runtime_binary_cannot_be_overwritten() {
    need_root!();
    for protection in PROTECTIONS {
        attack_runtime_binary(protection);
    }
}

/// The same attack by a stronger attacker: root with CAP_SYS_ADMIN in
/// another mount namespace (a container with that capability and no user
/// namespace) first tries to clear the read-only flag of the mount that the
/// waiting init's `/proc/<pid>/exe` is on (mount_setattr), keeps that file
/// open (O_PATH), and writes through it once rt is gone. A private
/// read-only mount that were still attached to its anonymous mount
/// namespace would let it (the flag cleared, then the write); rt's is
/// dissolved by the exec that starts rt from it, and the overlay is
/// read-only whatever its flags.
#[test]
fn cve_2019_5736_runtime_mount_cannot_be_made_writable() {
    need_root!();
    for protection in PROTECTIONS {
        unwrap_runtime_mount(protection);
    }
}

/// A copy of rt to attack (so that a vulnerable rt does not break the other
/// tests), its checksum, and for a read-only install the mount that makes
/// it one.
struct Target {
    // Dropped first: the mount, then the directory under it.
    _unmount: Option<Unmount>,
    _dir: tempfile::TempDir,
    rt: std::path::PathBuf,
    before: Vec<u8>,
}

impl Target {
    fn new(protection: &str) -> Target {
        let dir = tempfile::tempdir().unwrap();
        let rt = dir.path().join("rt");
        std::fs::copy(rt_testsupport::rt_bin(), &rt).unwrap();
        let before = sha(&rt);
        let unmount = (protection == "read-only install").then(|| {
            let st = std::process::Command::new("mount")
                .args(["--bind", "-o", "ro"])
                .arg(dir.path())
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(st.success(), "mount --bind -o ro: {st}");
            Unmount(dir.path().to_path_buf())
        });
        Target {
            _unmount: unmount,
            _dir: dir,
            rt,
            before,
        }
    }

    /// rt (the copy) with the protection forced, or not.
    fn cmd(&self, protection: &str, root: &Root) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.rt);
        if matches!(protection, "bind" | "overlay" | "memfd") {
            cmd.env("RT_SELF_PROTECTION", protection);
        } else {
            cmd.env_remove("RT_SELF_PROTECTION");
        }
        cmd.arg("--root").arg(root.dir.path());
        cmd
    }
}

/// Unmounts (lazily) the read-only bind mount of a test's directory.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn attack_runtime_binary(protection: &str) {
    let target = Target::new(protection);
    let root = Root::new();
    let rt = |args: &[&str]| output_via_files(target.cmd(protection, &root).args(args));
    let mut b = Bundle::new(&["sleep", "1000"]);
    b.edit(|c| {
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}));
    });
    let id = unique_id("cve5736");
    let out = rt(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
    assert!(out.status.success(), "{out:?}");
    let attack = "exec 3</proc/1/exe || { echo open-failed > /tmp/result; exit 0; }; \
                  readlink /proc/1/exe > /tmp/exe; echo opened > /tmp/opened; \
                  while [ \"$(readlink /proc/1/exe)\" != /bin/busybox ]; do sleep 0.05; done; \
                  sleep 1; \
                  if printf '#!/bin/sh\\necho pwned\\n' >> /proc/self/fd/3; \
                  then echo wrote > /tmp/result; else echo write-failed > /tmp/result; fi";
    let out = rt(&[
        "exec",
        "-d",
        "--cap",
        "CAP_SYS_PTRACE",
        &id,
        "sh",
        "-c",
        attack,
    ]);
    assert!(out.status.success(), "{out:?}");
    let cat = |f: &str| {
        let out = root.rt(&["exec", &id, "cat", f]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert!(eventually(10, || !cat("/tmp/opened").is_empty()
        || !cat("/tmp/result").is_empty()));
    let out = rt(&["start", &id]);
    assert!(out.status.success(), "{out:?}");
    assert!(eventually(15, || !cat("/tmp/result").is_empty()));
    let result = cat("/tmp/result");
    assert_eq!(
        sha(&target.rt),
        target.before,
        "the runtime binary was rewritten ({result}, {protection})"
    );
    assert_ne!(result, "wrote");
    if protection == "read-only install" {
        // rt ran from the read-only mount itself: no re-execution.
        assert_eq!(cat("/tmp/exe"), target.rt.to_str().unwrap(), "{result}");
    }
    root.ok(&["delete", "--force", &id]);
}

/// What the attacker of [`cve_2019_5736_runtime_mount_cannot_be_made_writable`]
/// got: mount_setattr's result, and the O_PATH descriptor it kept.
fn unwrap_attempt(pid: i32) -> (nix::Result<()>, std::os::fd::OwnedFd) {
    // A thread of its own: unshare(CLONE_NEWNS) moves only the calling
    // thread into the new mount namespace.
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
        let exe = format!("/proc/{pid}/exe");
        let attr = [0u64, rt_sys::MOUNT_ATTR_RDONLY, 0, 0];
        let path = std::ffi::CString::new(exe.clone()).unwrap();
        // SAFETY: a C string path and a live mount_attr of the size passed,
        // which the kernel only reads.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                path.as_ptr(),
                0,
                attr.as_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        let cleared = nix::errno::Errno::result(rc).map(drop);
        use std::os::unix::fs::OpenOptionsExt;
        let held = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(&exe)
            .unwrap();
        (cleared, held.into())
    })
    .join()
    .unwrap()
}

fn unwrap_runtime_mount(protection: &str) {
    let target = Target::new(protection);
    let root = Root::new();
    let rt = |args: &[&str]| output_via_files(target.cmd(protection, &root).args(args));
    let b = Bundle::new(&["sleep", "1000"]);
    let bundle = b.path().to_str().unwrap();
    // Two rt processes to attack: a created container's init, waiting for
    // `start`, and the `rt run` that waits for its container.
    let created = unique_id("cve5736m");
    let out = rt(&["create", "--bundle", bundle, &created]);
    assert!(out.status.success(), "{out:?}");
    let state: Value = serde_json::from_str(&root.ok(&["state", &created])).unwrap();
    let init = state["pid"].as_i64().unwrap() as i32;
    let running = unique_id("cve5736r");
    let mut run = target.cmd(protection, &root);
    run.args(["run", "--bundle", bundle, &running])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut run = run.spawn().unwrap();
    assert!(eventually(10, || {
        let out = root.rt(&["state", &running]);
        String::from_utf8_lossy(&out.stdout).contains("\"running\"")
    }));
    let attempts = [init, run.id() as i32].map(unwrap_attempt);
    let out = rt(&["start", &created]);
    assert!(out.status.success(), "{out:?}");
    root.ok(&["kill", &running, "KILL"]);
    assert!(run.wait().is_ok());
    // Once the init runs sleep and `rt run` is gone, no process runs the
    // file any more (a write to a running executable fails with ETXTBSY
    // whatever the mount).
    let exe = format!("/proc/{init}/exe");
    assert!(eventually(10, || std::fs::read_link(&exe)
        .is_ok_and(|l| l.ends_with("busybox"))));
    for (who, (cleared, held)) in ["the init", "rt run"].iter().zip(attempts) {
        let write = std::fs::OpenOptions::new()
            .append(true)
            .open(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&held)
            ))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"#!/bin/sh\necho pwned\n"));
        assert_eq!(
            sha(&target.rt),
            target.before,
            "the runtime binary was rewritten through {who} ({protection}; mount_setattr: {cleared:?})"
        );
        assert!(write.is_err(), "{who}, {protection}");
        // EINVAL for each: rt's mount is dissolved, the overlay's root is
        // not the file, a memfd's mount is the kernel's own, and the
        // read-only install's is a mount of another namespace.
        assert_eq!(
            cleared,
            Err(nix::errno::Errno::EINVAL),
            "{who}, {protection}"
        );
    }
    root.ok(&["delete", "--force", &created]);
    root.ok(&["delete", "--force", &running]);
}

/// CVE-2024-21626: a working directory of /proc/self/fd/N would be a host
/// directory if rt leaked a descriptor (runc leaked a cgroup directory).
/// No descriptor but stdio is open when the init sets its cwd, so every such
/// cwd fails or stays inside the container.
#[test]
fn cve_2024_21626_no_host_directory_reachable_through_cwd() {
    need_root!();
    let root = Root::new();
    for fd in 3..10 {
        let mut b = Bundle::new(&["sh", "-c", "readlink /proc/self/cwd; ls .. | head -3"]);
        b.edit(|c: &mut Value| c["process"]["cwd"] = format!("/proc/self/fd/{fd}").into());
        let id = unique_id("cve21626");
        let out = root.rt(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success(),
            "cwd /proc/self/fd/{fd} worked: {stdout}"
        );
        let _ = root.rt(&["delete", "--force", &id]);
    }
    // And exec: its process sees only stdio too.
    let (_b, id) = {
        let b = Bundle::new(&["sleep", "1000"]);
        let id = unique_id("cve21626");
        root.ok(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);
        (b, id)
    };
    let out = root.ok(&["exec", &id, "ls", "/proc/self/fd"]);
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["0", "1", "2", "3"],
        "fd 3 is ls's own directory"
    );
    let out = root.rt(&["exec", "--cwd", "/proc/self/fd/5", &id, "pwd"]);
    assert!(!out.status.success(), "{out:?}");
    root.ok(&["delete", "--force", &id]);
}

/// CVE-2022-29162: inheritable capabilities stay exactly as the spec lists
/// them (empty here), for the init and for exec, so no file capability can be
/// inherited into a process beyond the spec.
#[test]
fn cve_2022_29162_inheritable_capabilities_not_granted() {
    need_root!();
    let root = Root::new();
    let mut b = Bundle::new(&["sleep", "1000"]);
    b.edit(|c| {
        c["process"]["capabilities"] = json!({
            "bounding": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
            "effective": ["CAP_KILL"],
            "permitted": ["CAP_KILL"],
            "inheritable": []
        });
    });
    let id = unique_id("cve29162");
    root.ok(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);
    let caps = |out: &str, key: &str| {
        out.lines()
            .find(|l| l.starts_with(key))
            .map(|l| l.split_whitespace().last().unwrap().to_string())
            .unwrap()
    };
    let init = std::fs::read_to_string(format!(
        "/proc/{}/status",
        serde_json::from_str::<Value>(&root.ok(&["state", &id])).unwrap()["pid"]
    ))
    .unwrap();
    assert_eq!(caps(&init, "CapInh:"), "0000000000000000");
    assert_eq!(caps(&init, "CapAmb:"), "0000000000000000");
    let out = root.ok(&["exec", &id, "cat", "/proc/self/status"]);
    assert_eq!(caps(&out, "CapInh:"), "0000000000000000");
    assert_eq!(caps(&out, "CapBnd:"), "0000000000000420");
    root.ok(&["delete", "--force", &id]);
}

/// CVE-2019-16884 / CVE-2023-27561: a rootfs whose /proc is a symlink
/// (pointing at a fake directory) could redirect the proc mount and with it
/// the LSM and masked-path writes. rt refuses to mount proc onto a symlink.
#[test]
fn proc_symlink_in_rootfs_is_refused() {
    need_root!();
    let rootfs = tempfile::tempdir().unwrap();
    rt_testsupport::make_rootfs(rootfs.path());
    std::fs::remove_dir(rootfs.path().join("proc")).unwrap();
    std::fs::create_dir(rootfs.path().join("fakeproc")).unwrap();
    std::os::unix::fs::symlink("/fakeproc", rootfs.path().join("proc")).unwrap();
    let root = Root::new();
    let mut b = Bundle::new(&["cat", "/proc/keys"]);
    b.edit(|c| c["root"]["path"] = json!(rootfs.path()));
    let id = unique_id("procsym");
    let out = root.rt(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/proc") && err.contains("symlink"), "{err}");
    // runc's wording, which callers and conformance tests match.
    assert!(
        err.contains("must be mounted on ordinary directory"),
        "{err}"
    );
    assert!(rt_testsupport::cgroup_dirs_named(&id).is_empty());
    assert!(!root.dir.path().join(&id).exists());
}

/// CVE-2021-30465: a symlink swapped under a mount destination while rt
/// creates containers must never make a mount land outside the rootfs. A
/// thread flips `/rootfs/flip` between a directory and a symlink to a host
/// directory while containers mount a tmpfs on /flip/x.
#[test]
fn cve_2021_30465_swapped_symlink_cannot_redirect_a_mount() {
    need_root!();
    let rootfs = tempfile::tempdir().unwrap();
    rt_testsupport::make_rootfs(rootfs.path());
    let outside = tempfile::tempdir().unwrap();
    let flip = rootfs.path().join("flip");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let (flip, target, stop) = (flip.clone(), outside.path().to_path_buf(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::fs::remove_file(&flip);
                let _ = std::fs::create_dir_all(flip.join("x"));
                let _ = std::fs::remove_dir_all(&flip);
                let _ = std::os::unix::fs::symlink(&target, &flip);
            }
        })
    };
    let root = Root::new();
    let mut b = Bundle::new(&["true"]);
    b.edit(|c| {
        c["root"]["path"] = json!(rootfs.path());
        c["root"]["readonly"] = json!(false);
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/flip/x", "type": "tmpfs", "source": "tmpfs"}));
    });
    for _ in 0..40 {
        let id = unique_id("cve30465");
        let _ = root.rt(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
        let _ = root.rt(&["delete", "--force", &id]);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flipper.join().unwrap();
    // Nothing was created in, or mounted on, the host directory.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(outside.path().to_str().unwrap()),
        "a mount escaped"
    );
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}
