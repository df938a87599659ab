//! Checkpoint, restore and live migration of VM containers, for real under
//! TCG: a counter in the guest's memory must continue from where it was.
//! Timeouts are sized for a loaded 2-core TCG host.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rt_integration::net::processes_naming;
use rt_integration::podman::{text, Manager, Podman};
use rt_testsupport::{eventually, need_root, unique_id, Bundle, Root};
use serde_json::{json, Value};

/// A VM bundle on the block transport whose workload counts in memory,
/// one line every 0.2 s, and exits 5 on TERM.
fn counter_bundle() -> Bundle {
    let mut b = Bundle::new(&[
        "sh",
        "-c",
        "trap 'echo term at $i; exit 5' TERM; i=0; \
         while true; do i=$((i+1)); echo n=$i; sleep 0.2; done",
    ]);
    b.edit(|c| {
        c["annotations"] = json!({
            "run.rt.isolation": "vm",
            "run.rt.vm.rootfs": "block",
            "run.rt.vm.memory": "192",
        });
    });
    b
}

/// The counter values in a log, in order.
fn counts(log: &Path) -> Vec<u64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("n=")?.parse().ok())
        .collect()
}

fn last_count(log: &Path) -> u64 {
    counts(log).last().copied().unwrap_or(0)
}

/// Waits until the log's counter passed `n`.
fn counts_past(log: &Path, n: u64, secs: u64) -> bool {
    eventually(secs, || last_count(log) > n)
}

/// `rt create` + `start` with the workload's output in `log`.
fn start_counter(root: &Root, b: &Bundle, id: &str, log: &Path) {
    let out = std::fs::File::create(log).unwrap();
    let st = root
        .cmd()
        .args(["create", "--bundle", b.path().to_str().unwrap(), id])
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .status()
        .unwrap();
    assert!(st.success(), "{}", std::fs::read_to_string(log).unwrap());
    root.ok(&["start", id]);
}

/// A counter container started in `root` (its id, a scratch directory and
/// its output's log), once it has counted past 3.
fn counting(root: &Root, b: &Bundle, tag: &str) -> (String, tempfile::TempDir, PathBuf) {
    let id = unique_id(tag);
    let files = tempfile::tempdir().unwrap();
    let log = files.path().join("first.log");
    start_counter(root, b, &id, &log);
    assert!(counts_past(&log, 3, 90), "{:?}", counts(&log));
    (id, files, log)
}

/// `rt restore -d --image-path IMAGE --bundle B ID` in `root`.
fn restore_detached(root: &Root, image: &Path, b: &Bundle, id: &str) -> std::process::Output {
    root.rt(&[
        "restore",
        "-d",
        "--image-path",
        image.to_str().unwrap(),
        "--bundle",
        b.path().to_str().unwrap(),
        id,
    ])
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn checkpoint_and_restore_continue_a_counter_in_another_root() {
    need_root!();
    let root = Root::new();
    let root2 = Root::new();
    let b = counter_bundle();
    let (id, files, log1) = counting(&root, &b, "ckpt");

    // --leave-running: the counter goes on in the same VM.
    let kept = files.path().join("kept");
    let out = root.rt(&[
        "checkpoint",
        "--leave-running",
        "--image-path",
        kept.to_str().unwrap(),
        &id,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(root.status(&id), "running");
    for f in [
        "inventory.img",
        "rt-checkpoint.json",
        "vm.state",
        "rootfs.img",
    ] {
        assert!(kept.join(f).is_file(), "{f} missing from the image");
    }
    let n = last_count(&log1);
    assert!(
        counts_past(&log1, n + 2, 30),
        "the counter stopped after --leave-running"
    );

    // A checkpoint that stops it; the counter's last value is N.
    let image = files.path().join("image");
    let out = root.rt(&["checkpoint", "--image-path", image.to_str().unwrap(), &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        eventually(30, || root.status(&id) == "stopped"),
        "{}",
        root.status(&id)
    );
    let seen = counts(&log1);
    let last = *seen.last().unwrap();
    // Consecutive: nothing lost while quiesced.
    assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "{seen:?}");

    // Restore under a new id in another state root: the counter continues
    // from N + 1, in the new supervisor's stdio.
    let id2 = unique_id("rest");
    let log2 = files.path().join("second.log");
    let out2 = std::fs::File::create(&log2).unwrap();
    let pid_file = files.path().join("restored.pid");
    let st = root2
        .cmd()
        .args(["restore", "--detach", "--image-path"])
        .arg(&image)
        .args(["--bundle", b.path().to_str().unwrap(), "--pid-file"])
        .arg(&pid_file)
        .arg(&id2)
        .stdin(Stdio::null())
        .stdout(out2.try_clone().unwrap())
        .stderr(out2)
        .status()
        .unwrap();
    assert!(st.success(), "{}", std::fs::read_to_string(&log2).unwrap());
    let state: Value = serde_json::from_str(&root2.ok(&["state", &id2])).unwrap();
    assert_eq!(state["status"], "running");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap(),
        state["pid"].to_string()
    );
    assert!(counts_past(&log2, last + 3, 60), "{:?}", counts(&log2));
    assert_eq!(
        counts(&log2).first().copied(),
        Some(last + 1),
        "the counter did not continue from {last}: {}",
        std::fs::read_to_string(&log2).unwrap()
    );

    // Restoring onto an id that exists is refused, and changes nothing.
    let out = restore_detached(&root2, &image, &b, &id2);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert_eq!(root2.status(&id2), "running");

    root2.ok(&["kill", &id2, "TERM"]);
    assert!(eventually(30, || root2.status(&id2) == "stopped"));
    root2.ok(&["delete", &id2]);
    root.ok(&["delete", &id]);

    // The same image restores again, in the foreground: rt restore waits
    // and exits with the workload's status (5 after TERM).
    let id3 = unique_id("fore");
    let mut fg = root2
        .cmd()
        .args(["restore", "--image-path"])
        .arg(&image)
        .args(["--bundle", b.path().to_str().unwrap(), &id3])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        eventually(90, || root2.rt(&["state", &id3]).status.success()
            && root2.status(&id3) == "running"),
        "the foreground restore did not come up"
    );
    // TERM only once the restored counter has printed: a checkpoint taken
    // between its increment and its echo would otherwise meet the trap
    // before any line.
    let (lines, seen) = std::sync::mpsc::channel();
    let reader = {
        let out = fg.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut text = String::new();
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = lines.send(());
                text.push_str(&line);
                text.push('\n');
            }
            text
        })
    };
    assert!(
        seen.recv_timeout(Duration::from_secs(60)).is_ok(),
        "the restored counter printed nothing"
    );
    root2.ok(&["kill", &id3, "TERM"]);
    let (status, ended) = wait_at_most(&mut fg, 60);
    assert!(ended, "rt restore did not end");
    let out = fg.wait_with_output().unwrap();
    let text = reader.join().unwrap();
    assert_eq!(status.code(), Some(5), "{text}{}", stderr(&out));
    assert!(text.contains("term at"), "{text}");
    assert!(
        text.lines()
            .next()
            .unwrap_or("")
            .starts_with(&format!("n={}", last + 1)),
        "{text}"
    );
    rt_integration::net::assert_root_clean(&root, &[&id]);
    rt_integration::net::assert_root_clean(&root2, &[&id2, &id3]);
}

#[test]
fn bad_images_and_unsupported_checkpoints_are_refused_and_leave_nothing() {
    need_root!();
    let root = Root::new();
    let b = counter_bundle();
    let files = tempfile::tempdir().unwrap();
    // A missing image, a corrupt one, one of another format.
    let missing = files.path().join("none");
    let out = restore_detached(&root, &missing, &b, "x1");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no inventory.img"),
        "{}",
        stderr(&out)
    );
    let corrupt = files.path().join("corrupt");
    std::fs::create_dir(&corrupt).unwrap();
    std::fs::write(corrupt.join("inventory.img"), "{}").unwrap();
    std::fs::write(
        corrupt.join("rt-checkpoint.json"),
        "{\"format\": 1, \"cpus\": ",
    )
    .unwrap();
    let out = restore_detached(&root, &corrupt, &b, "x2");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("rt-checkpoint.json"),
        "{}",
        stderr(&out)
    );
    std::fs::write(corrupt.join("rt-checkpoint.json"), "{\"format\": 7}").unwrap();
    let out = restore_detached(&root, &corrupt, &b, "x3");
    assert!(stderr(&out).contains("format is 7"), "{}", stderr(&out));
    // An image whose saved state is gone: the VM cannot load; nothing left.
    let id = unique_id("bad");
    let log = files.path().join("log");
    start_counter(&root, &b, &id, &log);
    let image = files.path().join("image");
    let out = root.rt(&[
        "checkpoint",
        "--leave-running",
        "--image-path",
        image.to_str().unwrap(),
        &id,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The image directory holds a checkpoint already: refused.
    let out = root.rt(&["checkpoint", "--image-path", image.to_str().unwrap(), &id]);
    assert!(
        stderr(&out).contains("already holds a checkpoint"),
        "{}",
        stderr(&out)
    );
    std::fs::write(image.join("vm.state"), b"QEVM garbage").unwrap();
    let root2 = Root::new();
    let out = restore_detached(&root2, &image, &b, "x4");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("QEMU exited"), "{}", stderr(&out));
    rt_integration::net::assert_root_clean(&root2, &["x4"]);
    // Options a VM save cannot honour, by name.
    let out = root.rt(&["checkpoint", "--pre-dump", "--image-path", "/tmp/x", &id]);
    assert!(
        stderr(&out).contains("checkpoint --pre-dump is not supported by the vm backend"),
        "{}",
        stderr(&out)
    );
    assert_eq!(root.status(&id), "running");
    root.ok(&["delete", "--force", &id]);

    // The share transport cannot be saved: refused, the VM runs on.
    let mut share = Bundle::new(&["sh", "-c", "echo up; sleep 600"]);
    share.edit(|c| c["annotations"] = json!({"run.rt.isolation": "vm"}));
    let sid = unique_id("share");
    start_counter(&root, &share, &sid, &files.path().join("share.log"));
    let out = root.rt(&[
        "checkpoint",
        "--image-path",
        files.path().join("s").to_str().unwrap(),
        &sid,
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("run.rt.vm.rootfs=block"),
        "{}",
        stderr(&out)
    );
    assert_eq!(root.status(&sid), "running");
    root.ok(&["delete", "--force", &sid]);

    // A namespace container: CRIU decides, and its reason is given.
    let ns = Bundle::new(&["sleep", "600"]);
    let nid = unique_id("nsck");
    root.ok(&["run", "-d", "--bundle", ns.path().to_str().unwrap(), &nid]);
    let out = root.rt(&[
        "checkpoint",
        "--image-path",
        files.path().join("n").to_str().unwrap(),
        &nid,
    ]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("criu check failed") || e.contains("CRIU"), "{e}");
    assert_eq!(root.status(&nid), "running");
    root.ok(&["delete", "--force", &nid]);
    rt_integration::net::assert_root_clean(&root, &[&id, &sid, &nid]);

    let help = root.rt(&["checkpoint", "--help"]);
    assert!(help.status.success());
}

/// `rt migrate --to TO ID` from `from`: its stdout (its report, then the
/// destination workload's output, its supervisor having migrate's stdio)
/// into `out`, its stderr into `err`.
fn migrate_to(
    from: &Root,
    to: &Root,
    id: &str,
    out: std::fs::File,
    err: std::fs::File,
) -> std::process::ExitStatus {
    from.cmd()
        .args(["migrate", "--to"])
        .arg(to.dir.path())
        .arg(id)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .unwrap()
}

#[test]
fn live_migration_to_another_root_keeps_the_counter_running() {
    need_root!();
    let root = Root::new();
    let root2 = Root::new();
    let b = counter_bundle();
    let (id, files, log1) = counting(&root, &b, "mig");
    let log2 = files.path().join("dest.log");
    let out2 = std::fs::File::create(&log2).unwrap();
    let report = files.path().join("report.json");
    let st = migrate_to(
        &root,
        &root2,
        &id,
        std::fs::File::create(&report).unwrap(),
        out2,
    );
    // migrate's stdout holds its report, and the workload's output from
    // the destination on (its supervisor has migrate's stdio).
    let report_text = std::fs::read_to_string(&report).unwrap();
    assert!(st.success(), "{}", std::fs::read_to_string(&log2).unwrap());
    let json_line = report_text
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or("");
    let figures: Value = serde_json::from_str(json_line).unwrap();
    assert!(figures["downtime_ms"].as_u64().is_some(), "{figures}");
    assert!(figures["total_ms"].as_u64().is_some(), "{figures}");
    eprintln!("migration: {figures}");
    // The source is gone; the destination runs under the same id.
    moved_and_counting(&root, &root2, &id, &log1, &report);
}

/// Lines of `text` that start with `prefix`.
fn lines_with<'a>(text: &'a str, prefix: &'a str) -> impl Iterator<Item = &'a str> {
    text.lines().filter(move |l| l.starts_with(prefix))
}

/// Every write the guest makes reaches the destination, however hot its
/// page. QEMU 7.2's bitmap sync under TCG cleared dirty bits without
/// re-arming the TLB, so a page written before the sync took writes that no
/// later pass sent, until the guest happened to flush its TLB
/// (runtime/vm/qemu/patches/tcg-migration-dirty-tracking.patch): a guest
/// kernel oopsed on stale slab pages after about one live migration in 150.
/// memstress rewrites 256 pages pass after pass and checks that each holds
/// the previous pass. The loss depends on a race in QEMU (whether the vCPU
/// had flushed its TLB for the migration's start before the first sync), so
/// the VM moves back and forth ten times.
#[test]
fn live_migration_carries_every_guest_write() {
    const HOPS: usize = 10;
    need_root!();
    let helper = tempfile::tempdir().unwrap();
    let memstress = rt_integration::helpers::build("memstress", helper.path());
    let roots = [Root::new(), Root::new()];
    let mut b = counter_bundle();
    b.edit(|c| {
        c["process"]["args"] = json!(["/memstress", "256"]);
        c["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/memstress", "type": "bind",
            "source": memstress, "options": ["bind", "ro"]}));
    });
    let id = unique_id("memmig");
    let files = tempfile::tempdir().unwrap();
    let mut logs = vec![files.path().join("0.log")];
    start_counter(&roots[0], &b, &id, &logs[0]);
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    // Passes the workload printed into `log`, or a stale page it found.
    let went_on = |log: &Path| {
        eventually(90, || {
            let t = read(log);
            lines_with(&t, "pass ").count() >= 3 || lines_with(&t, "lost write").next().is_some()
        })
    };
    let mut failure = None;
    if !went_on(&logs[0]) {
        failure = Some(format!("memstress did not run: {}", read(&logs[0])));
    }
    for hop in 1..=HOPS {
        if failure.is_some() {
            break;
        }
        let (from, to) = (&roots[(hop + 1) % 2], &roots[hop % 2]);
        // The destination's workload writes to migrate's stdout.
        let log = files.path().join(format!("{hop}.log"));
        let err = files.path().join(format!("{hop}.err"));
        let st = migrate_to(
            from,
            to,
            &id,
            std::fs::File::create(&log).unwrap(),
            std::fs::File::create(&err).unwrap(),
        );
        if !st.success() {
            failure = Some(format!("migration {hop}: {}", read(&err)));
        } else if !went_on(&log) {
            failure = Some(format!("no pass after migration {hop}: {}", read(&log)));
        }
        logs.push(log);
    }
    for root in &roots {
        let _ = root.rt(&["delete", "--force", &id]);
    }
    if let Some(f) = failure {
        panic!("{f}");
    }
    let texts: Vec<String> = logs.iter().map(|l| read(l)).collect();
    let lost: Vec<&str> = texts
        .iter()
        .flat_map(|t| lines_with(t, "lost write"))
        .collect();
    assert!(lost.is_empty(), "{lost:?}");
    for root in &roots {
        rt_integration::net::assert_root_clean(root, &[&id]);
    }
}

/// A migration whose source fails before its QEMU connects (here: the
/// source's monitor socket is gone) ends with an error, the source still
/// running, and nothing left in the destination root. Before the fix the
/// destination's QEMU waited for the stream for ever, and `rt migrate`
/// waited for the destination.
#[test]
fn a_source_that_fails_to_send_leaves_the_destination_clean() {
    need_root!();
    let root = Root::new();
    let root2 = Root::new();
    let b = counter_bundle();
    let (id, files, log1) = counting(&root, &b, "migfail");
    std::fs::remove_file(root.dir.path().join(&id).join("qmp.sock")).unwrap();
    let log2 = files.path().join("dest.log");
    let mut child = root
        .cmd()
        .args(["migrate", "--to"])
        .arg(root2.dir.path())
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log2).unwrap())
        .spawn()
        .unwrap();
    let (status, in_time) = wait_at_most(&mut child, 180);
    let status = in_time.then_some(status);
    let err = std::fs::read_to_string(&log2).unwrap();
    let dest_procs = processes_naming(root2.dir.path());
    let dest_left: Vec<_> = std::fs::read_dir(root2.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let before = last_count(&log1);
    let source_counts = counts_past(&log1, before + 2, 60);
    root.ok(&["delete", "--force", &id]);
    // Whatever this run left, so that a failure does not leak it.
    let _ = root2.rt(&["delete", "--force", &id]);
    let status = status.expect("rt migrate still waiting after 180 s");
    assert!(!status.success(), "the migration succeeded: {err}");
    assert!(
        err.contains("the source resumed") || err.contains("qmp"),
        "{err}"
    );
    assert!(source_counts, "the source stopped counting at {before}");
    assert!(
        dest_procs.is_empty(),
        "left in the destination: {dest_procs:?}"
    );
    assert!(
        dest_left.is_empty(),
        "left in the destination root: {dest_left:?}"
    );
    rt_integration::net::assert_root_clean(&root, &[&id]);
}

/// After a migration of counter `id` from `root` (its log `log1`) to
/// `root2` (its output in `log2`): the source is gone, the destination
/// runs and continues at exactly N+1; both roots clean after its delete.
fn moved_and_counting(root: &Root, root2: &Root, id: &str, log1: &Path, log2: &Path) {
    assert!(root.rt(&["state", id]).status.code() != Some(0));
    assert_eq!(root2.status(id), "running");
    let last = last_count(log1);
    let dest = || counts(log2);
    assert!(
        eventually(60, || dest().last().copied().unwrap_or(0) > last + 3),
        "{:?}",
        dest()
    );
    assert_eq!(
        dest().first().copied(),
        Some(last + 1),
        "{:?} after {last}",
        dest()
    );
    root2.ok(&["delete", "--force", id]);
    rt_integration::net::assert_root_clean(root, &[]);
    rt_integration::net::assert_root_clean(root2, &[id]);
}

/// `rt receive --listen tcp://127.0.0.1:0` in `root`, stdout into `out`
/// (its listening line, then the received container's output); the
/// process and the address it listens on.
fn receiver(root: &Root, out: &Path, extra: &[&str]) -> (std::process::Child, String) {
    let mut cmd = root.cmd();
    cmd.args(["receive", "--listen", "tcp://127.0.0.1:0"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(std::fs::File::create(out.with_extension("err")).unwrap());
    let child = cmd.spawn().unwrap();
    let listening = || {
        let text = std::fs::read_to_string(out).unwrap_or_default();
        let line = text.lines().next()?.to_string();
        let v: Value = serde_json::from_str(&line).ok()?;
        v["listening"].as_str().map(str::to_string)
    };
    assert!(
        eventually(30, || listening().is_some()),
        "the receiver never listened"
    );
    (child, listening().unwrap())
}

/// Waits for a receiver to exit (killing it after `secs`).
fn receiver_status(mut child: std::process::Child, secs: u64) -> std::process::ExitStatus {
    wait_at_most(&mut child, secs).0
}

/// `child`'s exit status within `secs` seconds (and true), or killed then
/// (and false).
fn wait_at_most(child: &mut std::process::Child, secs: u64) -> (std::process::ExitStatus, bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return (st, true);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return (child.wait().unwrap(), false);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn live_migration_over_tcp_to_a_receiver_keeps_the_counter_running() {
    need_root!();
    let root = Root::new();
    let root2 = Root::new();
    let b = counter_bundle();
    let (id, files, log1) = counting(&root, &b, "tcpmig");
    // A receiver whose destination cannot start (no such bundle): the
    // sender hears why, and the source was never stopped.
    let refused_log = files.path().join("refused.log");
    let (recv, addr) = receiver(&root2, &refused_log, &["--bundle", "/nonexistent-bundle"]);
    let to = format!("tcp://{addr}");
    let o = root.rt(&["migrate", "--to", &to, &id]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("refused the migration"),
        "{}",
        stderr(&o)
    );
    assert!(!receiver_status(recv, 60).success());
    assert_eq!(root.status(&id), "running");
    let before = last_count(&log1);
    assert!(
        counts_past(&log1, before + 2, 30),
        "the source stopped counting"
    );
    rt_integration::net::assert_root_clean(&root2, &[]);
    // The real one.
    let dest_log = files.path().join("dest.log");
    let (recv, addr) = receiver(&root2, &dest_log, &[]);
    let to = format!("tcp://{addr}");
    let o = root.rt(&["migrate", "--to", &to, &id]);
    let recv_err = || std::fs::read_to_string(dest_log.with_extension("err")).unwrap_or_default();
    assert!(
        o.status.success(),
        "{}\nreceiver: {}",
        stderr(&o),
        recv_err()
    );
    let figures: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(figures["downtime_ms"].as_u64().is_some(), "{figures}");
    eprintln!("tcp migration: {figures}");
    assert!(receiver_status(recv, 60).success(), "{}", recv_err());
    let received = std::fs::read_to_string(&dest_log).unwrap();
    assert!(
        received.contains(&format!("\"received\":\"{id}\"")),
        "{received}"
    );
    moved_and_counting(&root, &root2, &id, &log1, &dest_log);
}

#[test]
fn restore_keeps_the_network_identity_on_rts_own_network() {
    need_root!();
    use rt_integration::net::{attached, delete_and_check, exec_ok, http_get, ip_of, net_flags};
    let root = Root::new();
    let web = |more: Value| {
        let mut b = Bundle::new(&[
            "sh",
            "-c",
            "echo from-the-vm > /dev/shm/index.html && exec httpd -f -p 80 -h /dev/shm",
        ]);
        b.edit(|c| {
            c["annotations"] = json!({
                "run.rt.isolation": "vm",
                "run.rt.vm.rootfs": "block",
                "run.rt.vm.memory": "192",
            });
            for (k, v) in more.as_object().unwrap() {
                c["annotations"][k] = v.clone();
            }
        });
        b
    };
    let b = web(json!({}));
    // The network and the port come from flags: only rt's state has them.
    let id = unique_id("idnet");
    let mut args = vec!["run", "-d", "--bundle", b.path().to_str().unwrap()];
    args.extend(net_flags("nat", "rtt-m1", "10.231.71.0/24"));
    args.extend(["-p", "18097:80", &id]);
    root.ok(&args);
    let answers = |port: u16| {
        eventually(60, || {
            http_get(&format!("127.0.0.1:{port}")).is_some_and(|r| r.contains("from-the-vm"))
        })
    };
    assert!(answers(18097), "the VM never answered on 18097");
    let (ip, mac) = (ip_of(&root, &id), attached(&root, &id)["mac"].clone());
    let files = tempfile::tempdir().unwrap();
    let image = files.path().join("image");
    root.ok(&["checkpoint", "--image-path", image.to_str().unwrap(), &id]);
    root.ok(&["delete", &id]);
    // Restored from the bundle (no network annotations): the same network,
    // port, address and MAC.
    let id2 = unique_id("idnet2");
    let o = restore_detached(&root, &image, &b, &id2);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(ip_of(&root, &id2), ip);
    assert_eq!(attached(&root, &id2)["mac"], mac);
    assert!(answers(18097), "the restored VM never answered on 18097");
    // Restored again while that one runs: a new identity (the bundle's own
    // port wins), and the guest re-addressed to it.
    let b3 = web(json!({"run.rt.network.ports": "18098:80"}));
    let id3 = unique_id("idnet3");
    let o = restore_detached(&root, &image, &b3, &id3);
    assert!(o.status.success(), "{}", stderr(&o));
    let ip3 = ip_of(&root, &id3);
    assert_ne!(ip3, ip);
    assert_ne!(attached(&root, &id3)["mac"], mac);
    let guest = exec_ok(&root, &id3, "ip -o addr show eth0");
    assert!(guest.contains(&format!("inet {ip3}/")), "{guest}");
    assert!(answers(18098), "the second restore never answered on 18098");
    assert!(answers(18097), "the first restore stopped answering");
    delete_and_check(&root, &[id2, id3], &["rtt-m1"]);
    let left: Vec<_> = walk(&root.dir.path().join(".networks"));
    assert!(left.is_empty(), "network files left: {left:?}");
}

/// The files under `dir` (none when it does not exist).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// A directory with `rt-vm`, a link to rt.
fn rt_vm_link() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new().prefix("rt-vm-").tempdir().unwrap();
    let link = dir.path().join("rt-vm");
    std::os::unix::fs::symlink(rt_testsupport::rt_bin(), &link).unwrap();
    (dir, link)
}

/// The counter values in podman's log of `name`.
fn podman_counts(p: &Podman, name: &str) -> Vec<u64> {
    let out = p.run(&["logs", name]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("n=")?.parse().ok())
        .collect()
}

#[test]
fn podman_checkpoints_and_restores_a_vm_container_and_exports_it() {
    need_root!();
    let (_links, rt_vm) = rt_vm_link();
    let p = Podman::with_busybox_on(rt_vm, Manager::Cgroupfs);
    let image = "localhost/rt-busybox:latest";
    let out = p.run(&[
        "run",
        "-d",
        "--name",
        "rt-ckpt",
        "--network",
        "none",
        "--annotation",
        "run.rt.vm.rootfs=block",
        "--annotation",
        "run.rt.vm.memory=192",
        image,
        "sh",
        "-c",
        "i=0; while true; do i=$((i+1)); echo n=$i; sleep 0.2; done",
    ]);
    assert!(out.status.success(), "podman run: {}", text(&out));
    assert!(
        eventually(90, || podman_counts(&p, "rt-ckpt").len() > 3),
        "{:?}",
        podman_counts(&p, "rt-ckpt")
    );
    let out = p.run(&["container", "checkpoint", "rt-ckpt"]);
    assert!(out.status.success(), "podman checkpoint: {}", text(&out));
    let state = p.run(&["inspect", "--format", "{{.State.Status}}", "rt-ckpt"]);
    assert_eq!(String::from_utf8_lossy(&state.stdout).trim(), "exited");
    let before = podman_counts(&p, "rt-ckpt");
    let last = *before.last().unwrap();
    let out = p.run(&["container", "restore", "rt-ckpt"]);
    assert!(out.status.success(), "podman restore: {}", text(&out));
    assert!(
        eventually(60, || podman_counts(&p, "rt-ckpt")
            .last()
            .copied()
            .unwrap_or(0)
            > last + 2),
        "{:?}",
        podman_counts(&p, "rt-ckpt")
    );
    let after = podman_counts(&p, "rt-ckpt");
    assert_eq!(after[before.len()], last + 1, "{after:?}");

    // --export to a tarball, then --import it as a new container.
    let files = tempfile::tempdir().unwrap();
    let tarball = files.path().join("rt-ckpt.tar.gz");
    let out = p.run(&[
        "container",
        "checkpoint",
        "--export",
        tarball.to_str().unwrap(),
        "rt-ckpt",
    ]);
    assert!(
        out.status.success(),
        "podman checkpoint --export: {}",
        text(&out)
    );
    let exported = *podman_counts(&p, "rt-ckpt").last().unwrap();
    let out = p.run(&["rm", "rt-ckpt"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = p.run(&[
        "container",
        "restore",
        "--import",
        tarball.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "podman restore --import: {}",
        text(&out)
    );
    assert!(
        eventually(60, || podman_counts(&p, "rt-ckpt")
            .last()
            .copied()
            .unwrap_or(0)
            > exported + 2),
        "{:?}",
        podman_counts(&p, "rt-ckpt")
    );
    let out = p.run(&["stop", "-t", "1", "rt-ckpt"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = p.run(&["rm", "rt-ckpt"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        eventually(15, || processes_naming(p.dir.path()).is_empty()),
        "{:?}",
        processes_naming(p.dir.path())
    );
}

/// GET / with timeouts long enough for a loaded 2-core TCG host (a poll
/// in flight across the VM's stop waits for TCP's retransmission).
fn poll(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let to = Duration::from_secs(6);
    let mut s = std::net::TcpStream::connect_timeout(&addr.parse().ok()?, to).ok()?;
    s.set_read_timeout(Some(to)).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// A VM serving HTTP on the caller's network namespace (a veth to the
/// host, as CNI makes) moves to another root while a client polls it:
/// every poll is answered, during the copy, the switch and after the
/// source's delete (which must leave the destination's redirects).
#[test]
fn live_migration_keeps_answering_a_client_on_the_callers_network() {
    need_root!();
    let n = std::process::id() % 200 + 20;
    let host_if = format!("rtmig{n}");
    let ext = rt_integration::net::Ext::new(
        &host_if,
        Some(&format!("10.251.{n}.1/24")),
        &format!("10.251.{n}.2/24"),
        Some(&format!("10.251.{n}.1")),
    );
    let netns = format!("/proc/{}/ns/net", ext.holder.id());
    let root = Root::new();
    let root2 = Root::new();
    let mut b = counter_bundle();
    b.edit(|c| {
        c["process"]["args"] = json!(["sh", "-c",
            "mkdir -p /dev/shm/www && echo served > /dev/shm/www/index.html && httpd -p 80 -h /dev/shm/www; \
             i=0; while true; do i=$((i+1)); echo n=$i; sleep 0.2; done"]);
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        for entry in ns.iter_mut() {
            if entry["type"] == "network" {
                entry["path"] = json!(netns);
            }
        }
    });
    let id = unique_id("netmig");
    let files = tempfile::tempdir().unwrap();
    let log1 = files.path().join("source.log");
    start_counter(&root, &b, &id, &log1);
    let addr = format!("10.251.{n}.2:80");
    assert!(
        eventually(60, || rt_integration::net::http_get(&addr)
            .is_some_and(|r| r.contains("served"))),
        "the VM never answered on {addr}"
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let (stop, addr) = (stop.clone(), addr.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match poll(&addr) {
                    Some(r) if r.contains("served") => ok += 1,
                    _ => failed += 1,
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (ok, failed)
        })
    };
    let report = files.path().join("report");
    let st = migrate_to(
        &root,
        &root2,
        &id,
        std::fs::File::create(&report).unwrap(),
        std::fs::File::create(files.path().join("err")).unwrap(),
    );
    assert!(
        st.success(),
        "{}",
        std::fs::read_to_string(files.path().join("err")).unwrap()
    );
    // Polls go on after the source's delete.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = poller.join().unwrap();
    eprintln!(
        "polls during migration: {ok} answered, {failed} unanswered ({})",
        std::fs::read_to_string(&report)
            .unwrap()
            .lines()
            .find(|l| l.starts_with('{'))
            .unwrap_or("")
    );
    assert!(ok > 10, "{ok} answered");
    assert_eq!(failed, 0, "{failed} polls unanswered ({ok} answered)");
    assert_eq!(root2.status(&id), "running");
    root2.ok(&["delete", "--force", &id]);
    rt_integration::net::assert_root_clean(&root, &[]);
    rt_integration::net::assert_root_clean(&root2, &[&id]);
    assert!(!ext.exec("ip link show tap0_rt").status.success());
    assert!(!ext.exec("ip link show tap1_rt").status.success());
    drop(ext);
}
