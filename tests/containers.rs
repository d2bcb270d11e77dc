//! Container images carried in a commit and a declared container, composed
//! from local inputs and checked with independent tools: `ostree ls/cat/show`
//! on the repository, and the build machine's podman pointed at a checkout
//! of the commit (its store mounted read-only). Needs root, busybox-static,
//! skopeo and podman (with runc). No network: the test images are OCI
//! layouts this file writes itself.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::oci::*;
use common::*;

const REF: &str = "test/x86_64/ctr";

fn ostree(repo: &Path, args: &[&str]) -> String {
    sh(Command::new("ostree")
        .arg(format!("--repo={}", repo.display()))
        .args(args))
}

/// App image `version`: busybox, /etc/layer1 and /etc/doomed in the lower
/// layer; /etc/layer2 and a whiteout deleting /etc/doomed in the upper one.
/// Returns the layout directory and its manifest digest.
fn app_image(f: &ComposeDir, version: &str) -> (PathBuf, String) {
    let l1 = f.p(&format!("src-{version}/l1"));
    busybox_layer(&l1);
    write(&l1.join("etc/layer1"), &format!("app {version} layer 1\n"));
    write(&l1.join("etc/doomed"), "deleted by the upper layer\n");
    let l2 = f.p(&format!("src-{version}/l2"));
    write(&l2.join("etc/layer2"), &format!("app {version} layer 2\n"));
    write(&l2.join("etc/.wh.doomed"), "");
    let out = f.p(&format!("app-{version}"));
    let digest = oci_layout(&out, &[&l1, &l2]);
    (out, digest)
}

/// A tree to compose the images into: a shell, accounts, multi-user.target.
fn make_base(dir: &Path) {
    for d in ["usr/bin", "usr/lib/systemd/system", "etc", "var"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", dir.join("usr/bin/busybox")).unwrap();
    symlink("busybox", dir.join("usr/bin/sh")).unwrap();
    symlink("usr/bin", dir.join("bin")).unwrap();
    write(&dir.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n");
    write(&dir.join("etc/group"), "root:x:0:\n");
    write(
        &dir.join("usr/lib/systemd/system/multi-user.target"),
        "[Unit]\nDescription=mu\n",
    );
}

fn treefile(f: &ComposeDir, app_source: &str, app_format: &str) -> PathBuf {
    f.treefile(
        "host.toml",
        &format!(
            r#"
ref = "{REF}"
base = "base"

[[images]]
name = "localhost/app:latest"
source = "{app_source}"
format = "{app_format}"

[[images]]
name = "localhost/tools:1"
source = "tools"
format = "oci"

[[containers]]
name = "web"
image = "localhost/app:latest"
command = ["sh", "-c", "echo \"$GREETING\" 100% > /data/out; exec sleep 1000"]
ports = ["8080:80"]
volumes = ["/var/lib/web/../web-data:/data"]
[containers.environment]
GREETING = "hello world"
"#
        ),
    )
}

/// A read-only bind mount, unmounted on drop.
struct RoMount(PathBuf);

impl RoMount {
    fn new(src: &Path, dst: &Path) -> RoMount {
        fs::create_dir_all(dst).unwrap();
        sh(Command::new("mount").arg("--bind").arg(src).arg(dst));
        let m = RoMount(dst.to_path_buf());
        sh(Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(dst));
        m
    }
}

impl Drop for RoMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The build machine's podman, configured by the checkout's own
/// storage.conf with its paths moved into `scratch`.
/// `hostctl compose tree` of `tf` into the fixture's repository.
fn compose(f: &ComposeDir, tf: &Path) -> std::process::Output {
    hostctl_run(&[
        "compose",
        "tree",
        "--repo",
        f.repo().to_str().unwrap(),
        tf.to_str().unwrap(),
    ])
}

fn podman(checkout: &Path, store: &Path, scratch: &Path, args: &[&str]) -> String {
    let shipped = fs::read_to_string(checkout.join("usr/share/containers/storage.conf")).unwrap();
    let conf = scratch.join("storage.conf");
    if !conf.exists() {
        let moved = shipped
            .replace(
                "\"/usr/lib/containers/storage\"",
                &format!("\"{}\"", store.display()),
            )
            .replace(
                "\"/var/lib/containers/storage\"",
                &format!("\"{}\"", scratch.join("graph").display()),
            )
            .replace(
                "\"/run/containers/storage\"",
                &format!("\"{}\"", scratch.join("run").display()),
            );
        assert_ne!(moved, shipped, "storage.conf names none of the stores");
        fs::write(&conf, moved).unwrap();
    }
    sh(Command::new("podman")
        .env("CONTAINERS_STORAGE_CONF", &conf)
        .arg(format!("--tmpdir={}", scratch.join("tmp").display()))
        .args(args))
}

#[test]
fn images_and_a_container_travel_in_the_commit() {
    let f = ComposeDir::new();
    make_base(&f.p("base"));
    let (app_v1, app_v1_digest) = app_image(&f, "v1");
    let tools = f.p("tools-src");
    busybox_layer(&tools);
    write(&tools.join("etc/tools"), "tools\n");
    oci_layout(&f.p("tools"), &[&tools]);
    // oci-archive: the layout in a tar.
    sh(Command::new("tar")
        .arg("-C")
        .arg(&app_v1)
        .arg("-cf")
        .arg(f.p("app-v1.tar"))
        .arg("."));
    let tf = treefile(&f, "app-v1.tar", "oci-archive");
    ok(compose(&f, &tf));
    let v1 = rev_parse(&f.repo(), REF).expect("ref");
    let r = &f.repo();

    // The metadata names each image with the manifest digest written above.
    let meta = ostree(r, &["show", REF, "--print-metadata-key=hostctl.images"]);
    assert!(
        meta.contains(&format!("('localhost/app:latest', '{app_v1_digest}')")),
        "{meta}"
    );
    assert!(meta.contains("'localhost/tools:1'"), "{meta}");

    // The store, the unit, its enablement, tmpfiles and storage.conf.
    let listing = ostree(r, &["ls", "-R", REF, "/usr"]);
    let path_of = |l: &str| l.split_whitespace().last().unwrap_or("").to_string();
    for p in [
        "/usr/lib/containers/storage/vfs-images/images.json",
        "/usr/lib/containers/storage/vfs-layers/layers.json",
        "/usr/lib/systemd/system/container-web.service",
        "/usr/lib/tmpfiles.d/hostctl-containers.conf",
        "/usr/share/containers/storage.conf",
    ] {
        assert!(listing.lines().any(|l| path_of(l) == p), "{p}\n{listing}");
    }
    assert!(
        listing.lines().any(|l| l.contains(
            "/usr/etc/systemd/system/multi-user.target.wants/container-web.service -> /usr/lib/systemd/system/container-web.service"
        )) || listing.lines().any(|l| l.contains(
            "/usr/etc/systemd/system/multi-user.target.wants/container-web.service -> /lib/systemd/system/container-web.service"
        )),
        "not enabled:\n{}",
        listing
            .lines()
            .filter(|l| l.contains("wants"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // No device node anywhere (the whiteout became a deletion), and the
    // store's own files and directories carry no write bit.
    let store_lines: Vec<&str> = listing
        .lines()
        .filter(|l| l.contains(" /usr/lib/containers/storage"))
        .collect();
    assert!(store_lines.len() > 10, "{store_lines:?}");
    for l in &store_lines {
        assert!(!l.starts_with('c') && !l.starts_with('b'), "device: {l}");
        let p = path_of(l);
        // A layer's directory is the root of the containers made from it.
        let in_layer = p.starts_with("/usr/lib/containers/storage/vfs/dir/");
        if !in_layer && !l.starts_with('l') {
            let mode = u32::from_str_radix(&l[1..6], 8).unwrap();
            assert_eq!(mode & 0o222, 0, "writable in the commit: {l}");
        }
    }
    let layer_files: Vec<String> = store_lines
        .iter()
        .map(|l| path_of(l))
        .filter(|p| p.ends_with("/etc/doomed") || p.ends_with("/etc/layer2"))
        .collect();
    // vfs keeps each layer whole: the lower one still has doomed, the
    // upper one (lower + upper applied) has layer2 and no doomed.
    assert_eq!(
        layer_files.iter().filter(|p| p.ends_with("doomed")).count(),
        1,
        "{layer_files:?}"
    );

    let unit = ostree(
        r,
        &["cat", REF, "/usr/lib/systemd/system/container-web.service"],
    );
    let exec = unit
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .expect("ExecStart");
    assert_eq!(
        exec,
        r#"ExecStart=/usr/bin/podman "run" "--sdnotify=conmon" "--cgroups=no-conmon" "--detach" "--replace" "--rm" "--name=web" "--pull=never" "--publish=8080:80/tcp" "--env=GREETING=hello world" "--volume=/var/lib/web-data:/data:rw" "localhost/app:latest" "sh" "-c" "echo \"$$GREETING\" 100%% > /data/out; exec sleep 1000""#
    );
    for line in [
        "Restart=on-failure",
        "Type=notify",
        "NotifyAccess=all",
        "KillMode=mixed",
        "ExecStop=/usr/bin/podman stop --ignore --time=10 \"web\"",
        "ExecStopPost=/usr/bin/podman rm --force --ignore --time=10 \"web\"",
        "After=network-online.target",
        "Wants=network-online.target",
        "WantedBy=multi-user.target",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line}\n{unit}");
    }
    // systemd's own parser accepts the unit (it refuses unbalanced quoting
    // and unknown settings with a non-zero exit).
    let unit_file = f.p("container-web.service");
    fs::write(&unit_file, &unit).unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_file)
        .output()
        .unwrap();
    assert!(
        verify.status.success() && stderr(&verify).trim().is_empty(),
        "systemd-analyze verify: {}",
        stderr(&verify)
    );
    assert_eq!(
        ostree(
            r,
            &["cat", REF, "/usr/lib/tmpfiles.d/hostctl-containers.conf"]
        )
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>(),
        vec!["d /var/lib/web-data 0755 root root -"]
    );

    // podman itself, on a checkout of the commit, its store read-only.
    let checkout = f.p("checkout");
    ostree(r, &["checkout", REF, checkout.to_str().unwrap()]);
    let scratch = f.p("podman");
    fs::create_dir_all(&scratch).unwrap();
    let ro = RoMount::new(
        &checkout.join("usr/lib/containers/storage"),
        &f.p("ro-store"),
    );
    let images = podman(
        &checkout,
        &ro.0,
        &scratch,
        &[
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}} {{.ReadOnly}}",
        ],
    );
    let mut lines: Vec<&str> = images.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        vec!["localhost/app:latest true", "localhost/tools:1 true"],
        "{images}"
    );
    // The sandbox these tests run in lacks CAP_SYS_RESOURCE: podman's default
    // rlimits (raised to the maximum) would fail in runc, so ask for less.
    let run = |image: &str, script: &str| {
        podman(
            &checkout,
            &ro.0,
            &scratch,
            &[
                "run",
                "--rm",
                "--network=none",
                "--ulimit=nofile=1024:1024",
                "--ulimit=nproc=1024:1024",
                image,
                "sh",
                "-c",
                script,
            ],
        )
    };
    assert_eq!(
        run(
            "localhost/app:latest",
            "cat /etc/layer1 /etc/layer2; test ! -e /etc/doomed && echo doomed is gone"
        ),
        "app v1 layer 1\napp v1 layer 2\ndoomed is gone\n"
    );
    assert_eq!(run("localhost/tools:1", "cat /etc/tools"), "tools\n");
    drop(ro);

    // v2 of the app, as a docker-archive: db diff names the change.
    let (app_v2, _) = app_image(&f, "v2");
    sh(Command::new("skopeo")
        .arg("copy")
        .arg("--quiet")
        .arg(format!("oci:{}", app_v2.display()))
        .arg(format!(
            "docker-archive:{}:localhost/app:latest",
            f.p("app-v2.docker.tar").display()
        )));
    let tf = treefile(&f, "app-v2.docker.tar", "docker-archive");
    ok(compose(&f, &tf));
    let v2 = rev_parse(&f.repo(), REF).expect("ref");
    assert_ne!(v1, v2);
    let meta2 = ostree(r, &["show", REF, "--print-metadata-key=hostctl.images"]);
    // docker-archive carries a docker manifest: another digest than the
    // OCI one of the layout it came from, but not v1's.
    assert!(!meta2.contains(&app_v1_digest), "{meta2}");
    let new_digest = meta2
        .split("('localhost/app:latest', '")
        .nth(1)
        .and_then(|s| s.get(..71))
        .expect("app in v2's metadata")
        .to_string();
    let diff = ok(hostctl_run(&[
        "db",
        "diff",
        "--repo",
        f.repo().to_str().unwrap(),
        &v1,
        &v2,
    ]));
    assert!(
        diff.contains(&format!(
            "Images changed (1):\n  localhost/app:latest {app_v1_digest} -> {new_digest}\n"
        )),
        "{diff}"
    );
    assert!(!diff.contains("localhost/tools"), "{diff}");
    // The same diff in JSON: stdout is the JSON alone, the commits are the
    // ref's, the digests the ones in the commits' metadata.
    let j = json_only(&ok(hostctl_run(&[
        "db",
        "diff",
        "--repo",
        f.repo().to_str().unwrap(),
        "--json",
        &v1,
        &v2,
    ])));
    assert_eq!(j["from"]["checksum"], v1.as_str(), "{j}");
    assert_eq!(j["to"]["checksum"], v2.as_str(), "{j}");
    assert_eq!(j["from"]["deployment"], serde_json::Value::Null, "{j}");
    assert_eq!(
        j["images"],
        serde_json::json!({
            "added": [],
            "removed": [],
            "changed": [{
                "name": "localhost/app:latest",
                "old_digest": app_v1_digest,
                "new_digest": new_digest,
            }],
        }),
        "{j}"
    );
    // The text's package section agrees with the JSON's.
    let packages = &j["packages"];
    if diff.contains("Packages: not recorded in both commits") {
        assert_eq!(*packages, serde_json::Value::Null, "{j}");
    } else {
        assert!(diff.contains("No package changes."), "{diff}");
        assert_eq!(
            *packages,
            serde_json::json!({"added": [], "removed": [], "upgraded": [], "downgraded": []}),
            "{j}"
        );
    }
}

#[test]
fn bad_image_sources_fail_before_any_work() {
    let f = ComposeDir::new();
    make_base(&f.p("base"));
    let tools = f.p("tools-src");
    busybox_layer(&tools);
    oci_layout(&f.p("tools"), &[&tools]);
    write(&f.p("junk.tar"), "not a tar at all\n");
    for (source, format, want) in [
        ("missing.tar", "oci-archive", "missing.tar: No such file"),
        (
            "junk.tar",
            "docker-archive",
            "is not a readable docker-archive image",
        ),
        (
            "tools",
            "oci-archive",
            "is a directory, but format `oci-archive`",
        ),
    ] {
        let tf = treefile(&f, source, format);
        let out = compose(&f, &tf);
        let err = stderr(&out);
        assert!(!out.status.success(), "{source}: {err}");
        assert!(
            err.contains(&format!("{}:5: key `images.source`", tf.display())),
            "{source}: {err}"
        );
        assert!(err.contains(want), "{source}: {err}");
        assert!(!f.repo().exists(), "{source}: work was done");
    }
}
