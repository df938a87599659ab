//! The two bpf(2) commands rt needs: loading a `BPF_PROG_TYPE_CGROUP_DEVICE`
//! program and attaching it to a cgroup2 directory. The program itself is
//! built by `rt-cgroups` from device rules; this module only passes it on.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

use crate::{Error, Result};

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// Destination register in the low nibble, source in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The `BPF_PROG_LOAD` member of `union bpf_attr`, padded to a size every
/// kernel since 4.15 accepts (the kernel requires the unused tail be zero).
#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    _tail: [u8; 64],
}

/// The `BPF_PROG_ATTACH` member of `union bpf_attr`.
#[repr(C)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// Loads a cgroup device program. On a verifier rejection the kernel's log is
/// returned in the error.
pub fn load_device_program(insns: &[Insn]) -> std::result::Result<OwnedFd, (Errno, String)> {
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 64 * 1024];
    let mut name = [0u8; 16];
    name[..9].copy_from_slice(b"rt_device");
    let attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        _tail: [0; 64],
    };
    // SAFETY: `attr` is a fully initialised bpf_attr prefix whose pointers
    // (instructions, license, log buffer) stay valid for the duration of the
    // call; the kernel writes at most `log_size` bytes into `log`.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoad,
            std::mem::size_of::<ProgLoad>(),
        )
    };
    if fd < 0 {
        let errno = Errno::last();
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        return Err((errno, String::from_utf8_lossy(&log[..end]).into_owned()));
    }
    // SAFETY: BPF_PROG_LOAD returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attaches a device program to a cgroup2 directory, beside any programs
/// already attached (BPF_F_ALLOW_MULTI: all of them must allow an access).
/// The attachment holds its own reference to the program, so `prog` may be
/// closed afterwards; the program goes when the cgroup does.
pub fn attach_device_program(cgroup: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> Result<()> {
    let attr = ProgAttach {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    // SAFETY: `attr` is a fully initialised BPF_PROG_ATTACH attribute naming
    // two descriptors that the borrows keep open for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attr as *const ProgAttach,
            std::mem::size_of::<ProgAttach>(),
        )
    };
    if rc < 0 {
        return Err(Error::Syscall("bpf(BPF_PROG_ATTACH)", Errno::last()));
    }
    Ok(())
}
