//! The C helpers under integration/helpers/, built for a test.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds integration/helpers/NAME.c, static and not PIE (so that it runs
/// in any rootfs and its data has 32-bit addresses), into `dir/NAME`.
pub fn build(name: &str, dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("helpers")
        .join(format!("{name}.c"));
    let out = dir.join(name);
    let status = Command::new("cc")
        .args(["-O1", "-static", "-no-pie", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("cc runs");
    assert!(status.success(), "building {}", src.display());
    out
}
