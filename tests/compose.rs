//! `hostctl compose tree` from local inputs, checked with the `ostree` CLI as
//! an independent witness. Needs root (owners, setuid, chroot) and
//! busybox-static (a shell for the postprocess scripts inside the tree).

use std::fs;
use std::os::unix::fs::{chown, symlink, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

mod common;

use common::*;

const KVER: &str = "6.1.0-99-amd64";

fn compose(repo: &Path, treefile: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["compose", "tree", "--repo", repo.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.push(treefile.to_str().unwrap());
    hostctl_run(&args)
}

fn ostree(repo: &Path, args: &[&str]) -> String {
    let out = Command::new("ostree")
        .arg(format!("--repo={}", repo.display()))
        .args(args)
        .output()
        .expect("running ostree");
    assert!(out.status.success(), "ostree {args:?}: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `hostctl.inputhash` a commit records: 64 hex digits.
fn inputhash(repo: &Path, rev: &str) -> String {
    let v = ostree(
        repo,
        &["show", rev, "--print-metadata-key=hostctl.inputhash"],
    );
    let h = v.trim().trim_matches('\'').to_string();
    assert!(
        h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()),
        "hostctl.inputhash of {rev} is not a SHA-256 in hex: {v:?}"
    );
    h
}

/// A small Debian-shaped rootfs: merged /usr, a shell, a kernel in /boot,
/// content in /var, a setuid binary, an xattr, a file owned by a non-root user.
fn make_base(dir: &Path) {
    for d in [
        "usr/bin",
        "usr/sbin",
        "usr/lib",
        "etc/systemd/system",
        "boot",
        "var/log",
        "home/alice",
    ] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", dir.join("usr/bin/busybox")).unwrap();
    for tool in ["sh", "cat", "echo", "mkdir", "ls", "test", "ln", "touch"] {
        symlink("busybox", dir.join("usr/bin").join(tool)).unwrap();
    }
    symlink("usr/bin", dir.join("bin")).unwrap();
    symlink("usr/sbin", dir.join("sbin")).unwrap();
    symlink("usr/lib", dir.join("lib")).unwrap();
    write(&dir.join("etc/hostname"), "testhost\n");
    write(
        &dir.join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\nsvc:x:1234:1234::/var/lib/svc:/bin/false\n",
    );
    write(&dir.join("etc/group"), "root:x:0:\nsvc:x:1234:\n");
    write(&dir.join("etc/app.conf"), "setting = base\n");
    write(&dir.join(format!("boot/vmlinuz-{KVER}")), "kernel image\n");
    write(
        &dir.join(format!("boot/initrd.img-{KVER}")),
        "initrd image\n",
    );
    write(&dir.join(format!("boot/config-{KVER}")), "CONFIG_X=y\n");
    fs::create_dir_all(dir.join(format!("usr/lib/modules/{KVER}/kernel"))).unwrap();
    symlink(format!("boot/vmlinuz-{KVER}"), dir.join("vmlinuz")).unwrap();
    // /var content that must come back at boot through tmpfiles.d.
    fs::create_dir_all(dir.join("var/lib/svc")).unwrap();
    chown(dir.join("var/lib/svc"), Some(1234), Some(1234)).unwrap();
    fs::set_permissions(dir.join("var/lib/svc"), fs::Permissions::from_mode(0o750)).unwrap();
    write(&dir.join("var/lib/svc/state"), "initial state\n");
    symlink("/run", dir.join("var/run")).unwrap();
    write(&dir.join("home/alice/.profile"), "# alice\n");
    // Ownership, setuid and xattrs.
    fs::copy("/bin/busybox", dir.join("usr/bin/su-helper")).unwrap();
    fs::set_permissions(
        dir.join("usr/bin/su-helper"),
        fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    write(&dir.join("usr/lib/svc-data"), "owned by svc\n");
    chown(dir.join("usr/lib/svc-data"), Some(1234), Some(1234)).unwrap();
    set_xattr(&dir.join("usr/lib/svc-data"), "user.hostctl-test", b"kept");
    write(
        &dir.join("usr/lib/systemd/system/demo.service"),
        "[Unit]\nDescription=demo\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n",
    );
    write(
        &dir.join("usr/lib/systemd/system/multi-user.target"),
        "[Unit]\nDescription=mu\n",
    );
}

/// A compose directory with `make_base` in `base/`.
fn fixture() -> ComposeDir {
    let f = ComposeDir::new();
    make_base(&f.p("base"));
    f
}

#[test]
fn composes_a_deployable_tree_from_base_overlays_scripts_and_units() {
    let f = fixture();
    write(&f.p("ov1/etc/app.conf"), "setting = overlay\n");
    write(&f.p("ov1/usr/share/doc/junk.txt"), "remove me\n");
    write(&f.p("ov1/usr/share/doc/keep.md"), "keep me\n");
    write(&f.p("ov1/usr/share/hl/a"), "same inode\n");
    fs::hard_link(f.p("ov1/usr/share/hl/a"), f.p("ov1/usr/share/hl/b")).unwrap();
    write(&f.p("ov2/etc/app.conf"), "setting = second overlay wins\n");
    let tf = f.treefile(
        "host.toml",
        r#"
ref = "test/x86_64/host"
base = "base"
overlays = ["ov1", "ov2"]
remove-files = ["/usr/share/doc/*.txt"]
postprocess = [
  "echo \"composed on $(cat /etc/hostname)\" > /usr/share/postprocess-ran",
  "test -e /usr/share/doc/keep.md && test ! -e /usr/share/doc/junk.txt",
]
units = ["demo.service"]
default-target = "multi-user.target"
automatic-version-prefix = "7"
[metadata]
"build.pipeline" = "unit-test"
"#,
    );
    let stdout = ok(compose(
        &f.repo(),
        &tf,
        &["--write-commitid-to", f.p("commitid").to_str().unwrap()],
    ));
    let head = rev_parse(&f.repo(), "test/x86_64/host").expect("ref exists");
    assert!(stdout.contains(&head), "{stdout}");
    assert_eq!(fs::read_to_string(f.p("commitid")).unwrap(), head);

    let r = &f.repo();
    let listing = ostree(r, &["ls", "-R", "test/x86_64/host"]);
    let has = |path: &str| {
        listing
            .lines()
            .any(|l| l.ends_with(&format!(" {path}")) || l.contains(&format!(" {path} -> ")))
    };
    // /etc moved to /usr/etc; /var empty; kernel where libostree looks.
    assert!(!has("/etc"), "{listing}");
    assert!(has("/usr/etc/app.conf"));
    assert_eq!(
        ostree(r, &["cat", "test/x86_64/host", "/usr/etc/app.conf"]),
        "setting = second overlay wins\n"
    );
    assert_eq!(
        ostree(r, &["cat", "test/x86_64/host", "/usr/etc/machine-id"]),
        ""
    );
    assert!(!listing.lines().any(|l| l.contains(" /var/")), "{listing}");
    assert_eq!(
        ostree(
            r,
            &[
                "cat",
                "test/x86_64/host",
                &format!("/usr/lib/modules/{KVER}/vmlinuz")
            ]
        ),
        "kernel image\n"
    );
    assert_eq!(
        ostree(
            r,
            &[
                "cat",
                "test/x86_64/host",
                &format!("/usr/lib/modules/{KVER}/initramfs.img")
            ]
        ),
        "initrd image\n"
    );
    assert!(
        !listing.lines().any(|l| l.contains(" /boot/")),
        "/boot must be empty: {listing}"
    );
    assert!(!has("/vmlinuz"));
    for (link, target) in [
        ("/home", "var/home"),
        ("/root", "var/roothome"),
        ("/opt", "var/opt"),
        ("/srv", "var/srv"),
        ("/mnt", "var/mnt"),
        ("/media", "run/media"),
        ("/usr/local", "../var/usrlocal"),
        ("/ostree", "sysroot/ostree"),
        ("/bin", "usr/bin"),
        ("/lib", "usr/lib"),
    ] {
        assert!(
            listing.contains(&format!(" {link} -> {target}\n")),
            "{link}: {listing}"
        );
    }
    assert!(listing.contains(" /sysroot\n"));
    let line = |path: &str| {
        listing
            .lines()
            .find(|l| {
                l.ends_with(&format!(" {path}"))
                    || (path.ends_with("-> ") && l.contains(&format!(" {path}")))
            })
            .unwrap_or_else(|| panic!("{path} missing"))
            .to_string()
    };
    // Overlays, remove-files, scripts, units.
    assert!(!has("/usr/share/doc/junk.txt") && has("/usr/share/doc/keep.md"));
    assert_eq!(
        ostree(
            r,
            &["cat", "test/x86_64/host", "/usr/share/postprocess-ran"]
        ),
        "composed on testhost\n"
    );
    // systemctl may link through /lib or /usr/lib; both resolve in the tree.
    let wants = line("/usr/etc/systemd/system/multi-user.target.wants/demo.service -> ");
    assert!(
        wants.ends_with("lib/systemd/system/demo.service"),
        "{wants}"
    );
    assert!(
        listing.contains(" /usr/etc/systemd/system/default.target -> "),
        "{listing}"
    );
    // Modes, owners, xattrs, hard-linked content.
    assert!(
        line("/usr/bin/su-helper").starts_with("-04755 0 0 "),
        "{}",
        line("/usr/bin/su-helper")
    );
    assert!(line("/usr/lib/svc-data").starts_with("-00644 1234 1234 "));
    let x = ostree(r, &["ls", "-X", "test/x86_64/host", "/usr/lib/svc-data"]);
    assert!(x.contains("hostctl-test"), "{x}");
    let sums = ostree(r, &["ls", "-C", "test/x86_64/host", "/usr/share/hl"]);
    let cs: Vec<&str> = sums
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(4).unwrap())
        .collect();
    assert_eq!(cs.len(), 2);
    assert_eq!(cs[0], cs[1]);
    // /var comes back through tmpfiles.d, with names resolved from the tree.
    let tmpfiles = ostree(
        r,
        &[
            "cat",
            "test/x86_64/host",
            "/usr/lib/tmpfiles.d/hostctl-var.conf",
        ],
    );
    for expect in [
        "d /var/lib/svc 0750 svc svc -",
        "C /var/lib/svc/state - - - - /usr/share/factory/var/lib/svc/state",
        "L /var/run - - - - /run",
        "d /var/home/alice 0755 root root -",
        "d /var/roothome 0700 root root -",
        "C /var/home/alice/.profile - - - - /usr/share/factory/var/home/alice/.profile",
    ] {
        assert!(
            tmpfiles.lines().any(|l| l == expect),
            "missing {expect:?} in\n{tmpfiles}"
        );
    }
    assert_eq!(
        ostree(
            r,
            &[
                "cat",
                "test/x86_64/host",
                "/usr/share/factory/var/lib/svc/state"
            ]
        ),
        "initial state\n"
    );
    // Metadata.
    let md = |k: &str| {
        ostree(
            r,
            &[
                "show",
                "test/x86_64/host",
                &format!("--print-metadata-key={k}"),
            ],
        )
    };
    assert_eq!(md("version").trim(), "'7.0'");
    assert_eq!(md("build.pipeline").trim(), "'unit-test'");
    inputhash(r, "test/x86_64/host");
    assert_eq!(md("ostree.linux").trim(), format!("'{KVER}'"));
    ostree(r, &["fsck"]);
}

/// `install-hostctl` on a tree without packages: the `--hostctl-deb`
/// package's files are extracted into the tree (no dpkg database records
/// them); its bytes are an input (the same .deb: no change; another: a new
/// commit); a version other than the running hostctl's is warned about. A
/// small stand-in package named hostctl keeps this fast; tests/debian.rs
/// and tests/package.rs use the real one.
#[test]
fn install_hostctl_extracts_the_given_package_into_a_tree_without_packages() {
    let f = fixture();
    let tf = f.treefile(
        "t.toml",
        "ref = \"r\"\nbase = \"base\"\ninstall-hostctl = true\n",
    );
    // A directory name mmdebstrap would split: the compose works on its
    // own copy of the package.
    let debs = f.p("the debs");
    fs::create_dir_all(&debs).unwrap();
    // The base's own directory modes stay: the package's `./usr/` must not
    // replace them.
    fs::set_permissions(f.p("base/usr"), fs::Permissions::from_mode(0o750)).unwrap();
    let files = [
        ("usr/bin/hostctl", "#!/bin/sh\necho packaged one\n"),
        (
            "usr/lib/systemd/system/hostctl-agent.timer",
            "[Timer]\nOnCalendar=daily\n",
        ),
        ("usr/share/doc/hostctl/agent.md", "# agent\n"),
    ];
    let deb1 = fake_deb(&debs, "hostctl", "0.0.1~test", "amd64", &files);
    let out = compose(&f.repo(), &tf, &["--hostctl-deb", deb1.to_str().unwrap()]);
    let err = stderr(&out);
    ok(out);
    assert!(
        err.lines().any(|l| l.starts_with("warning:")
            && l.contains("0.0.1~test")
            && l.contains(env!("CARGO_PKG_VERSION"))),
        "no version warning:\n{err}"
    );
    let c1 = rev_parse(&f.repo(), "r").unwrap();
    assert_eq!(
        ostree(&f.repo(), &["cat", "r", "/usr/bin/hostctl"]),
        "#!/bin/sh\necho packaged one\n"
    );
    let ls = ostree(&f.repo(), &["ls", "r", "/usr/bin/hostctl"]);
    assert!(ls.starts_with("-00755"), "{ls}");
    let ls = ostree(&f.repo(), &["ls", "-d", "r", "/usr"]);
    assert!(
        ls.starts_with("d00750"),
        "the base's /usr mode changed: {ls}"
    );
    for p in [
        "/usr/lib/systemd/system/hostctl-agent.timer",
        "/usr/share/doc/hostctl/agent.md",
    ] {
        ostree(&f.repo(), &["ls", "r", p]);
    }
    // The same .deb, given through the environment: no change.
    let out = run_hostctl(
        hostctl_cmd()
            .args(["compose", "tree", "--unchanged-exit-77", "--repo"])
            .arg(f.repo())
            .arg(&tf)
            .env("HOSTCTL_DEB", &deb1),
    );
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    assert_eq!(rev_parse(&f.repo(), "r").unwrap(), c1);
    // Another .deb: a new commit with its binary.
    let files2 = [("usr/bin/hostctl", "#!/bin/sh\necho packaged two\n")];
    let deb2 = fake_deb(&debs, "hostctl", "0.0.2~test", "amd64", &files2);
    ok(compose(
        &f.repo(),
        &tf,
        &["--hostctl-deb", deb2.to_str().unwrap()],
    ));
    assert_ne!(rev_parse(&f.repo(), "r").unwrap(), c1);
    assert_eq!(
        ostree(&f.repo(), &["cat", "r", "/usr/bin/hostctl"]),
        "#!/bin/sh\necho packaged two\n"
    );
}

#[test]
fn versions_advance_and_parents_chain_and_noop_is_detected() {
    let f = fixture();
    write(&f.p("ov/etc/motd"), "one\n");
    let tf = f.treefile(
        "t.toml",
        "ref = \"r\"\nbase = \"base\"\noverlays = [\"ov\"]\nautomatic-version-prefix = \"1\"\n",
    );
    ok(compose(&f.repo(), &tf, &[]));
    let c1 = rev_parse(&f.repo(), "r").unwrap();

    // Same inputs: no commit; 0 by default, 77 when asked.
    let out = compose(&f.repo(), &tf, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("No changes"), "{}", stderr(&out));
    let out = compose(
        &f.repo(),
        &tf,
        &[
            "--unchanged-exit-77",
            "--write-commitid-to",
            f.p("id").to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(77));
    assert_eq!(fs::read_to_string(f.p("id")).unwrap(), c1);
    assert_eq!(rev_parse(&f.repo(), "r").unwrap(), c1);

    // A changed input: new commit, parent is the old one, next version.
    write(&f.p("ov/etc/motd"), "two\n");
    ok(compose(&f.repo(), &tf, &[]));
    let c2 = rev_parse(&f.repo(), "r").unwrap();
    assert_ne!(c1, c2);
    assert_ne!(
        inputhash(&f.repo(), &c1),
        inputhash(&f.repo(), &c2),
        "changing an overlay file left the input hash as it was"
    );
    assert_eq!(rev_parse(&f.repo(), "r^").unwrap(), c1);
    let log = ostree(&f.repo(), &["log", "r"]);
    assert!(
        log.contains("Version: 1.1") && log.contains("Version: 1.0"),
        "{log}"
    );

    // --force-nocache: a new commit with the identical root tree.
    ok(compose(&f.repo(), &tf, &["--force-nocache"]));
    let c3 = rev_parse(&f.repo(), "r").unwrap();
    assert_ne!(c3, c2);
    assert_eq!(
        inputhash(&f.repo(), &c2),
        inputhash(&f.repo(), &c3),
        "the input hash changed although no input did"
    );
    assert_eq!(
        ostree(&f.repo(), &["ls", "-RC", &c2]),
        ostree(&f.repo(), &["ls", "-RC", &c3])
    );
    assert_eq!(
        ostree(&f.repo(), &["show", "r", "--print-metadata-key=version"]).trim(),
        "'1.2'"
    );
}

#[test]
fn tarball_bases_give_the_same_tree_as_a_directory() {
    let f = fixture();
    let tf_dir = f.treefile("dir.toml", "ref = \"from-dir\"\nbase = \"base\"\n");
    ok(compose(&f.repo(), &tf_dir, &[]));
    let want = ostree(&f.repo(), &["ls", "-RCX", "from-dir"]);
    for (name, flag) in [
        ("base.tar", None),
        ("base.tar.gz", Some("--gzip")),
        ("base.tar.zst", Some("--zstd")),
    ] {
        let mut cmd = Command::new("tar");
        cmd.args([
            "--create",
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-f",
        ])
        .arg(f.p(name))
        .arg("-C")
        .arg(f.p("base"));
        if let Some(flag) = flag {
            cmd.arg(flag);
        }
        assert!(cmd.arg(".").status().unwrap().success());
        let refname = format!("from-{}", name.replace('.', "-"));
        let tf = f.treefile(
            &format!("{refname}.toml"),
            &format!("ref = \"{refname}\"\nbase = \"{name}\"\n"),
        );
        ok(compose(&f.repo(), &tf, &[]));
        assert_eq!(ostree(&f.repo(), &["ls", "-RCX", &refname]), want, "{name}");
    }
    // bzip2 is refused by name, before anything is written.
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -cjf {} -C {} .",
            f.p("base.tar.bz2").display(),
            f.p("base").display()
        ))
        .status()
        .unwrap();
    assert!(st.success());
    let tf = f.treefile("bz.toml", "ref = \"bz\"\nbase = \"base.tar.bz2\"\n");
    let out = compose(&f.repo(), &tf, &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unsupported tarball compression: bzip2"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("base.tar.bz2"));
    assert_eq!(rev_parse(&f.repo(), "bz"), None);
}

/// Everything a failed compose could leave behind: the ref, repo objects and
/// temporary files, the work directory, the current directory.
fn snapshot(f: &ComposeDir) -> Vec<String> {
    let mut out = Vec::new();
    for root in [f.repo(), f.p("work")] {
        for e in walkdir::WalkDir::new(&root).sort_by_file_name() {
            let e = e.unwrap();
            out.push(e.path().display().to_string());
            if e.file_type().is_file() && !e.path().ends_with("repo/.lock") {
                out.push(format!("{:x?}", fs::read(e.path()).unwrap()));
            }
        }
    }
    out
}

#[test]
fn failures_name_the_cause_and_leave_nothing_behind() {
    let f = fixture();
    fs::create_dir(f.p("work")).unwrap();
    let tf = f.treefile("good.toml", "ref = \"r\"\nbase = \"base\"\n");
    ok(compose(&f.repo(), &tf, &[]));
    let before = snapshot(&f);
    let work = f.p("work");
    let cases: Vec<(&str, String, &str)> = vec![
        ("missing-base", "ref = \"r\"\nbase = \"nope\"\n".into(), "key `base`"),
        ("missing-overlay", "ref = \"r\"\nbase = \"base\"\noverlays = [\"gone\"]\n".into(), "gone does not exist"),
        (
            "failing-script",
            "ref = \"r\"\nbase = \"base\"\npostprocess = [\"true\", \"echo about to fail; echo oops >&2; exit 3\"]\n".into(),
            "postprocess[1]",
        ),
        ("etc-and-usr-etc", "ref = \"r\"\nbase = \"base\"\noverlays = [\"usretc\"]\n".into(), "both /etc and /usr/etc"),
        ("bad-key", "ref = \"r\"\nbase = \"base\"\n\nunits = \"x.service\"\n".into(), ":4:"),
    ];
    write(&f.p("usretc/usr/etc/foo"), "x\n");
    for (name, body, expect) in cases {
        let tf = f.treefile(&format!("{name}.toml"), &body);
        let out = compose(&f.repo(), &tf, &["--workdir", work.to_str().unwrap()]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains(expect),
            "{name}: expected {expect:?} in: {err}"
        );
        let last = err.lines().filter(|l| l.starts_with("error:")).count();
        assert_eq!(last, 1, "{name}: one error line: {err}");
        assert_eq!(
            snapshot(&f),
            before,
            "{name} changed the repo or left files"
        );
    }
    // The failing script's own output is shown.
    let out = compose(&f.repo(), &f.p("failing-script.toml"), &[]);
    let err = stderr(&out);
    assert!(
        err.contains("about to fail") && err.contains("oops") && err.contains("exit status: 3"),
        "{err}"
    );
    let out = compose(&f.repo(), &f.p("bad-key.toml"), &[]);
    assert!(
        stderr(&out).contains("bad-key.toml:4:") && stderr(&out).contains("key `units`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_failed_first_compose_creates_no_repo() {
    let f = fixture();
    let tf = f.treefile(
        "t.toml",
        "ref = \"r\"\nbase = \"base\"\npostprocess = [\"exit 1\"]\n",
    );
    let out = compose(&f.repo(), &tf, &[]);
    assert!(!out.status.success());
    assert!(
        !f.repo().exists(),
        "the repo must only be created when there is a commit to write"
    );
}

#[test]
fn unmerged_usr_is_merged_and_conflicts_are_refused() {
    let f = fixture();
    let b = f.p("unmerged");
    fs::create_dir_all(b.join("usr/bin")).unwrap();
    fs::create_dir_all(b.join("bin")).unwrap();
    fs::copy("/bin/busybox", b.join("bin/busybox")).unwrap();
    symlink("busybox", b.join("bin/sh")).unwrap();
    write(&b.join("usr/bin/tool"), "tool\n");
    write(&b.join("bin/same"), "identical\n");
    write(&b.join("usr/bin/same"), "identical\n");
    let tf = f.treefile(
        "u.toml",
        "ref = \"u\"\nbase = \"unmerged\"\npostprocess = [\"test -x /bin/busybox\"]\n",
    );
    ok(compose(&f.repo(), &tf, &[]));
    let l = ostree(&f.repo(), &["ls", "-R", "u"]);
    assert!(
        l.contains(" /bin -> usr/bin\n")
            && l.contains(" /usr/bin/busybox\n")
            && l.contains(" /usr/bin/tool\n"),
        "{l}"
    );

    write(&b.join("bin/same"), "different\n");
    let out = compose(&f.repo(), &tf, &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/bin/same and /usr/bin/same both exist and differ"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn includes_merge_with_the_including_file_winning() {
    let f = fixture();
    write(&f.p("common/ov/etc/common"), "from common\n");
    f.treefile(
        "common/base.toml",
        "ref = \"common\"\nbase = \"../base\"\noverlays = [\"ov\"]\nautomatic-version-prefix = \"3\"\n[metadata]\nowner = \"common\"\nteam = \"infra\"\n",
    );
    write(&f.p("top-ov/etc/top"), "from top\n");
    let tf = f.treefile(
        "top.toml",
        "include = [\"common/base.toml\"]\nref = \"top\"\noverlays = [\"top-ov\"]\n[metadata]\nowner = \"top\"\n",
    );
    ok(compose(&f.repo(), &tf, &[]));
    assert_eq!(rev_parse(&f.repo(), "common"), None);
    let r = &f.repo();
    assert_eq!(
        ostree(r, &["cat", "top", "/usr/etc/common"]),
        "from common\n"
    );
    assert_eq!(ostree(r, &["cat", "top", "/usr/etc/top"]), "from top\n");
    let md = |k: &str| {
        ostree(r, &["show", "top", &format!("--print-metadata-key={k}")])
            .trim()
            .to_string()
    };
    assert_eq!(md("owner"), "'top'");
    assert_eq!(md("team"), "'infra'");
    assert_eq!(md("version"), "'3.0'");
    // A change in an included file is a change.
    write(&f.p("common/ov/etc/common"), "changed\n");
    ok(compose(&f.repo(), &tf, &["--unchanged-exit-77"]));
    assert_eq!(md("version"), "'3.1'");
}

#[test]
fn the_builtin_example_composes() {
    let f = fixture();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("treefiles/example.toml");
    ok(compose(&f.repo(), &example, &[]));
    let l = ostree(&f.repo(), &["ls", "-R", "example/x86_64/demo"]);
    assert!(l.contains(" /usr/etc/example/example.conf\n"), "{l}");
    assert!(!l.contains("notes.tmp"));
    ostree(&f.repo(), &["fsck"]);
}

/// docs/treefile.md, `remove-files`: "A pattern never follows symlinks out of
/// the tree." A base link to a directory outside, and patterns that would
/// match through it: what is outside stays byte for byte.
#[test]
fn remove_files_never_follows_a_symlink_out_of_the_tree() {
    let f = fixture();
    let outside = tempfile::tempdir().unwrap();
    let canary = outside.path().join("canary");
    write(&canary.join("x"), "must survive\n");
    write(&canary.join("sub/y"), "must survive too\n");
    fs::create_dir_all(f.p("base/usr/share")).unwrap();
    symlink(&canary, f.p("base/usr/share/evil")).unwrap();
    let before = fingerprint(outside.path());
    let tf = f.treefile(
        "t.toml",
        "ref = \"r\"\nbase = \"base\"\nremove-files = [\"/usr/share/evil/*\", \"/usr/share/evil/x\", \"usr/share/evil/sub\"]\n",
    );
    let out = compose(&f.repo(), &tf, &[]);
    let err = stderr(&out);
    ok(out);
    assert_eq!(fingerprint(outside.path()), before, "outside the tree");
    for p in [
        "/usr/share/evil/*",
        "/usr/share/evil/x",
        "usr/share/evil/sub",
    ] {
        assert!(
            err.contains(&format!("`{p}` matched nothing")),
            "no warning for {p}: {err}"
        );
    }
    // The link itself is part of the tree and is committed as a link.
    let l = ostree(&f.repo(), &["ls", "r", "/usr/share/evil"]);
    assert!(
        l.contains(&format!(" /usr/share/evil -> {}", canary.display())),
        "{l}"
    );
    // Removing the link removes the link, not what it points to.
    let tf = f.treefile(
        "t.toml",
        "ref = \"r\"\nbase = \"base\"\nremove-files = [\"/usr/share/evil\"]\n",
    );
    ok(compose(&f.repo(), &tf, &[]));
    assert_eq!(fingerprint(outside.path()), before, "outside the tree");
    let l = ostree(&f.repo(), &["ls", "r", "/usr/share"]);
    assert!(!l.contains("evil"), "{l}");
}

/// docs/treefile.md, "What makes a compose happen": the input hash covers the
/// mode and owner of each file of the base, so a chmod or a chown alone is a
/// new compose; an untouched rerun is not.
#[test]
fn a_mode_or_owner_change_of_a_base_file_is_a_new_compose() {
    let f = fixture();
    let tf = f.treefile("t.toml", "ref = \"r\"\nbase = \"base\"\n");
    let r = &f.repo();
    ok(compose(r, &tf, &[]));
    let c1 = rev_parse(r, "r").unwrap();
    let ls = |what: &str| ostree(r, &["ls", what, "/usr/etc/app.conf"]);
    assert!(ls("r").starts_with("-00644 0 0 "), "{}", ls("r"));

    let out = compose(r, &tf, &["--unchanged-exit-77"]);
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    assert_eq!(rev_parse(r, "r").unwrap(), c1);

    let conf = f.p("base/etc/app.conf");
    fs::set_permissions(&conf, fs::Permissions::from_mode(0o600)).unwrap();
    let out = compose(r, &tf, &["--unchanged-exit-77"]);
    assert_eq!(out.status.code(), Some(0), "mode only: {}", stderr(&out));
    let c2 = rev_parse(r, "r").unwrap();
    assert_ne!(c2, c1, "a mode change made no new commit");
    assert_eq!(rev_parse(r, "r^").unwrap(), c1);
    assert!(ls("r").starts_with("-00600 0 0 "), "{}", ls("r"));

    chown(&conf, Some(1234), Some(1234)).unwrap();
    let out = compose(r, &tf, &["--unchanged-exit-77"]);
    assert_eq!(out.status.code(), Some(0), "owner only: {}", stderr(&out));
    let c3 = rev_parse(r, "r").unwrap();
    assert_ne!(c3, c2, "an owner change made no new commit");
    assert!(ls("r").starts_with("-00600 1234 1234 "), "{}", ls("r"));
    assert_eq!(
        fs::read_to_string(&conf).unwrap(),
        "setting = base\n",
        "the content never changed"
    );

    let out = compose(r, &tf, &["--unchanged-exit-77"]);
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    assert_eq!(rev_parse(r, "r").unwrap(), c3);
}

fn mknod(p: &Path, mode: libc::mode_t, dev: libc::dev_t) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let r = unsafe { libc::mknod(c.as_ptr(), mode, dev) };
    assert_eq!(
        r,
        0,
        "mknod {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

/// docs/treefile.md, "/var is emptied": sockets, FIFOs and device nodes under
/// /var are dropped with a warning naming each; the commit has no trace of them.
#[test]
fn special_files_in_var_are_dropped_with_a_warning() {
    let f = fixture();
    let spool = f.p("base/var/spool/app");
    fs::create_dir_all(&spool).unwrap();
    mknod(&spool.join("fifo"), libc::S_IFIFO | 0o644, 0);
    mknod(
        &spool.join("null-device"),
        libc::S_IFCHR | 0o666,
        libc::makedev(1, 3),
    );
    let sock = std::os::unix::net::UnixListener::bind(spool.join("socket")).unwrap();
    drop(sock);
    for name in ["fifo", "null-device", "socket"] {
        let t = fs::symlink_metadata(spool.join(name)).unwrap().file_type();
        assert!(!t.is_file() && !t.is_dir() && !t.is_symlink(), "{name}");
    }
    let tf = f.treefile("t.toml", "ref = \"r\"\nbase = \"base\"\n");
    let out = compose(&f.repo(), &tf, &[]);
    let err = stderr(&out);
    ok(out);
    let listing = ostree(&f.repo(), &["ls", "-R", "r"]);
    let tmpfiles = ostree(
        &f.repo(),
        &["cat", "r", "/usr/lib/tmpfiles.d/hostctl-var.conf"],
    );
    for name in ["fifo", "null-device", "socket"] {
        let path = format!("/var/spool/app/{name}");
        assert!(
            err.lines()
                .any(|l| l.starts_with("warning:") && l.contains(&format!("{path} "))),
            "no warning naming {path}: {err}"
        );
        assert!(!listing.contains(name), "{name} committed:\n{listing}");
        assert!(
            !tmpfiles.contains(name),
            "{name} in tmpfiles.d:\n{tmpfiles}"
        );
    }
    // The directory holding them still comes back.
    assert!(
        tmpfiles.lines().any(|l| l.starts_with("d /var/spool/app ")),
        "{tmpfiles}"
    );
}

/// docs/treefile.md: "/tmp and /run are emptied", and to scripts they are
/// "empty scratch space that is not committed".
#[test]
fn tmp_and_run_are_committed_empty() {
    let f = fixture();
    write(&f.p("base/tmp/leftover"), "from the base\n");
    write(&f.p("base/tmp/dir/nested"), "from the base\n");
    write(&f.p("base/run/app.pid"), "42\n");
    write(&f.p("base/run/lock/subsys/x"), "\n");
    let tf = f.treefile(
        "t.toml",
        r#"ref = "r"
base = "base"
postprocess = [
  "test ! -e /tmp/leftover && test ! -e /run/app.pid",
  "echo scratch > /tmp/from-script && mkdir -p /run/script && echo x > /run/script/state",
]
"#,
    );
    ok(compose(&f.repo(), &tf, &[]));
    for dir in ["/tmp", "/run"] {
        let l = ostree(&f.repo(), &["ls", "-R", "r", dir]);
        assert_eq!(l.lines().count(), 1, "{dir} is not empty:\n{l}");
        let mode = if dir == "/tmp" {
            "d01777 0 0 "
        } else {
            "d00755 0 0 "
        };
        assert!(l.starts_with(mode), "{dir}: {l}");
    }
}

/// docs/treefile.md, "/var is emptied": what the tree had under /var comes back
/// when the real systemd-tmpfiles runs the commit's tmpfiles.d file, checked
/// entry by entry (type, mode, owner, content, link target) against the base.
#[test]
fn systemd_tmpfiles_recreates_var_as_the_tree_had_it() {
    let f = fixture();
    let b = f.p("base");
    fs::create_dir_all(b.join("var/log/journal")).unwrap();
    fs::set_permissions(
        b.join("var/log/journal"),
        fs::Permissions::from_mode(0o2755),
    )
    .unwrap();
    fs::create_dir_all(b.join("var/cache/app")).unwrap();
    chown(b.join("var/cache/app"), Some(1234), Some(0)).unwrap();
    fs::set_permissions(b.join("var/cache/app"), fs::Permissions::from_mode(0o700)).unwrap();
    symlink("state", b.join("var/lib/svc/current")).unwrap();
    symlink("../lib/svc", b.join("var/cache/svc-link")).unwrap();
    // Names tmpfiles.d must quote, escape or keep from specifier expansion.
    write(&b.join("var/lib/svc/with space"), "spaced\n");
    write(&b.join("var/lib/svc/50%m back\\slash"), "percent\n");
    symlink("with space", b.join("var/lib/svc/link to %h")).unwrap();
    chown(b.join("var/lib/svc/state"), Some(1234), Some(1234)).unwrap();
    let tf = f.treefile("t.toml", "ref = \"r\"\nbase = \"base\"\n");
    ok(compose(&f.repo(), &tf, &[]));

    // A deployment's view: the commit checked out, /usr/etc as /etc, an
    // empty /var. Then the boot's tmpfiles run, by systemd's own tool.
    let root = f.p("checkout");
    sh(Command::new("ostree")
        .arg(format!("--repo={}", f.repo().display()))
        .args(["checkout", "r"])
        .arg(&root));
    sh(Command::new("cp")
        .arg("-a")
        .arg(root.join("usr/etc"))
        .arg(root.join("etc")));
    assert_eq!(fs::read_dir(root.join("var")).unwrap().count(), 0);
    sh(Command::new("systemd-tmpfiles")
        .arg("--create")
        .arg(format!("--root={}", root.display()))
        .arg("--prefix=/var"));

    let want = fingerprint(&b.join("var"));
    let got = fingerprint(&root.join("var"));
    let mut missing = Vec::new();
    for (path, entry) in want.iter().filter(|(p, _)| !p.is_empty()) {
        match got.get(path) {
            Some(g) if g == entry => {}
            other => missing.push(format!("{path}: tree had {entry}, tmpfiles made {other:?}")),
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
    // Moved top-level directories come back under /var too.
    assert_eq!(
        fs::read_to_string(root.join("var/home/alice/.profile")).unwrap(),
        "# alice\n"
    );
    let roothome = fs::symlink_metadata(root.join("var/roothome")).unwrap();
    assert!(roothome.is_dir() && roothome.permissions().mode() & 0o7777 == 0o700);
}
