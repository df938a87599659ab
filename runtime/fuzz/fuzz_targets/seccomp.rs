//! The seccomp translation: any `linux.seccomp` that parses is either
//! refused with an error or compiled to filters, never a panic.
#![no_main]

use oci_spec::runtime::LinuxSeccomp;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = serde_json::from_slice::<LinuxSeccomp>(data) {
        if rt_container::seccomp::check(&s).is_ok() {
            let _ = rt_container::seccomp::compile(&s);
        }
    }
});
