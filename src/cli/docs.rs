//! Man pages and shell completions, generated from the clap definitions so
//! that they always describe the binary they ship with. The Debian package
//! build runs `hostctl internal generate-docs --out DIR` on the binary it has
//! just built; users never need to.
//!
//! `DIR/man/` gets one page per visible command in section 8 (`hostctl.8`,
//! `hostctl-upgrade.8`, `hostctl-compose-tree.8`, ...), `DIR/completions/`
//! the bash, zsh and fish completions under the names those shells look for
//! (`bash/hostctl`, `zsh/_hostctl`, `fish/hostctl.fish`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

/// System administration commands: hostctl changes what a machine boots.
pub const MAN_SECTION: &str = "8";

/// The pages made from `docs/` (by `debian/man-from-docs.sh`), which the
/// generated pages point to.
const DOC_PAGES: &[&str] = &["hostctl.toml(5)", "treefile(5)"];

/// What `generate` wrote, for its caller to report.
#[derive(Debug, Default)]
pub struct Generated {
    pub man_pages: Vec<PathBuf>,
    pub completions: Vec<PathBuf>,
}

/// Write the man pages and completions under `out` (created when missing).
pub fn generate(out: &Path) -> Result<Generated> {
    let mut done = Generated::default();
    let man_dir = out.join("man");
    std::fs::create_dir_all(&man_dir).with_context(|| format!("creating {}", man_dir.display()))?;
    // `help` is clap's own subcommand: `--help` already covers it, and a
    // hostctl-help(8) page would only say so.
    let mut cmd = super::Cli::command().disable_help_subcommand(true);
    // Building fills in what the pages print: each subcommand's full name
    // (`hostctl compose tree`), and the global options it inherits.
    cmd.build();
    let date = source_date()?;
    write_pages(&cmd, None, &man_dir, &date, &mut done.man_pages)?;

    let comp_dir = out.join("completions");
    // Named as each shell's vendor directory wants them (bash-completion
    // loads `completions/hostctl` on the first <TAB> after `hostctl`), one
    // directory per shell so that a packager copies directories.
    for (shell, file) in [
        (Shell::Bash, "hostctl"),
        (Shell::Zsh, "_hostctl"),
        (Shell::Fish, "hostctl.fish"),
    ] {
        let dir = comp_dir.join(shell.to_string());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(file);
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut super::Cli::command(), "hostctl", &mut text);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        done.completions.push(path);
    }
    Ok(done)
}

/// One page for `cmd` and, depth first, one for each visible subcommand.
/// Hidden commands (`internal`) are for hostctl's units, not for people.
fn write_pages(
    cmd: &clap::Command,
    parent: Option<&str>,
    dir: &Path,
    date: &str,
    written: &mut Vec<PathBuf>,
) -> Result<()> {
    let name = cmd.get_display_name().unwrap_or(cmd.get_name()).to_string();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, Some(&name), dir, date, written)?;
    }
    let page = clap_mangen::Man::new(cmd.clone())
        .section(MAN_SECTION)
        .date(date)
        .manual("hostctl manual");
    let mut text = Vec::new();
    page.render(&mut text)
        .with_context(|| format!("rendering the man page of {name}"))?;
    text.extend_from_slice(see_also(parent).as_bytes());
    let path = dir.join(page.get_filename());
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    written.push(path);
    Ok(())
}

/// A SEE ALSO section: the command one level up (a reader of
/// hostctl-compose-tree(8) looks for hostctl-compose(8) and hostctl(8)), the
/// configuration formats, and libostree's own tool.
fn see_also(parent: Option<&str>) -> String {
    let mut refs: Vec<String> = Vec::new();
    if let Some(p) = parent {
        refs.push(format!("{p}({MAN_SECTION})"));
        if p != "hostctl" {
            refs.push(format!("hostctl({MAN_SECTION})"));
        }
    }
    refs.extend(DOC_PAGES.iter().map(|s| s.to_string()));
    refs.push("ostree(1)".to_string());
    let mut roff = clap_mangen::roff::Roff::new();
    roff.control("SH", ["SEE ALSO"]);
    roff.text([clap_mangen::roff::roman(refs.join(", "))]);
    roff.to_roff()
}

/// The pages' date: the day of `SOURCE_DATE_EPOCH`, which dpkg-buildpackage
/// sets from debian/changelog, so that two builds of one version give the
/// same pages. Without it, no date rather than today's, for the same reason.
fn source_date() -> Result<String> {
    match std::env::var_os("SOURCE_DATE_EPOCH") {
        Some(epoch) => day_of_epoch(&epoch.to_string_lossy()),
        None => Ok(String::new()),
    }
}

/// `YYYY-MM-DD` (UTC) of a count of seconds since 1970.
fn day_of_epoch(text: &str) -> Result<String> {
    let secs: i64 = text
        .trim()
        .parse()
        .with_context(|| format!("SOURCE_DATE_EPOCH={text:?} is not a number of seconds"))?;
    let when = chrono::DateTime::from_timestamp(secs, 0)
        .with_context(|| format!("SOURCE_DATE_EPOCH={text:?} is out of range"))?;
    Ok(when.format("%Y-%m-%d").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(paths: &[PathBuf]) -> Vec<String> {
        paths
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn one_page_per_visible_command_and_three_completions() {
        let d = tempfile::tempdir().unwrap();
        let done = generate(d.path()).unwrap();
        let pages = names(&done.man_pages);
        for want in [
            "hostctl.8",
            "hostctl-upgrade.8",
            "hostctl-compose.8",
            "hostctl-compose-tree.8",
            "hostctl-db-diff.8",
            "hostctl-agent-run-once.8",
            "hostctl-key-generate.8",
        ] {
            assert!(pages.contains(&want.to_string()), "{want} in {pages:?}");
        }
        assert!(
            !pages
                .iter()
                .any(|p| p.contains("internal") || p.contains("help")),
            "{pages:?}"
        );
        let tree = std::fs::read_to_string(d.path().join("man/hostctl-compose-tree.8")).unwrap();
        // The synopsis names the command as typed, and global options are
        // documented on every page that accepts them.
        assert!(tree.contains("hostctl compose tree"), "{tree}");
        assert!(tree.contains("sysroot"), "{tree}");
        assert!(tree.contains(".SH \"SEE ALSO\""), "{tree}");
        assert!(tree.contains("hostctl\\-compose(8)"), "{tree}");

        let mut comps = names(&done.completions);
        comps.sort();
        assert_eq!(comps, ["_hostctl", "hostctl", "hostctl.fish"]);
        for f in ["bash/hostctl", "zsh/_hostctl", "fish/hostctl.fish"] {
            let text = std::fs::read_to_string(d.path().join("completions").join(f)).unwrap();
            assert!(text.contains("upgrade"), "{f}");
        }
    }

    #[test]
    fn the_date_is_the_utc_day_of_source_date_epoch() {
        assert_eq!(day_of_epoch("1764720000").unwrap(), "2025-12-03");
        assert_eq!(day_of_epoch("1764806399\n").unwrap(), "2025-12-03");
        let e = day_of_epoch("yesterday").unwrap_err().to_string();
        assert!(e.contains("SOURCE_DATE_EPOCH"), "{e}");
    }
}
