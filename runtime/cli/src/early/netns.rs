//! The network namespace helper, started from the entry point when a
//! `run` or `create` will likely want it.
//!
//! The engine starts a helper that makes the container's network namespace
//! as soon as it has read config.json ([`rt_sys::netns_helper`]); making
//! one takes 0.5–0.7 ms here, and with a network namespace the init's
//! clone waited for it. From the entry point of the process that will do
//! the work (the re-executed one), before the C library starts, the helper
//! gains the library's start-up, std's, the argument parse and the skim:
//! about 0.3 ms. Here that is a guess from argv and config.json's bytes;
//! the engine still decides on its own skim whether to take the helper
//! over ([`rt_sys::netns_helper::NetnsHelper::spawn`]), and one it does not
//! take is reaped before anything forks. A wrong guess costs a namespace
//! made on the other CPU for nothing, or the gain; never correctness.
//!
//! The guess is yes only when every sign is plain: root, no `--rootless`
//! or `--isolation`, a binary not named for the VM, a config.json of at
//! most 256 KiB that names no `run.rt.` annotation (rt's networks and
//! isolation), and whose first `"namespaces"` array asks for a network
//! namespace and joins none (no `path`), with no user or time namespace
//! (the engine then clones the init straight into its namespaces and
//! leaves the network one to the helper). An escape in any of its strings
//! is a no.
//!
//! The rules of [`super`] hold: no allocation, no panics, no thread-local,
//! and every byte read volatile, so that no call to the C library's
//! `memcmp` or `memcpy` is emitted.

use super::{at, starts_with, syscall, Buf, PATH_MAX};

/// The largest config.json looked at.
const CONFIG_MAX: usize = 256 * 1024;

static CONFIG: Buf<[u8; CONFIG_MAX]> = Buf(core::cell::UnsafeCell::new([0; CONFIG_MAX]));
static CONFIG_PATH: Buf<[u8; PATH_MAX + 16]> = Buf(core::cell::UnsafeCell::new([0; PATH_MAX + 16]));

/// Global flags that take a value, as `argv::normalise` leaves them (and
/// runc's single-dash spelling).
const GLOBAL_VALUES: [&[u8]; 7] = [
    b"root",
    b"log",
    b"log-format",
    b"cgroup-manager",
    b"store",
    b"criu",
    b"rootless",
];

/// Starts the helper if this call is a `run` or `create` that will likely
/// want it (see the module).
///
/// # Safety
/// `argv` holds `argc` C strings; the process has one task and the C
/// library may not have started.
pub(super) unsafe fn start_if_wanted(argc: usize, argv: *const *const u8) {
    // SAFETY: geteuid takes no argument.
    if unsafe { syscall(libc::SYS_geteuid, [0; 5]) } != 0 {
        return;
    }
    // SAFETY: argv[0] is a C string (argc >= 1 when we get here).
    if argc == 0 || unsafe { named_for_vm(*argv) } {
        return;
    }
    // SAFETY: as the caller guarantees.
    let Some(bundle) = (unsafe { bundle_of(argc, argv) }) else {
        return;
    };
    // SAFETY: `bundle` is null or a C string of argv.
    let Some(len) = (unsafe { read_config(bundle) }) else {
        return;
    };
    let text = Text {
        p: CONFIG.0.get() as *const u8,
        len,
    };
    if wants_netns(&text) {
        // SAFETY: one task, and nothing of the C library used.
        unsafe { rt_sys::netns_helper::spawn_early() };
    }
}

/// Whether the binary's name (its last path component) ends in `-vm`.
///
/// # Safety
/// `arg0` is a C string.
unsafe fn named_for_vm(arg0: *const u8) -> bool {
    let mut n = 0;
    // SAFETY: s[..n] are non-NUL, so s[n] is within the string.
    while unsafe { at(arg0, n) } != 0 {
        n += 1;
    }
    // SAFETY: n >= 3 bytes precede the NUL.
    n >= 3
        && unsafe { at(arg0, n - 3) == b'-' && at(arg0, n - 2) == b'v' && at(arg0, n - 1) == b'm' }
}

/// The bundle directory of a `run` or `create` call: Some(null) for the
/// working directory, Some(the flag's value), or None when this is not such
/// a call or anything about it is unusual.
///
/// # Safety
/// `argv` holds `argc` C strings.
unsafe fn bundle_of(argc: usize, argv: *const *const u8) -> Option<*const u8> {
    let arg = |i: usize| -> *const u8 {
        // SAFETY: callers pass i < argc.
        unsafe { *argv.add(i) }
    };
    // Global flags, then the command.
    let mut i = 1;
    loop {
        if i >= argc {
            return None;
        }
        let a = arg(i);
        // SAFETY: each argument is a C string.
        if unsafe { starts_with(a, b"run", true) || starts_with(a, b"create", true) } {
            break;
        }
        // SAFETY: as above.
        if unsafe { at(a, 0) } != b'-' || unsafe { flag_is(a, b"rootless") } {
            return None;
        }
        // SAFETY: as above.
        let takes_value = GLOBAL_VALUES.iter().any(|f| unsafe { flag_is(a, f) });
        i += if takes_value { 2 } else { 1 };
    }
    let mut bundle = core::ptr::null();
    i += 1;
    while i < argc {
        let a = arg(i);
        // SAFETY: each argument is a C string.
        unsafe {
            if starts_with(a, b"--", true) {
                break;
            }
            if flag_is(a, b"isolation") || starts_with(a, b"--isolation=", false) {
                return None;
            }
            if starts_with(a, b"-b", true) || flag_is(a, b"bundle") {
                if i + 1 >= argc {
                    return None;
                }
                bundle = arg(i + 1);
                i += 2;
                continue;
            }
            let prefix = [&b"--bundle="[..], b"-bundle=", b"-b="]
                .into_iter()
                .find(|p| starts_with(a, p, false));
            if let Some(prefix) = prefix {
                bundle = a.add(prefix.len());
            } else if !starts_with(a, b"--", false) && starts_with(a, b"-b", false) {
                // -bDIR
                bundle = a.add(2);
            }
        }
        i += 1;
    }
    Some(bundle)
}

/// Whether `a` is the flag `--name` or `-name` (runc's spelling).
///
/// # Safety
/// `a` is a C string.
unsafe fn flag_is(a: *const u8, name: &[u8]) -> bool {
    // SAFETY: a[0] is within the string; a[1] too when a[0] is '-'.
    let skip = match unsafe { (at(a, 0), at(a, 1)) } {
        (b'-', b'-') => 2,
        (b'-', _) => 1,
        _ => return false,
    };
    // SAFETY: a + skip is within the string (its first bytes were '-').
    unsafe { starts_with(a.add(skip), name, true) }
}

/// Reads `<bundle>/config.json` (config.json in the working directory for a
/// null `bundle`) into CONFIG; its length, or None if it could not be read
/// or does not fit.
///
/// # Safety
/// `bundle` is null or a C string.
unsafe fn read_config(bundle: *const u8) -> Option<usize> {
    let path = CONFIG_PATH.0.get() as *mut u8;
    let cap = PATH_MAX + 15; // the last byte stays NUL (bss is zeroed)
    let mut len = 0;
    if !bundle.is_null() {
        let mut i = 0;
        // SAFETY: bundle[..i] are non-NUL, so bundle[i] is within it.
        while unsafe { at(bundle, i) } != 0 {
            // SAFETY: as above.
            if !super::push(path, cap, &mut len, &[unsafe { at(bundle, i) }]) {
                return None;
            }
            i += 1;
        }
        if len > 0 && !super::push(path, cap, &mut len, b"/") {
            return None;
        }
    }
    if !super::push(path, cap, &mut len, b"config.json\0") {
        return None;
    }
    // Non-blocking: a FIFO (or a terminal) there must not hold us up; for
    // a regular file it changes nothing.
    let flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK) as usize;
    // SAFETY: a NUL-terminated path of ours.
    let fd = unsafe { syscall(libc::SYS_open, [path as usize, flags, 0, 0, 0]) };
    if fd < 0 {
        return None;
    }
    let buf = CONFIG.0.get() as *mut u8;
    let mut got = 0;
    let result = loop {
        let room = CONFIG_MAX - got;
        if room == 0 {
            break None;
        }
        // SAFETY: `room` bytes of our buffer from `got` on.
        let n = unsafe {
            syscall(
                libc::SYS_read,
                [fd as usize, buf.wrapping_add(got) as usize, room, 0, 0],
            )
        };
        if n == -libc::EINTR as isize {
            continue;
        }
        if n < 0 {
            break None;
        }
        if n == 0 {
            break Some(got);
        }
        got += n as usize;
    };
    super::close(fd);
    result
}

/// Bytes to scan, read one at a time.
struct Text {
    p: *const u8,
    len: usize,
}

impl Text {
    fn get(&self, i: usize) -> Option<u8> {
        // SAFETY: i < len, the bytes read into the buffer.
        (i < self.len).then(|| unsafe { core::ptr::read_volatile(self.p.wrapping_add(i)) })
    }

    /// Whether `word` starts at `i`.
    fn has(&self, i: usize, word: &[u8]) -> bool {
        let mut k = 0;
        while k < word.len() {
            if self.get(i + k) != Some(word[k]) {
                return false;
            }
            k += 1;
        }
        true
    }

    /// The first index at or after `from` where `word` starts.
    fn find(&self, from: usize, word: &[u8]) -> Option<usize> {
        (from..self.len).find(|&i| self.has(i, word))
    }

    fn skip_ws(&self, mut i: usize) -> usize {
        while matches!(self.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            i += 1;
        }
        i
    }

    /// The string starting at `i` (its opening quote): the bounds of its
    /// contents and the index after it. None for one with an escape.
    fn string(&self, i: usize) -> Option<(usize, usize, usize)> {
        if self.get(i)? != b'"' {
            return None;
        }
        let mut k = i + 1;
        loop {
            match self.get(k)? {
                b'"' => return Some((i + 1, k, k + 1)),
                b'\\' => return None,
                _ => k += 1,
            }
        }
    }

    /// Whether `[start, end)` holds exactly `word`.
    fn equals(&self, (start, end): (usize, usize), word: &[u8]) -> bool {
        end - start == word.len() && self.has(start, word)
    }
}

/// The guess on config.json's bytes (see the module).
fn wants_netns(t: &Text) -> bool {
    if t.find(0, b"run.rt.").is_some() {
        return false;
    }
    // The first "namespaces" key whose value is an array.
    let mut from = 0;
    let mut i = loop {
        let Some(k) = t.find(from, b"\"namespaces\"") else {
            return false;
        };
        let colon = t.skip_ws(k + 12);
        if t.get(colon) == Some(b':') {
            let open = t.skip_ws(colon + 1);
            if t.get(open) == Some(b'[') {
                break open + 1;
            }
        }
        from = k + 1;
    };
    let mut network = false;
    loop {
        i = t.skip_ws(i);
        match t.get(i) {
            Some(b']') => return network,
            Some(b',') => {
                i += 1;
                continue;
            }
            Some(b'{') => i += 1,
            _ => return false,
        }
        // One namespace: string keys with string values.
        let mut typ = None;
        loop {
            i = t.skip_ws(i);
            match t.get(i) {
                Some(b'}') => {
                    i += 1;
                    break;
                }
                Some(b',') => {
                    i += 1;
                    continue;
                }
                _ => {}
            }
            let Some((ks, ke, after)) = t.string(i) else {
                return false;
            };
            let colon = t.skip_ws(after);
            if t.get(colon) != Some(b':') {
                return false;
            }
            let Some((vs, ve, after)) = t.string(t.skip_ws(colon + 1)) else {
                return false;
            };
            if t.equals((ks, ke), b"path") && ve > vs {
                return false;
            }
            if t.equals((ks, ke), b"type") {
                typ = Some((vs, ve));
            }
            i = after;
        }
        match typ {
            Some(v) if t.equals(v, b"user") || t.equals(v, b"time") => return false,
            Some(v) => network |= t.equals(v, b"network"),
            None => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wants(json: &str) -> bool {
        wants_netns(&Text {
            p: json.as_ptr(),
            len: json.len(),
        })
    }

    #[test]
    fn a_new_network_namespace_joining_nothing_is_wanted() {
        let plain = r#"{"linux": {"namespaces": [{"type": "pid"}, {"type":"network"},
            {"type": "mount", "path": ""}]}}"#;
        assert!(wants(plain));
        // No network namespace; one joined; a user or time namespace.
        assert!(!wants(
            r#"{"linux":{"namespaces":[{"type":"pid"},{"type":"mount"}]}}"#
        ));
        assert!(!wants(
            r#"{"linux":{"namespaces":[{"type":"network","path":"/run/netns/a"}]}}"#
        ));
        assert!(!wants(
            r#"{"linux":{"namespaces":[{"type":"network"},{"type":"ipc","path":"/proc/1/ns/ipc"}]}}"#
        ));
        assert!(!wants(
            r#"{"linux":{"namespaces":[{"type":"network"},{"type":"user"}]}}"#
        ));
        assert!(!wants(
            r#"{"linux":{"namespaces":[{"type":"network"},{"type":"time"}]}}"#
        ));
        // rt's annotations (a network, the VM).
        assert!(!wants(
            r#"{"annotations":{"run.rt.network":"nat"},"linux":{"namespaces":[{"type":"network"}]}}"#
        ));
        // An escape, a value that is no string, something odd: no.
        assert!(!wants(
            r#"{"linux":{"namespaces":[{"type":"netw\u006frk"}]}}"#
        ));
        assert!(!wants(
            r#"{"linux":{"namespaces":[{"type":"network","x":1}]}}"#
        ));
        assert!(!wants(r#"{"linux":{"namespaces":[{"type":"network"}"#));
        assert!(!wants(r#"{"linux":{"namespaces":[{"path":"/x"}]}}"#));
        assert!(!wants(""));
        // "namespaces" elsewhere first (a string value): the array counts.
        assert!(wants(
            r#"{"a":"namespaces","namespaces":{},"linux":{"namespaces":[{"type":"network"}]}}"#
        ));
    }

    /// The default spec rt writes is one the guess takes.
    #[test]
    fn rt_s_default_spec_wants_one() {
        let json =
            serde_json::to_string_pretty(&rt_container::defaults::default_spec(false)).unwrap();
        assert!(wants(&json), "{json}");
        // Rootless: a user namespace.
        let json = serde_json::to_string(&rt_container::defaults::default_spec(true)).unwrap();
        assert!(!wants(&json), "{json}");
    }

    /// The scanner runs before the C library: it must never panic, on
    /// any text. Every truncation of the namespaces array and of what
    /// follows it, and every one of its bytes replaced by JSON's
    /// punctuation, is answered.
    #[test]
    fn no_text_makes_the_guess_panic() {
        let json = r#"{"annotations":{"a":"b"},"linux":{"namespaces":[{"type":"pid"},{"type":"network","path":""},{"type":"mount"}],"x":[1]}}"#;
        let at = json.find("\"namespaces\"").unwrap();
        for end in at..=json.len() {
            wants(&json[..end]);
        }
        let bytes = json.as_bytes();
        for i in at..bytes.len() {
            for c in *b"\"\\:,{}[] x" {
                let mut v = bytes.to_vec();
                v[i] = c;
                wants_netns(&Text {
                    p: v.as_ptr(),
                    len: v.len(),
                });
            }
        }
    }

    fn cstrings(args: &[&str]) -> (Vec<std::ffi::CString>, Vec<*const u8>) {
        let owned: Vec<_> = args
            .iter()
            .map(|a| std::ffi::CString::new(*a).unwrap())
            .collect();
        let mut ptrs: Vec<*const u8> = owned.iter().map(|c| c.as_ptr() as *const u8).collect();
        ptrs.push(core::ptr::null());
        (owned, ptrs)
    }

    fn bundle(args: &[&str]) -> Option<Option<String>> {
        let (_owned, ptrs) = cstrings(args);
        // SAFETY: argc C strings and a NULL.
        let got = unsafe { bundle_of(args.len(), ptrs.as_ptr()) }?;
        Some((!got.is_null()).then(|| {
            // SAFETY: a C string of `_owned`.
            unsafe { std::ffi::CStr::from_ptr(got.cast()) }
                .to_string_lossy()
                .into_owned()
        }))
    }

    #[test]
    fn the_bundle_is_found_in_every_spelling() {
        let some = |s: &str| Some(Some(s.to_string()));
        assert_eq!(bundle(&["rt", "run", "-b", "/b", "id"]), some("/b"));
        assert_eq!(
            bundle(&["rt", "--root", "run", "create", "--bundle", "/b", "id"]),
            some("/b")
        );
        assert_eq!(bundle(&["rt", "create", "id", "--bundle=/b"]), some("/b"));
        assert_eq!(bundle(&["rt", "run", "-bundle", "/b", "id"]), some("/b"));
        assert_eq!(bundle(&["rt", "run", "-b/b", "id"]), some("/b"));
        assert_eq!(bundle(&["rt", "run", "-bundle=/b", "id"]), some("/b"));
        assert_eq!(bundle(&["rt", "run", "-b=/b", "id"]), some("/b"));
        assert_eq!(
            bundle(&["rt", "--root=/r", "run", "id", "-b", "/b"]),
            some("/b")
        );
        assert_eq!(bundle(&["rt", "--debug", "run", "id"]), Some(None));
        // Not run or create; rootless; the VM; a flag without its value.
        assert_eq!(bundle(&["rt", "exec", "id", "true"]), None);
        assert_eq!(bundle(&["rt", "--rootless", "true", "run", "id"]), None);
        assert_eq!(bundle(&["rt", "run", "--isolation", "vm", "id"]), None);
        assert_eq!(bundle(&["rt", "run", "--isolation=vm", "id"]), None);
        assert_eq!(bundle(&["rt", "run", "id", "-b"]), None);
        // After "--", nothing is a flag.
        assert_eq!(bundle(&["rt", "run", "--", "-b", "/b"]), Some(None));
    }

    /// The bundle's config.json is read whole; a FIFO in its place does not
    /// block (no writer: read as empty), a missing one is None.
    #[test]
    fn config_json_is_read_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let c = std::ffi::CString::new(dir.path().to_str().unwrap()).unwrap();
        // SAFETY: a C string. One test reads into CONFIG at a time.
        assert_eq!(unsafe { read_config(c.as_ptr().cast()) }, None);
        std::fs::write(dir.path().join("config.json"), "{\"x\": 1}").unwrap();
        // SAFETY: as above.
        assert_eq!(unsafe { read_config(c.as_ptr().cast()) }, Some(8));
        std::fs::remove_file(dir.path().join("config.json")).unwrap();
        nix::unistd::mkfifo(
            &dir.path().join("config.json"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        // SAFETY: as above.
        assert_eq!(unsafe { read_config(c.as_ptr().cast()) }, Some(0));
    }

    #[test]
    fn a_binary_named_for_the_vm_is_not_guessed_for() {
        for (name, vm) in [
            ("rt", false),
            ("/usr/bin/rt-vm", true),
            ("rt-vm", true),
            ("vm", false),
        ] {
            let c = std::ffi::CString::new(name).unwrap();
            // SAFETY: a C string.
            assert_eq!(unsafe { named_for_vm(c.as_ptr().cast()) }, vm, "{name}");
        }
    }
}
