//! Bad input at compose, tried as a careless or hostile treefile author
//! would (issue 9): trees that cannot boot, files a commit cannot hold, a
//! `--repo` that is not a directory, TOML syntax errors, two composes of one
//! ref at once. Each refusal checks the message names what was wrong, that
//! no GLib critical was printed, and that the repository (ref included) is
//! byte-for-byte as it was. Needs root (owners, device nodes).

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{
    assert_no_glib_noise, assert_same, fingerprint, hostctl_cmd, ok, rev_parse, run_hostctl,
    stderr, write, ComposeDir,
};

const KVER: &str = "6.1.0-99-amd64";

/// A small merged-/usr tree with a (fake) kernel, no packages.
fn make_base(dir: &Path) {
    for d in ["usr/bin", "usr/sbin", "usr/lib", "var"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    symlink("usr/bin", dir.join("bin")).unwrap();
    symlink("usr/sbin", dir.join("sbin")).unwrap();
    symlink("usr/lib", dir.join("lib")).unwrap();
    write(&dir.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n");
    write(&dir.join("etc/group"), "root:x:0:\n");
    write(&dir.join("usr/bin/tool"), "#!/bin/sh\necho tool\n");
    write(&dir.join("usr/sbin/init"), "#!/bin/sh\n");
    write(
        &dir.join(format!("usr/lib/modules/{KVER}/vmlinuz")),
        "kernel\n",
    );
    write(
        &dir.join(format!("usr/lib/modules/{KVER}/initramfs.img")),
        "initramfs\n",
    );
}

/// A compose directory holding a base and one commit on ref `r`.
struct Fx(ComposeDir);

impl std::ops::Deref for Fx {
    type Target = ComposeDir;
    fn deref(&self) -> &ComposeDir {
        &self.0
    }
}

impl Fx {
    fn new() -> Fx {
        let fx = Fx(ComposeDir::new());
        make_base(&fx.p("base"));
        let tf = fx.treefile("good.toml", "ref = \"r\"\nbase = \"base\"\n");
        ok(fx.compose(&tf));
        fx
    }
    fn compose_cmd(&self, repo: &Path, treefile: &Path) -> Command {
        let mut cmd = hostctl_cmd();
        cmd.args(["compose", "tree", "--repo"])
            .arg(repo)
            .arg(treefile);
        cmd
    }
    fn compose(&self, treefile: &Path) -> Output {
        run_hostctl(&mut self.compose_cmd(&self.repo(), treefile))
    }
    fn rev_parse(&self, refname: &str) -> Option<String> {
        rev_parse(&self.repo(), refname)
    }
}

/// Compose `body` (ref `r`), expect exit 1 with `expect` in the message,
/// the ref where it was and the repository unchanged.
fn refused(fx: &Fx, name: &str, body: &str, expect: &[&str]) -> String {
    refused_with(fx, name, body, &[], expect)
}

/// [`refused`] with more arguments for `hostctl compose tree`.
fn refused_with(fx: &Fx, name: &str, body: &str, args: &[&str], expect: &[&str]) -> String {
    let head = fx.rev_parse("r").expect("ref r exists");
    let before = fingerprint(&fx.repo());
    let tf = fx.treefile(&format!("{name}.toml"), body);
    let mut cmd = hostctl_cmd();
    cmd.args(["compose", "tree", "--repo"])
        .arg(fx.repo())
        .args(args)
        .arg(&tf)
        .env_remove("HOSTCTL_DEB");
    let out = run_hostctl(&mut cmd);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{name}: {err}");
    for e in expect {
        assert!(err.contains(e), "{name}: expected {e:?} in:\n{err}");
    }
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{name}: one error line:\n{err}"
    );
    assert_eq!(fx.rev_parse("r"), Some(head), "{name} moved the ref");
    assert_same(&before, &fingerprint(&fx.repo()), name);
    err
}

#[test]
fn a_tree_that_cannot_boot_is_refused_before_the_ref_moves() {
    let fx = Fx::new();
    refused(
        &fx,
        "no-usr",
        "ref = \"r\"\nbase = \"base\"\nremove-files = [\"/usr\"]\n",
        &["no /usr", "cannot boot"],
    );
    refused(
        &fx,
        "everything",
        "ref = \"r\"\nbase = \"base\"\nremove-files = [\"*\"]\n",
        &["no /usr", "cannot boot"],
    );
    refused(
        &fx,
        "empty-usr",
        "ref = \"r\"\nbase = \"base\"\nremove-files = [\"/usr/*\"]\n",
        &["/usr is empty", "cannot boot"],
    );
    refused(
        &fx,
        "dangling-bin",
        "ref = \"r\"\nbase = \"base\"\nremove-files = [\"/usr/bin\"]\n",
        &["/bin -> usr/bin", "cannot boot"],
    );
    refused(
        &fx,
        "dangling-sbin",
        "ref = \"r\"\nbase = \"base\"\nremove-files = [\"/usr/sbin\"]\n",
        &["/sbin -> usr/sbin", "cannot boot"],
    );
    // Without packages a tree without a kernel is still a valid commit (a
    // layer, a test tree); removing only the kernel composes.
    let tf = fx.treefile(
        "nokernel.toml",
        "ref = \"r\"\nbase = \"base\"\nremove-files = [\"/usr/lib/modules\"]\n",
    );
    ok(fx.compose(&tf));
}

/// `install-hostctl` without hostctl's package, or with a file that is not
/// it, is refused before any work, naming the treefile, the key and the
/// file (issue 14).
#[test]
fn install_hostctl_without_the_hostctl_package_is_refused() {
    let fx = Fx::new();
    let body = "ref = \"r\"\nbase = \"base\"\ninstall-hostctl = true\n";
    let err = refused(
        &fx,
        "no-deb",
        body,
        &[
            "no-deb.toml",
            "install-hostctl",
            "--hostctl-deb",
            "HOSTCTL_DEB",
            "scripts/build-deb.sh",
        ],
    );
    eprintln!("without --hostctl-deb: {err}");
    let debs = fx.p("debs");
    fs::create_dir_all(&debs).unwrap();
    let other = common::fake_deb(&debs, "nothostctl", "1.0", "amd64", &[]);
    let err = refused_with(
        &fx,
        "other-package",
        body,
        &["--hostctl-deb", other.to_str().unwrap()],
        &[
            "other-package.toml",
            "install-hostctl",
            other.to_str().unwrap(),
            "`nothostctl`, not `hostctl`",
        ],
    );
    eprintln!("another package: {err}");
    let foreign = common::fake_deb(&debs, "hostctl", "1.0", "arm64", &[]);
    refused_with(
        &fx,
        "foreign",
        body,
        &["--hostctl-deb", foreign.to_str().unwrap()],
        &["architecture arm64"],
    );
    let not_deb = debs.join("text.deb");
    fs::write(&not_deb, "not a package\n").unwrap();
    refused_with(
        &fx,
        "not-a-deb",
        body,
        &["--hostctl-deb", not_deb.to_str().unwrap()],
        &[not_deb.to_str().unwrap(), "not a Debian package"],
    );
    let missing = debs.join("missing.deb");
    refused_with(
        &fx,
        "missing",
        body,
        &["--hostctl-deb", missing.to_str().unwrap()],
        &[missing.to_str().unwrap(), "cannot be read"],
    );
}

#[test]
fn special_files_in_a_base_are_named_by_their_path_in_the_base() {
    let fx = Fx::new();
    let base = fx.p("base");
    fs::create_dir_all(base.join("usr/lib/app")).unwrap();
    let fifo = base.join("usr/lib/app/control.fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    refused(
        &fx,
        "fifo",
        "ref = \"r\"\nbase = \"base\"\n",
        &["/usr/lib/app/control.fifo", "FIFO"],
    );
    fs::remove_file(&fifo).unwrap();
    let dev = base.join("etc/app/null");
    fs::create_dir_all(dev.parent().unwrap()).unwrap();
    assert!(Command::new("mknod")
        .arg(&dev)
        .args(["c", "1", "3"])
        .status()
        .unwrap()
        .success());
    refused(
        &fx,
        "device",
        "ref = \"r\"\nbase = \"base\"\n",
        &["/etc/app/null", "character device"],
    );
    // remove-files can take such a file out, and /dev is emptied anyway.
    let tf = fx.treefile(
        "removed.toml",
        "ref = \"r\"\nbase = \"base\"\nremove-files = [\"/etc/app/null\"]\n",
    );
    fs::create_dir_all(base.join("dev")).unwrap();
    assert!(Command::new("mknod")
        .arg(base.join("dev/null"))
        .args(["c", "1", "3"])
        .status()
        .unwrap()
        .success());
    ok(fx.compose(&tf));
}

#[test]
fn a_name_that_is_not_utf8_is_shown_with_its_bytes_escaped() {
    let fx = Fx::new();
    let dir = fx.p("base/usr/share/app");
    fs::create_dir_all(&dir).unwrap();
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9-menu.txt");
    fs::write(dir.join(name), "x\n").unwrap();
    refused(
        &fx,
        "non-utf8",
        "ref = \"r\"\nbase = \"base\"\n",
        &["/usr/share/app/caf\\xe9-menu.txt", "UTF-8"],
    );
}

#[test]
fn a_repo_that_is_a_regular_file_is_refused_before_any_build_work() {
    let fx = Fx::new();
    let file = fx.p("not-a-repo");
    fs::write(&file, "precious\n").unwrap();
    let tf = fx.p("good.toml");
    for repo in [file.clone(), file.join("repo")] {
        let out = run_hostctl(&mut fx.compose_cmd(&repo, &tf));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("{} is not a directory", file.display())),
            "{err}"
        );
        assert!(
            !err.contains("Populating"),
            "the tree was built before the repo was checked:\n{err}"
        );
        assert_eq!(fs::read_to_string(&file).unwrap(), "precious\n");
    }
}

#[test]
fn a_toml_syntax_error_names_where_the_problem_starts() {
    let fx = Fx::new();
    // An array left open: the parser only notices at the end of the file.
    let err = refused(
        &fx,
        "open-array",
        "ref = \"r\"\nbase = \"base\"\nunits = [\"a.service\",\n\n\n# more\n",
        &["open-array.toml:3:9:", "`[` is never closed"],
    );
    assert!(!err.contains(":7:"), "{err}");
    // A table header left open names the header, not the key above it.
    let err = refused(
        &fx,
        "open-header",
        "ref = \"r\"\nbase = \"base\"\n[metadata\nowner = \"me\"\n",
        &["open-header.toml:3:1:", "table header"],
    );
    assert!(!err.contains("key `base`"), "{err}");
    refused(
        &fx,
        "open-string",
        "ref = \"r\"\nbase = \"base\"\n[metadata]\nowner = \"me\n",
        &["open-string.toml:4:9:", "string is never closed"],
    );
}

#[test]
fn usage_errors_exit_2_as_documented() {
    let out = run_hostctl(Command::new(common::hostctl_bin()).args(["compose", "bogus"]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let doc =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/cli.md")).unwrap();
    let section = doc
        .split("## Exit status")
        .nth(1)
        .expect("docs/cli.md has an exit status section");
    let section = section.split("\n## ").next().unwrap();
    for code in ["`0`", "`1`", "`2`", "`77`"] {
        assert!(section.contains(code), "{code} not documented:\n{section}");
    }
}

/// The file `hostctl compose` locks for `refname` in `repo`.
fn compose_lock(repo: &Path, refname: &str) -> PathBuf {
    repo.join("tmp").join(format!(
        "hostctl-compose-{}.lock",
        refname.replace('%', "%25").replace('/', "%2F")
    ))
}

#[test]
fn a_second_compose_of_a_ref_waits_for_the_first() {
    let fx = Fx::new();
    let refname = "test/x86_64/locked";
    let tf = fx.treefile(
        "locked.toml",
        &format!("ref = \"{refname}\"\nbase = \"base\"\noverlays = [\"ov\"]\n"),
    );
    write(&fx.p("ov/etc/motd"), "one\n");
    ok(fx.compose(&tf));
    let first = fx.rev_parse(refname).unwrap();

    // Another compose holds the lock (flock(1) stands in for it); it says
    // "held" once it has it and lets go when its stdin closes.
    let lock = compose_lock(&fx.repo(), refname);
    let mut holder = Command::new("flock")
        .arg(&lock)
        .args(["-c", "echo held; read _ || true"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "held\n");

    write(&fx.p("ov/etc/motd"), "two\n");
    let mut cmd = fx.compose_cmd(&fx.repo(), &tf);
    let mut second = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let err = second.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for l in BufReader::new(err).lines() {
            let l = l.unwrap();
            all.push_str(&l);
            all.push('\n');
            let _ = tx.send(l);
        }
        all
    });
    // Every line until the waiting message; the channel closes (and the
    // test fails) if the compose ends without waiting.
    let waiting = loop {
        match rx.recv_timeout(Duration::from_secs(300)) {
            Ok(l) if l.starts_with("Waiting for") => break l,
            Ok(_) => continue,
            Err(e) => panic!("no waiting message before the compose ended: {e}"),
        }
    };
    assert!(
        waiting.contains(refname) && waiting.contains(&fx.repo().display().to_string()),
        "{waiting}"
    );
    assert!(second.try_wait().unwrap().is_none(), "it must still wait");
    assert_eq!(fx.rev_parse(refname), Some(first.clone()));

    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
    let status = second.wait().unwrap();
    let all = reader.join().unwrap();
    assert_no_glib_noise(&all, &"the waiting compose");
    assert!(status.success(), "{all}");
    let head = fx.rev_parse(refname).unwrap();
    assert_ne!(head, first);
    assert_eq!(fx.rev_parse(&format!("{refname}^")), Some(first));
}
