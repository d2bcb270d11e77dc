//! The byte formats of content objects, as libostree defines them
//! (`ostree-core.c`): the file header a content checksum covers, and the
//! header an archive repository's `.filez` object starts with.
//!
//! Both are GVariants built with glib itself, so their serialisation is
//! glib's normal form, the one libostree hashes.

use ostree::glib::{self, prelude::*};
use sha2::{Digest, Sha256};

/// Extended attributes as libostree stores them: each name with its
/// terminating NUL (glib's bytestring form), sorted by name bytes.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// What a content object records about a file besides its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    pub uid: u32,
    pub gid: u32,
    /// `st_mode` whole, file type bits included.
    pub mode: u32,
    /// The target of a symlink; empty for a regular file.
    pub symlink_target: String,
    pub xattrs: Xattrs,
}

/// Puts xattrs in libostree's order (libglnx sorts names with strcmp, which
/// is byte order) and NUL-terminates the names. libglnx also leaves out
/// every xattr with an empty value: so must we, or the checksums differ
/// from `ostree commit`'s.
pub fn canonical_xattrs(mut raw: Vec<(Vec<u8>, Vec<u8>)>) -> Xattrs {
    raw.retain(|(_, v)| !v.is_empty());
    for (name, _) in raw.iter_mut() {
        if name.last() != Some(&0) {
            name.push(0);
        }
    }
    raw.sort_by(|a, b| a.0.cmp(&b.0));
    raw
}

/// `a(ayay)`.
pub fn xattrs_variant(x: &Xattrs) -> glib::Variant {
    let ty = glib::VariantTy::new("(ayay)").expect("valid type");
    glib::Variant::array_from_iter_with_type(
        ty,
        x.iter().map(|(n, v)| {
            glib::Variant::tuple_from_iter([
                glib::Variant::array_from_fixed_array(n),
                glib::Variant::array_from_fixed_array(v),
            ])
        }),
    )
}

/// libostree stores every integer of these headers big-endian.
fn be(v: u32) -> glib::Variant {
    v.to_be().to_variant()
}

/// `(uuuusa(ayay))`: uid, gid, mode, rdev (always 0), symlink target, xattrs.
pub fn file_header(m: &FileMeta) -> glib::Variant {
    glib::Variant::tuple_from_iter([
        be(m.uid),
        be(m.gid),
        be(m.mode),
        be(0),
        m.symlink_target.to_variant(),
        xattrs_variant(&m.xattrs),
    ])
}

/// `(tuuuusa(ayay))`: the content size first, then as [`file_header`].
pub fn archive_header(size: u64, m: &FileMeta) -> glib::Variant {
    glib::Variant::tuple_from_iter([
        size.to_be().to_variant(),
        be(m.uid),
        be(m.gid),
        be(m.mode),
        be(0),
        m.symlink_target.to_variant(),
        xattrs_variant(&m.xattrs),
    ])
}

/// A variant as libostree writes one into a stream: its length as a
/// big-endian u32, zeros up to 8-byte alignment, then the variant.
pub fn framed(v: &glib::Variant) -> Vec<u8> {
    let data = v.data();
    let mut out = Vec::with_capacity(8 + data.len());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(data);
    out
}

/// A hasher already fed the framed file header; the caller adds the
/// content of a regular file (a symlink has none).
pub fn content_hasher(m: &FileMeta) -> Sha256 {
    let mut h = Sha256::new();
    h.update(framed(&file_header(m)));
    h
}

/// Where a content object lives in an archive repository, relative to it.
pub fn filez_path(checksum: &str) -> String {
    format!("objects/{}/{}.filez", &checksum[..2], &checksum[2..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use ostree::gio;

    fn info(m: &FileMeta, size: u64) -> gio::FileInfo {
        let i = gio::FileInfo::new();
        i.set_attribute_uint32("unix::uid", m.uid);
        i.set_attribute_uint32("unix::gid", m.gid);
        i.set_attribute_uint32("unix::mode", m.mode);
        let regular = m.mode & libc::S_IFMT == libc::S_IFREG;
        i.set_file_type(if regular {
            gio::FileType::Regular
        } else {
            gio::FileType::SymbolicLink
        });
        if !regular {
            i.set_symlink_target(&m.symlink_target);
        }
        i.set_size(size as i64);
        i
    }

    /// libostree's own checksum of the same file is the oracle.
    fn libostree_checksum(m: &FileMeta, content: &[u8]) -> String {
        let x = xattrs_variant(&m.xattrs);
        let input = gio::MemoryInputStream::from_bytes(&glib::Bytes::from(content));
        ostree::checksum_file_from_input(
            &info(m, content.len() as u64),
            Some(&x),
            Some(&input),
            ostree::ObjectType::File,
            gio::Cancellable::NONE,
        )
        .unwrap()
        .to_hex()
    }

    fn ours(m: &FileMeta, content: &[u8]) -> String {
        let mut h = content_hasher(m);
        h.update(content);
        hex::encode(h.finalize())
    }

    #[test]
    fn regular_file_checksum_is_libostrees() {
        let m = FileMeta {
            uid: 1000,
            gid: 50,
            mode: libc::S_IFREG | 0o4755,
            symlink_target: String::new(),
            xattrs: canonical_xattrs(vec![
                (b"user.z".to_vec(), b"last".to_vec()),
                (b"security.capability".to_vec(), vec![1, 0, 0, 2, 0, 32]),
                (b"user.a".to_vec(), Vec::new()),
            ]),
        };
        assert_eq!(ours(&m, b"hello\n"), libostree_checksum(&m, b"hello\n"));
        assert_eq!(ours(&m, b""), libostree_checksum(&m, b""));
    }

    #[test]
    fn symlink_checksum_is_libostrees() {
        let m = FileMeta {
            uid: 0,
            gid: 0,
            mode: libc::S_IFLNK | 0o777,
            symlink_target: "../nowhere/at all".into(),
            xattrs: Vec::new(),
        };
        assert_eq!(ours(&m, b""), libostree_checksum(&m, b""));
    }

    #[test]
    fn xattrs_sort_by_name_bytes_with_nul_and_empty_ones_go() {
        let x = canonical_xattrs(vec![
            (b"user.b".to_vec(), vec![1]),
            (b"user.empty".to_vec(), vec![]),
            (b"security.ima".to_vec(), vec![2]),
            (b"user.a\0".to_vec(), vec![3]),
        ]);
        let names: Vec<&[u8]> = x.iter().map(|(n, _)| n.as_slice()).collect();
        assert_eq!(
            names,
            [&b"security.ima\0"[..], &b"user.a\0"[..], &b"user.b\0"[..]]
        );
    }

    #[test]
    fn framing_pads_the_length_to_eight_bytes() {
        let v = 7u32.to_variant();
        let mut want = vec![0, 0, 0, 4, 0, 0, 0, 0];
        // GVariant data is in the machine's byte order; only the length is BE.
        want.extend_from_slice(&7u32.to_ne_bytes());
        assert_eq!(framed(&v), want);
    }

    #[test]
    fn archive_header_parses_as_libostrees_format() {
        let m = FileMeta {
            uid: 1,
            gid: 2,
            mode: libc::S_IFREG | 0o644,
            symlink_target: String::new(),
            xattrs: Vec::new(),
        };
        let h = archive_header(5, &m);
        assert_eq!(h.type_().as_str(), "(tuuuusa(ayay))");
        assert_eq!(h.child_value(0).get::<u64>().unwrap(), 5u64.to_be());
        assert_eq!(
            filez_path(&"ab".repeat(32)),
            format!("objects/ab/{}.filez", "ab".repeat(31))
        );
    }
}
