//! `rt-agent`: PID 1 of an rt microVM guest.
//!
//! It brings the guest up (`boot`), then serves the host's requests on the
//! virtio-serial port `rt.agent` (`serve`). It is a thin caller of rt: every
//! container operation — create, start, kill, exec, ps, pause, resume,
//! update — runs the guest's copy of the `rt` binary (/bin/rt, the same
//! build as the host's), so the spec validation, rootfs, namespaces, cgroup
//! v2 limits, seccomp, capabilities and hooks inside the guest are rt's own
//! code and nothing here re-implements them. The agent relays stdio and
//! reaps: as PID 1 every orphan becomes its child (`reaper`).

mod boot;
mod reaper;
mod serve;

fn main() {
    if std::process::id() != 1 {
        eprintln!("rt-agent: runs only as the PID 1 of an rt microVM guest");
        std::process::exit(1);
    }
    let stage2 = std::env::args().nth(1).as_deref() == Some("stage2");
    let result = if stage2 {
        boot::stage2().and_then(serve::serve)
    } else {
        boot::stage1()
    };
    // PID 1 must not exit (the kernel panics): report and power off.
    if let Err(e) = result {
        eprintln!("rt-agent: {e:#}");
    }
    boot::power_off();
}
