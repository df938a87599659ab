//! config.json parsing and validation, and `create`'s skim of it before the
//! parse: never a panic, whatever the bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = rt_container::spec::Skim::of(data);
    let _ = rt_container::spec::Bundle::parse("/nonexistent-bundle".into(), data);
});
