//! Host memory QEMU keeps and a running rt VM never uses again.
//!
//! QEMU maps the guest's kernel image and initramfs and keeps both mapped
//! for a reset, to copy them into guest memory again. rt's VMs run with
//! `-no-reboot`, so after the boot no reset ever comes: the pages only
//! count against the container (13.7 MB for rt's kernel, 1.7 MB for its
//! initramfs). Once the agent has answered, the supervisor asks the kernel
//! to reclaim them (`process_madvise(MADV_PAGEOUT)`). They are clean file
//! pages: should QEMU read them after all, they are read in again from the
//! same files (the mapping holds the inode), so this changes what is
//! resident, never what QEMU sees.

use std::error::Error as _;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::unistd::Pid;

/// The address ranges (start, length) of `maps` (the text of
/// /proc/PID/maps) that map one of `files`.
fn ranges_of(maps: &str, files: &[PathBuf]) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            // start-end perms offset dev inode path (the path may hold spaces)
            let mut fields = line.splitn(6, ' ');
            let range = fields.next()?;
            let path = fields.nth(4)?.trim_start();
            if !files.iter().any(|f| f.as_os_str() == path) {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            Some((start, end.checked_sub(start)?))
        })
        .collect()
}

/// Asks the kernel to reclaim `qemu`'s mappings of `files` (the kernel and
/// initramfs it booted). Best effort: a host without process_madvise, or a
/// supervisor without CAP_SYS_NICE (rootless), leaves them resident; the
/// VM is the same either way. Returns the bytes advised.
pub(super) fn release_boot_images(qemu: u32, files: &[&Path]) -> usize {
    let files: Vec<PathBuf> = files
        .iter()
        .filter_map(|f| std::fs::canonicalize(f).ok())
        .collect();
    let maps_path = format!("/proc/{qemu}/maps");
    let with_cause = |e: rt_sys::Error| match e.source() {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    };
    let result = std::fs::read_to_string(&maps_path)
        .map_err(|e| format!("reading {maps_path}: {e}"))
        .and_then(|maps| {
            let ranges = ranges_of(&maps, &files);
            let pidfd = rt_sys::pidfd_open(Pid::from_raw(qemu as i32)).map_err(with_cause)?;
            rt_sys::process_madvise(pidfd.as_fd(), &ranges, libc::MADV_PAGEOUT).map_err(with_cause)
        });
    match result {
        Ok(bytes) => {
            tracing::debug!(bytes, "QEMU's boot images paged out");
            bytes
        }
        Err(why) => {
            tracing::info!(why, "QEMU's boot images stay resident");
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_mapping_of_the_named_files_only() {
        let maps = "\
5581e000-5581f000 r--p 00000000 fe:01 123 /usr/bin/qemu-system-x86_64
7f0000000000-7f0001000000 rw-p 00200000 fe:01 77 /var/lib/rt/vm/kernel/k/boot/vmlinux-6.1
7f0001000000-7f0001200000 rw-p 01000000 fe:01 77 /var/lib/rt/vm/kernel/k/boot/vmlinux-6.1
7f0002000000-7f0002100000 r--p 00000000 fe:01 78 /var/lib/rt/vm/initrd/a b.cpio
7f0003000000-7f0003100000 rw-p 00000000 00:00 0 
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
";
        let files = [
            PathBuf::from("/var/lib/rt/vm/kernel/k/boot/vmlinux-6.1"),
            PathBuf::from("/var/lib/rt/vm/initrd/a b.cpio"),
        ];
        assert_eq!(
            ranges_of(maps, &files),
            [
                (0x7f0000000000, 0x1000000),
                (0x7f0001000000, 0x200000),
                (0x7f0002000000, 0x100000)
            ]
        );
        assert!(ranges_of(maps, &[PathBuf::from("/usr/bin/qemu")]).is_empty());
    }

    /// Resident KiB of `pid`'s mappings of `file` that are the file's own
    /// pages (Rss less the copies written on, which are anonymous).
    fn resident_kib(pid: u32, file: &Path) -> u64 {
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
        let mut ours = false;
        let mut kib = 0;
        for line in smaps.lines() {
            let mut words = line.split_whitespace();
            let first = words.next().unwrap_or("");
            let mut value = || words.next().and_then(|k| k.parse::<u64>().ok()).unwrap();
            match first {
                "Rss:" if ours => kib += value(),
                "Anonymous:" if ours => kib -= value(),
                _ if !first.ends_with(':') => {
                    ours = line
                        .split_whitespace()
                        .nth(5)
                        .is_some_and(|p| Path::new(p) == file)
                }
                _ => {}
            }
        }
        kib
    }

    /// Another process's text, in a file of its own (no page of it shared
    /// with another process), leaves memory.
    #[test]
    fn another_process_s_mapping_of_a_file_is_reclaimed() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: process_madvise on another process needs CAP_SYS_NICE (root)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("sleep");
        std::fs::copy("/bin/sleep", &copy).unwrap();
        // Written back, as a kernel image is: reclaim passes dirty pages by.
        std::fs::File::open(&copy).unwrap().sync_all().unwrap();
        let mut child = std::process::Command::new(&copy).arg("60").spawn().unwrap();
        let pid = child.id();
        let copy = std::fs::canonicalize(&copy).unwrap();
        // Once it sleeps (in clock_nanosleep, x86-64's call 230) it touches
        // no more of its text.
        for _ in 0..500 {
            let call = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
            if call.split_whitespace().next() == Some("230") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let before = resident_kib(pid, &copy);
        let advised = release_boot_images(pid, &[&copy]);
        let after = resident_kib(pid, &copy);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            before > 0 && advised > 0,
            "{before} KiB, {advised} bytes advised"
        );
        assert_eq!(after, 0, "{before} KiB before, {after} KiB after");
    }
}
