//! config.json parsing and validation: never a panic, whatever the bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = rt_container::spec::Bundle::parse("/nonexistent-bundle".into(), data);
});
