//! CVE-2019-5736: a container that can open `/proc/<pid>/exe` of an rt
//! process (the init before it execs the user's program, an exec stage) gets
//! the host's rt binary, and could rewrite it once rt exits. The commands
//! whose processes enter a container (`create`, `run`, `exec`) therefore
//! re-execute themselves from a sealed in-memory copy first: /proc/<pid>/exe
//! is then a memfd that no one can write (F_SEAL_WRITE and friends), and the
//! binary on disk is never the executable of a process a container can see.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStringExt;

use anyhow::Context;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

/// Whether `file` is a memfd sealed against writing.
fn is_sealed(file: &File) -> bool {
    fcntl(file.as_raw_fd(), FcntlArg::F_GET_SEALS)
        .is_ok_and(|s| SealFlag::from_bits_truncate(s).contains(SealFlag::F_SEAL_WRITE))
}

/// Re-executes the running binary from a sealed memfd copy, unless it already
/// runs from one. Returns only if that is already the case.
pub fn reexec_sealed() -> anyhow::Result<()> {
    let mut exe = File::open("/proc/self/exe").context("opening /proc/self/exe")?;
    if is_sealed(&exe) {
        return Ok(());
    }
    let memfd = memfd_create(
        c"rt",
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )
    .context("memfd_create")?;
    let mut copy = File::from(memfd);
    std::io::copy(&mut exe, &mut copy).context("copying /proc/self/exe to a memfd")?;
    let seals = SealFlag::F_SEAL_SEAL
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_WRITE;
    fcntl(copy.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals)).context("sealing the memfd")?;
    let cstrings = |v: Vec<Vec<u8>>| -> anyhow::Result<Vec<CString>> {
        v.into_iter()
            .map(|b| CString::new(b).context("NUL in an argument"))
            .collect()
    };
    let args = cstrings(std::env::args_os().map(|a| a.into_vec()).collect())?;
    let env = cstrings(
        std::env::vars_os()
            .map(|(k, v)| {
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend(v.into_vec());
                kv
            })
            .collect(),
    )?;
    let err = nix::unistd::fexecve(copy.as_raw_fd(), &args, &env).unwrap_err();
    Err(err).context("re-executing from the sealed copy")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_file_is_not_sealed() {
        let f = File::open("/proc/self/exe").unwrap();
        assert!(!is_sealed(&f));
        let memfd = memfd_create(c"t", MemFdCreateFlag::MFD_ALLOW_SEALING).unwrap();
        let m = File::from(memfd);
        assert!(!is_sealed(&m));
        fcntl(m.as_raw_fd(), FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_WRITE)).unwrap();
        assert!(is_sealed(&m));
    }
}
