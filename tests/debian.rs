//! Composes of real Debian packages from the mirror configured in apt,
//! checked with independent tools (`ostree`, `lsinitrd`, `dpkg-query`,
//! `dpkg --audit`, `apt-get check`, `systemd-sysusers`). Downloads are cached in /var/cache/hostctl-test (or
//! $HOSTCTL_TEST_CACHE) so reruns do not download again; trees are built under
//! /var/tmp (not a small tmpfs).
//!
//! Needs root (mmdebstrap root mode, chroot, mounts) and network access to the
//! Debian mirror.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

mod common;

use common::*;

use hostctl::compose::packages;
use hostctl::compose::treefile;
use hostctl::format::pkglist::Package;

const REF: &str = "debian/12/x86_64/minimal";

fn cachedir() -> PathBuf {
    std::env::var_os("HOSTCTL_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/hostctl-test"))
}

fn scratch() -> tempfile::TempDir {
    std::fs::create_dir_all("/var/tmp").unwrap();
    tempfile::Builder::new()
        .prefix("hostctl-debian-test-")
        .tempdir_in("/var/tmp")
        .unwrap()
}

fn src(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn compose(repo: &Path, work: &Path, treefile: &Path) -> Output {
    run_hostctl(
        hostctl_cmd()
            .args(["compose", "tree", "--unchanged-exit-77", "--repo"])
            .arg(repo)
            .arg("--cachedir")
            .arg(cachedir())
            .arg("--workdir")
            .arg(work)
            .arg("--hostctl-deb")
            .arg(hostctl_deb())
            .arg(treefile),
    )
}

fn ostree(repo: &Path) -> Command {
    let mut c = Command::new("ostree");
    c.arg(format!("--repo={}", repo.display()));
    c
}

/// Parse the GVariant text of an `a(sss)` value as printed by `ostree show`.
fn parse_sss_list(text: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for tuple in text.split("('").skip(1) {
        let fields: Vec<&str> = tuple.splitn(3, "', '").collect();
        let arch = fields[2].split('\'').next().unwrap();
        out.push(Package {
            name: fields[0].to_string(),
            version: fields[1].to_string(),
            arch: arch.to_string(),
        });
    }
    out.sort();
    out
}

/// dpkg-query's view of a checked-out tree's package database.
fn dpkg_query(root: &Path) -> Vec<Package> {
    let out = sh(Command::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            root.join("usr/lib/sysimage/dpkg").display()
        ))
        .args([
            "-W",
            "-f=${db:Status-Abbrev}|${Package}|${Version}|${Architecture}\\n",
        ]));
    let mut v: Vec<Package> = out
        .lines()
        .filter(|l| l.starts_with("ii"))
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            Package {
                name: f[1].into(),
                version: f[2].into(),
                arch: f[3].into(),
            }
        })
        .collect();
    v.sort();
    v
}

fn checkout(repo: &Path, rev: &str, dest: &Path) {
    sh(ostree(repo)
        .args(["checkout", "-U", "--force-copy", rev])
        .arg(dest));
}

/// The whole reference treefile: compose, no-op recompose, one more package,
/// `db diff`; every property checked with tools other than hostctl.
#[test]
fn minimal_host_composes_boots_pieces_and_diffs() {
    let t = scratch();
    let repo = t.path().join("repo");
    let minimal = src("treefiles/debian-minimal.toml");

    let started = Instant::now();
    let out = compose(&repo, t.path(), &minimal);
    assert!(
        out.status.success(),
        "compose failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("first compose: {:?}", started.elapsed());
    assert!(
        stderr(&out).contains("Building the initramfs"),
        "the first compose did not build the initramfs:\n{}",
        stderr(&out)
    );
    let head1 = sh(ostree(&repo).args(["rev-parse", REF]))
        .trim()
        .to_string();

    // Kernel and initramfs where libostree deploys them from.
    let modules = sh(ostree(&repo).args(["ls", REF, "/usr/lib/modules"]));
    let kvers: Vec<&str> = modules
        .lines()
        .filter(|l| l.starts_with('d'))
        .filter_map(|l| l.rsplit('/').next())
        .filter(|k| !k.is_empty() && *k != "modules")
        .collect();
    assert_eq!(kvers.len(), 1, "exactly one kernel: {modules}");
    let kver = kvers[0].to_string();
    let kdir = format!("/usr/lib/modules/{kver}");
    let listing = sh(ostree(&repo).args(["ls", REF, &kdir]));
    for f in ["vmlinuz", "initramfs.img"] {
        assert!(
            listing.lines().any(|l| l.ends_with(&format!("{kdir}/{f}"))),
            "{f} missing in {kdir}: {listing}"
        );
    }
    // /boot empty, no Debian kernel links at the top.
    let boot = sh(ostree(&repo).args(["ls", "-R", REF, "/boot"]));
    assert_eq!(boot.lines().count(), 1, "/boot not empty: {boot}");
    let top = sh(ostree(&repo).args(["ls", REF, "/"]));
    assert!(!top.contains("vmlinuz") && !top.contains("initrd"), "{top}");
    assert!(
        !top.lines().any(|l| l.ends_with(" /etc")),
        "top-level /etc: {top}"
    );
    // /var is empty in the commit; the dpkg database is under /usr.
    let var = sh(ostree(&repo).args(["ls", "-R", REF, "/var"]));
    assert_eq!(var.lines().count(), 1, "/var not empty: {var}");

    let root = t.path().join("checkout");
    checkout(&repo, REF, &root);
    assert!(root.join("usr/etc/passwd").is_file());
    // Build-host files mmdebstrap copies in must not leak into the image.
    assert!(!root.join("usr/etc/hostname").exists());
    assert!(!root
        .join("usr/etc/.resolv.conf.systemd-resolved.bak")
        .exists());

    // The initramfs runs ostree-prepare-root from the initrd root-fs target.
    let img = root.join(format!("usr/lib/modules/{kver}/initramfs.img"));
    let initrd = sh(Command::new("lsinitrd").arg(&img));
    for want in [
        "usr/lib/ostree/ostree-prepare-root",
        "usr/lib/systemd/system/ostree-prepare-root.service",
        "initrd-root-fs.target.wants/ostree-prepare-root.service",
        // hostctl's bootlink repair (dracut/modules.d/90hostctl).
        "usr/lib/hostctl/hostctl-bootlink.sh",
        "initrd-root-fs.target.wants/hostctl-bootlink.service",
        "usr/lib/systemd/systemd",
    ] {
        assert!(initrd.contains(want), "lsinitrd lacks {want}");
    }
    assert!(initrd.contains("--no-hostonly"), "not a generic initramfs");

    // tmpfiles.d recreates /var/lib/dpkg as the link into /usr.
    let tmpfiles = std::fs::read_to_string(root.join("usr/lib/tmpfiles.d/hostctl-var.conf"))
        .expect("tmpfiles.d file for /var");
    assert!(
        tmpfiles.lines().any(
            |l| l.starts_with("L /var/lib/dpkg ") && l.ends_with("../../usr/lib/sysimage/dpkg")
        ),
        "no tmpfiles line for /var/lib/dpkg:\n{tmpfiles}"
    );
    for dir in ["/var/log", "/var/cache", "/var/lib/apt", "/var/tmp"] {
        assert!(
            tmpfiles
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(dir)),
            "tmpfiles.d does not recreate {dir}"
        );
    }
    // Package metadata = what dpkg-query reads from the tree.
    let meta = sh(ostree(&repo).args(["show", "--print-metadata-key=hostctl.packages", REF]));
    let meta_pkgs = parse_sss_list(&meta);
    let db_pkgs = dpkg_query(&root);
    assert!(db_pkgs.len() > 100, "only {} packages", db_pkgs.len());
    assert_eq!(meta_pkgs, db_pkgs);
    // The installed set is a consistent dependency closure, as apt and dpkg
    // judge it from the tree's own status file: no unmet Depends or
    // Pre-Depends (shown to fail with libzstd1 dropped from a copy of the
    // status file), nothing half-installed.
    let status = root.join("usr/lib/sysimage/dpkg/status");
    let check = Command::new("apt-get")
        .arg("-o")
        .arg(format!("Dir::State::status={}", status.display()))
        .arg("check")
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "apt-get check on the tree's dpkg status: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let audit = sh(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .arg(format!(
            "--admindir={}",
            root.join("usr/lib/sysimage/dpkg").display()
        ))
        .arg("--audit"));
    assert!(audit.trim().is_empty(), "dpkg --audit: {audit}");
    // hostctl's own consistency, not an outside witness: what resolve said
    // (and so what the input hash covers) is exactly what got installed, or
    // an unchanged input hash could hide a changed tree.
    // (The compose adds hostctl's .deb to the local packages: so does this.)
    let mut tf = treefile::load(&minimal).unwrap();
    tf.local_packages.push(hostctl_deb());
    let resolved = packages::resolve(&tf, &cachedir()).unwrap();
    let mut resolved_pkgs: Vec<Package> = resolved
        .lines()
        .filter_map(|l| {
            let (nv, arch) = l.split_once(' ')?;
            let (name, version) = nv.split_once('=')?;
            Some(Package {
                name: name.into(),
                version: version.into(),
                arch: arch.into(),
            })
        })
        .collect();
    resolved_pkgs.sort();
    assert_eq!(resolved_pkgs, db_pkgs);
    let names: BTreeSet<&str> = db_pkgs.iter().map(|p| p.name.as_str()).collect();
    for want in [
        "systemd",
        "dracut",
        "ostree-boot",
        "systemd-boot",
        "linux-image-amd64",
    ] {
        assert!(names.contains(want), "{want} not installed");
    }
    assert!(!names.contains("initramfs-tools"));
    // hostctl itself is in the tree, installed from its .deb (issue 14):
    // dpkg knows it at the .deb's version, the package list says so, every
    // file it installed is as the package has it (`dpkg --verify`: the
    // dracut module too), and the binary is the .deb's release build, not
    // the test binary that composed.
    let deb = hostctl_deb();
    let deb_version = sh(Command::new("dpkg-deb")
        .arg("--field")
        .arg(&deb)
        .arg("Version"))
    .trim()
    .to_string();
    let known = sh(Command::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            root.join("usr/lib/sysimage/dpkg").display()
        ))
        .args(["-W", "-f=${Status} ${Version}", "hostctl"]));
    assert_eq!(known, format!("install ok installed {deb_version}"));
    assert!(
        meta_pkgs
            .iter()
            .any(|p| p.name == "hostctl" && p.version == deb_version),
        "hostctl {deb_version} not in the package list: {meta_pkgs:?}"
    );
    let verify = sh(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .arg(format!(
            "--admindir={}",
            root.join("usr/lib/sysimage/dpkg").display()
        ))
        .args(["--verify", "hostctl"]));
    assert!(verify.trim().is_empty(), "dpkg --verify hostctl: {verify}");
    let unpacked = t.path().join("hostctl-deb");
    sh(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked));
    let from_deb = std::fs::read(unpacked.join("usr/bin/hostctl")).unwrap();
    let in_tree = std::fs::read(root.join("usr/bin/hostctl")).unwrap();
    assert!(
        in_tree == from_deb,
        "the tree's /usr/bin/hostctl is not the .deb's"
    );
    let test_binary = std::fs::read(hostctl_bin()).unwrap();
    assert!(
        in_tree != test_binary,
        "the tree's /usr/bin/hostctl is the test binary"
    );
    eprintln!(
        "the tree's /usr/bin/hostctl: {} bytes (hostctl {deb_version} from {}; the debug test binary: {} bytes)",
        in_tree.len(),
        deb.display(),
        test_binary.len()
    );
    for unit in [
        "hostctl-agent.timer",
        "hostctl-boot-check.service",
        "hostctl-publish-entries.service",
    ] {
        assert!(
            root.join("usr/lib/systemd/system").join(unit).is_file(),
            "{unit} not in the tree"
        );
    }
    // The treefile's `units` enabled the package's units.
    let wants = root.join("usr/etc/systemd/system/timers.target.wants/hostctl-agent.timer");
    assert!(
        std::fs::symlink_metadata(&wants).is_ok(),
        "{} missing",
        wants.display()
    );
    // Every `Documentation=file:` of its units resolves inside the tree.
    let mut docs = 0;
    for e in std::fs::read_dir(root.join("usr/lib/systemd/system")).unwrap() {
        let unit = e.unwrap().path();
        if !unit
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("hostctl-")
        {
            continue;
        }
        let text = std::fs::read_to_string(&unit).unwrap();
        for l in text.lines() {
            for d in l
                .strip_prefix("Documentation=")
                .unwrap_or("")
                .split_whitespace()
            {
                if let Some(p) = d.strip_prefix("file:") {
                    docs += 1;
                    let inside = root.join(p.trim_start_matches('/'));
                    assert!(
                        inside.is_file(),
                        "{}: {d} is not in the tree",
                        unit.display()
                    );
                }
            }
        }
    }
    assert!(docs >= 2, "the units name no documentation file");

    // System accounts: an admin-edited /etc/passwd lacking the tree's system
    // users gets them back from /usr/lib/sysusers.d, with the tree's IDs.
    let host = t.path().join("host");
    std::fs::create_dir_all(host.join("etc")).unwrap();
    sh(Command::new("cp")
        .arg("-a")
        .arg(root.join("usr/lib"))
        .arg(host.join("usr-lib")));
    std::fs::create_dir_all(host.join("usr")).unwrap();
    std::fs::rename(host.join("usr-lib"), host.join("usr/lib")).unwrap();
    std::fs::write(
        host.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000:Alice:/home/alice:/bin/bash\n",
    )
    .unwrap();
    std::fs::write(host.join("etc/group"), "root:x:0:\nalice:x:1000:\n").unwrap();
    sh(Command::new("systemd-sysusers").arg(format!("--root={}", host.display())));
    let tree_passwd = std::fs::read_to_string(root.join("usr/etc/passwd")).unwrap();
    let new_passwd = std::fs::read_to_string(host.join("etc/passwd")).unwrap();
    assert!(new_passwd.contains("alice:x:1000:1000"), "{new_passwd}");
    let sys_users: Vec<&str> = tree_passwd
        .lines()
        .filter(|l| {
            let uid: u32 = l.split(':').nth(2).unwrap().parse().unwrap();
            uid < 1000 || uid == 65534
        })
        .collect();
    assert!(sys_users.iter().any(|l| l.starts_with("messagebus:")));
    for l in sys_users {
        let f: Vec<&str> = l.split(':').collect();
        let prefix = format!("{}:x:{}:{}:", f[0], f[2], f[3]);
        assert!(
            new_passwd.lines().any(|n| n.starts_with(&prefix)),
            "{} not recreated as {prefix}:\n{new_passwd}",
            f[0]
        );
    }
    // The drop-in makes systemd-sysusers run on every boot.
    assert!(root
        .join("usr/lib/systemd/system/systemd-sysusers.service.d/hostctl.conf")
        .is_file());

    // Nothing changed: no new commit, and nothing built (the time is
    // printed, not asserted: it follows the machine's load).
    let started = Instant::now();
    let out = compose(&repo, t.path(), &minimal);
    let took = started.elapsed();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(77), "{said}");
    for step in [
        "mmdebstrap",
        "Building the initramfs",
        "Committing the tree",
    ] {
        assert!(
            !said.contains(step),
            "the no-op recompose ran {step:?}:\n{said}"
        );
    }
    eprintln!("no-op recompose: {took:?}");
    assert_eq!(
        sh(ostree(&repo).args(["rev-parse", REF])).trim(),
        head1.as_str()
    );

    // A host runs the first commit, and its admin edits /etc/passwd.
    let host = common::LoopMount::new(4096);
    let sysroot = &host.mountpoint;
    common::hostctl_ok(
        sysroot,
        &[
            "install",
            "--repo",
            &format!("file://{}", repo.display()),
            "--ref",
            REF,
        ],
    );
    let deployed = |sysroot: &Path| {
        let entries = common::ostree_admin_status(sysroot);
        common::deployment_dir(sysroot, &entries[0])
    };
    let etc_passwd = deployed(sysroot).join("etc/passwd");
    let mut local = std::fs::read_to_string(&etc_passwd).unwrap();
    local.push_str("alice:x:1000:1000:Alice:/home/alice:/bin/bash\n");
    std::fs::write(&etc_passwd, &local).unwrap();

    // Two more packages, one of which creates a system user: a new commit
    // whose diff is those packages plus what they pulled in.
    let plus = t.path().join("plus.toml");
    std::fs::write(
        &plus,
        format!(
            "include = [\"{}\"]\npackages = [\"tmux\", \"uuid-runtime\"]\n",
            minimal.display()
        ),
    )
    .unwrap();
    let started = Instant::now();
    let out = compose(&repo, t.path(), &plus);
    assert!(
        out.status.success(),
        "compose +tmux failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("compose +tmux +uuid-runtime: {:?}", started.elapsed());
    // Nothing the initramfs is built from changed: the first commit's is
    // reused, and dracut did not run.
    let said = stderr(&out);
    assert!(
        said.contains(&format!("Reusing the initramfs of {}", &head1[..10]))
            && !said.contains("Building the initramfs"),
        "the compose +tmux +uuid-runtime did not reuse the initramfs:\n{said}"
    );
    let head2 = sh(ostree(&repo).args(["rev-parse", REF]))
        .trim()
        .to_string();
    assert_ne!(head1, head2);
    let root2 = t.path().join("checkout2");
    checkout(&repo, REF, &root2);
    let before: BTreeSet<Package> = dpkg_query(&root).into_iter().collect();
    let after: BTreeSet<Package> = dpkg_query(&root2).into_iter().collect();
    let added: Vec<String> = after
        .difference(&before)
        .map(|p| format!("  {} {} {}", p.name, p.version, p.arch))
        .collect();
    assert!(
        before.is_subset(&after),
        "packages changed besides additions"
    );
    assert!(added.iter().any(|l| l.starts_with("  tmux ")));
    assert!(added.iter().any(|l| l.starts_with("  uuid-runtime ")));
    assert!(added.len() > 2, "no dependencies pulled in? {added:?}");

    let diff = ok(run_hostctl(
        hostctl_cmd()
            .args(["db", "diff", "--repo"])
            .arg(&repo)
            .arg(REF),
    ));
    let expected = format!(
        "From {head1}\nTo   {head2}\nAdded ({}):\n{}\n",
        added.len(),
        added.join("\n")
    );
    assert_eq!(diff, expected);
    // Explicit FROM/TO the other way round: the same packages, removed.
    let back = ok(run_hostctl(
        hostctl_cmd()
            .args(["db", "diff", "--repo"])
            .arg(&repo)
            .args([&head2, &head1]),
    ));
    assert!(
        back.contains(&format!("Removed ({}):", added.len())),
        "{back}"
    );
    assert!(
        !back.contains("Added") && !back.contains("graded"),
        "{back}"
    );

    // The host upgrades: the system user the new package created is there,
    // next to the admin's own user, although /etc/passwd was edited locally
    // (so the three-way merge keeps the host's file, not the new default).
    let uuidd = std::fs::read_to_string(root2.join("usr/etc/passwd"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("uuidd:"))
        .expect("uuid-runtime creates the uuidd user in the tree")
        .to_string();
    // Accounts keep the IDs the ref gave them, whatever order the new
    // compose installed packages in.
    let ids = |l: &str| l.split(':').skip(2).take(2).collect::<Vec<_>>().join(":");
    let passwd1 = std::fs::read_to_string(root.join("usr/etc/passwd")).unwrap();
    let passwd2 = std::fs::read_to_string(root2.join("usr/etc/passwd")).unwrap();
    for l in passwd1.lines() {
        let name = l.split(':').next().unwrap();
        let again = passwd2
            .lines()
            .find(|m| m.split(':').next() == Some(name))
            .unwrap_or_else(|| panic!("{name} vanished from the second compose"));
        assert_eq!(ids(l), ids(again), "{name} changed IDs between composes");
    }
    common::hostctl_ok(sysroot, &["upgrade"]);
    let host_passwd = std::fs::read_to_string(deployed(sysroot).join("etc/passwd")).unwrap();
    assert!(host_passwd.contains("alice:x:1000:1000:"), "{host_passwd}");
    assert!(
        host_passwd
            .lines()
            .any(|l| l.starts_with("uuidd:") && ids(l) == ids(&uuidd)),
        "uuidd ({uuidd}) missing from the upgraded host:\n{host_passwd}"
    );
    let db = common::hostctl_ok(sysroot, &["db", "diff"]);
    assert!(db.contains("uuid-runtime"), "{db}");

    // The same treefile composed cold, into a fresh repository (no parent,
    // so dracut runs), gives the same tree: the reused initramfs is the
    // one dracut builds.
    let cold_repo = t.path().join("cold-repo");
    let started = Instant::now();
    let out = compose(&cold_repo, t.path(), &plus);
    assert!(out.status.success(), "cold compose: {}", stderr(&out));
    eprintln!("cold compose +tmux +uuid-runtime: {:?}", started.elapsed());
    assert!(
        stderr(&out).contains("Building the initramfs"),
        "the cold compose did not build the initramfs:\n{}",
        stderr(&out)
    );
    let img = format!("{kdir}/initramfs.img");
    let object = |repo: &Path| {
        let l = sh(ostree(repo).args(["ls", "-C", REF, &img]));
        l.split_whitespace().nth(4).unwrap().to_string()
    };
    assert_eq!(
        object(&repo),
        object(&cold_repo),
        "the reused initramfs differs from the one dracut builds"
    );
    // The kernel's directory, image included, is the same tree in both.
    let dir_tree = |repo: &Path, dir: &str| {
        let l = sh(ostree(repo).args(["ls", "-C", "-d", REF, dir]));
        let f: Vec<&str> = l.split_whitespace().collect();
        (f[4].to_string(), f[5].to_string())
    };
    assert_eq!(dir_tree(&repo, &kdir), dir_tree(&cold_repo, &kdir));
    // The whole trees differ only where the account IDs do: the
    // incremental compose keeps the IDs of the ref's previous commit, a
    // cold one allocates them afresh, so the account files and the owner of
    // files owned by a system group may differ; every other file the two
    // have is the same, byte for byte.
    let cold_head = sh(ostree(&cold_repo).args(["rev-parse", REF]))
        .trim()
        .to_string();
    sh(ostree(&repo)
        .args(["pull-local", "--disable-fsync"])
        .arg(&cold_repo)
        .arg(&cold_head));
    let diff = sh(ostree(&repo).args(["diff", &head2, &cold_head]));
    let accounts = [
        "passwd", "passwd-", "group", "group-", "shadow", "shadow-", "gshadow", "gshadow-",
    ];
    for l in diff.lines() {
        let (kind, path) = l.split_once(char::is_whitespace).unwrap();
        let path = path.trim();
        let account = path
            .strip_prefix("/usr/etc/")
            .is_some_and(|n| accounts.contains(&n))
            || path == "/usr/lib/sysusers.d/00-hostctl-tree.conf";
        if account {
            continue;
        }
        assert_eq!(kind, "M", "incremental and cold trees differ: {diff}");
        let cat = |rev: &str| {
            let out = ostree(&repo).args(["cat", rev, path]).output().unwrap();
            assert!(out.status.success(), "ostree cat {rev} {path}");
            out.stdout
        };
        assert!(
            cat(&head2) == cat(&cold_head),
            "{path} differs between the incremental and cold composes:\n{diff}"
        );
    }

    // A file the initramfs was built from changes (a comment added to a
    // udev rule dracut copies into it): no reuse, dracut runs, and the new
    // image differs.
    let edited = t.path().join("edited.toml");
    std::fs::write(
        &edited,
        format!(
            "include = [\"{}\"]\npostprocess = [\"echo '# edited' >> /usr/lib/udev/rules.d/50-udev-default.rules\"]\n",
            plus.display()
        ),
    )
    .unwrap();
    let started = Instant::now();
    let out = compose(&repo, t.path(), &edited);
    assert!(out.status.success(), "compose edited: {}", stderr(&out));
    eprintln!(
        "compose with an initramfs file edited: {:?}",
        started.elapsed()
    );
    let said = stderr(&out);
    assert!(
        said.contains("Building the initramfs")
            && said.contains("a file it was built from changed")
            && !said.contains("Reusing the initramfs"),
        "an edited initramfs input did not rebuild the initramfs:\n{said}"
    );
    assert_ne!(
        object(&repo),
        object(&cold_repo),
        "the rebuilt initramfs lacks the edited file"
    );
}

fn treefile_with(dir: &Path, body: &str) -> treefile::Treefile {
    let p = dir.join("t.toml");
    std::fs::write(&p, format!("ref = \"test/pkgs\"\n{body}")).unwrap();
    treefile::load(&p).unwrap()
}

#[test]
fn resolve_is_stable_and_errors_name_the_culprit() {
    let t = scratch();
    let tf = treefile_with(t.path(), "packages = [\"hello\"]\n");
    let a = packages::resolve(&tf, &cachedir()).unwrap();
    let b = packages::resolve(&tf, &cachedir()).unwrap();
    assert_eq!(a, b);
    assert!(a.lines().any(|l| l.starts_with("hello=")), "{a}");
    assert!(a.lines().any(|l| l.starts_with("dpkg=")), "{a}");
    // Another package set is another text.
    let tf2 = treefile_with(t.path(), "packages = [\"hello\", \"tmux\"]\n");
    assert_ne!(a, packages::resolve(&tf2, &cachedir()).unwrap());

    let bad = treefile_with(
        t.path(),
        "packages = [\"hello\", \"no-such-package-hostctl\"]\n",
    );
    let e = format!("{:#}", packages::resolve(&bad, &cachedir()).unwrap_err());
    assert!(
        e.contains("not found: no-such-package-hostctl"),
        "error does not name the package: {e}"
    );

    let offline = treefile_with(
        t.path(),
        "packages = [\"hello\"]\nmirror = \"http://127.0.0.1:9/debian\"\n",
    );
    let e = format!(
        "{:#}",
        packages::resolve(&offline, &cachedir()).unwrap_err()
    );
    assert!(
        e.contains("mirror reachable") && e.contains("http://127.0.0.1:9/debian"),
        "{e}"
    );
}

/// docs/treefile.md, Packages, "Errors": a package that does not
/// exist stops the compose before committing, the error names it, and the
/// ref, the repository's list of refs and its files are as they were, as the
/// `ostree` CLI sees them.
#[test]
fn an_unknown_package_leaves_the_ref_unchanged() {
    let t = scratch();
    let repo = t.path().join("repo");
    write(&t.path().join("base/usr/share/marker"), "before\n");
    let good = t.path().join("good.toml");
    write(&good, "ref = \"test/pkgs\"\nbase = \"base\"\n");
    ok(compose(&repo, t.path(), &good));
    let head = sh(ostree(&repo).args(["rev-parse", "test/pkgs"]));
    let refs = sh(ostree(&repo).arg("refs"));
    let before = fingerprint(&repo);

    let bad = t.path().join("bad.toml");
    write(
        &bad,
        "ref = \"test/pkgs\"\npackages = [\"hello\", \"no-such-package-hostctl\"]\n",
    );
    let out = compose(&repo, t.path(), &bad);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not found: no-such-package-hostctl"),
        "the error does not name the package: {err}"
    );
    assert_eq!(sh(ostree(&repo).args(["rev-parse", "test/pkgs"])), head);
    assert_eq!(sh(ostree(&repo).arg("refs")), refs);
    assert_same(&before, &fingerprint(&repo), "a failed compose");
    sh(ostree(&repo).arg("fsck"));
}

/// Build a .deb whose postinst fails.
fn failing_deb(dir: &Path) -> PathBuf {
    let root = dir.join("pkg");
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::write(
        root.join("DEBIAN/control"),
        "Package: hostctl-test-broken\nVersion: 1.0\nArchitecture: all\n\
         Maintainer: hostctl tests <t@example.org>\nDescription: fails to configure\n",
    )
    .unwrap();
    let postinst = root.join("DEBIAN/postinst");
    std::fs::write(&postinst, "#!/bin/sh\necho broken-on-purpose >&2\nexit 3\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&postinst, std::fs::Permissions::from_mode(0o755)).unwrap();
    let deb = dir.join("hostctl-test-broken_1.0_all.deb");
    sh(Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group"])
        .arg(&root)
        .arg(&deb));
    deb
}

#[test]
fn failing_maintainer_script_names_the_package() {
    let t = scratch();
    let deb = failing_deb(t.path());
    let tf = treefile_with(
        t.path(),
        &format!(
            "variant = \"essential\"\nlocal-packages = [\"{}\"]\n",
            deb.display()
        ),
    );
    let tree = t.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    let e = format!(
        "{:#}",
        packages::install(&tf, &tree, &cachedir(), None).unwrap_err()
    );
    assert!(
        e.contains("hostctl-test-broken") && e.contains("post-installation script"),
        "error does not name the package and script: {e}"
    );
}

/// Packages on top of a base: the base's dpkg database decides what is
/// already there; only the new package and its missing dependencies come in.
#[test]
fn packages_install_on_top_of_a_debian_base() {
    let t = scratch();
    let base = t.path().join("base");
    std::fs::create_dir(&base).unwrap();
    let tf = treefile_with(t.path(), "variant = \"required\"\npackages = [\"less\"]\n");
    packages::install(&tf, &base, &cachedir(), None).unwrap();
    let before: BTreeSet<String> = sh(Command::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            base.join("var/lib/dpkg").display()
        ))
        .args(["-W", "-f=${Package}\\n"]))
    .lines()
    .map(str::to_string)
    .collect();
    assert!(before.contains("less") && !before.contains("tmux"));

    // The compose would have extracted the base into the tree; here the tree
    // already is the base.
    let base_tf = t.path().join("base.toml");
    std::fs::write(
        &base_tf,
        format!(
            "ref = \"test/on-base\"\nbase = \"{}\"\npackages = [\"tmux\"]\n",
            base.display()
        ),
    )
    .unwrap();
    let tf = treefile::load(&base_tf).unwrap();
    std::fs::write(base.join("etc/hostname"), "from-the-base\n").unwrap();
    packages::install(&tf, &base, &cachedir(), None).unwrap();
    let after: BTreeSet<String> = sh(Command::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            base.join("var/lib/dpkg").display()
        ))
        .args(["-W", "-f=${Package}\\n"]))
    .lines()
    .map(str::to_string)
    .collect();
    assert!(before.is_subset(&after));
    assert!(after.contains("tmux"));
    // The base's own files are kept, not replaced by the build machine's.
    assert_eq!(
        std::fs::read_to_string(base.join("etc/hostname")).unwrap(),
        "from-the-base\n"
    );
    let debs: Vec<_> = std::fs::read_dir(base.join("var/cache/apt/archives"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "deb"))
        .collect();
    assert!(debs.is_empty(), "downloaded .debs left in the tree");
    assert!(cachedir()
        .join("archives")
        .read_dir()
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with("tmux_")));
}
