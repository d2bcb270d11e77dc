//! The disk layout of an image (pure): sizes, partition offsets and the
//! `sfdisk` script that writes the GPT.

use anyhow::{bail, Context, Result};

pub const MIB: u64 = 1024 * 1024;
/// GPT type of an EFI system partition.
pub const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// Discoverable Partitions Specification: root partition, x86-64.
pub const ROOT_X86_64_TYPE: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
pub const ROOT_LABEL: &str = "root";
pub const ESP_LABEL: &str = "ESP";
/// Enough for systemd-boot plus kernels and initramfs images of three
/// deployments with different kernels (a Debian generic initramfs is ~60 MiB).
pub const ESP_SIZE: u64 = 512 * MIB;
/// GPT keeps a backup header at the end of the disk.
const GPT_TAIL: u64 = MIB;
const ALIGN: u64 = MIB;

/// Parse `4G`, `4096M`, `2GiB`, `1073741824` (bytes).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .with_context(|| format!("size `{s}`: expected a number with an optional unit (M, G)"))?;
    let mult = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1024,
        "M" | "MB" | "MIB" => MIB,
        "G" | "GB" | "GIB" => 1024 * MIB,
        "T" | "TB" | "TIB" => 1024 * 1024 * MIB,
        other => bail!("size `{s}`: unknown unit `{other}` (use M or G)"),
    };
    n.checked_mul(mult)
        .with_context(|| format!("size `{s}` is too large"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub disk_size: u64,
    pub esp: Extent,
    pub root: Extent,
}

/// ESP first, root filling the rest, both 1 MiB-aligned.
pub fn plan(disk_size: u64) -> Result<Layout> {
    let disk_size = disk_size / ALIGN * ALIGN;
    let esp = Extent {
        offset: ALIGN,
        size: ESP_SIZE,
    };
    let root_offset = esp.offset + esp.size;
    let min_root = 512 * MIB;
    if disk_size < root_offset + min_root + GPT_TAIL {
        bail!(
            "image size {} MiB is too small: the ESP takes {} MiB and the root needs at least {} MiB",
            disk_size / MIB,
            ESP_SIZE / MIB,
            min_root / MIB
        );
    }
    let root = Extent {
        offset: root_offset,
        size: disk_size - root_offset - GPT_TAIL,
    };
    Ok(Layout {
        disk_size,
        esp,
        root,
    })
}

/// Input for `sfdisk` (units of 512-byte sectors).
pub fn sfdisk_script(l: &Layout) -> String {
    format!(
        "label: gpt\n\
         start={}, size={}, type={ESP_TYPE}, name=\"{ESP_LABEL}\"\n\
         start={}, size={}, type={ROOT_X86_64_TYPE}, name=\"{ROOT_LABEL}\"\n",
        l.esp.offset / 512,
        l.esp.size / 512,
        l.root.offset / 512,
        l.root.size / 512,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4G").unwrap(), 4096 * MIB);
        assert_eq!(parse_size("1536M").unwrap(), 1536 * MIB);
        assert_eq!(parse_size("2GiB").unwrap(), 2048 * MIB);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("4X").is_err());
        assert!(parse_size("G").is_err());
    }

    #[test]
    fn layout_is_aligned_and_fits() {
        let l = plan(4096 * MIB).unwrap();
        assert_eq!(l.esp.offset % MIB, 0);
        assert_eq!(l.root.offset, l.esp.offset + l.esp.size);
        assert!(l.root.offset + l.root.size <= l.disk_size - MIB);
        assert!(plan(600 * MIB).is_err());
    }

    #[test]
    fn sfdisk_script_names_types() {
        let s = sfdisk_script(&plan(2048 * MIB).unwrap());
        assert!(s.starts_with("label: gpt\n"));
        assert!(s.contains("start=2048, size=1048576, type=C12A7328"));
        assert!(s.contains(ROOT_X86_64_TYPE));
    }
}
