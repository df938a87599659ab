//! Docker as a caller: Debian's dockerd (20.10) started by the test with its
//! own data root, exec root, socket, containerd namespace and bridge (made
//! by the test, removed after it; no iptables rules and no ip_forward
//! change: published ports go through docker-proxy), and rt and rt-vm added with `--add-runtime`. Docker reaches rt through containerd's runc shim,
//! and puts zeros in every spec for the resources it does not set
//! (`blockIO.weight`, `cpu.shares`, ...): before rt read them as "unset",
//! every `docker run --runtime rt` failed on blkio.weight.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use std::sync::atomic::{AtomicU32, Ordering};

use rt_testsupport::{
    assert_guest_uname, eventually, need_root, output_via_files, rt_bin, shared_rootfs,
};

/// Debian's docker client: /usr/local/bin may hold a newer one.
const DOCKER: &str = "/usr/bin/docker";

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One dockerd at a time: two side by side (each with its own roots)
/// made libnetwork's prestart hook fail now and then ("no such file or
/// directory").
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Dockerd {
    /// Held for the daemon's life (released after `drop` stopped it).
    _turn: std::sync::MutexGuard<'static, ()>,
    dir: tempfile::TempDir,
    child: std::process::Child,
    /// Its bridge, made by the test.
    bridge: String,
    /// The parent of the containers' cgroups: this daemon's alone.
    cgroup_parent: String,
}

impl Dockerd {
    /// A started dockerd with no bridge and no firewall rules of its own, and
    /// the busybox rootfs imported as rt-busybox:latest.
    fn start() -> Dockerd {
        assert!(
            Path::new("/usr/sbin/dockerd").exists(),
            "dockerd missing: integration/install-deps installs docker.io"
        );
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::Builder::new()
            .prefix("rt-docker-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let cgroup_parent = format!("rt-docker-{}-{n}", std::process::id());
        let bridge = format!("rtdk{}{n}", std::process::id() % 100_000);
        let made = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "ip link add {bridge} type bridge && ip addr add 10.236.{n}.1/24 dev {bridge} && ip link set {bridge} up"
                ),
            ])
            .status()
            .unwrap();
        assert!(made.success(), "making bridge {bridge}");
        let links = d.join("bin");
        std::fs::create_dir(&links).unwrap();
        std::os::unix::fs::symlink(rt_bin(), links.join("rt-vm")).unwrap();
        let log = std::fs::File::create(d.join("dockerd.log")).unwrap();
        let child = Command::new("/usr/sbin/dockerd")
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", d.join("docker.sock").display()))
            .arg(format!("--bridge={bridge}"))
            // No rules, and the host's ip_forward left as it is.
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
            ])
            .args([
                "--ip-masq=false",
                "--exec-opt",
                "native.cgroupdriver=cgroupfs",
            ])
            .args([
                "--containerd-namespace",
                &format!("rt-test-{}", std::process::id()),
            ])
            .args(["--cgroup-parent", &format!("/{cgroup_parent}")])
            .arg("--add-runtime")
            .arg(format!("rt={}", rt_bin().display()))
            .arg("--add-runtime")
            .arg(format!("rt-vm={}", links.join("rt-vm").display()))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting dockerd");
        let docker = Dockerd {
            _turn: turn,
            dir,
            child,
            bridge,
            cgroup_parent,
        };
        assert!(
            eventually(30, || docker.run(&["version"]).status.success()),
            "dockerd did not start: {}",
            docker.log()
        );
        let tar = docker.dir.path().join("rootfs.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(shared_rootfs())
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success());
        let out = docker.run(&["import", tar.to_str().unwrap(), "rt-busybox:latest"]);
        assert!(out.status.success(), "docker import: {}", text(&out));
        docker
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(DOCKER);
        c.arg("-H").arg(format!(
            "unix://{}",
            self.dir.path().join("docker.sock").display()
        ));
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        output_via_files(self.cmd().args(args))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// The state root the runc shim gives rt.
    fn rt_root(&self) -> PathBuf {
        self.dir
            .path()
            .join("exec/runtime-runc")
            .join(format!("rt-test-{}", std::process::id()))
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        for c in ["c1", "web", "v1"] {
            let _ = self.run(&["rm", "--force", "--volumes", c]);
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        // dockerd stops its containerd and shims on the way out.
        if !eventually(20, || matches!(self.child.try_wait(), Ok(Some(_)))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut targets: Vec<PathBuf> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .map(PathBuf::from)
            .filter(|p| p.starts_with(self.dir.path()))
            .collect();
        targets.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        for t in targets {
            let _ = nix::mount::umount2(&t, nix::mount::MntFlags::MNT_DETACH);
        }
        for dir in rt_testsupport::cgroup_dirs_named(&self.cgroup_parent) {
            let _ = std::fs::remove_dir(dir);
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

#[test]
fn docker_runs_with_rt() {
    need_root!();
    let docker = Dockerd::start();
    let img = "rt-busybox:latest";
    // Output and exit code.
    let out = docker.run(&[
        "run",
        "--rm",
        "--runtime",
        "rt",
        "--network",
        "none",
        img,
        "sh",
        "-c",
        "echo hello from docker; exit 3",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}\n{}",
        text(&out),
        docker.log()
    );
    assert!(text(&out).contains("hello from docker"), "{}", text(&out));

    // A detached container with a memory limit, exec into it.
    let out = docker.run(&[
        "run",
        "-d",
        "--runtime",
        "rt",
        "--network",
        "none",
        "--memory",
        "64m",
        "--name",
        "c1",
        img,
        "sleep",
        "1000",
    ]);
    assert!(out.status.success(), "{}\n{}", text(&out), docker.log());
    let pid = String::from_utf8_lossy(
        &docker
            .run(&["inspect", "-f", "{{.State.Pid}}", "c1"])
            .stdout,
    )
    .trim()
    .to_string();
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let mem = cgroup
        .lines()
        .find_map(|l| {
            l.strip_prefix(|c: char| c.is_ascii_digit()).and_then(|l| {
                l.trim_start_matches(|c: char| c.is_ascii_digit())
                    .strip_prefix(":memory:")
            })
        })
        .expect("memory cgroup");
    let limit =
        std::fs::read_to_string(format!("/sys/fs/cgroup/memory{mem}/memory.limit_in_bytes"))
            .unwrap();
    assert_eq!(limit.trim(), (64u64 << 20).to_string());
    let out = docker.run(&["exec", "c1", "sh", "-c", "echo in c1; exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    assert!(text(&out).contains("in c1"));
    // The container is rt's: its state is under the shim's root for rt.
    let listed = output_via_files(
        Command::new(rt_bin())
            .arg("--root")
            .arg(docker.rt_root())
            .args(["list", "-q"]),
    );
    assert!(
        String::from_utf8_lossy(&listed.stdout).lines().count() == 1,
        "{}",
        text(&listed)
    );

    // -it: a pty from rt through the console socket, behind `script`'s own.
    let sock = docker.dir.path().join("docker.sock");
    let line = format!(
        "{DOCKER} -H unix://{} run --rm -it --runtime rt --network none {img} sh -c 'tty; exit 5'",
        sock.display()
    );
    let out = output_via_files(Command::new("script").args(["-qec", &line, "/dev/null"]));
    assert!(text(&out).contains("/dev/pts/"), "{}", text(&out));
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));

    // stop (TERM, then KILL after 1 s: sleep as pid 1 ignores TERM) and rm.
    let out = docker.run(&["stop", "-t", "1", "c1"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = docker.run(&["rm", "c1"]);
    assert!(out.status.success(), "{}", text(&out));
    let listed = output_via_files(
        Command::new(rt_bin())
            .arg("--root")
            .arg(docker.rt_root())
            .args(["list", "-q"]),
    );
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "");
}

/// `-p` on docker's bridge network: docker-proxy on the host port, the
/// container's veth (set up by dockerd's prestart hook, which rt runs) on
/// the bridge.
#[test]
fn docker_publishes_a_port_of_an_rt_container() {
    need_root!();
    let docker = Dockerd::start();
    let out = docker.run(&[
        "run",
        "-d",
        "--runtime",
        "rt",
        "-p",
        "127.0.0.1:18097:80",
        "--name",
        "web",
        "rt-busybox:latest",
        "sh",
        "-c",
        "echo docker-web > /tmp/index.html && exec httpd -f -p 80 -h /tmp",
    ]);
    assert!(out.status.success(), "{}\n{}", text(&out), docker.log());
    assert!(
        eventually(20, || rt_integration::net::http_get("127.0.0.1:18097")
            .is_some_and(|b| b.contains("docker-web"))),
        "{:?}\n{}",
        rt_integration::net::http_get("127.0.0.1:18097"),
        docker.log()
    );
    let out = docker.run(&["rm", "--force", "web"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(rt_integration::net::http_get("127.0.0.1:18097").is_none());
}

/// `--runtime rt-vm`: the same docker commands, the container in a VM.
#[test]
fn docker_runs_vm_containers_with_rt_vm() {
    need_root!();
    let docker = Dockerd::start();
    let img = "rt-busybox:latest";
    let out = docker.run(&[
        "run",
        "--rm",
        "--runtime",
        "rt-vm",
        "--network",
        "none",
        img,
        "sh",
        "-c",
        "uname -r; exit 3",
    ]);
    assert_guest_uname(&out, 3);
    let out = docker.run(&[
        "run",
        "-d",
        "--runtime",
        "rt-vm",
        "--network",
        "none",
        "--memory",
        "128m",
        "--name",
        "v1",
        img,
        "sleep",
        "1000",
    ]);
    assert!(out.status.success(), "{}\n{}", text(&out), docker.log());
    let out = docker.run(&[
        "exec",
        "v1",
        "sh",
        "-c",
        "cat /sys/fs/cgroup/memory.max; exit 4",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (128u64 << 20).to_string()
    );
    let sock = docker.dir.path().join("docker.sock");
    let line = format!(
        "{DOCKER} -H unix://{} run --rm -it --runtime rt-vm --network none {img} sh -c 'tty; exit 5'",
        sock.display()
    );
    let out = output_via_files(Command::new("script").args(["-qec", &line, "/dev/null"]));
    assert!(text(&out).contains("/dev/pts/"), "{}", text(&out));
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let out = docker.run(&["stop", "-t", "1", "v1"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = docker.run(&["rm", "v1"]);
    assert!(out.status.success(), "{}", text(&out));
}
