//! System users and groups as sysusers.d(5) declarations.
//!
//! Debian's maintainer scripts create system accounts with `adduser` into
//! `/etc/passwd` and `/etc/group`. On an OSTree host `/etc` is merged
//! file-by-file, so once an admin edits `/etc/passwd` the file from a newer
//! commit is never seen again and accounts added by new packages would be
//! lost. Declaring every system account of the tree in
//! `/usr/lib/sysusers.d/` (which lives in the read-only, always-current `/usr`)
//! lets `systemd-sysusers` add whatever the host's `/etc` lacks, with the same
//! fixed IDs the tree's files are owned by.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

/// Where the generated declarations go inside the tree.
/// Sorts before the packages' own files: the first declaration of a name wins.
pub const CONF_PATH: &str = "usr/lib/sysusers.d/00-hostctl-tree.conf";

/// Drop-in that makes `systemd-sysusers.service` run on every boot. Debian's
/// unit only runs when `/usr` is newer than `/etc` (`ConditionNeedsUpdate`),
/// and OSTree checks out every file with the same fixed mtime, so after an
/// upgrade the condition would not fire.
pub const DROPIN_PATH: &str = "usr/lib/systemd/system/systemd-sysusers.service.d/hostctl.conf";
pub const DROPIN: &str = "\
# Written by hostctl compose: new system users of an upgraded /usr must be
# created even when /etc looks up to date (OSTree files all share one mtime).
[Unit]
ConditionNeedsUpdate=
";

/// Highest ID Debian's adduser hands out to system accounts (login.defs
/// SYS_UID_MAX); `nobody`/`nogroup` (65534) count as system too.
const SYS_ID_MAX: u32 = 999;
const NOBODY_ID: u32 = 65534;

fn is_system_id(id: u32) -> bool {
    id <= SYS_ID_MAX || id == NOBODY_ID
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub gecos: String,
    pub home: String,
    pub shell: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// Parse passwd(5) text. Malformed lines are errors: silently dropping an
/// account would leave files owned by a UID nobody declares.
pub fn parse_passwd(text: &str) -> Result<Vec<User>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split(':').collect();
        if f.len() != 7 {
            anyhow::bail!("passwd line {}: expected 7 fields: {line:?}", i + 1);
        }
        let num = |s: &str, what: &str| -> Result<u32> {
            s.parse()
                .with_context(|| format!("passwd line {}: bad {what} {s:?}", i + 1))
        };
        out.push(User {
            name: f[0].to_string(),
            uid: num(f[2], "uid")?,
            gid: num(f[3], "gid")?,
            gecos: f[4].to_string(),
            home: f[5].to_string(),
            shell: f[6].to_string(),
        });
    }
    Ok(out)
}

/// Parse group(5) text.
pub fn parse_group(text: &str) -> Result<Vec<Group>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split(':').collect();
        if f.len() != 4 {
            anyhow::bail!("group line {}: expected 4 fields: {line:?}", i + 1);
        }
        out.push(Group {
            name: f[0].to_string(),
            gid: f[2]
                .parse()
                .with_context(|| format!("group line {}: bad gid {:?}", i + 1, f[2]))?,
            members: f[3]
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect(),
        });
    }
    Ok(out)
}

/// Accounts other sysusers.d files already declare with a fixed ID. Those
/// with the tree's ID need no line of ours; the others (packages usually
/// declare `u name -`, "any free ID") get one, and ours must come first
/// since sysusers.d takes the first declaration of a name.
#[derive(Debug, Default)]
pub struct Declared {
    pub users: BTreeMap<String, u32>,
    pub groups: BTreeMap<String, u32>,
}

impl Declared {
    pub fn add_conf(&mut self, text: &str) {
        for line in text.lines() {
            let mut w = line.split_whitespace();
            let (Some(kind), Some(name)) = (w.next(), w.next()) else {
                continue;
            };
            let id = w.next().unwrap_or("-");
            match kind {
                "u" | "u!" => {
                    let (uid, gid) = match id.split_once(':') {
                        Some((u, g)) => (u, Some(g)),
                        None => (id, None),
                    };
                    if let Ok(uid) = uid.parse() {
                        self.users.entry(name.to_string()).or_insert(uid);
                        // Without an explicit group, the user's group of the
                        // same name gets the same number.
                        if gid.is_none() {
                            self.groups.entry(name.to_string()).or_insert(uid);
                        }
                    }
                }
                "g" => {
                    if let Ok(gid) = id.parse() {
                        self.groups.entry(name.to_string()).or_insert(gid);
                    }
                }
                _ => {}
            }
        }
    }
}

/// sysusers.d field: `-` for empty, quoted when it has spaces.
fn field(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else if s
        .chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\\')
    {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        s.to_string()
    }
}

/// The declarations for every system account in `users`/`groups` not
/// not already declared with the same ID, groups first, with the IDs they
/// have in the tree.
pub fn to_sysusers(users: &[User], groups: &[Group], declared: &Declared) -> String {
    let mut out = String::from(
        "# System accounts of this tree, generated by hostctl compose from the\n\
         # tree's /etc/passwd and /etc/group (see docs/treefile.md, \"Packages\").\n",
    );
    let mut sys_groups: Vec<&Group> = groups
        .iter()
        .filter(|g| is_system_id(g.gid) && declared.groups.get(&g.name) != Some(&g.gid))
        .collect();
    sys_groups.sort_by_key(|g| g.gid);
    for g in &sys_groups {
        let _ = writeln!(out, "g {} {}", g.name, g.gid);
    }
    let mut sys_users: Vec<&User> = users
        .iter()
        .filter(|u| is_system_id(u.uid) && declared.users.get(&u.name) != Some(&u.uid))
        .collect();
    sys_users.sort_by_key(|u| u.uid);
    for u in &sys_users {
        let _ = writeln!(
            out,
            "u {} {}:{} {} {} {}",
            u.name,
            u.uid,
            u.gid,
            field(&u.gecos),
            field(&u.home),
            field(&u.shell)
        );
    }
    // Memberships between system accounts only: an `m` line creates a
    // missing user, and the admin's own users are not the tree's business.
    let sys_user_names: BTreeSet<&str> = users
        .iter()
        .filter(|u| is_system_id(u.uid))
        .map(|u| u.name.as_str())
        .collect();
    for g in groups.iter().filter(|g| is_system_id(g.gid)) {
        for m in g
            .members
            .iter()
            .filter(|m| sys_user_names.contains(m.as_str()))
        {
            let _ = writeln!(out, "m {m} {}", g.name);
        }
    }
    out
}

/// Write the declarations for `tree`'s system accounts and the drop-in that
/// runs `systemd-sysusers` on every boot.
pub fn write_for_tree(tree: &Path) -> Result<()> {
    let read = |rel: &str| -> Result<String> {
        let p = tree.join(rel);
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    };
    let users = parse_passwd(&read("etc/passwd")?).context("parsing the tree's /etc/passwd")?;
    let groups = parse_group(&read("etc/group")?).context("parsing the tree's /etc/group")?;
    let mut declared = Declared::default();
    let dir = tree.join("usr/lib/sysusers.d");
    if dir.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("listing {}", dir.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "conf") && !p.ends_with(CONF_PATH) {
                let text = std::fs::read_to_string(&p)
                    .with_context(|| format!("reading {}", p.display()))?;
                declared.add_conf(&text);
            }
        }
    }
    let conf = to_sysusers(&users, &groups, &declared);
    for (rel, text) in [(CONF_PATH, conf.as_str()), (DROPIN_PATH, DROPIN)] {
        let p = tree.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
systemd-network:x:998:998:systemd Network Management:/:/usr/sbin/nologin
messagebus:x:100:107::/nonexistent:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
alice:x:1000:1000:Alice:/home/alice:/bin/bash
";
    const GROUP: &str = "\
root:x:0:
daemon:x:1:
adm:x:4:
systemd-journal:x:999:
systemd-network:x:998:
messagebus:x:107:
netdev:x:108:messagebus,alice
nogroup:x:65534:
alice:x:1000:
";

    #[test]
    fn converts_system_accounts_with_fixed_ids() {
        let users = parse_passwd(PASSWD).unwrap();
        let groups = parse_group(GROUP).unwrap();
        let mut declared = Declared::default();
        declared.add_conf(
            "u root 0 \"Super User\" /root\ng adm 4 -\nu nobody 65534:65534 - -\ng nogroup 65534\n\
             u systemd-network - \"systemd Network Management\"\ng systemd-journal - -\ng daemon 5\n",
        );
        let conf = to_sysusers(&users, &groups, &declared);
        let lines: Vec<&str> = conf.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            vec![
                "g daemon 1",
                "g messagebus 107",
                "g netdev 108",
                "g systemd-network 998",
                "g systemd-journal 999",
                "u daemon 1:1 daemon /usr/sbin /usr/sbin/nologin",
                "u messagebus 100:107 - /nonexistent /usr/sbin/nologin",
                "u systemd-network 998:998 \"systemd Network Management\" / /usr/sbin/nologin",
                "m messagebus netdev",
            ]
        );
    }

    #[test]
    fn malformed_lines_are_errors() {
        assert!(parse_passwd("root:x:0:0\n").is_err());
        assert!(parse_passwd("root:x:zero:0:r:/root:/bin/sh\n").is_err());
        assert!(parse_group("g:x:1\n").is_err());
    }

    #[test]
    fn quotes_awkward_fields() {
        assert_eq!(field(""), "-");
        assert_eq!(field("a b"), "\"a b\"");
        assert_eq!(field("say \"hi\""), "\"say \\\"hi\\\"\"");
    }
}
