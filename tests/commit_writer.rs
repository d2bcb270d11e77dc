//! hostctl's archive commit writer against the `ostree` CLI: the same trees
//! give the same dirtree, dirmeta and content objects as `ostree commit`,
//! a checkout gives back the input, and a writer killed at any point leaves
//! the ref where it was and no partial object in `objects/`. Needs root
//! (owners, setuid, security.* xattrs), `getfattr` (package `attr`) and
//! `setcap` (`libcap2-bin`).

use std::fs;
use std::os::unix::fs::{chown, symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::*;

fn ostree(repo: &Path, args: &[&str]) -> String {
    sh(Command::new("ostree")
        .arg(format!("--repo={}", repo.display()))
        .args(args))
}

fn init_archive(repo: &Path) {
    ostree(repo, &["init", "--mode=archive"]);
}

fn hostctl_commit(repo: &Path, refname: &str, tree: &Path) -> String {
    let out = ok(hostctl_run(&[
        "compose",
        "commit",
        "--repo",
        repo.to_str().unwrap(),
        "--ref",
        refname,
        tree.to_str().unwrap(),
    ]));
    out.trim().rsplit(' ').next().unwrap().to_string()
}

fn ostree_commit(repo: &Path, refname: &str, tree: &Path) -> String {
    ostree(
        repo,
        &[
            "commit",
            &format!("--branch={refname}"),
            &format!("--tree=dir={}", tree.display()),
        ],
    )
    .trim()
    .to_string()
}

/// `ostree ls -C -d REV /`: mode, owner, contents (dirtree) and metadata
/// (dirmeta) checksums of the root.
fn root_line(repo: &Path, rev: &str) -> String {
    ostree(repo, &["ls", "-C", "-d", rev, "/"])
        .trim()
        .to_string()
}

/// Every object file in the repository but commits and their metadata
/// (which carry a timestamp and differ between any two commits).
fn objects(repo: &Path) -> Vec<String> {
    let mut v: Vec<String> = walkdir::WalkDir::new(repo.join("objects"))
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            e.path()
                .strip_prefix(repo.join("objects"))
                .unwrap()
                .display()
                .to_string()
        })
        .filter(|p| !p.ends_with(".commit") && !p.ends_with(".commitmeta"))
        .collect();
    v.sort();
    v
}

/// Owners, modes and types of every entry, and every xattr, as the
/// standard tools print them.
fn attributes(dir: &Path) -> String {
    let find = sh(Command::new("find")
        .arg(".")
        .args(["-printf", "%P %y %U %G %#m\n"])
        .current_dir(dir));
    let mut lines: Vec<&str> = find.lines().collect();
    lines.sort();
    let xattrs = sh(Command::new("getfattr")
        .args(["-R", "-P", "-h", "-d", "-m", "-", "-e", "hex", "."])
        .current_dir(dir));
    // libostree keeps no xattr with an empty value (nor does hostctl, to
    // give the same checksums): the checkout cannot have them.
    let xattrs: Vec<&str> = xattrs
        .lines()
        .filter(|l| !l.starts_with("user.empty"))
        .collect();
    format!("{}\n{}", lines.join("\n"), xattrs.join("\n"))
}

/// libostree itself reads every loose content object and checks it against
/// its name: a truncated or half-written one fails to decompress or hashes
/// to something else. `ostree fsck` only reads objects a commit reaches.
fn every_content_object_is_whole(repo_path: &Path) {
    let repo = open_repo(repo_path);
    for rel in objects(repo_path) {
        check_object(&repo, repo_path, &rel).unwrap_or_else(|e| panic!("{e}"));
    }
}

fn open_repo(path: &Path) -> ostree::Repo {
    let repo = ostree::Repo::new_for_path(path);
    repo.open(ostree::gio::Cancellable::NONE).unwrap();
    repo
}

/// `rel` (under `objects/`) is a whole object, or the reason it is not.
fn check_object(repo: &ostree::Repo, repo_path: &Path, rel: &str) -> Result<(), String> {
    if rel.ends_with(".dirtree") || rel.ends_with(".dirmeta") {
        return Ok(());
    }
    if !rel.ends_with(".filez") {
        return Err(format!(
            "{}: a file in objects/ that is no object: {rel}",
            repo_path.display()
        ));
    }
    let checksum = rel.replace('/', "").trim_end_matches(".filez").to_string();
    let (input, info, xattrs) = repo
        .load_file(&checksum, ostree::gio::Cancellable::NONE)
        .map_err(|e| format!("loading {rel}: {e}"))?;
    let again = ostree::checksum_file_from_input(
        &info,
        Some(&xattrs),
        input.as_ref(),
        ostree::ObjectType::File,
        ostree::gio::Cancellable::NONE,
    )
    .map_err(|e| format!("reading {rel}: {e}"))?
    .to_hex();
    if again != checksum {
        return Err(format!("{rel} holds another object ({again})"));
    }
    Ok(())
}

/// Commits `tree` with hostctl into `h` and with the ostree CLI into `o`
/// (both archive repositories, ref `t`) and checks everything the two
/// should agree on.
fn same_as_ostree(tree: &Path, h: &Path, o: &Path) {
    let hc = hostctl_commit(h, "t", tree);
    ostree_commit(o, "t", tree);
    assert_eq!(
        ostree(h, &["ls", "-R", "-C", "-X", &hc]),
        ostree(o, &["ls", "-R", "-C", "-X", "t"]),
        "every entry of {}, as ostree ls lists it",
        tree.display()
    );
    assert_eq!(
        root_line(h, &hc),
        root_line(o, "t"),
        "root of {}",
        tree.display()
    );
    ostree(h, &["fsck", "--quiet"]);
    assert_eq!(objects(h), objects(o), "object lists of {}", tree.display());
    every_content_object_is_whole(h);

    let co = tempfile::tempdir().unwrap();
    let out = co.path().join("co");
    ostree(h, &["checkout", &hc, out.to_str().unwrap()]);
    sh(Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(tree)
        .arg(&out));
    // The checkout's root is a new directory: compare below it, and the
    // root's own owner and mode through the dirmeta above.
    assert_eq!(attributes(tree), attributes(&out), "owners, modes, xattrs");
}

fn mode(p: &Path, m: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
}

/// Text-like content that compresses as real files do, `len` bytes.
fn text(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut r = Rng(seed | 1);
    while out.len() < len {
        out.extend_from_slice(
            format!("line {} value {:x}\n", out.len(), r.next() % 1000).as_bytes(),
        );
    }
    out.truncate(len);
    out
}

/// xorshift64: reproducible from a printed seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn seed() -> u64 {
    let s = std::env::var("HOSTCTL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("seed {s} (HOSTCTL_TEST_SEED={s} repeats this run)");
    s
}

/// Everything the writer must get right at once.
fn make_odd_tree(t: &Path) {
    for d in [
        "usr/bin",
        "usr/lib/x",
        "etc/empty.d",
        "home/alice/private",
        "var/empty",
        "opt/deep/a/b/c/d",
    ] {
        fs::create_dir_all(t.join(d)).unwrap();
    }
    fs::write(t.join("usr/bin/tool"), b"#!/bin/sh\necho tool\n").unwrap();
    mode(&t.join("usr/bin/tool"), 0o755);
    // Hard links: one object, whatever the number of names.
    fs::hard_link(t.join("usr/bin/tool"), t.join("usr/bin/tool-link")).unwrap();
    fs::hard_link(t.join("usr/bin/tool"), t.join("usr/lib/x/tool-3")).unwrap();
    // setuid, setgid, sticky.
    fs::write(t.join("usr/bin/su"), b"setuid\n").unwrap();
    mode(&t.join("usr/bin/su"), 0o4755);
    fs::write(t.join("usr/bin/wall"), b"setgid\n").unwrap();
    chown(t.join("usr/bin/wall"), Some(0), Some(5)).unwrap();
    mode(&t.join("usr/bin/wall"), 0o2755);
    mode(&t.join("var/empty"), 0o1777);
    // The same bytes under another owner or mode are other objects.
    fs::write(t.join("usr/bin/same"), b"#!/bin/sh\necho tool\n").unwrap();
    mode(&t.join("usr/bin/same"), 0o700);
    fs::write(t.join("home/alice/private/key"), b"secret\n").unwrap();
    mode(&t.join("home/alice/private/key"), 0o600);
    chown(t.join("home/alice/private/key"), Some(1000), Some(1000)).unwrap();
    chown(t.join("home/alice"), Some(1000), Some(1000)).unwrap();
    mode(&t.join("home/alice/private"), 0o700);
    chown(t.join("home/alice/private"), Some(1000), Some(100)).unwrap();
    fs::write(t.join("usr/lib/x/nobody"), b"n\n").unwrap();
    chown(t.join("usr/lib/x/nobody"), Some(65534), Some(65534)).unwrap();
    // Symlinks: relative, absolute, dangling, to a directory, owned.
    symlink("tool", t.join("usr/bin/rel")).unwrap();
    symlink("/usr/bin/tool", t.join("usr/bin/abs")).unwrap();
    symlink("../nowhere/at/all", t.join("usr/bin/dangling")).unwrap();
    symlink("usr/lib", t.join("lib")).unwrap();
    symlink("x", t.join("usr/lib/owned-link")).unwrap();
    std::os::unix::fs::lchown(t.join("usr/lib/owned-link"), Some(1000), Some(1000)).unwrap();
    // Empty files and directories.
    fs::write(t.join("etc/empty-file"), b"").unwrap();
    fs::write(t.join("usr/lib/x/empty-0600"), b"").unwrap();
    mode(&t.join("usr/lib/x/empty-0600"), 0o600);
    // Long names (255 bytes, the limit) and names that sort oddly.
    fs::write(t.join("etc").join("n".repeat(255)), b"long\n").unwrap();
    fs::create_dir(t.join("opt").join("d".repeat(255))).unwrap();
    for n in ["B", "a", "_", "Z~", "ü-utf8", "a b"] {
        fs::write(t.join("opt").join(n), n.as_bytes()).unwrap();
    }
    // xattrs, on files, directories and symlinks' own (trusted.* can be
    // set on a symlink; user.* cannot).
    set_xattr(&t.join("usr/bin/tool"), "user.b", b"2");
    set_xattr(&t.join("usr/bin/tool"), "user.a", b"1");
    set_xattr(&t.join("usr/bin/tool"), "user.empty", b"");
    set_xattr(&t.join("etc/empty.d"), "user.dir", b"on a dir");
    set_xattr(&t.join("usr/bin/abs"), "trusted.link", b"on a link");
    set_xattr(&t.join("usr/lib/x/nobody"), "user.binary", &[0, 1, 2, 255]);
    let caps = Command::new("setcap")
        .args(["cap_net_raw,cap_net_admin+ep"])
        .arg(t.join("usr/bin/su"))
        .status()
        .expect("setcap (package libcap2-bin)");
    assert!(caps.success(), "setcap failed");
    // setcap clears setuid on some kernels: put it back for the test.
    mode(&t.join("usr/bin/su"), 0o4755);
    // Files of a few MB, and one above the in-memory bound (streamed).
    fs::write(t.join("usr/lib/x/big-text"), text(1, 3 << 20)).unwrap();
    let mut noise = vec![0u8; 2 << 20];
    let mut r = Rng(7);
    noise.iter_mut().for_each(|b| *b = r.next() as u8);
    fs::write(t.join("usr/lib/x/big-noise"), noise).unwrap();
    fs::write(t.join("usr/lib/x/huge"), text(2, (64 << 20) + 12345)).unwrap();
    // Odd directory owner and mode, with contents.
    chown(t.join("opt/deep"), Some(12), Some(34)).unwrap();
    mode(&t.join("opt/deep"), 0o750);
    fs::write(t.join("opt/deep/a/b/c/d/leaf"), b"leaf\n").unwrap();
}

/// The tree with hard links, xattrs, setuid, symlinks, empty files and
/// directories, long names, large files and odd owners; then again after
/// changes, where only the changed objects are new.
#[test]
fn odd_tree_gives_what_ostree_commit_gives() {
    let d = tempfile::tempdir().unwrap();
    let (t, h, o) = (
        d.path().join("tree"),
        d.path().join("h"),
        d.path().join("o"),
    );
    fs::create_dir(&t).unwrap();
    make_odd_tree(&t);
    init_archive(&o);
    same_as_ostree(&t, &h, &o);

    // A second commit into the same repositories: unchanged files are found
    // in the repository, changed ones written.
    fs::write(t.join("usr/bin/su"), b"changed\n").unwrap();
    mode(&t.join("usr/bin/su"), 0o4711);
    chown(t.join("usr/lib/x/nobody"), Some(1), Some(1)).unwrap();
    set_xattr(&t.join("etc/empty.d"), "user.dir", b"changed");
    fs::remove_file(t.join("usr/bin/dangling")).unwrap();
    fs::create_dir(t.join("new-empty")).unwrap();
    same_as_ostree(&t, &h, &o);
}

/// The built-in example, composed by `hostctl compose tree`: what it
/// commits is what `ostree commit` makes of the same tree (checked out),
/// and committing that checkout with both writers agrees too.
#[test]
fn the_builtin_example_gives_what_ostree_commit_gives() {
    let d = tempfile::tempdir().unwrap();
    let repo = d.path().join("repo");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("treefiles/example.toml");
    ok(hostctl_run(&[
        "compose",
        "tree",
        "--repo",
        repo.to_str().unwrap(),
        example.to_str().unwrap(),
    ]));
    let refname = "example/x86_64/demo";
    ostree(&repo, &["fsck", "--quiet"]);
    every_content_object_is_whole(&repo);
    let co = d.path().join("co");
    ostree(&repo, &["checkout", refname, co.to_str().unwrap()]);
    let o = d.path().join("o");
    init_archive(&o);
    ostree_commit(&o, "t", &co);
    assert_eq!(root_line(&repo, refname), root_line(&o, "t"));
    assert_eq!(objects(&repo), objects(&o));
    let o2 = d.path().join("o2");
    init_archive(&o2);
    same_as_ostree(&co, &d.path().join("h2"), &o2);
}

/// A tree of many small files and a few large ones whose content depends
/// on `salt`, so that every salt gives new objects to write; with `huge`,
/// also a file above the in-memory bound, whose object is written while it
/// is compressed (the widest window for a reader to see it half-written).
/// `hostctl compose commit` of `tree` onto ref `t` of `repo`, not started.
fn commit_cmd(repo: &Path, tree: &Path) -> Command {
    let mut c = hostctl_cmd();
    c.args(["compose", "commit", "--repo"])
        .arg(repo)
        .args(["--ref", "t"])
        .arg(tree);
    c
}

fn make_busy_tree(t: &Path, salt: u64, huge: Option<&[u8]>) {
    let _ = fs::remove_dir_all(t);
    for i in 0..20 {
        let dir = t.join(format!("d{i:02}"));
        fs::create_dir_all(&dir).unwrap();
        for j in 0..30 {
            fs::write(
                dir.join(format!("f{j}")),
                format!("{salt} {i} {j}\n").repeat(j + 1),
            )
            .unwrap();
        }
    }
    for k in 0..4 {
        fs::write(t.join(format!("big{k}")), text(salt * 10 + k, 3 << 20)).unwrap();
    }
    if let Some(huge) = huge {
        let mut f = fs::File::create(t.join("huge")).unwrap();
        std::io::Write::write_all(&mut f, format!("{salt}\n").as_bytes()).unwrap();
        std::io::Write::write_all(&mut f, huge).unwrap();
    }
}

fn stages_left(repo: &Path) -> Vec<PathBuf> {
    fs::read_dir(repo.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("hostctl-stage-")
        })
        .collect()
}

/// SIGKILL at random points of a write: the ref stays, `ostree fsck` is
/// clean, every object in `objects/` is whole; the next write completes and
/// clears what the killed ones left in `tmp/`.
#[test]
fn a_killed_write_leaves_the_ref_and_no_partial_object() {
    let mut rng = Rng(seed() | 1);
    let d = tempfile::tempdir().unwrap();
    let (t, h) = (d.path().join("tree"), d.path().join("h"));
    make_busy_tree(&t, 0, None);
    let base = hostctl_commit(&h, "t", &t);

    // How long a full write takes here, to spread the kills over it.
    make_busy_tree(&t, 1, None);
    let start = Instant::now();
    let full = hostctl_commit(&h, "t", &t);
    let took = start.elapsed();
    ostree(&h, &["reset", "t", &base]);
    assert_ne!(full, base);

    let mut killed_midway = 0;
    for round in 2..8u64 {
        make_busy_tree(&t, round, None);
        let delay = Duration::from_micros(rng.next() % (took.as_micros() as u64 + 1));
        let mut child = commit_cmd(&h, &t)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let status = child.wait().unwrap();
        let head = rev_parse(&h, "t").unwrap();
        eprintln!("round {round}: killed after {delay:?} of about {took:?}: {status}");
        if status.success() {
            // It finished before the signal: then the ref moved, fully.
            assert_ne!(head, base);
            ostree(&h, &["reset", "t", &base]);
        } else if head != base {
            // Killed after the transaction committed (while the process
            // was exiting): the new commit must then be whole, which the
            // fsck below checks, since it reads every object it reaches.
            eprintln!("round {round}: killed after the ref moved");
            ostree(&h, &["fsck", "--quiet"]);
            ostree(&h, &["reset", "t", &base]);
        } else {
            killed_midway += 1;
        }
        ostree(&h, &["fsck", "--quiet"]);
        every_content_object_is_whole(&h);
    }
    assert!(killed_midway > 0, "no kill landed during a write");

    // A write that runs to its end, watched from outside: every object that
    // appears in objects/ is whole the moment it appears.
    let huge = text(3, 1 << 20).repeat(65);
    make_busy_tree(&t, 99, Some(&huge));
    let repo = open_repo(&h);
    let mut seen: std::collections::HashSet<String> = objects(&h).into_iter().collect();
    let mut child = commit_cmd(&h, &t)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut checked = 0;
    loop {
        let done = child.try_wait().unwrap().is_some();
        for rel in objects(&h) {
            if seen.insert(rel.clone()) {
                if let Err(e) = check_object(&repo, &h, &rel) {
                    let _ = child.kill();
                    panic!("while the write ran, a reader saw a partial object: {e}");
                }
                checked += 1;
            }
        }
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the watched write failed");
    let last = String::from_utf8_lossy(&out.stdout)
        .trim()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    assert!(checked > 600, "only {checked} objects were seen appearing");
    assert_eq!(rev_parse(&h, "t").as_deref(), Some(last.as_str()));
    ostree(&h, &["fsck", "--quiet"]);
    assert_eq!(
        stages_left(&h),
        Vec::<PathBuf>::new(),
        "abandoned stages stay in tmp/"
    );
}
