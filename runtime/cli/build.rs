//! Lays out the release `rt`'s start path contiguously.
//!
//! `start-path.order` lists the functions that `create`, `run`, `exec`,
//! `start`, `state`, `delete` and a VM container's supervisor execute
//! (mangled names, hottest first, then those that fault; found by
//! `integration/bench/order` in the build it lays out: `cargo build-static`
//! of the workspace, whose symbol hashes a narrower build does not share).
//! lld places them first in `.text`, so the code a container start runs
//! sits in a few dozen 64 KiB fault-around windows instead of being spread
//! over the 9.6 MB of text:
//! fewer page faults and a smaller RSS for every `rt` process
//! (docs/cli.md#the-binary). Names that a build no longer has are skipped;
//! a stale list costs speed, never correctness.

fn main() {
    // The entry point that re-executes before the C library starts
    // (src/early.rs), for every build of `rt` on x86_64 Linux.
    let x86_64_linux =
        std::env::var("TARGET").is_ok_and(|t| t.starts_with("x86_64-") && t.contains("-linux-"));
    if x86_64_linux {
        println!("cargo:rustc-link-arg-bin=rt=-Wl,-e,rt_early_entry");
    }
    let order = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default())
        .join("start-path.order");
    println!("cargo:rerun-if-changed={}", order.display());
    println!("cargo:rerun-if-changed=build.rs");
    // Only the optimised build, whose symbol names the list was taken from,
    // on x86_64 Linux, whose default linker (lld, since rustc 1.90) takes the
    // flag; a build that switches to GNU ld would have to drop it.
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let x86_64_gnu = std::env::var("TARGET").is_ok_and(|t| t == "x86_64-unknown-linux-gnu");
    if release && x86_64_gnu && order.is_file() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={},--no-warn-symbol-ordering",
            order.display()
        );
    }
}
