//! Mount option parsing: comma-separated words, any bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let options: Vec<String> = text.split(',').map(str::to_string).collect();
    let _ = rt_container::rootfs::options::parse(&options);
});
