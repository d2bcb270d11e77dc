//! `[[images]]` and `[[containers]]` of a treefile: their types and the
//! checks that need no disk. Every value here ends up in a unit file name,
//! a systemd command line, a tmpfiles.d line or a path of the tree, so a
//! hostile treefile must be stopped here, not quoted around later.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, Result};
use serde::{Deserialize, Serialize};

/// Where an entry was written, for messages that come after the merge of
/// includes (which forgets the file).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Origin {
    pub file: PathBuf,
    /// The line of the entry's `[[images]]`/`[[containers]]` header.
    pub line: Option<usize>,
}

impl Origin {
    /// "FILE:LINE: key `KEY`: MSG", the treefile module's error shape.
    pub fn error(&self, key: &str, msg: impl std::fmt::Display) -> anyhow::Error {
        match self.line {
            Some(l) => anyhow!("{}:{l}: key `{key}`: {msg}", self.file.display()),
            None => anyhow!("{}: key `{key}`: {msg}", self.file.display()),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ImageFormat {
    OciArchive,
    DockerArchive,
    /// An OCI image layout directory.
    Oci,
}

impl ImageFormat {
    /// The containers/image transport that reads this format.
    pub fn transport(self) -> &'static str {
        match self {
            ImageFormat::OciArchive => "oci-archive",
            ImageFormat::DockerArchive => "docker-archive",
            ImageFormat::Oci => "oci",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ImageSpec {
    /// The name podman knows the image by, e.g. `localhost/app:v1`.
    pub name: String,
    /// Relative to the treefile that names it (made absolute when parsed).
    pub source: PathBuf,
    pub format: ImageFormat,
    #[serde(skip)]
    pub origin: Origin,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Network {
    /// The host's network namespace (system containers).
    Host,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ContainerSpec {
    pub name: String,
    /// The `name` of one of the treefile's `[[images]]`.
    pub image: String,
    /// Overrides the image's command when not empty.
    #[serde(default)]
    pub command: Vec<String>,
    /// `HOST:CONTAINER[/PROTO]`.
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// `/var/...:/path/in/container[:ro|:rw]`.
    #[serde(default)]
    pub volumes: Vec<String>,
    #[serde(default)]
    pub privileged: bool,
    pub network: Option<Network>,
    #[serde(skip)]
    pub origin: Origin,
}

impl ContainerSpec {
    pub fn unit_name(&self) -> String {
        format!("container-{}.service", self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub host: u16,
    pub container: u16,
    pub proto: Proto,
}

impl Port {
    /// The argument of podman's `--publish`.
    pub fn publish_arg(&self) -> String {
        let p = match self.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        };
        format!("{}:{}/{p}", self.host, self.container)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// Normalised, strictly under /var.
    pub host: PathBuf,
    pub container: PathBuf,
    pub read_only: bool,
}

impl Volume {
    /// The argument of podman's `--volume`.
    pub fn volume_arg(&self) -> String {
        format!(
            "{}:{}:{}",
            self.host.display(),
            self.container.display(),
            if self.read_only { "ro" } else { "rw" }
        )
    }
}

pub fn parse_port(s: &str) -> Result<Port, String> {
    let (ports, proto) = match s.split_once('/') {
        Some((p, "tcp")) => (p, Proto::Tcp),
        Some((p, "udp")) => (p, Proto::Udp),
        Some((p, "sctp")) => (p, Proto::Sctp),
        Some((_, other)) => return Err(format!("`{other}` is not tcp, udp or sctp")),
        None => (s, Proto::Tcp),
    };
    let num = |n: &str| -> Result<u16, String> {
        match n.parse::<u16>() {
            Ok(v) if v > 0 && n.bytes().all(|b| b.is_ascii_digit()) => Ok(v),
            _ => Err(format!("`{n}` is not a port number (1-65535)")),
        }
    };
    let Some((h, c)) = ports.split_once(':') else {
        return Err("expected HOST:CONTAINER[/tcp|udp|sctp]".into());
    };
    Ok(Port {
        host: num(h)?,
        container: num(c)?,
        proto,
    })
}

/// `/a/./b/../c` → `/a/c`, without the disk: a volume's host path must be
/// judged by where it leads, not by how it is spelt.
pub fn normalize_abs(p: &str) -> Option<PathBuf> {
    if !p.starts_with('/') {
        return None;
    }
    let mut out: Vec<&str> = Vec::new();
    for c in Path::new(p).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(s) => out.push(s.to_str()?),
            Component::Prefix(_) => return None,
        }
    }
    Some(PathBuf::from(format!("/{}", out.join("/"))))
}

pub fn parse_volume(s: &str) -> Result<Volume, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (host, ctr, read_only) = match parts.as_slice() {
        [h, c] => (*h, *c, false),
        [h, c, "ro"] => (*h, *c, true),
        [h, c, "rw"] => (*h, *c, false),
        [_, _, o] => return Err(format!("option `{o}` is not ro or rw")),
        _ => return Err("expected /var/HOST/PATH:/CONTAINER/PATH[:ro|:rw]".into()),
    };
    for p in [host, ctr] {
        if p.chars().any(|c| c.is_whitespace() || c.is_control())
            || p.contains(['%', ',', '\\', '"', '\''])
        {
            return Err(format!(
                "`{p}`: volume paths may not hold spaces, quotes, backslashes, commas or `%`"
            ));
        }
    }
    let h = normalize_abs(host).ok_or_else(|| format!("`{host}` is not an absolute path"))?;
    if !h.starts_with("/var") || h == Path::new("/var") {
        return Err(format!(
            "`{host}` is outside /var (it is {}): only /var is the host's own state, kept across upgrades and rollbacks",
            h.display()
        ));
    }
    let c = normalize_abs(ctr).ok_or_else(|| format!("`{ctr}` is not an absolute path"))?;
    if c == Path::new("/") {
        return Err("a volume cannot be mounted on the container's /".into());
    }
    Ok(Volume {
        host: h,
        container: c,
        read_only,
    })
}

/// Names that become `container-NAME.service` and podman's `--name`: podman's
/// own rule, which also keeps out `/`, `..`, `%`, `\` and whitespace.
pub fn is_container_name(n: &str) -> bool {
    let mut cs = n.chars();
    n.len() <= 128
        && cs.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && cs.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// An image reference without digest: `[registry/]path[:tag]`, lowercase
/// repository, as containers/image accepts it.
pub fn is_image_name(n: &str) -> bool {
    let (repo, tag) = match n.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, Some(t)),
        _ => (n, None),
    };
    let repo_ok = !repo.is_empty()
        && repo.len() <= 255
        && repo.split('/').all(|comp| {
            let b = comp.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && comp
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
                && !comp.contains("..")
        });
    // A registry host may carry a port (`host:5000/x`): not for local images.
    let tag_ok = tag.is_none_or(|t| {
        !t.is_empty()
            && t.len() <= 128
            && t.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    });
    repo_ok && tag_ok
}

fn is_env_name(k: &str) -> bool {
    let mut cs = k.chars();
    cs.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks of one file's entries (names, ports, volumes, duplicates among
/// them). Whether an image exists is for [`check_references`], once all
/// includes are merged.
pub fn validate(images: &[ImageSpec], containers: &[ContainerSpec]) -> Result<()> {
    let mut seen = BTreeSet::new();
    for i in images {
        let o = &i.origin;
        if !is_image_name(&i.name) {
            return Err(o.error(
                "images.name",
                format!(
                    "`{}` is not an image name (like localhost/app:v1: lowercase path, optional tag)",
                    i.name.escape_debug()
                ),
            ));
        }
        if !seen.insert(i.name.as_str()) {
            return Err(o.error("images.name", format!("image `{}` is listed twice", i.name)));
        }
        // skopeo reads `TRANSPORT:PATH[:REF]`: a colon would split the path.
        if i.source.to_string_lossy().contains(':') {
            return Err(o.error(
                "images.source",
                format!(
                    "{}: a source path may not contain `:` (skopeo would read what follows as an image name)",
                    i.source.display()
                ),
            ));
        }
    }
    let mut seen = BTreeSet::new();
    for c in containers {
        let o = &c.origin;
        if !is_container_name(&c.name) {
            return Err(o.error(
                "containers.name",
                format!(
                    "`{}` is not a container name (letters, digits, `_`, `.`, `-`, starting with a letter or digit)",
                    c.name.escape_debug()
                ),
            ));
        }
        if !seen.insert(c.name.as_str()) {
            return Err(o.error(
                "containers.name",
                format!("container `{}` is declared twice", c.name),
            ));
        }
        if !is_image_name(&c.image) {
            return Err(o.error(
                "containers.image",
                format!("`{}` is not an image name", c.image.escape_debug()),
            ));
        }
        for a in &c.command {
            // systemd's command line has no way to pass these through.
            if a.chars().any(|ch| ch.is_control()) {
                return Err(o.error(
                    "containers.command",
                    format!("`{}` holds a control character", a.escape_debug()),
                ));
            }
        }
        for p in &c.ports {
            parse_port(p).map_err(|e| o.error("containers.ports", format!("`{p}`: {e}")))?;
        }
        for (k, v) in &c.environment {
            if !is_env_name(k) {
                return Err(o.error(
                    "containers.environment",
                    format!("`{}` is not a variable name", k.escape_debug()),
                ));
            }
            if v.chars().any(|ch| ch.is_control()) {
                return Err(o.error(
                    "containers.environment",
                    format!("the value of {k} holds a control character"),
                ));
            }
        }
        for v in &c.volumes {
            parse_volume(v).map_err(|e| o.error("containers.volumes", e))?;
        }
    }
    Ok(())
}

/// Checks over the merged treefile: names unique across includes, and every
/// container runs an image the tree carries.
pub fn check_references(images: &[ImageSpec], containers: &[ContainerSpec]) -> Result<()> {
    validate(images, containers)?;
    let names: BTreeSet<&str> = images.iter().map(|i| i.name.as_str()).collect();
    for c in containers {
        if !names.contains(c.image.as_str()) {
            let carried = if names.is_empty() {
                "the treefile carries no [[images]]".to_string()
            } else {
                format!(
                    "it carries {}",
                    names.iter().copied().collect::<Vec<_>>().join(", ")
                )
            };
            return Err(c.origin.error(
                "containers.image",
                format!(
                    "container `{}` runs image `{}`, which the treefile does not carry ({carried}); add it to [[images]]",
                    c.name, c.image
                ),
            ));
        }
    }
    Ok(())
}

/// Line of the `index`-th `[[table]]` header in `text` (1-based).
pub fn entry_line(text: &str, table: &str, index: usize) -> Option<usize> {
    let header = format!("[[{table}]]");
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let l = l.trim();
            l == header
                || l.strip_prefix(&header)
                    .is_some_and(|r| r.trim_start().starts_with('#'))
        })
        .nth(index)
        .map(|(i, _)| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctr(name: &str) -> ContainerSpec {
        ContainerSpec {
            name: name.into(),
            image: "localhost/app:v1".into(),
            command: vec![],
            ports: vec![],
            environment: BTreeMap::new(),
            volumes: vec![],
            privileged: false,
            network: None,
            origin: Origin {
                file: "/t/h.toml".into(),
                line: Some(9),
            },
        }
    }

    fn img(name: &str) -> ImageSpec {
        ImageSpec {
            name: name.into(),
            source: "/t/app.tar".into(),
            format: ImageFormat::OciArchive,
            origin: Origin {
                file: "/t/h.toml".into(),
                line: Some(3),
            },
        }
    }

    #[test]
    fn ports_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_port("8080:80").unwrap().publish_arg(), "8080:80/tcp");
        assert_eq!(parse_port("53:53/udp").unwrap().proto, Proto::Udp);
        for bad in [
            "80",
            "0:80",
            "8080:80/icmp",
            "a:80",
            "70000:1",
            "+1:2",
            "1:2:3",
        ] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn volumes_must_lead_under_var() {
        let v = parse_volume("/var/lib/app/../app2/./data:/data:ro").unwrap();
        assert_eq!(v.host, PathBuf::from("/var/lib/app2/data"));
        assert!(v.read_only);
        assert_eq!(v.volume_arg(), "/var/lib/app2/data:/data:ro");
        for bad in [
            "/var/../etc:/x",
            "/var/lib/../../etc:/x",
            "/etc:/x",
            "/var:/x",
            "/variable/x:/x",
            "var/lib/x:/x",
            "/var/lib/x:rel",
            "/var/lib/x:/",
            "/var/lib/x:/x:z",
            "/var/lib/a b:/x",
            "/var/lib/%h:/x",
            "/var/lib/x",
            "/var/lib/x\n:/x",
        ] {
            assert!(parse_volume(bad).is_err(), "{bad}");
        }
        let e = parse_volume("/var/../etc:/x").unwrap_err();
        assert!(e.contains("outside /var (it is /etc)"), "{e}");
    }

    #[test]
    fn names_keep_out_paths_specifiers_and_newlines() {
        for good in ["web", "app-1", "a.b_c"] {
            assert!(is_container_name(good), "{good}");
        }
        for bad in ["", "../x", "a/b", ".x", "a%n", "a\nb", "a b", "-x", "ü"] {
            assert!(!is_container_name(bad), "{bad:?}");
        }
        for good in [
            "localhost/app:v1",
            "app",
            "quay.io/org/app:1.0_rc",
            "a/b-c.d",
        ] {
            assert!(is_image_name(good), "{good}");
        }
        for bad in [
            "",
            "Localhost/App",
            "a//b",
            "a/../b",
            "a:",
            "a:v1\n",
            "a b",
            "app:%n",
            "/app",
            "a@sha256:00",
        ] {
            assert!(!is_image_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn validate_names_key_line_and_value() {
        let mut c = ctr("web");
        c.volumes = vec!["/srv/x:/x".into()];
        let e = validate(&[img("localhost/app:v1")], &[c])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/t/h.toml:9: key `containers.volumes`: `/srv/x` is outside /var"),
            "{e}"
        );
        let e = validate(&[], &[ctr("a/../b")]).unwrap_err().to_string();
        assert!(e.starts_with("/t/h.toml:9: key `containers.name`"), "{e}");
        let e = validate(&[], &[ctr("w"), ctr("w")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("container `w` is declared twice"), "{e}");
        let e = validate(&[img("localhost/a"), img("localhost/a")], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/t/h.toml:3: key `images.name`: image `localhost/a` is listed twice"),
            "{e}"
        );
        let mut i = img("localhost/a");
        i.source = "/t/a:b.tar".into();
        let e = validate(&[i], &[]).unwrap_err().to_string();
        assert!(e.starts_with("/t/h.toml:3: key `images.source`"), "{e}");
        let mut c = ctr("w");
        c.environment.insert("A-B".into(), "x".into());
        assert!(validate(&[], &[c]).is_err());
        let mut c = ctr("w");
        c.command = vec!["sh".into(), "-c".into(), "a\nb".into()];
        assert!(validate(&[], &[c]).is_err());
        let mut c = ctr("w");
        c.ports = vec!["80".into()];
        let e = validate(&[], &[c]).unwrap_err().to_string();
        assert!(e.contains("key `containers.ports`: `80`"), "{e}");
    }

    #[test]
    fn a_container_must_run_a_carried_image() {
        assert!(check_references(&[img("localhost/app:v1")], &[ctr("web")]).is_ok());
        let e = check_references(&[img("localhost/other")], &[ctr("web")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "/t/h.toml:9: key `containers.image`: container `web` runs image `localhost/app:v1`, which the treefile does not carry (it carries localhost/other); add it to [[images]]"
        );
    }

    #[test]
    fn entry_lines_count_headers() {
        let t = "ref = \"x\"\n[[images]]\nname = \"a\"\n\n[[images]] # second\nname = \"b\"\n";
        assert_eq!(entry_line(t, "images", 0), Some(2));
        assert_eq!(entry_line(t, "images", 1), Some(5));
        assert_eq!(entry_line(t, "images", 2), None);
        assert_eq!(entry_line(t, "containers", 0), None);
    }
}

/// The keys as a treefile carries them: parsed, made absolute, checked
/// with the file and line of the entry.
#[cfg(test)]
mod treefile_tests {
    use crate::compose::treefile::{load, parse_one};
    use std::path::{Path, PathBuf};

    const GOOD: &str = r#"ref = "x"

[[images]]
name = "localhost/app:v1"
source = "images/app.tar"
format = "oci-archive"

[[containers]]
name = "web"
image = "localhost/app:v1"
command = ["httpd", "-f"]
ports = ["8080:80"]
volumes = ["/var/lib/web:/data"]
privileged = true
network = "host"
[containers.environment]
GREETING = "hi"
"#;

    #[test]
    fn images_and_containers_parse_with_sources_made_absolute() {
        let raw = parse_one(Path::new("/t/h.toml"), GOOD).unwrap();
        let img = &raw.images.unwrap()[0];
        assert_eq!(img.source, PathBuf::from("/t/images/app.tar"));
        assert_eq!(img.origin.line, Some(3));
        let c = &raw.containers.unwrap()[0];
        assert_eq!(c.origin.line, Some(8));
        assert_eq!(c.environment["GREETING"], "hi");
        assert_eq!(c.unit_name(), "container-web.service");
    }

    #[test]
    fn errors_name_file_entry_line_and_key() {
        let bad = GOOD.replace("/var/lib/web:/data", "/var/../etc:/data");
        let e = parse_one(Path::new("/t/h.toml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/t/h.toml:8: key `containers.volumes`: `/var/../etc` is outside /var"),
            "{e}"
        );
        let bad = GOOD.replace("format = \"oci-archive\"", "format = \"tarball\"");
        let e = parse_one(Path::new("/t/h.toml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/t/h.toml:6:") && e.contains("images.format"),
            "{e}"
        );
        let bad = GOOD.replace("privileged = true", "privileged = true\nuser = \"x\"");
        let e = parse_one(Path::new("/t/h.toml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `user`"), "{e}");
    }

    #[test]
    fn an_image_from_an_include_counts_and_a_missing_one_is_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let (images, containers) = GOOD.split_at(GOOD.find("[[containers]]").unwrap());
        std::fs::write(p.join("inc.toml"), images.replace("ref = \"x\"", "")).unwrap();
        std::fs::write(
            p.join("top.toml"),
            format!("ref = \"x\"\ninclude = [\"inc.toml\"]\n{containers}"),
        )
        .unwrap();
        let tf = load(&p.join("top.toml")).unwrap();
        assert_eq!(tf.images.len(), 1);
        assert_eq!(tf.containers.len(), 1);
        std::fs::write(p.join("inc.toml"), "").unwrap();
        let e = format!("{:#}", load(&p.join("top.toml")).unwrap_err());
        assert!(
            e.contains("top.toml:3: key `containers.image`: container `web` runs image `localhost/app:v1`, which the treefile does not carry"),
            "{e}"
        );
    }

    /// The reference container host extends the minimal one and ships the
    /// podman defaults from an overlay that exists.
    #[test]
    fn the_container_host_treefile_extends_the_minimal_host() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let tf = load(&root.join("treefiles/debian-container-host.toml")).unwrap();
        assert_eq!(tf.refname, "debian/12/x86_64/container-host");
        for p in ["podman", "netavark", "aardvark-dns", "linux-image-amd64"] {
            assert!(tf.packages.iter().any(|x| x == p), "{p}");
        }
        assert!(tf.units.iter().any(|u| u == "hostctl-agent.timer"));
        assert!(
            tf.overlays
                .iter()
                .any(|o| o.join("usr/share/containers/containers.conf").is_file()),
            "{:?}",
            tf.overlays
        );
    }
}
