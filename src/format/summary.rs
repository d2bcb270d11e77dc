//! A repository's summary as a host reads it: the file that maps each ref
//! to its head commit (`(a(s(taya{sv}))a{sv})`), and `summary.sig`, an
//! `a{sv}` holding signatures over the summary's bytes under the same keys
//! as a commit's detached metadata (`ostree.sign.ed25519`,
//! `ostree.gpgsigs`). Both arrive unverified: they are parsed only in
//! normal form, which GVariant guarantees to read back exactly.

use anyhow::{bail, Result};
use ostree::glib;
use ostree::glib::translate::{from_glib_full, ToGlibPtr};

/// The signatures `summary.sig` holds, by kind.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Signatures {
    pub ed25519: Vec<Vec<u8>>,
    pub gpg: Vec<Vec<u8>>,
}

/// Parse `summary.sig`.
pub fn parse_signatures(bytes: &[u8]) -> Result<Signatures> {
    let v = glib::Variant::from_data_with_type(bytes, glib::VariantTy::VARDICT);
    if !v.is_normal_form() {
        bail!(
            "summary.sig is malformed ({} bytes that are not a GVariant a{{sv}}): truncated or corrupt",
            bytes.len()
        );
    }
    let dict = glib::VariantDict::new(Some(&v));
    let ed25519 = crate::format::sign::signatures(&dict, "summary.sig")?;
    let gpg = crate::format::gpg::signatures(&dict, "summary.sig")?;
    Ok(Signatures { ed25519, gpg })
}

const SUMMARY_TYPE: &str = "(a(s(taya{sv}))a{sv})";

/// The commit the summary names as the head of `branch`, None when it
/// does not list the ref.
pub fn ref_checksum(summary: &[u8], branch: &str) -> Result<Option<String>> {
    let ty = glib::VariantTy::new(SUMMARY_TYPE).expect("a valid GVariant type string");
    let v = glib::Variant::from_data_with_type(summary, ty);
    if !v.is_normal_form() {
        bail!("the summary is malformed (not a GVariant {SUMMARY_TYPE}): truncated or corrupt");
    }
    for entry in v.child_value(0).iter() {
        if entry.child_value(0).str() != Some(branch) {
            continue;
        }
        let csum = entry.child_value(1).child_value(1);
        let bytes = csum
            .fixed_array::<u8>()
            .map_err(|e| anyhow::anyhow!("the summary's entry for {branch}: {e}"))?;
        if bytes.len() != 32 {
            bail!(
                "the summary's entry for {branch} holds a {}-byte checksum, not 32",
                bytes.len()
            );
        }
        return Ok(Some(hex::encode(bytes)));
    }
    Ok(None)
}

/// The remote's summary and `summary.sig` as libostree fetches them, each
/// None when the remote has no such file.
pub fn fetch(
    repo: &ostree::Repo,
    remote: &str,
) -> Result<(Option<glib::Bytes>, Option<glib::Bytes>)> {
    let mut summary = std::ptr::null_mut();
    let mut sig = std::ptr::null_mut();
    let mut error = std::ptr::null_mut();
    // The binding's wrapper assumes both files exist; a missing one comes
    // back as NULL, which is an answer here, not a crash.
    // SAFETY: every pointer is valid for the call (the stashes live to the
    // end of the statement); on return we own whatever is not NULL.
    unsafe {
        ostree::ffi::ostree_repo_remote_fetch_summary(
            repo.to_glib_none().0,
            remote.to_glib_none().0,
            &mut summary,
            &mut sig,
            std::ptr::null_mut(),
            &mut error,
        );
    }
    if !error.is_null() {
        // SAFETY: a GError libostree handed over.
        let e: glib::Error = unsafe { from_glib_full(error) };
        let e = anyhow::Error::from(e);
        // SAFETY: as below; freed if libostree set them despite the error.
        unsafe {
            if !summary.is_null() {
                glib::ffi::g_bytes_unref(summary);
            }
            if !sig.is_null() {
                glib::ffi::g_bytes_unref(sig);
            }
        }
        return Err(e);
    }
    // SAFETY: non-NULL GBytes returned with ownership transferred.
    let own = |p: *mut glib::ffi::GBytes| (!p.is_null()).then(|| unsafe { from_glib_full(p) });
    Ok((own(summary), own(sig)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::keys::SIGN_ED25519;
    use ostree::prelude::*;

    fn summary(refs: &[(&str, [u8; 32])]) -> Vec<u8> {
        let entries: Vec<glib::Variant> = refs
            .iter()
            .map(|(name, csum)| {
                let meta = glib::VariantDict::new(None).end();
                let commit = glib::Variant::tuple_from_iter([
                    0u64.to_variant(),
                    glib::Variant::array_from_fixed_array(&csum[..]),
                    meta,
                ]);
                glib::Variant::tuple_from_iter([name.to_variant(), commit])
            })
            .collect();
        let ty = glib::VariantTy::new("(s(taya{sv}))").unwrap();
        let v = glib::Variant::tuple_from_iter([
            glib::Variant::array_from_iter_with_type(ty, entries),
            glib::VariantDict::new(None).end(),
        ]);
        assert_eq!(v.type_().as_str(), SUMMARY_TYPE);
        v.data_as_bytes().to_vec()
    }

    #[test]
    fn the_summary_names_each_refs_head() {
        let s = summary(&[("stable", [0xab; 32]), ("testing", [1; 32])]);
        assert_eq!(
            ref_checksum(&s, "testing").unwrap().unwrap(),
            "01".repeat(32)
        );
        assert_eq!(
            ref_checksum(&s, "stable").unwrap().unwrap(),
            "ab".repeat(32)
        );
        assert_eq!(ref_checksum(&s, "other").unwrap(), None);
        let e = ref_checksum(&s[..s.len() - 3], "stable").unwrap_err();
        assert!(format!("{e:#}").contains("malformed"), "{e:#}");
    }

    #[test]
    fn summary_sig_holds_both_kinds() {
        let d = glib::VariantDict::new(None);
        d.insert_value(SIGN_ED25519, &vec![vec![7u8; 64]].to_variant());
        d.insert_value(
            crate::format::keys::SIGN_GPG,
            &vec![vec![1u8, 2, 3]].to_variant(),
        );
        let bytes = d.end().data_as_bytes().to_vec();
        let s = parse_signatures(&bytes).unwrap();
        assert_eq!(s.ed25519, vec![vec![7u8; 64]]);
        assert_eq!(s.gpg, vec![vec![1u8, 2, 3]]);
        let empty = glib::VariantDict::new(None).end().data_as_bytes().to_vec();
        assert_eq!(parse_signatures(&empty).unwrap(), Signatures::default());
        let e = parse_signatures(&bytes[..bytes.len() - 5]).unwrap_err();
        assert!(format!("{e:#}").contains("malformed"), "{e:#}");
    }
}
