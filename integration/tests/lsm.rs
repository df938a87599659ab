//! LSM labels: `process.apparmorProfile`, `process.selinuxLabel` and
//! `linux.mountLabel`. Each is applied when its module is enabled and refused
//! with an error naming it when not; this host has neither module, so the
//! enabled paths skip with a message and the refusals are tested for real.

use rt_testsupport::{root_or_skip, unique_id, Bundle, Root};
use serde_json::{json, Value};

macro_rules! need_root {
    () => {
        if !root_or_skip(module_path!()) {
            return;
        }
    };
}

fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim() == "Y")
}

fn selinux_enabled() -> bool {
    std::path::Path::new("/sys/fs/selinux/enforce").exists()
}

/// Runs `cat /proc/self/attr/current` with `edit` applied; (ok, stdout, stderr).
fn run(edit: impl FnOnce(&mut Value)) -> (bool, String, String, Root, String) {
    let root = Root::new();
    let mut b = Bundle::new(&["cat", "/proc/self/attr/current"]);
    b.edit(edit);
    let id = unique_id("lsm");
    let out = root.rt(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        root,
        id,
    )
}

#[test]
fn apparmor_profile_applied_or_refused() {
    need_root!();
    let (ok, out, err, root, id) = run(|c| c["process"]["apparmorProfile"] = json!("unconfined"));
    if apparmor_enabled() {
        assert!(ok, "{err}");
        assert!(out.contains("unconfined"), "{out}");
        return;
    }
    eprintln!("AppArmor is off on this host: testing the refusal only");
    assert!(!ok);
    assert!(err.contains("AppArmor is not enabled"), "{err}");
    assert!(!root.dir.path().join(&id).exists(), "no state left");
}

#[test]
fn selinux_labels_applied_or_refused() {
    need_root!();
    if selinux_enabled() {
        eprintln!("SELinux is on: the label tests need a policy with container types; skipped");
        return;
    }
    let (ok, _, err, root, id) =
        run(|c| c["process"]["selinuxLabel"] = json!("system_u:system_r:container_t:s0:c1,c2"));
    assert!(!ok);
    assert!(
        err.contains("process.selinuxLabel") && err.contains("SELinux is not enabled"),
        "{err}"
    );
    assert!(!root.dir.path().join(&id).exists(), "no state left");
    let (ok, _, err, _, _) =
        run(|c| c["linux"]["mountLabel"] = json!("system_u:object_r:container_file_t:s0:c1,c2"));
    assert!(!ok);
    assert!(
        err.contains("linux.mountLabel") && err.contains("SELinux is not enabled"),
        "{err}"
    );
}
