//! OCI image layouts written from plain directories, without a registry or
//! an image builder, for the tests that carry container images in commits.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

use super::stderr;

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A tar of `dir` (sorted, owned by root) as one uncompressed layer.
pub fn layer_tar(dir: &Path) -> Vec<u8> {
    let out = Command::new("tar")
        .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner"])
        .arg("-C")
        .arg(dir)
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    assert!(out.status.success(), "tar: {}", stderr(&out));
    out.stdout
}

/// Write an OCI image layout in `out` with one layer per directory of
/// `layers` (lowest first); returns the manifest's digest.
pub fn oci_layout(out: &Path, layers: &[&Path]) -> String {
    let blobs = out.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let blob = |bytes: &[u8]| -> (String, usize) {
        let d = sha256_hex(bytes);
        fs::write(blobs.join(&d), bytes).unwrap();
        (format!("sha256:{d}"), bytes.len())
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let (d, size) = blob(&layer_tar(l));
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": size
        }));
        diff_ids.push(d);
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    });
    let (cd, csize) = blob(config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": csize},
        "layers": descs
    });
    let (md, msize) = blob(manifest.to_string().as_bytes());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": msize
    }]});
    fs::write(out.join("index.json"), index.to_string()).unwrap();
    fs::write(out.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    md
}

/// A layer with busybox as /bin/sh and friends.
pub fn busybox_layer(dir: &Path) {
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    for t in ["sh", "cat", "test", "ls"] {
        symlink("busybox", dir.join("bin").join(t)).unwrap();
    }
}
