//! The commit metadata keys hostctl writes and reads, in one place. Their
//! names and types are a contract with every host already deployed: a
//! change here must still read what older composes wrote.

/// The version string (`s`), the key libostree and `ostree admin status`
/// show.
pub const VERSION: &str = "version";

/// sha256 (hex, `s`) of everything a compose read, so an unchanged compose
/// writes no commit.
pub const INPUT_HASH: &str = "hostctl.inputhash";

/// The installed Debian packages, `a(sss)` (name, version, architecture).
pub const PACKAGES: &str = "hostctl.packages";

/// The container images the tree carries, `a(ss)` (name, manifest digest).
pub const IMAGES: &str = "hostctl.images";

/// Detached metadata: ed25519 signatures of the commit, `aay`, the key
/// libostree itself uses.
pub const SIGN_ED25519: &str = "ostree.sign.ed25519";

/// Detached metadata (of a commit, and in `summary.sig`): OpenPGP
/// signatures, `aay`, one binary signature per element; libostree's key.
pub const SIGN_GPG: &str = "ostree.gpgsigs";

/// Remote option in a host's repository config: the ed25519 public keys
/// (base64, `;`-separated) every commit pulled from that remote must be
/// signed by. libostree ignores options it does not know.
pub const REMOTE_ED25519_KEYS: &str = "hostctl.ed25519-keys";

/// Whether a treefile may set this metadata key itself: not the keys above,
/// nor any other key of hostctl's or libostree's namespace.
pub fn is_reserved(key: &str) -> bool {
    key == VERSION || key.starts_with("ostree.") || key.starts_with("hostctl.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_keys_are_reserved() {
        for k in [VERSION, INPUT_HASH, PACKAGES, IMAGES, "ostree.ref-binding"] {
            assert!(is_reserved(k), "{k}");
        }
        assert!(!is_reserved("site.owner"));
    }
}
