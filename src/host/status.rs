//! What `hostctl status` shows, built from plain data so the rendering and
//! the JSON schema (docs/status-json.md) are unit-tested without a sysroot.

use serde::Serialize;

/// One deployment, in boot order (index 0 boots next).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeploymentInfo {
    pub index: usize,
    /// `OSNAME-CHECKSUM.SERIAL`, as rpm-ostree names deployments.
    pub id: String,
    pub osname: String,
    pub checksum: String,
    pub serial: i32,
    /// `REMOTE:REF` (or a bare ref) from the origin file.
    pub origin: Option<String>,
    pub version: Option<String>,
    /// Commit time, seconds since the epoch.
    pub timestamp: Option<u64>,
    pub booted: bool,
    pub staged: bool,
    pub pinned: bool,
    /// Boots next.
    pub default: bool,
    /// What `hostctl rollback` would make the default.
    pub rollback: bool,
    /// Kernel arguments from the deployment's bootloader entry.
    pub kargs: Vec<String>,
    /// The commit's signature against its remote's keys.
    pub signature: Signature,
}

/// Whether a deployment's commit is signed by a key its remote trusts,
/// checked again at every `status` from the signatures in the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Signature {
    /// The origin's remote has no keys (or the origin is a local ref).
    NotChecked,
    /// Signed by a trusted key of each kind the remote has: `key` is the
    /// ed25519 key (base64), `gpg-key` the GPG key's primary fingerprint.
    /// `key` keeps its meaning from before GPG support: scripts that read
    /// it see ed25519 keys only.
    Verified {
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        #[serde(rename = "gpg-key", skip_serializing_if = "Option::is_none")]
        gpg_key: Option<String>,
    },
    /// The remote has keys, and the commit is not signed by one of them
    /// (of every kind the remote has): deployed before the keys were set,
    /// or the repository was changed since.
    Untrusted,
}

/// The keys that verified a commit or a summary, one per kind the remote
/// trusts, for messages ("key BASE64", "GPG key FINGERPRINT").
pub fn describe_keys(ed25519: Option<&str>, gpg: Option<&str>) -> String {
    let mut parts = Vec::new();
    if let Some(k) = ed25519 {
        parts.push(format!("key {k}"));
    }
    if let Some(k) = gpg {
        parts.push(format!("GPG key {k}"));
    }
    parts.join(" and ")
}

impl std::fmt::Display for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Signature::NotChecked => write!(f, "not checked (the remote has no keys)"),
            Signature::Verified { key, gpg_key } => write!(
                f,
                "verified, {}",
                describe_keys(key.as_deref(), gpg_key.as_deref())
            ),
            Signature::Untrusted => write!(f, "NOT signed by a trusted key"),
        }
    }
}

#[derive(Debug, Serialize)]
struct StatusJson<'a> {
    deployments: &'a [DeploymentInfo],
    /// The last automatic rollback on this host, as `boot-check` recorded
    /// it; absent when there was none (or the sysroot is not running).
    #[serde(skip_serializing_if = "Option::is_none")]
    fallback: Option<&'a str>,
}

pub fn id(osname: &str, checksum: &str, serial: i32) -> String {
    format!("{osname}-{checksum}.{serial}")
}

pub fn render_json(deps: &[DeploymentInfo]) -> String {
    render_json_with(deps, None)
}

/// [`render_json`] with the host's fallback note.
pub fn render_json_with(deps: &[DeploymentInfo], fallback: Option<&str>) -> String {
    serde_json::to_string_pretty(&StatusJson {
        deployments: deps,
        fallback,
    })
    .expect("status JSON serialisation cannot fail on plain data")
}

fn format_time(ts: u64) -> String {
    match i64::try_from(ts)
        .ok()
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
    {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        None => format!("@{ts}"),
    }
}

pub fn render_text(deps: &[DeploymentInfo], verbose: bool) -> String {
    if deps.is_empty() {
        return "No deployments.\n".to_string();
    }
    let mut out = String::from("Deployments:\n");
    for d in deps {
        let marker = if d.booted { '●' } else { ' ' };
        let mut tags = Vec::new();
        if d.default {
            tags.push("default");
        }
        if d.rollback {
            tags.push("rollback");
        }
        if d.booted {
            tags.push("booted");
        }
        if d.staged {
            tags.push("staged");
        }
        if d.pinned {
            tags.push("pinned");
        }
        let tags = if tags.is_empty() {
            String::new()
        } else {
            format!(" ({})", tags.join(", "))
        };
        out.push_str(&format!(
            "{marker} {} {} {}{tags}\n",
            d.index,
            d.osname,
            d.origin.as_deref().unwrap_or("<no origin>")
        ));
        let version = d.version.as_deref().unwrap_or("<none>");
        match d.timestamp {
            Some(ts) => out.push_str(&format!(
                "        Version: {version} ({})\n",
                format_time(ts)
            )),
            None => out.push_str(&format!("        Version: {version}\n")),
        }
        out.push_str(&format!("         Commit: {}\n", d.checksum));
        // An unsigned remote's "not checked" on every line would be noise;
        // -v says it, and any checked state is always shown.
        if verbose || d.signature != Signature::NotChecked {
            out.push_str(&format!("      Signature: {}\n", d.signature));
        }
        if verbose {
            out.push_str(&format!("             Id: {}\n", d.id));
            out.push_str(&format!("    Kernel args: {}\n", d.kargs.join(" ")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(index: usize, version: &str, booted: bool) -> DeploymentInfo {
        DeploymentInfo {
            index,
            id: id("debian", &format!("{index}abc"), 0),
            osname: "debian".into(),
            checksum: format!("{index}abc"),
            serial: 0,
            origin: Some("origin:stable".into()),
            version: Some(version.into()),
            timestamp: Some(1_700_000_000),
            booted,
            staged: false,
            pinned: false,
            default: index == 0,
            rollback: false,
            kargs: vec!["quiet".into(), "ostree=/ostree/boot.1/x".into()],
            signature: Signature::NotChecked,
        }
    }

    #[test]
    fn json_uses_rpm_ostree_key_names() {
        let mut d = dep(0, "2.0", true);
        d.pinned = true;
        let v: serde_json::Value = serde_json::from_str(&render_json(&[d])).unwrap();
        let d0 = &v["deployments"][0];
        for key in [
            "id",
            "osname",
            "checksum",
            "serial",
            "origin",
            "version",
            "timestamp",
            "booted",
            "staged",
            "pinned",
            "kargs",
        ] {
            assert!(d0.get(key).is_some(), "missing key {key}");
        }
        assert_eq!(d0["id"], "debian-0abc.0");
        assert_eq!(d0["pinned"], true);
        assert_eq!(d0["timestamp"], 1_700_000_000u64);
        assert_eq!(d0["kargs"][0], "quiet");
    }

    #[test]
    fn text_marks_booted_default_and_rollback() {
        let mut a = dep(0, "2.0", false);
        a.staged = true;
        let mut b = dep(1, "1.0", true);
        b.rollback = false;
        let mut c = dep(2, "0.9", false);
        c.rollback = true;
        c.pinned = true;
        let text = render_text(&[a, b, c], false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "  0 debian origin:stable (default, staged)");
        assert_eq!(lines[4], "● 1 debian origin:stable (booted)");
        assert_eq!(lines[7], "  2 debian origin:stable (rollback, pinned)");
        assert!(text.contains("Version: 2.0 (2023-11-14 22:13:20 UTC)"));
        assert!(!text.contains("Kernel args"));
        assert!(render_text(&[dep(0, "1", false)], true).contains("Kernel args: quiet ostree="));
    }

    #[test]
    fn a_checked_signature_is_always_shown() {
        let mut a = dep(0, "2.0", false);
        a.signature = Signature::Verified {
            key: Some("K=".into()),
            gpg_key: None,
        };
        let mut b = dep(1, "1.0", true);
        b.signature = Signature::Untrusted;
        let text = render_text(&[a, b], false);
        assert!(text.contains("Signature: verified, key K=\n"), "{text}");
        assert!(
            text.contains("Signature: NOT signed by a trusted key\n"),
            "{text}"
        );
        let mut g = dep(2, "0.9", false);
        g.signature = Signature::Verified {
            key: Some("K=".into()),
            gpg_key: Some("1C7F".into()),
        };
        let text = render_text(&[g.clone()], false);
        assert!(
            text.contains("Signature: verified, key K= and GPG key 1C7F\n"),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&render_json(&[g])).unwrap();
        assert_eq!(
            json["deployments"][0]["signature"],
            serde_json::json!({"state": "verified", "key": "K=", "gpg-key": "1C7F"})
        );
        let mut g = dep(3, "0.8", false);
        g.signature = Signature::Verified {
            key: None,
            gpg_key: Some("1C7F".into()),
        };
        let json: serde_json::Value = serde_json::from_str(&render_json(&[g])).unwrap();
        assert_eq!(
            json["deployments"][0]["signature"],
            serde_json::json!({"state": "verified", "gpg-key": "1C7F"})
        );
        let plain = render_text(&[dep(0, "1", false)], false);
        assert!(!plain.contains("Signature"), "{plain}");
        let verbose = render_text(&[dep(0, "1", false)], true);
        assert!(verbose.contains("Signature: not checked"), "{verbose}");
        let json: serde_json::Value =
            serde_json::from_str(&render_json(&[dep(0, "1", false)])).unwrap();
        assert_eq!(
            json["deployments"][0]["signature"],
            serde_json::json!({"state": "not-checked"})
        );
    }

    #[test]
    fn no_deployments_is_said() {
        assert_eq!(render_text(&[], false), "No deployments.\n");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&render_json(&[])).unwrap()["deployments"],
            serde_json::json!([])
        );
    }
}
