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

/// With `rt_agent_trace=1` on the guest's kernel command line (the kernel
/// hands unknown `name=value` words to PID 1 as its environment;
/// `RT_VM_KERNEL_ARGS` adds them), the agent writes where its boot and each
/// request stand, with the guest's boot clock, to the console
/// (`console.log` in the container's state directory).
pub fn trace(what: &str) {
    if std::env::var_os("rt_agent_trace").is_none() {
        return;
    }
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
        .unwrap_or_default();
    eprintln!("rt-agent: [{t:.3}] {what}");
}

fn main() {
    if std::process::id() != 1 {
        eprintln!("rt-agent: runs only as the PID 1 of an rt microVM guest");
        std::process::exit(1);
    }
    let stage2 = std::env::args().nth(1).as_deref() == Some("stage2");
    trace(if stage2 { "stage 2" } else { "stage 1" });
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
