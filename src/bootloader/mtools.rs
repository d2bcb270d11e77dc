//! An ESP inside a disk image file, reached with mtools (`mmd`, `mcopy`,
//! `mren`, `mdel`, `mrd`, `mdir`) at a byte offset, so that image builds
//! never need to mount vfat.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::esp::{temp_path, EspDirEntry, EspFs};

pub struct MtoolsEsp {
    image: PathBuf,
    offset: u64,
}

/// Output of an mtools command.
struct Out {
    ok: bool,
    stdout: Vec<u8>,
    stderr: String,
}

impl MtoolsEsp {
    /// The FAT filesystem starting `offset` bytes into `image` (0 for a bare
    /// filesystem image).
    pub fn new(image: impl Into<PathBuf>, offset: u64) -> MtoolsEsp {
        MtoolsEsp {
            image: image.into(),
            offset,
        }
    }

    fn drive(&self) -> String {
        format!("{}@@{}", self.image.display(), self.offset)
    }

    fn target(path: &str) -> String {
        format!("::/{path}")
    }

    fn raw(&self, tool: &str, args: &[&str]) -> Result<Out> {
        let out = Command::new(tool)
            .arg("-i")
            .arg(self.drive())
            .args(args)
            // The image has no partition table of its own for mtools to check.
            .env("MTOOLS_SKIP_CHECK", "1")
            .output()
            .with_context(|| format!("running {tool} (is mtools installed?)"))?;
        Ok(Out {
            ok: out.status.success(),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<Out> {
        let out = self.raw(tool, args)?;
        if !out.ok {
            bail!(
                "{tool} {} on {} failed: {}",
                args.join(" "),
                self.drive(),
                out.stderr
            );
        }
        Ok(out)
    }

    fn not_found(out: &Out) -> bool {
        !out.ok && out.stderr.contains("not found")
    }

    /// Copies the local `src` to `path` through the temporary name.
    fn put(&self, src: &Path, path: &str) -> Result<()> {
        let tmp = Self::target(&temp_path(path));
        let src = src.to_string_lossy();
        self.run("mcopy", &["-o", "-D", "o", &src, &tmp])?;
        self.run("mren", &["-D", "o", &tmp, &Self::target(path)])?;
        Ok(())
    }
}

impl EspFs for MtoolsEsp {
    fn describe(&self) -> String {
        format!("vfat image {}", self.drive())
    }

    fn list_dir(&self, dir: &str) -> Result<Option<Vec<EspDirEntry>>> {
        let target = if dir.is_empty() {
            "::/".to_string()
        } else {
            Self::target(dir)
        };
        let out = self.raw("mdir", &["-a", "-b", &target])?;
        if Self::not_found(&out) {
            return Ok(None);
        }
        if !out.ok {
            bail!("mdir {target} on {} failed: {}", self.drive(), out.stderr);
        }
        let prefix = format!("{}/", target.trim_end_matches('/'));
        let mut entries = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(rest) = line.strip_prefix(&prefix) else {
                continue;
            };
            let (name, is_dir) = match rest.strip_suffix('/') {
                Some(n) => (n, true),
                None => (rest, false),
            };
            if name.is_empty() || name == "." || name == ".." {
                continue;
            }
            entries.push(EspDirEntry {
                name: name.to_string(),
                is_dir,
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Some(entries))
    }

    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let out = self.raw("mcopy", &["-n", &Self::target(path), "-"])?;
        if Self::not_found(&out) {
            return Ok(None);
        }
        if !out.ok {
            bail!("reading {path} from {}: {}", self.drive(), out.stderr);
        }
        Ok(Some(out.stdout))
    }

    fn create_dir(&self, dir: &str) -> Result<()> {
        if self.list_dir(dir)?.is_some() {
            return Ok(());
        }
        self.run("mmd", &[&Self::target(dir)])?;
        Ok(())
    }

    fn write_file(&self, path: &str, data: &[u8]) -> Result<()> {
        let mut tmp = tempfile::NamedTempFile::new().context("creating a local temporary file")?;
        tmp.write_all(data)
            .with_context(|| format!("writing {}", tmp.path().display()))?;
        tmp.flush()
            .with_context(|| format!("writing {}", tmp.path().display()))?;
        self.put(tmp.path(), path)
    }

    fn copy_in(&self, src: &Path, path: &str) -> Result<()> {
        self.put(src, path)
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.run("mren", &["-D", "o", &Self::target(from), &Self::target(to)])?;
        Ok(())
    }

    fn remove_file(&self, path: &str) -> Result<()> {
        self.run("mdel", &[&Self::target(path)])?;
        Ok(())
    }

    fn remove_dir(&self, dir: &str) -> Result<()> {
        self.run("mrd", &[&Self::target(dir)])?;
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.image)
            .with_context(|| format!("opening {}", self.image.display()))?;
        f.sync_all()
            .with_context(|| format!("syncing {}", self.image.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn have_tools() -> bool {
        Command::new("mkfs.vfat").arg("--help").output().is_ok()
            && Command::new("mdir").arg("-V").output().is_ok()
    }

    /// A real FAT32 filesystem in a file, at an offset like a partition.
    fn image(dir: &Path, offset: u64) -> PathBuf {
        let img = dir.join("disk.img");
        let fs = dir.join("fs.img");
        crate::util::run(
            Command::new("mkfs.vfat")
                .args(["-F", "32", "-C", "-n", "ESP"])
                .arg(&fs)
                .arg("40960"),
            "mkfs.vfat",
        )
        .unwrap();
        let mut disk = vec![0u8; offset as usize];
        disk.extend(std::fs::read(&fs).unwrap());
        std::fs::write(&img, disk).unwrap();
        img
    }

    #[test]
    fn mtools_esp_against_real_vfat() {
        assert!(have_tools(), "mtools and dosfstools are required");
        let td = tempfile::tempdir().unwrap();
        let offset = 1024 * 1024;
        let esp = MtoolsEsp::new(image(td.path(), offset), offset);
        assert_eq!(esp.list_dir("loader").unwrap(), None);
        assert_eq!(esp.read_file("loader/loader.conf").unwrap(), None);
        esp.create_dir("loader").unwrap();
        esp.create_dir("loader").unwrap();
        esp.create_dir("loader/entries").unwrap();
        let long = "hostctl-debian-4d9557472561.0-1a2b3c4d+3.conf";
        esp.write_file(&format!("loader/entries/{long}"), b"first")
            .unwrap();
        esp.write_file(&format!("loader/entries/{long}"), b"second, longer")
            .unwrap();
        assert_eq!(
            esp.read_file(&format!("loader/entries/{long}"))
                .unwrap()
                .unwrap(),
            b"second, longer"
        );
        assert_eq!(
            esp.file_size(&format!("loader/entries/{long}")).unwrap(),
            Some(14)
        );
        let listed = esp.list_dir("loader/entries").unwrap().unwrap();
        assert_eq!(
            listed,
            vec![EspDirEntry {
                name: long.into(),
                is_dir: false
            }],
            "long name kept, no temporary file left"
        );
        let root = esp.list_dir("").unwrap().unwrap();
        assert_eq!(
            root,
            vec![EspDirEntry {
                name: "loader".into(),
                is_dir: true
            }]
        );
        let big = td.path().join("kernel");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&big, &data).unwrap();
        esp.create_dir("hostctl").unwrap();
        esp.copy_in(&big, "hostctl/vmlinuz-6.1.0").unwrap();
        assert_eq!(
            esp.read_file("hostctl/vmlinuz-6.1.0").unwrap().unwrap(),
            data
        );
        esp.rename("hostctl/vmlinuz-6.1.0", "hostctl/vmlinuz-renamed")
            .unwrap();
        assert_eq!(esp.file_size("hostctl/vmlinuz-6.1.0").unwrap(), None);
        esp.remove_file("hostctl/vmlinuz-renamed").unwrap();
        esp.remove_dir("hostctl").unwrap();
        assert_eq!(esp.list_dir("hostctl").unwrap(), None);
        assert!(esp.remove_file("nope").is_err());
        esp.sync().unwrap();

        // An independent witness: fsck finds a clean filesystem.
        let fs_only = td.path().join("check.img");
        let all = std::fs::read(td.path().join("disk.img")).unwrap();
        std::fs::write(&fs_only, &all[offset as usize..]).unwrap();
        crate::util::run(
            Command::new("fsck.vfat").arg("-n").arg(&fs_only),
            "fsck.vfat",
        )
        .unwrap();
    }
}
