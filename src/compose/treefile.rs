//! The treefile: a TOML description of a host tree.
//!
//! Parsing is split from merging so both can be unit-tested without touching
//! the disk: `parse_one` turns one file's text into a `RawTreefile` (every path
//! already made absolute against that file's directory), and `merge` folds an
//! included file under the file that includes it. `load` does the I/O and
//! follows `include`s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::containers::spec::{self, ContainerSpec, ImageSpec, Origin};

/// One treefile exactly as written (all keys optional so that includes can
/// provide them). Unknown keys are errors: a typo must not silently drop a
/// package or an overlay from a host image.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawTreefile {
    #[serde(rename = "ref")]
    pub refname: Option<String>,
    pub base: Option<PathBuf>,
    pub overlays: Option<Vec<PathBuf>>,
    pub remove_files: Option<Vec<String>>,
    pub postprocess: Option<Vec<String>>,
    /// Give the postprocess scripts the build machine's network.
    pub postprocess_network: Option<bool>,
    pub units: Option<Vec<String>>,
    pub default_target: Option<String>,
    pub include: Option<Vec<PathBuf>>,
    pub automatic_version_prefix: Option<String>,
    pub metadata: Option<BTreeMap<String, String>>,
    // Building from Debian packages.
    pub packages: Option<Vec<String>>,
    pub suite: Option<String>,
    pub components: Option<Vec<String>>,
    pub mirror: Option<String>,
    pub keyring: Option<PathBuf>,
    pub architecture: Option<String>,
    /// Local .deb files (paths) installed together with `packages`.
    pub local_packages: Option<Vec<PathBuf>>,
    /// Put the `hostctl` binary running the compose and its units into the tree.
    pub install_hostctl: Option<bool>,
    /// mmdebstrap variant: the package set installed besides `packages`.
    pub variant: Option<String>,
    /// Container images carried in the commit.
    pub images: Option<Vec<ImageSpec>>,
    /// Containers systemd runs from those images.
    pub containers: Option<Vec<ContainerSpec>>,
}

/// The flattened treefile: includes resolved, paths absolute, defaults applied.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Treefile {
    /// Every treefile that contributed, the top one first.
    pub sources: Vec<PathBuf>,
    #[serde(rename = "ref")]
    pub refname: String,
    pub base: Option<PathBuf>,
    pub overlays: Vec<PathBuf>,
    pub remove_files: Vec<String>,
    pub postprocess: Vec<String>,
    pub postprocess_network: bool,
    pub units: Vec<String>,
    pub default_target: Option<String>,
    pub automatic_version_prefix: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub packages: Vec<String>,
    pub suite: String,
    pub components: Vec<String>,
    pub mirror: Option<String>,
    pub keyring: Option<PathBuf>,
    pub architecture: Option<String>,
    pub local_packages: Vec<PathBuf>,
    pub install_hostctl: bool,
    pub variant: Option<String>,
    pub images: Vec<ImageSpec>,
    pub containers: Vec<ContainerSpec>,
}

impl Treefile {
    /// The tree is built by apt: the treefile installs packages, from the
    /// mirror or local .deb files.
    pub fn has_packages(&self) -> bool {
        !self.packages.is_empty() || !self.local_packages.is_empty()
    }
}

pub const DEFAULT_SUITE: &str = "bookworm";

/// Parse one treefile's text. `path` is used for messages and to make relative
/// paths absolute.
pub fn parse_one(path: &Path, text: &str) -> Result<RawTreefile> {
    let mut raw: RawTreefile = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => bail!("{}", describe_toml_error(path, text, &e)),
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let abs = |p: &PathBuf| -> PathBuf {
        if p.is_absolute() {
            p.clone()
        } else {
            dir.join(p)
        }
    };
    raw.base = raw.base.as_ref().map(abs);
    raw.keyring = raw.keyring.as_ref().map(abs);
    for list in [&mut raw.overlays, &mut raw.include, &mut raw.local_packages]
        .into_iter()
        .flatten()
    {
        for p in list.iter_mut() {
            *p = abs(p);
        }
    }
    for (i, img) in raw.images.iter_mut().flatten().enumerate() {
        img.source = abs(&img.source);
        img.origin = Origin {
            file: path.to_path_buf(),
            line: spec::entry_line(text, "images", i).or_else(|| line_of_key(text, "images")),
        };
    }
    for (i, c) in raw.containers.iter_mut().flatten().enumerate() {
        c.origin = Origin {
            file: path.to_path_buf(),
            line: spec::entry_line(text, "containers", i)
                .or_else(|| line_of_key(text, "containers")),
        };
    }
    validate(path, text, &raw)?;
    spec::validate(
        raw.images.as_deref().unwrap_or_default(),
        raw.containers.as_deref().unwrap_or_default(),
    )?;
    Ok(raw)
}

/// Checks that the type system cannot express; messages carry the key's line.
fn validate(path: &Path, text: &str, raw: &RawTreefile) -> Result<()> {
    let err = |key: &str, msg: String| -> anyhow::Error {
        match line_of_key(text, key) {
            Some(line) => anyhow::anyhow!("{}:{line}: key `{key}`: {msg}", path.display()),
            None => anyhow::anyhow!("{}: key `{key}`: {msg}", path.display()),
        }
    };
    if let Some(r) = &raw.refname {
        if ostree::validate_rev(r).is_err() {
            return Err(err("ref", format!("`{r}` is not a valid OSTree ref name")));
        }
    }
    for pat in raw.remove_files.iter().flatten() {
        let rel = pat.trim_start_matches('/');
        if rel.is_empty() || rel.split('/').any(|c| c == "..") {
            return Err(err(
                "remove-files",
                format!("`{pat}` must name a path inside the tree"),
            ));
        }
        if let Err(e) = glob::Pattern::new(rel) {
            return Err(err(
                "remove-files",
                format!("`{pat}` is not a valid glob: {e}"),
            ));
        }
    }
    for u in raw.units.iter().flatten() {
        if !is_unit_name(u) {
            return Err(err("units", format!("`{u}` is not a systemd unit name")));
        }
    }
    if let Some(t) = &raw.default_target {
        if !t.ends_with(".target") || !is_unit_name(t) {
            return Err(err(
                "default-target",
                format!("`{t}` is not a systemd target name (like multi-user.target)"),
            ));
        }
    }
    if let Some(p) = &raw.automatic_version_prefix {
        if p.is_empty() || p.chars().any(char::is_whitespace) {
            return Err(err(
                "automatic-version-prefix",
                format!("`{p}` must be non-empty and without spaces"),
            ));
        }
    }
    for k in raw.metadata.iter().flat_map(|m| m.keys()) {
        if crate::format::keys::is_reserved(k) {
            return Err(err(
                "metadata",
                format!("`{k}` is reserved: hostctl and libostree set it themselves"),
            ));
        }
    }
    for p in raw.packages.iter().flatten() {
        if p.is_empty() || p.starts_with('-') || p.chars().any(char::is_whitespace) {
            return Err(err("packages", format!("`{p}` is not a package name")));
        }
    }
    for p in raw.local_packages.iter().flatten() {
        if let Err(why) = local_package_path(p) {
            return Err(err("local-packages", why));
        }
    }
    if let Some(v) = &raw.variant {
        if !VARIANTS.contains(&v.as_str()) {
            return Err(err(
                "variant",
                format!("`{v}` is not one of {}", VARIANTS.join(", ")),
            ));
        }
    }
    Ok(())
}

/// mmdebstrap variants a treefile may name (those defined by Essential and
/// Priority fields, which `packages::resolve` can reproduce).
pub const VARIANTS: &[&str] = &["essential", "required", "minbase", "important", "standard"];

fn is_unit_name(u: &str) -> bool {
    const SUFFIXES: &[&str] = &[
        ".service",
        ".socket",
        ".target",
        ".timer",
        ".path",
        ".mount",
        ".automount",
        ".swap",
        ".slice",
    ];
    !u.contains('/') && SUFFIXES.iter().any(|s| u.len() > s.len() && u.ends_with(s))
}

/// Fold `included` under `top`: lists concatenate (included first), scalars of
/// `top` win, metadata merges key by key with `top` winning.
pub fn merge(included: RawTreefile, top: RawTreefile) -> RawTreefile {
    fn list<T>(a: Option<Vec<T>>, b: Option<Vec<T>>) -> Option<Vec<T>> {
        match (a, b) {
            (None, None) => None,
            (a, b) => Some(
                a.into_iter()
                    .flatten()
                    .chain(b.into_iter().flatten())
                    .collect(),
            ),
        }
    }
    let metadata = match (included.metadata, top.metadata) {
        (None, None) => None,
        (a, b) => {
            let mut m = a.unwrap_or_default();
            m.extend(b.unwrap_or_default());
            Some(m)
        }
    };
    RawTreefile {
        refname: top.refname.or(included.refname),
        base: top.base.or(included.base),
        overlays: list(included.overlays, top.overlays),
        remove_files: list(included.remove_files, top.remove_files),
        postprocess: list(included.postprocess, top.postprocess),
        postprocess_network: top.postprocess_network.or(included.postprocess_network),
        units: list(included.units, top.units),
        default_target: top.default_target.or(included.default_target),
        include: None,
        automatic_version_prefix: top
            .automatic_version_prefix
            .or(included.automatic_version_prefix),
        metadata,
        packages: list(included.packages, top.packages),
        suite: top.suite.or(included.suite),
        components: top.components.or(included.components),
        mirror: top.mirror.or(included.mirror),
        keyring: top.keyring.or(included.keyring),
        architecture: top.architecture.or(included.architecture),
        local_packages: list(included.local_packages, top.local_packages),
        install_hostctl: top.install_hostctl.or(included.install_hostctl),
        variant: top.variant.or(included.variant),
        images: list(included.images, top.images),
        containers: list(included.containers, top.containers),
    }
}

/// Read `path` and everything it includes, and flatten the result.
pub fn load(path: &Path) -> Result<Treefile> {
    let path = std::path::absolute(path)
        .with_context(|| format!("resolving treefile path {}", path.display()))?;
    let mut sources = Vec::new();
    let raw = load_recursive(&path, &mut Vec::new(), &mut sources)?;
    finish(&path, raw, sources)
}

fn load_recursive(
    path: &Path,
    stack: &mut Vec<PathBuf>,
    sources: &mut Vec<PathBuf>,
) -> Result<RawTreefile> {
    let canonical = path
        .canonicalize()
        .with_context(|| format!("reading treefile {}", path.display()))?;
    if let Some(pos) = stack.iter().position(|p| p == &canonical) {
        let chain: Vec<String> = stack[pos..]
            .iter()
            .chain(std::iter::once(&canonical))
            .map(|p| p.display().to_string())
            .collect();
        bail!("include cycle: {}", chain.join(" -> "));
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading treefile {}", path.display()))?;
    let mut raw = parse_one(path, &text)?;
    sources.push(path.to_path_buf());
    stack.push(canonical);
    let mut merged = RawTreefile::default();
    for inc in raw.include.take().unwrap_or_default() {
        let sub = load_recursive(&inc, stack, sources)
            .with_context(|| format!("{}: in `include` of {}", path.display(), inc.display()))?;
        merged = merge(merged, sub);
    }
    stack.pop();
    Ok(merge(merged, raw))
}

fn finish(path: &Path, raw: RawTreefile, sources: Vec<PathBuf>) -> Result<Treefile> {
    let Some(refname) = raw.refname else {
        bail!(
            "{}: missing required key `ref` (the branch the commit goes to, e.g. ref = \"debian/12/x86_64/host\")",
            path.display()
        );
    };
    let images = raw.images.unwrap_or_default();
    let containers = raw.containers.unwrap_or_default();
    spec::check_references(&images, &containers)?;
    Ok(Treefile {
        sources,
        refname,
        base: raw.base,
        overlays: raw.overlays.unwrap_or_default(),
        remove_files: raw.remove_files.unwrap_or_default(),
        postprocess: raw.postprocess.unwrap_or_default(),
        postprocess_network: raw.postprocess_network.unwrap_or(false),
        units: raw.units.unwrap_or_default(),
        default_target: raw.default_target,
        automatic_version_prefix: raw.automatic_version_prefix,
        metadata: raw.metadata.unwrap_or_default(),
        packages: raw.packages.unwrap_or_default(),
        suite: raw.suite.unwrap_or_else(|| DEFAULT_SUITE.to_string()),
        components: raw.components.unwrap_or_else(|| vec!["main".to_string()]),
        mirror: raw.mirror,
        keyring: raw.keyring,
        architecture: raw.architecture,
        local_packages: raw.local_packages.unwrap_or_default(),
        install_hostctl: raw.install_hostctl.unwrap_or(false),
        variant: raw.variant,
        images,
        containers,
    })
}

/// Turn a TOML/serde error into "FILE:LINE:COL: key `K`: message". For a
/// syntax error caused by a bracket, brace, table header or string that is
/// never closed, the position is where it opens: the parser only notices
/// where it gives up, often the end of the file.
fn describe_toml_error(path: &Path, text: &str, e: &toml::de::Error) -> String {
    // toml's messages span lines ("invalid array\nexpected `]`"): one line.
    let msg = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(", ");
    let Some(span) = e.span() else {
        return format!("{}: {msg}", path.display());
    };
    let syntax_error = toml::from_str::<toml::Table>(text).is_err();
    if let Some((at, what)) =
        first_unclosed(text).filter(|(at, _)| syntax_error && *at <= span.start)
    {
        let (line, col) = line_col(text, at);
        let (key, what) = match what {
            Unclosed::Array => (key_at(text, at), "this `[` is never closed"),
            Unclosed::InlineTable => (key_at(text, at), "this `{` is never closed"),
            Unclosed::Str => (key_at(text, at), "this string is never closed"),
            Unclosed::Header => (None, "this table header `[` is never closed"),
        };
        return match key {
            Some(key) => format!(
                "{}:{line}:{col}: key `{key}`: {what} ({msg})",
                path.display()
            ),
            None => format!("{}:{line}:{col}: {what} ({msg})", path.display()),
        };
    }
    let (line, col) = line_col(text, span.start);
    match key_at(text, span.start) {
        Some(key) => format!("{}:{line}:{col}: key `{key}`: {msg}", path.display()),
        None => format!("{}:{line}:{col}: {msg}", path.display()),
    }
}

/// Something [`first_unclosed`] found open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unclosed {
    Array,
    InlineTable,
    Header,
    Str,
}

/// The first array, inline table, table header or string of `text` that is
/// never closed, with the byte offset where it opens. A scanner for error
/// messages, not a parser: it knows strings and comments, and that headers
/// and one-line strings end with their line.
fn first_unclosed(text: &str) -> Option<(usize, Unclosed)> {
    let b = text.as_bytes();
    let mut found: Vec<(usize, Unclosed)> = Vec::new();
    let mut open: Vec<(usize, Unclosed)> = Vec::new();
    let mut line_start = true;
    let mut double_header = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\n' => {
                if let Some(pos) = open.iter().position(|(_, k)| *k == Unclosed::Header) {
                    found.extend(open.drain(pos..).next());
                }
                line_start = true;
                i += 1;
                continue;
            }
            b' ' | b'\t' | b'\r' => {
                i += 1;
                continue;
            }
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' | b'\'' => {
                match string_end(b, i) {
                    Ok(end) => i = end,
                    Err(stop) => {
                        found.push((i, Unclosed::Str));
                        i = stop;
                    }
                }
                line_start = false;
                continue;
            }
            b'[' if line_start && open.is_empty() => {
                open.push((i, Unclosed::Header));
                // `[[name]]`, an array of tables, closes with `]]`.
                double_header = b.get(i + 1) == Some(&b'[');
                if double_header {
                    i += 1;
                }
            }
            b'[' => open.push((i, Unclosed::Array)),
            b'{' => open.push((i, Unclosed::InlineTable)),
            b']' if matches!(open.last(), Some((_, Unclosed::Array))) => {
                open.pop();
            }
            b']' if matches!(open.last(), Some((_, Unclosed::Header))) => {
                if !double_header {
                    open.pop();
                } else if b.get(i + 1) == Some(&b']') {
                    open.pop();
                    i += 1;
                }
            }
            b'}' if matches!(open.last(), Some((_, Unclosed::InlineTable))) => {
                open.pop();
            }
            _ => {}
        }
        line_start = false;
        i += 1;
    }
    found.extend(open.first().copied());
    found.into_iter().min_by_key(|(at, _)| *at)
}

/// The offset just past the string opening at `start`, or `Err` with the
/// offset where it was found unclosed (the end of its line for a one-line
/// string, the end of the text for a multi-line one).
fn string_end(b: &[u8], start: usize) -> std::result::Result<usize, usize> {
    let q = b[start];
    let basic = q == b'"';
    let triple = b[start..].starts_with(&[q, q, q]);
    let mut i = start + if triple { 3 } else { 1 };
    while i < b.len() {
        let c = b[i];
        if basic && c == b'\\' && b.get(i + 1) != Some(&b'\n') {
            i += 2;
            continue;
        }
        if c == q {
            if !triple {
                return Ok(i + 1);
            }
            if b[i..].starts_with(&[q, q, q]) {
                // Up to two more quotes are content: `""""""` is `""`.
                let mut end = i + 3;
                while end < b.len() && end < i + 5 && b[end] == q {
                    end += 1;
                }
                return Ok(end);
            }
        }
        if c == b'\n' && !triple {
            return Err(i);
        }
        i += 1;
    }
    Err(b.len())
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

/// The key whose value holds `offset` ("table.key" inside a table), found by
/// walking back to the nearest `key =` line, since a multi-line array starts
/// above the element that is wrong. A best effort for messages, not a parser.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let (line_no, _) = line_col(text, offset);
    let mut key = None;
    for l in text
        .lines()
        .take(line_no)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        let l = l.trim();
        // `[table]`, or `[[table]]` for an entry of an array of tables.
        if let Some(table) = l
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .map(|t| {
                t.strip_prefix('[')
                    .and_then(|t| t.strip_suffix(']'))
                    .unwrap_or(t)
            })
            .filter(|t| is_bare_key(t.trim()))
        {
            let table = table.trim();
            return Some(key.map_or(table.to_string(), |k| format!("{table}.{k}")));
        }
        if key.is_none() {
            key = l
                .split_once('=')
                .map(|(k, _)| k.trim())
                .filter(|k| is_bare_key(k))
                .map(str::to_string);
        }
    }
    key
}

fn is_bare_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Line number (1-based) of the first `key =` line for `key`.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
                || l.trim() == format!("[{key}]")
        })
        .map(|i| i + 1)
}

/// A local .deb's path as mmdebstrap can take it: `--include` splits its
/// value at commas and whitespace, and its hooks' arguments at whitespace,
/// so such a path would reach apt as pieces of another path.
pub fn local_package_path(p: &Path) -> std::result::Result<(), String> {
    let Some(text) = p.to_str() else {
        return Err(format!("{} is not valid UTF-8", p.display()));
    };
    if text
        .chars()
        .any(|c| c == ',' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "`{text}`: a local package's path cannot hold a comma, whitespace or a control \
             character (mmdebstrap splits its package list there): move or rename the file"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RawTreefile> {
        parse_one(Path::new("/t/host.toml"), text)
    }

    #[test]
    fn parses_all_local_keys_and_resolves_paths() {
        let raw = parse(
            r#"
ref = "debian/12/x86_64/host"
base = "rootfs.tar.zst"
overlays = ["overlay", "/abs/overlay"]
remove-files = ["/usr/share/doc/*", "etc/motd"]
postprocess = ["echo hi > /usr/share/hi"]
units = ["ssh.service"]
default-target = "multi-user.target"
include = ["common.toml"]
automatic-version-prefix = "1"
[metadata]
build-host = "ci-7"
"#,
        )
        .unwrap();
        assert_eq!(raw.refname.as_deref(), Some("debian/12/x86_64/host"));
        assert_eq!(raw.base, Some(PathBuf::from("/t/rootfs.tar.zst")));
        assert_eq!(
            raw.overlays.unwrap(),
            vec![PathBuf::from("/t/overlay"), PathBuf::from("/abs/overlay")]
        );
        assert_eq!(raw.include.unwrap(), vec![PathBuf::from("/t/common.toml")]);
        assert_eq!(raw.metadata.unwrap()["build-host"], "ci-7");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = parse("ref = \"a\"\n\npacakges = [\"vim\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/t/host.toml:3:"), "{e}");
        assert!(e.contains("key `pacakges`"), "{e}");
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn local_package_paths_mmdebstrap_would_split_are_refused() {
        for bad in ["a b.deb", "a,b.deb", "x/\\tb.deb"] {
            let e = parse(&format!(
                "ref = \"a\"\npackages = [\"vim\"]\nlocal-packages = [\"{bad}\"]\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(e.starts_with("/t/host.toml:3:"), "{e}");
            assert!(e.contains("key `local-packages`"), "{e}");
            assert!(e.contains("comma, whitespace"), "{e}");
        }
        parse("ref = \"a\"\npackages = [\"vim\"]\nlocal-packages = [\"x/a_1.0+b~1.deb\"]\n")
            .unwrap();
    }

    #[test]
    fn wrong_type_names_file_line_and_key() {
        let e = parse("ref = \"a\"\noverlays = \"notalist\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/t/host.toml:2:"), "{e}");
        assert!(e.contains("key `overlays`"), "{e}");
    }

    #[test]
    fn wrong_type_inside_table_names_dotted_key() {
        let e = parse("ref = \"a\"\n[metadata]\nfoo = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/t/host.toml:3:"), "{e}");
        assert!(e.contains("key `metadata.foo`"), "{e}");
    }

    #[test]
    fn wrong_type_in_multiline_array_names_key() {
        let e = parse("ref = \"a\"\nunits = [\n  \"a.service\",\n  7,\n]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("key `units`"), "{e}");
        assert!(e.starts_with("/t/host.toml:4:"), "{e}");
    }

    #[test]
    fn syntax_error_names_line() {
        let e = parse("ref = \"a\"\nunits = [\"x.service\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/t/host.toml:"), "{e}");
    }

    #[test]
    fn unclosed_things_are_named_where_they_open() {
        let e = parse("ref = \"a\"\nunits = [\"x.service\",\n\n# end\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "/t/host.toml:2:9: key `units`: this `[` is never closed (invalid array, expected `]`)"
        );
        let e = parse("ref = \"a\"\n[metadata\nowner = \"me\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/t/host.toml:2:1: this table header `[` is never closed"),
            "{e}"
        );
        let e = parse("ref = \"a\"\n[metadata]\nowner = \"me\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/t/host.toml:3:9: key `metadata.owner`: this string is never closed"),
            "{e}"
        );
        let e = parse("ref = \"a\"\nmetadata = { a = \"b\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/t/host.toml:2:12: key `metadata`: this `{` is never closed"),
            "{e}"
        );
        // An array that is closed but wrong inside keeps the parser's position.
        let e = parse("ref = \"a\"\nunits = [\n  \"a\"\n  \"b\",\n]\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/t/host.toml:4:"), "{e}");
    }

    #[test]
    fn the_unclosed_scanner_knows_strings_comments_and_headers() {
        let ok = r#"a = "[{\"" # [ {
b = '''
[ '''
[[t]]
c = [[1], {x = "]"}]
d = """x""""
"#;
        assert!(toml::from_str::<toml::Table>(ok).is_ok());
        assert_eq!(first_unclosed(ok), None);
        assert_eq!(first_unclosed("a = [1, [2]\n"), Some((4, Unclosed::Array)));
        assert_eq!(first_unclosed("a = '''\nx\n"), Some((4, Unclosed::Str)));
        assert_eq!(first_unclosed("[[t]\nb = 1\n"), Some((0, Unclosed::Header)));
    }

    #[test]
    fn semantic_errors_name_key_and_line() {
        let e = parse("ref = \"a\"\nunits = [\"sshd\"]\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "/t/host.toml:2: key `units`: `sshd` is not a systemd unit name"
        );
        let e = parse("ref = \"a b\"\n").unwrap_err().to_string();
        assert!(e.starts_with("/t/host.toml:1: key `ref`"), "{e}");
        let e = parse("ref = \"a\"\nremove-files = [\"../etc\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/t/host.toml:2: key `remove-files`"), "{e}");
        let e = parse("ref = \"a\"\n[metadata]\nversion = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("key `metadata`") && e.contains("reserved"),
            "{e}"
        );
    }

    #[test]
    fn merge_concatenates_lists_and_top_scalars_win() {
        let inc = RawTreefile {
            refname: Some("base/ref".into()),
            units: Some(vec!["a.service".into()]),
            default_target: Some("graphical.target".into()),
            automatic_version_prefix: Some("1".into()),
            metadata: Some(BTreeMap::from([
                ("a".into(), "inc".into()),
                ("b".into(), "inc".into()),
            ])),
            ..Default::default()
        };
        let top = RawTreefile {
            refname: Some("top/ref".into()),
            units: Some(vec!["b.service".into()]),
            metadata: Some(BTreeMap::from([("b".into(), "top".into())])),
            ..Default::default()
        };
        let m = merge(inc, top);
        assert_eq!(m.refname.as_deref(), Some("top/ref"));
        assert_eq!(m.units.unwrap(), vec!["a.service", "b.service"]);
        assert_eq!(m.default_target.as_deref(), Some("graphical.target"));
        assert_eq!(m.automatic_version_prefix.as_deref(), Some("1"));
        let md = m.metadata.unwrap();
        assert_eq!(md["a"], "inc");
        assert_eq!(md["b"], "top");
    }

    #[test]
    fn load_follows_includes_and_detects_cycles() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::create_dir(p.join("sub")).unwrap();
        std::fs::write(
            p.join("sub/common.toml"),
            "units = [\"a.service\"]\noverlays = [\"ov\"]\nref = \"common\"\n",
        )
        .unwrap();
        std::fs::write(
            p.join("top.toml"),
            "include = [\"sub/common.toml\"]\nref = \"top\"\nunits = [\"b.service\"]\n",
        )
        .unwrap();
        let t = load(&p.join("top.toml")).unwrap();
        assert_eq!(t.refname, "top");
        assert_eq!(t.units, vec!["a.service", "b.service"]);
        // Paths resolve against the file that names them.
        assert_eq!(t.overlays, vec![p.join("sub/ov")]);
        assert_eq!(t.sources.len(), 2);

        std::fs::write(p.join("a.toml"), "include = [\"b.toml\"]\nref = \"a\"\n").unwrap();
        std::fs::write(p.join("b.toml"), "include = [\"a.toml\"]\n").unwrap();
        let e = format!("{:#}", load(&p.join("a.toml")).unwrap_err());
        assert!(e.contains("include cycle"), "{e}");
    }

    #[test]
    fn postprocess_network_defaults_to_off_and_the_top_file_decides() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::write(p.join("plain.toml"), "ref = \"x\"\n").unwrap();
        assert!(!load(&p.join("plain.toml")).unwrap().postprocess_network);
        std::fs::write(p.join("inc.toml"), "postprocess-network = true\n").unwrap();
        std::fs::write(p.join("on.toml"), "ref = \"x\"\ninclude = [\"inc.toml\"]\n").unwrap();
        assert!(load(&p.join("on.toml")).unwrap().postprocess_network);
        std::fs::write(
            p.join("off.toml"),
            "ref = \"x\"\ninclude = [\"inc.toml\"]\npostprocess-network = false\n",
        )
        .unwrap();
        assert!(!load(&p.join("off.toml")).unwrap().postprocess_network);

        let e = parse("ref = \"a\"\npostprocess-network = \"yes\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/t/host.toml:2:"), "{e}");
        assert!(e.contains("key `postprocess-network`"), "{e}");
        let e = parse("ref = \"a\"\npostprocess-networking = true\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `postprocess-networking`"), "{e}");
    }

    #[test]
    fn missing_ref_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("t.toml"), "units = []\n").unwrap();
        let e = format!("{:#}", load(&d.path().join("t.toml")).unwrap_err());
        assert!(e.contains("missing required key `ref`"), "{e}");
    }

    #[test]
    fn error_in_included_file_names_that_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("inc.toml"), "\nbogus = 1\n").unwrap();
        std::fs::write(
            d.path().join("t.toml"),
            "ref = \"x\"\ninclude = [\"inc.toml\"]\n",
        )
        .unwrap();
        let e = format!("{:#}", load(&d.path().join("t.toml")).unwrap_err());
        assert!(e.contains("inc.toml:2:"), "{e}");
        assert!(e.contains("key `bogus`"), "{e}");
    }

    /// The reference host runs the update agent: its timer is enabled and
    /// its defaults file comes from an overlay that exists.
    #[test]
    fn the_reference_treefile_enables_the_agent_and_ships_its_defaults() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let tf = load(&root.join("treefiles/debian-minimal.toml")).unwrap();
        for unit in ["hostctl-agent.timer", "hostctl-health.service"] {
            assert!(tf.units.iter().any(|u| u == unit), "{unit}: {:?}", tf.units);
            assert!(root.join("systemd-units").join(unit).is_file(), "{unit}");
        }
        assert!(root.join("systemd-units/hostctl-agent.service").is_file());
        assert!(
            tf.overlays
                .iter()
                .any(|o| o.join("usr/lib/hostctl/hostctl.toml").is_file()),
            "{:?}",
            tf.overlays
        );
    }
}
