//! seccomp beyond the basics in isolation.rs: the x86 and x32 ABIs of an
//! x86_64 host, filter flags, and the default profile `rt spec` writes.

use rt_testsupport::{root_or_skip, unique_id, Bundle, Root};
use serde_json::{json, Value};

macro_rules! need_root {
    () => {
        if !root_or_skip(module_path!()) {
            return;
        }
    };
}

/// Runs `script` in a container with the ABI helper at /abi/abi, a tmpfs on
/// /tmp and `edit` applied; returns (exit code, stdout + stderr).
fn run_abi(script: &str, edit: impl FnOnce(&mut Value)) -> (i32, String) {
    let helper_dir = tempfile::tempdir().unwrap();
    rt_integration::helpers::build("abi", helper_dir.path());
    let root = Root::new();
    let mut b = Bundle::new(&["sh", "-c", script]);
    b.edit(|c| {
        let mounts = c["mounts"].as_array_mut().unwrap();
        mounts.push(json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}));
        mounts.push(json!({"destination": "/abi", "type": "bind",
            "source": helper_dir.path(), "options": ["bind", "ro"]}));
        edit(c);
    });
    let out = root.rt(&[
        "run",
        "--bundle",
        b.path().to_str().unwrap(),
        &unique_id("abi"),
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn deny_mkdir(arches: &[&str]) -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": arches,
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    })
}

/// With only x86_64 listed, a call through the i386 ABI kills the process,
/// as libseccomp's bad-arch action does; the native rule still applies.
#[test]
fn unlisted_abi_is_killed() {
    need_root!();
    let (code, out) = run_abi(
        "/abi/abi x86_64-mkdir; /abi/abi i386-getpid; echo i386=$?; /abi/abi x32-mkdir; echo x32=$?",
        |c| c["linux"]["seccomp"] = deny_mkdir(&["SCMP_ARCH_X86_64"]),
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("x86_64-mkdir=-1\n"), "{out}");
    // 128 + SIGSYS.
    assert!(out.contains("i386=159"), "{out}");
    assert!(out.contains("x32=159"), "{out}");
}

/// With x86 and x32 listed, their calls are filtered by the same rules,
/// looked up in their own syscall tables (mkdir is 39 on i386, 83 | x32 bit
/// on x32): a vulnerable filter would let `i386-mkdir` create the directory.
#[test]
fn listed_abis_get_the_same_rules() {
    need_root!();
    let (code, out) = run_abi(
        "/abi/abi i386-getpid; /abi/abi i386-mkdir; /abi/abi x32-mkdir; /abi/abi x86_64-mkdir; ls -d /tmp/abi-dir 2>&1",
        |c| {
            c["linux"]["seccomp"] =
                deny_mkdir(&["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        },
    );
    assert_eq!(code, 1, "ls finds no directory: {out}");
    let pid = out
        .lines()
        .find_map(|l| l.strip_prefix("i386-getpid="))
        .expect("getpid through int 0x80 runs");
    assert!(pid.parse::<i64>().unwrap() > 0, "{out}");
    for abi in ["i386", "x32", "x86_64"] {
        assert!(out.contains(&format!("{abi}-mkdir=-1\n")), "{abi}: {out}");
    }
}

/// rt loads a profile before waiting for `start` only when the profile
/// lets its last syscalls through: this one refuses `read` from descriptor
/// 3 up, where the init's exec fifo is, so it is loaded at the exec as
/// before, and the container runs (the init's read of the fifo would fail
/// under it).
#[test]
fn a_profile_refusing_rts_last_reads_is_loaded_at_the_exec() {
    need_root!();
    let (code, out) = run_abi("grep '^Seccomp:' < /proc/self/status", |c| {
        c["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                "args": [{"index": 0, "value": 3, "op": "SCMP_CMP_GE"}]}]
        });
    });
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
}

/// The flags the kernel has are applied, not refused.
#[test]
fn filter_flags_are_accepted() {
    need_root!();
    let (code, out) = run_abi(
        "grep '^Seccomp:' /proc/self/status; mkdir /tmp/x 2>&1",
        |c| {
            let mut p = deny_mkdir(&["SCMP_ARCH_X86_64"]);
            p["flags"] = json!([
                "SECCOMP_FILTER_FLAG_TSYNC",
                "SECCOMP_FILTER_FLAG_LOG",
                "SECCOMP_FILTER_FLAG_SPEC_ALLOW"
            ]);
            c["linux"]["seccomp"] = p;
        },
    );
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(out.contains("Operation not permitted"), "{out}");
}

/// `rt spec`'s profile has Docker's effect: ordinary work runs (in all
/// three ABIs), namespaces and mounts are refused with EPERM, and
/// clone3 answers ENOSYS so that libc falls back to clone.
#[test]
fn default_profile_has_dockers_effect() {
    need_root!();
    let (code, out) = run_abi(
        "echo hi > /tmp/f && cat /tmp/f && /abi/abi i386-mkdir && ls -d /tmp/abi-dir; \
         unshare -n true; echo unshare=$?; mount -t tmpfs none /tmp 2>&1; echo mount=$?; \
         sh -c 'echo child' ",
        |c| {
            assert!(c["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO");
            // CAP_SYS_ADMIN is granted but the profile (for the default
            // capabilities) still refuses mount and unshare.
            for set in ["bounding", "effective", "permitted"] {
                c["process"]["capabilities"][set]
                    .as_array_mut()
                    .unwrap()
                    .push("CAP_SYS_ADMIN".into());
            }
        },
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("hi\ni386-mkdir=0\n/tmp/abi-dir\n"), "{out}");
    assert!(out.contains("unshare=1"), "{out}");
    assert!(
        out.contains("Operation not permitted") && out.contains("mount=1"),
        "{out}"
    );
    assert!(out.contains("child"), "{out}");
}
