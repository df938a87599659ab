//! Lays out the release `rt`'s start path contiguously.
//!
//! `start-path.order` lists the functions that `create`, `run`, `exec`,
//! `start`, `state` and `delete` execute (mangled names, hottest first,
//! sampled by `integration/bench/order`). lld places them first in `.text`,
//! so the few hundred KiB a container start runs sit in a few 64 KiB
//! fault-around windows instead of being spread over the 9.6 MB of text:
//! fewer page faults and a smaller RSS for every `rt` process
//! (docs/cli.md#the-binary). Names that a build no longer has are skipped;
//! a stale list costs speed, never correctness.

fn main() {
    let order = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default())
        .join("start-path.order");
    println!("cargo:rerun-if-changed={}", order.display());
    println!("cargo:rerun-if-changed=build.rs");
    // Only the optimised build, whose symbol names the list was taken from,
    // and only with lld (rustc's default linker on x86_64 Linux since 1.90).
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let x86_64_linux = std::env::var("TARGET").is_ok_and(|t| t == "x86_64-unknown-linux-gnu");
    if release && x86_64_linux && order.is_file() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={},--no-warn-symbol-ordering",
            order.display()
        );
    }
}
