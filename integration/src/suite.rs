//! What the guest suites (`vm-suite`, `systemd-suite`) share: building
//! test binaries with cargo and summing libtest's result lines from a
//! guest's console.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Builds rt (debug) with cargo and returns its path.
pub fn build_rt() -> anyhow::Result<PathBuf> {
    let status = Command::new(cargo())
        .current_dir(workspace())
        .args(["build", "-q", "--bin", "rt"])
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo build --bin rt failed");
    }
    Ok(workspace().join("target/debug/rt"))
}

/// Builds a test binary with cargo and returns its path.
pub fn build_test(package: &str, kind: &str, name: &str) -> anyhow::Result<PathBuf> {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(workspace()).args([
        "test",
        "--no-run",
        "--message-format=json",
        "-q",
        "-p",
        package,
    ]);
    if kind == "lib" {
        cmd.arg("--lib");
    } else {
        cmd.args(["--test", name]);
    }
    let out = cmd.output().context("running cargo")?;
    if !out.status.success() {
        bail!(
            "cargo test --no-run -p {package}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact"
            && v["target"]["name"] == name
            && v["profile"]["test"] == true
        {
            if let Some(exe) = v["executable"].as_str() {
                return Ok(PathBuf::from(exe));
            }
        }
    }
    bail!("cargo built no test executable for {package} {name}")
}

/// The cargo that runs this program (or the one on PATH).
pub fn cargo() -> PathBuf {
    std::env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from)
}

/// Sums libtest's `test result: ok. N passed; M failed; ...` lines.
pub fn tally(lines: &[String]) -> (u64, u64) {
    let mut passed = 0;
    let mut failed = 0;
    for l in lines.iter().filter_map(|l| l.split("test result: ").nth(1)) {
        for part in l.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let n: u64 = n.parse().unwrap_or(0);
            match label {
                "passed" => passed += n,
                "failed" => failed += n,
                _ => {}
            }
        }
    }
    (passed, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_sums_result_lines() {
        let lines = [
            "guest| test result: ok. 10 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out"
                .to_string(),
            "test result: FAILED. 3 passed; 2 failed; 0 ignored".to_string(),
            "noise 5 passed".to_string(),
        ];
        assert_eq!(tally(&lines), (13, 2));
    }
}
