//! Boot Loader Specification (type #1) entry files, and libostree's entries
//! resolved to the deployments they boot.
//!
//! libostree 2022.7 with `sysroot.bootloader=none` writes one file per
//! deployment as `/boot/loader/entries/ostree-<N>-<osname>.conf`, where
//! `N = number of deployments - index`; the same number is in its `version`
//! key, so the highest `version` is deployment 0. A measured example:
//!
//! ```text
//! title Debian GNU/Linux 12 (bookworm) 1.0 (ostree:0)
//! version 2
//! options root=LABEL=root rw ostree=/ostree/boot.0/debian/f185…ced/0
//! linux /ostree/debian-f185…ced/vmlinuz-6.1.0-test
//! initrd /ostree/debian-f185…ced/initramfs-6.1.0-test.img
//! ```
//!
//! `linux`/`initrd` are relative to the sysroot's `/boot`. `ostree=` names a
//! "bootlink" `/ostree/boot.<bootversion>/<osname>/<bootcsum>/<bootserial>`,
//! a symlink to `../../../deploy/<osname>/deploy/<checksum>.<deployserial>`.
//! The bootlink is *not* a stable name for a deployment: libostree retargets
//! `boot.N` when it swaps sub-bootversions and deletes the other `boot.N` in
//! its cleanup, so the deployment is found by reading the link.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// A parsed entry file: keys in file order (keys such as `initrd` repeat).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlsEntry {
    pub pairs: Vec<(String, String)>,
}

impl BlsEntry {
    pub fn parse(text: &str) -> BlsEntry {
        let mut pairs = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // Key and value are separated by the first run of spaces/tabs, as
            // systemd-boot's own line splitter does.
            let (key, value) = match line.find([' ', '\t']) {
                Some(i) => (&line[..i], line[i..].trim_start_matches([' ', '\t'])),
                None => continue,
            };
            pairs.push((key.to_string(), value.to_string()));
        }
        BlsEntry { pairs }
    }

    /// The last value of `key` (later lines override earlier ones).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn get_all(&self, key: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// systemd-boot concatenates repeated `options` lines with a space.
    pub fn options(&self) -> String {
        self.get_all("options").join(" ")
    }
}

/// The parts of `ostree=/ostree/boot.<V>/<osname>/<bootcsum>/<serial>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootlink {
    pub bootversion: u32,
    pub osname: String,
    pub bootcsum: String,
    pub bootserial: u32,
}

impl Bootlink {
    /// Parses the same shape libostree's own parser (and its systemd
    /// generator, which derives the stateroot from it) accepts.
    pub fn parse(s: &str) -> Option<Bootlink> {
        let rest = s.strip_prefix("/ostree/boot.")?;
        let mut parts = rest.split('/');
        let bootversion = match parts.next()? {
            "0" => 0,
            "1" => 1,
            _ => return None,
        };
        let osname = parts.next()?.to_string();
        let bootcsum = parts.next()?.to_string();
        let serial = parts.next()?;
        if parts.next().is_some()
            || osname.is_empty()
            || bootcsum.is_empty()
            || serial.is_empty()
            || !serial.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        Some(Bootlink {
            bootversion,
            osname,
            bootcsum,
            bootserial: serial.parse().ok()?,
        })
    }

    pub fn path(&self) -> String {
        format!(
            "/ostree/boot.{}/{}/{}/{}",
            self.bootversion, self.osname, self.bootcsum, self.bootserial
        )
    }
}

/// Finds `ostree=` in a kernel command line.
pub fn ostree_karg(options: &str) -> Option<&str> {
    options
        .split_ascii_whitespace()
        .find_map(|a| a.strip_prefix("ostree="))
}

/// The command line without `ostree=`: what identifies an entry's kernel
/// arguments independently of libostree's bootlink numbering.
pub fn options_without_ostree(options: &str) -> String {
    options
        .split_ascii_whitespace()
        .filter(|a| !a.starts_with("ostree="))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One libostree entry, resolved to its deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OstreeEntry {
    /// File name under `/boot/loader/entries`, for messages.
    pub source_name: String,
    pub osname: String,
    pub checksum: String,
    pub deployserial: u32,
    pub bootcsum: String,
    pub title: String,
    /// The full command line, `ostree=` included.
    pub options: String,
    /// Paths relative to the sysroot's `/boot` (leading `/`).
    pub linux: String,
    pub initrds: Vec<String>,
}

impl OstreeEntry {
    /// Builds the entry from a parsed file and the target of its bootlink
    /// (`…/deploy/<osname>/deploy/<checksum>.<serial>`).
    pub fn from_parts(source_name: &str, bls: &BlsEntry, link_target: &str) -> Result<OstreeEntry> {
        let options = bls.options();
        let karg = ostree_karg(&options)
            .with_context(|| format!("{source_name}: no ostree= in options {options:?}"))?;
        let link = Bootlink::parse(karg)
            .with_context(|| format!("{source_name}: unexpected ostree= argument {karg:?}"))?;
        let (osname, checksum, deployserial) =
            parse_deploy_target(link_target).with_context(|| {
                format!(
                    "{source_name}: bootlink {karg} points to {link_target:?}, not a deployment"
                )
            })?;
        if osname != link.osname {
            bail!(
                "{source_name}: bootlink {karg} is for stateroot {} but points into {osname}",
                link.osname
            );
        }
        let linux = bls
            .get("linux")
            .with_context(|| format!("{source_name}: no linux line"))?
            .to_string();
        Ok(OstreeEntry {
            source_name: source_name.to_string(),
            osname,
            checksum,
            deployserial,
            bootcsum: link.bootcsum,
            title: bls.get("title").unwrap_or("").to_string(),
            options,
            linux,
            initrds: bls
                .get_all("initrd")
                .into_iter()
                .map(String::from)
                .collect(),
        })
    }

    /// libostree's `version` ordering key, if the entry has one.
    fn version_of(bls: &BlsEntry) -> Option<u64> {
        bls.get("version").and_then(|v| v.parse().ok())
    }
}

/// `(osname, checksum, deployserial)` from a bootlink target.
pub fn parse_deploy_target(target: &str) -> Option<(String, String, u32)> {
    let mut comps: Vec<&str> = target.split('/').filter(|c| !c.is_empty()).collect();
    let last = comps.pop()?;
    let deploy = comps.pop()?;
    let osname = comps.pop()?;
    if deploy != "deploy" || comps.pop()? != "deploy" {
        return None;
    }
    let (checksum, serial) = last.rsplit_once('.')?;
    if checksum.len() != 64 || !checksum.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((
        osname.to_string(),
        checksum.to_string(),
        serial.parse().ok()?,
    ))
}

/// Reads libostree's current entries of `sysroot` in libostree's order
/// (deployment 0 first), resolving each bootlink against the sysroot.
pub fn read_sysroot_entries(sysroot: &Path) -> Result<Vec<OstreeEntry>> {
    let dir = sysroot.join("boot/loader/entries");
    let rd = std::fs::read_dir(&dir).with_context(|| {
        format!(
            "reading {}: is {} a deployed sysroot?",
            dir.display(),
            sysroot.display()
        )
    })?;
    let mut found: Vec<(u64, OstreeEntry)> = Vec::new();
    for de in rd {
        let de = de.with_context(|| format!("reading {}", dir.display()))?;
        let name = de.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("ostree-") && name.ends_with(".conf")) {
            continue;
        }
        let path = dir.join(&name);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let bls = BlsEntry::parse(&text);
        let version = OstreeEntry::version_of(&bls)
            .with_context(|| format!("{}: missing or non-numeric version", path.display()))?;
        let karg = ostree_karg(&bls.options())
            .map(str::to_string)
            .with_context(|| format!("{}: no ostree= argument", path.display()))?;
        let link_path: PathBuf = crate::util::in_root(sysroot, &karg);
        let target = std::fs::read_link(&link_path)
            .with_context(|| format!("{}: reading bootlink {}", name, link_path.display()))?;
        let entry = OstreeEntry::from_parts(&name, &bls, &target.to_string_lossy())?;
        found.push((version, entry));
    }
    found.sort_by_key(|(v, _)| std::cmp::Reverse(*v));
    if let Some(w) = found.windows(2).find(|w| w[0].0 == w[1].0) {
        bail!(
            "{}: two entries ({} and {}) have version {}",
            dir.display(),
            w[0].1.source_name,
            w[1].1.source_name,
            w[0].0
        );
    }
    Ok(found.into_iter().map(|(_, e)| e).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSUM: &str = "4d95574725612a97c2753b23738682a570dd37dda226a672ec10ad8346ba0d2f";

    #[test]
    fn parses_libostree_entry() {
        let text = "title Debian GNU/Linux 12 (bookworm) 1.0 (ostree:0)\nversion 2\n\
                    options root=LABEL=root rw ostree=/ostree/boot.0/debian/abc/1\n\
                    linux /ostree/debian-abc/vmlinuz-6.1.0-test\n\
                    initrd /ostree/debian-abc/initramfs-6.1.0-test.img\n";
        let bls = BlsEntry::parse(text);
        assert_eq!(bls.get("version"), Some("2"));
        assert_eq!(
            bls.get("title"),
            Some("Debian GNU/Linux 12 (bookworm) 1.0 (ostree:0)")
        );
        let target = format!("../../../deploy/debian/deploy/{CSUM}.3");
        let e = OstreeEntry::from_parts("ostree-2-debian.conf", &bls, &target).unwrap();
        assert_eq!(e.osname, "debian");
        assert_eq!(e.checksum, CSUM);
        assert_eq!(e.deployserial, 3);
        assert_eq!(e.bootcsum, "abc");
        assert_eq!(e.linux, "/ostree/debian-abc/vmlinuz-6.1.0-test");
        assert_eq!(
            e.initrds,
            vec!["/ostree/debian-abc/initramfs-6.1.0-test.img"]
        );
    }

    #[test]
    fn repeated_keys_and_tabs() {
        let bls = BlsEntry::parse("# c\noptions\ta=1\noptions  b=2\ninitrd x\ninitrd y\nbare\n");
        assert_eq!(bls.options(), "a=1 b=2");
        assert_eq!(bls.get_all("initrd"), vec!["x", "y"]);
        assert_eq!(bls.get("bare"), None);
    }

    #[test]
    fn bootlink_shapes() {
        let l = Bootlink::parse("/ostree/boot.1/debian/abc/0").unwrap();
        assert_eq!((l.bootversion, l.bootserial), (1, 0));
        assert_eq!(l.path(), "/ostree/boot.1/debian/abc/0");
        for bad in [
            "/ostree/boot.2/debian/abc/0",
            "/ostree/boot.0/debian/abc",
            "/ostree/boot.0/debian/abc/x",
            "/ostree/boot.0/debian/abc/0/extra",
            "/ostree/deploy/debian/deploy/abc.0",
        ] {
            assert!(Bootlink::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn deploy_targets() {
        let t = format!("../../../deploy/os/deploy/{CSUM}.12");
        assert_eq!(
            parse_deploy_target(&t),
            Some(("os".into(), CSUM.into(), 12))
        );
        assert_eq!(
            parse_deploy_target("../../../deploy/os/deploy/short.0"),
            None
        );
        assert_eq!(
            parse_deploy_target(&format!("../x/os/deploy/{CSUM}.0")),
            None
        );
    }

    #[test]
    fn mismatched_stateroot_is_refused() {
        let bls = BlsEntry::parse("options ostree=/ostree/boot.0/a/b/0\nlinux /k\n");
        let err = OstreeEntry::from_parts("e", &bls, &format!("../../../deploy/z/deploy/{CSUM}.0"))
            .unwrap_err();
        assert!(format!("{err:#}").contains("stateroot a"), "{err:#}");
    }

    #[test]
    fn strips_only_ostree_karg() {
        assert_eq!(
            options_without_ostree("root=x ostree=/ostree/boot.0/a/b/0 quiet"),
            "root=x quiet"
        );
    }
}
