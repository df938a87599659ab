//! Images end to end: test images built here from busybox-static plus layers
//! that delete, replace and hard-link files; import of OCI layouts,
//! oci-archives and docker-archives; `rt image unpack` cross-checked against
//! `umoci unpack`; `rt run --image` (plain and --overlay); pull from a real
//! registry (Debian's docker-registry on 127.0.0.1, fed by skopeo) with and
//! without basic auth.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

use rt_testsupport::oci::{make_multi_platform, write_layout, Layer};
use rt_testsupport::{output_via_files, root_or_skip, unique_id, Root};
use serde_json::{json, Value};

macro_rules! need_root {
    () => {
        if !root_or_skip(module_path!()) {
            return;
        }
    };
}

const SCRIPT: &str =
    "id -u; id -g; id -G; pwd; cat /etc/motd; ls /opq; cat /srv/link; echo $GREETING";
const EXPECTED: &str = "33\n33\n33 50\n/srv\nhello from layer 2\nc\nhello from layer 2\nhi\n";

/// The three layers of the test image.
fn layers() -> Vec<Vec<u8>> {
    let bb = rt_testsupport::busybox();
    let mut l1 = Layer::new();
    for d in [
        "bin/", "etc/", "srv/", "opq/", "data/", "dev/", "proc/", "sys/",
    ] {
        l1.dir(d, 0o755);
    }
    l1.dir("tmp/", 0o1777).host_file("bin/busybox", &bb, 0o755);
    for applet in ["sh", "id", "cat", "ls", "echo", "pwd", "sleep", "true"] {
        l1.symlink(&format!("bin/{applet}"), "busybox");
    }
    l1.file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nweb:x:33:33:web:/srv:/bin/sh\n",
        0o644,
    )
    .file(
        "etc/group",
        b"root:x:0:\nweb:x:33:\nstaff:x:50:web\n",
        0o644,
    )
    .file("etc/motd", b"old motd\n", 0o644)
    .file("opq/a", b"a", 0o644)
    .file("opq/b", b"b", 0o644)
    .file("data/gone", b"gone", 0o644);
    let l2 = Layer::new()
        .dir("etc/", 0o755)
        .file("etc/motd", b"hello from layer 2\n", 0o644)
        .dir("data/", 0o755)
        .file("data/.wh.gone", b"", 0o644)
        .dir("opq/", 0o755)
        .file("opq/.wh..wh..opq", b"", 0o644)
        .file("opq/c", b"c", 0o644)
        .dir("srv/", 0o755)
        .hardlink("srv/hard", "etc/motd")
        .symlink("srv/link", "../etc/motd")
        .finish();
    let l3 = Layer::new()
        .dir("srv/", 0o755)
        .owned_file("srv/owned", b"mine", 0o640, 1000, 1000)
        .file("srv/suid", b"s", 0o4755)
        .char_device("srv/null", 1, 3, 0o666)
        .xattr_file("srv/tagged", b"t", 0o644, "user.rt.test", b"yes")
        .finish();
    vec![l1.finish(), l2, l3]
}

fn run_config() -> Value {
    json!({"Entrypoint": ["/bin/sh", "-c"], "Cmd": [SCRIPT], "User": "web",
           "WorkingDir": "/srv", "Env": ["GREETING=hi"], "ExposedPorts": {"80/tcp": {}},
           "Labels": {"org.example.test": "yes"}})
}

/// A state root and an image store in one temporary directory.
struct Env {
    tmp: tempfile::TempDir,
    root: Root,
}

impl Env {
    fn new() -> Env {
        Env {
            tmp: tempfile::tempdir().unwrap(),
            root: Root::new(),
        }
    }

    fn store(&self) -> PathBuf {
        self.tmp.path().join("store")
    }

    fn rt(&self, args: &[&str]) -> Output {
        let mut c = self.root.cmd();
        c.arg("--store").arg(self.store()).args(args);
        output_via_files(&mut c)
    }

    fn ok(&self, args: &[&str]) -> String {
        rt_testsupport::expect_ok(args, self.rt(args))
    }

    fn layout(&self, compress: bool) -> PathBuf {
        let dir = self
            .tmp
            .path()
            .join(if compress { "layout-gz" } else { "layout" });
        if !dir.exists() {
            write_layout(&dir, "t", &layers(), compress, run_config());
        }
        dir
    }
}

/// Everything `umoci unpack` and `rt image unpack` must agree on, per path.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let ft = md.file_type();
            let what = if ft.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if ft.is_symlink() {
                format!("symlink->{}", std::fs::read_link(&p).unwrap().display())
            } else if ft.is_file() {
                use sha2::Digest;
                format!(
                    "file:{:x}",
                    sha2::Sha256::digest(std::fs::read(&p).unwrap())
                )
            } else if ft.is_char_device() {
                format!("char:{}", md.rdev())
            } else if ft.is_fifo() {
                "fifo".into()
            } else {
                "other".into()
            };
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let mode = if ft.is_symlink() {
                0
            } else {
                md.mode() & 0o7777
            };
            out.insert(
                rel,
                format!("{what} mode={mode:o} owner={}:{}", md.uid(), md.gid()),
            );
        }
    }
    out
}

fn xattr(path: &Path, key: &str) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import os,sys; print(os.getxattr(sys.argv[1], sys.argv[2]).decode())",
        ])
        .arg(path)
        .arg(key)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn unpack_matches_umoci_and_runs() {
    need_root!();
    let env = Env::new();
    let layout = env.layout(true);
    let names = env.ok(&[
        "image",
        "import",
        layout.to_str().unwrap(),
        "--name",
        "test/img:1",
    ]);
    assert_eq!(names.trim(), "docker.io/test/img:1");
    assert!(env.ok(&["image", "ls"]).contains("docker.io/test/img:1"));
    let inspect: Value =
        serde_json::from_str(&env.ok(&["image", "inspect", "test/img:1"])).unwrap();
    assert_eq!(inspect["config"]["config"]["User"], "web");
    assert_eq!(inspect["manifest"]["layers"].as_array().unwrap().len(), 3);

    let ours = env.tmp.path().join("ours");
    env.ok(&["image", "unpack", "test/img:1", ours.to_str().unwrap()]);
    let theirs = env.tmp.path().join("theirs");
    let st = Command::new("umoci")
        .args(["unpack", "--image", &format!("{}:t", layout.display())])
        .arg(&theirs)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "umoci: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let (a, b) = (tree(&ours.join("rootfs")), tree(&theirs.join("rootfs")));
    for (path, ours_v) in &a {
        assert_eq!(Some(ours_v), b.get(path), "{path}: rt vs umoci");
    }
    assert_eq!(
        a.len(),
        b.len(),
        "umoci has paths rt lacks: {:?}",
        b.keys().filter(|k| !a.contains_key(*k)).collect::<Vec<_>>()
    );
    assert!(!a.contains_key("data/gone") && !a.contains_key("opq/a"));
    for root in [&ours, &theirs] {
        assert_eq!(
            xattr(&root.join("rootfs/srv/tagged"), "user.rt.test"),
            "yes",
            "{}",
            root.display()
        );
    }
    assert!(a["srv/null"].starts_with("char:259"), "{}", a["srv/null"]);
    let hard = std::fs::metadata(ours.join("rootfs/srv/hard")).unwrap();
    assert_eq!(
        hard.ino(),
        std::fs::metadata(ours.join("rootfs/etc/motd"))
            .unwrap()
            .ino()
    );

    let config: Value =
        serde_json::from_slice(&std::fs::read(ours.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["process"]["user"],
        json!({"uid": 33, "gid": 33, "additionalGids": [50]})
    );
    assert_eq!(
        config["annotations"]["org.opencontainers.image.exposedPorts"],
        "80/tcp"
    );
    assert_eq!(config["annotations"]["org.example.test"], "yes");
    let out = env.ok(&["run", "--bundle", ours.to_str().unwrap(), &unique_id("img")]);
    assert_eq!(out, EXPECTED);
}

#[test]
fn run_image_plain_and_overlay_leave_nothing() {
    need_root!();
    let env = Env::new();
    env.ok(&[
        "image",
        "import",
        env.layout(false).to_str().unwrap(),
        "--name",
        "test/img:1",
    ]);
    for overlay in [false, true] {
        let id = unique_id("runimg");
        let mut args = vec!["run", "--image", "test/img:1"];
        if overlay {
            args.push("--overlay");
        }
        args.push(&id);
        assert_eq!(env.ok(&args), EXPECTED, "overlay={overlay}");
        let bundles = env.root.dir.path().join(".bundles");
        assert!(!bundles.join(&id).exists(), "bundle removed on delete");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(&id), "no mount left");
    }
    let layers = std::fs::read_dir(env.store().join("layers"))
        .unwrap()
        .count();
    assert_eq!(layers, 3, "overlay layers kept once in the store");
    // A second overlay run reuses them; create/delete works as well.
    let id = unique_id("runimg");
    env.ok(&["create", "--image", "test/img:1", "--overlay", &id]);
    assert!(env
        .root
        .dir
        .path()
        .join(".bundles")
        .join(&id)
        .join("rootfs/bin/busybox")
        .exists());
    env.ok(&["delete", &id]);
    assert!(!env.root.dir.path().join(".bundles").join(&id).exists());
    // An unknown image: a clear error and nothing made.
    let out = env.rt(&["run", "--image", "no/such:image", "x1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    assert!(!env.root.dir.path().join(".bundles/x1").exists());
    // rm + prune empty the store.
    env.ok(&["image", "rm", "test/img:1"]);
    let pruned = env.ok(&["image", "prune"]);
    assert!(pruned.contains("removed 5 blobs"), "{pruned}");
    assert_eq!(
        std::fs::read_dir(env.store().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(env.store().join("layers"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn archives_import() {
    need_root!();
    let env = Env::new();
    // oci-archive: the layout in a tar.
    let layout = env.layout(true);
    let oci_tar = env.tmp.path().join("img.oci.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&oci_tar).unwrap());
    b.append_dir_all(".", &layout).unwrap();
    b.finish().unwrap();
    drop(b);
    let n = env.ok(&[
        "image",
        "import",
        oci_tar.to_str().unwrap(),
        "--name",
        "ociarch:1",
    ]);
    assert_eq!(n.trim(), "docker.io/library/ociarch:1");
    // docker-archive, as `docker save` writes it.
    let ls = layers();
    let diff_ids: Vec<String> = ls
        .iter()
        .map(|l| {
            use sha2::Digest;
            format!("sha256:{:x}", sha2::Sha256::digest(l))
        })
        .collect();
    let config = serde_json::to_vec(
        &json!({"architecture": "amd64", "os": "linux", "config": run_config(),
        "rootfs": {"type": "layers", "diff_ids": diff_ids}}),
    )
    .unwrap();
    let docker_tar = env.tmp.path().join("img.docker.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&docker_tar).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    let layer_names: Vec<String> = (0..ls.len()).map(|i| format!("l{i}/layer.tar")).collect();
    for (n, l) in layer_names.iter().zip(&ls) {
        add(n, l);
    }
    add("cfg.json", &config);
    add("manifest.json", &serde_json::to_vec(&json!([{"Config": "cfg.json", "RepoTags": ["docker.test/arch:v1"], "Layers": layer_names}])).unwrap());
    b.finish().unwrap();
    drop(b);
    let n = env.ok(&["image", "import", docker_tar.to_str().unwrap()]);
    assert_eq!(n.trim(), "docker.test/arch:v1");
    for name in ["ociarch:1", "docker.test/arch:v1"] {
        assert_eq!(
            env.ok(&["run", "--image", name, &unique_id("arch")]),
            EXPECTED,
            "{name}"
        );
    }
    // Something else is refused clearly.
    let junk = env.tmp.path().join("junk.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&junk).unwrap());
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_cksum();
    b.append_data(&mut h, "x", &b"x"[..]).unwrap();
    b.finish().unwrap();
    drop(b);
    let out = env.rt(&["image", "import", junk.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither an OCI image layout"));
}

/// docker-registry on a free 127.0.0.1 port with its own storage, killed
/// on drop.
struct Registry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start(auth: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if let Some((user, pass)) = auth {
            let hash = Command::new("python3")
                .args(["-c", &format!("import crypt; print(crypt.crypt('{pass}', crypt.mksalt(crypt.METHOD_BLOWFISH)))")])
                .output()
                .unwrap();
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(
                &htpasswd,
                format!("{user}:{}", String::from_utf8_lossy(&hash.stdout)),
            )
            .unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: rt-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::File::create(&config_path)
            .unwrap()
            .write_all(config.as_bytes())
            .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker-registry (package docker-registry)");
        assert!(
            rt_testsupport::eventually(20, || std::net::TcpStream::connect(&addr).is_ok()),
            "registry listening on {addr}"
        );
        Registry {
            child,
            addr,
            _dir: dir,
        }
    }

    fn push(&self, layout: &Path, name: &str, creds: Option<&str>, zstd: bool) {
        let mut c = Command::new("skopeo");
        c.args(["copy", "--insecure-policy", "--dest-tls-verify=false"]);
        if let Some(cr) = creds {
            c.args(["--dest-creds", cr]);
        }
        if zstd {
            c.args(["--dest-compress", "--dest-compress-format", "zstd"]);
        }
        c.arg(format!("oci:{}:t", layout.display()))
            .arg(format!("docker://{}/{name}", self.addr));
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "skopeo: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn pull_from_local_registry() {
    need_root!();
    let env = Env::new();
    let reg = Registry::start(None);
    reg.push(&env.layout(true), "test/img:gz", None, false);
    reg.push(&env.layout(false), "test/img:zstd", None, true);
    for tag in ["gz", "zstd"] {
        let r = format!("{}/test/img:{tag}", reg.addr);
        let out = env.ok(&["image", "pull", &r]);
        assert!(out.trim_end().ends_with(&r), "{out}");
        assert!(
            out.contains("done"),
            "quiet progress lines when not a terminal: {out}"
        );
        assert_eq!(
            env.ok(&["run", "--image", &r, &unique_id("pull")]),
            EXPECTED,
            "{tag}"
        );
    }
    // Pulling again fetches nothing new.
    let again = env.ok(&["image", "pull", &format!("{}/test/img:gz", reg.addr)]);
    assert!(!again.contains(" done"), "{again}");
    assert!(again.contains("already present"), "{again}");
    let out = env.rt(&["image", "pull", &format!("{}/test/none:1", reg.addr)]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("404"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An image index (two platforms) is resolved to the host's manifest, on
/// import and on pull (skopeo pushes the whole index with --all).
#[test]
fn multi_platform_index() {
    need_root!();
    let env = Env::new();
    let layout = env.tmp.path().join("multi");
    write_layout(&layout, "t", &layers(), true, run_config());
    make_multi_platform(&layout);
    env.ok(&[
        "image",
        "import",
        layout.to_str().unwrap(),
        "--name",
        "multi:1",
    ]);
    let inspect: Value = serde_json::from_str(&env.ok(&["image", "inspect", "multi:1"])).unwrap();
    assert_eq!(inspect["config"]["architecture"], "amd64");
    assert_eq!(
        env.ok(&["run", "--image", "multi:1", &unique_id("multi")]),
        EXPECTED
    );
    let reg = Registry::start(None);
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--all",
            "--insecure-policy",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:t", layout.display()))
        .arg(format!("docker://{}/multi/img:1", reg.addr))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = format!("{}/multi/img:1", reg.addr);
    env.ok(&["image", "pull", &r]);
    let inspect: Value = serde_json::from_str(&env.ok(&["image", "inspect", &r])).unwrap();
    assert_eq!(inspect["config"]["architecture"], "amd64");
    assert_eq!(
        env.ok(&["run", "--image", &r, &unique_id("multi")]),
        EXPECTED
    );
}

#[test]
fn pull_with_basic_auth() {
    need_root!();
    let env = Env::new();
    let reg = Registry::start(Some(("tester", "s3cret")));
    reg.push(
        &env.layout(true),
        "private/img:1",
        Some("tester:s3cret"),
        false,
    );
    let r = format!("{}/private/img:1", reg.addr);
    let out = env.rt(&["image", "pull", &r]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("requires authentication"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env.rt(&[
        "image",
        "pull",
        "--username",
        "tester",
        "--password",
        "wrong",
        &r,
    ]);
    assert!(!out.status.success());
    env.ok(&[
        "image",
        "pull",
        "--username",
        "tester",
        "--password",
        "s3cret",
        &r,
    ]);
    assert_eq!(
        env.ok(&["run", "--image", &r, &unique_id("auth")]),
        EXPECTED
    );
}
