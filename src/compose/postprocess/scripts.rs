//! The treefile's `postprocess` scripts and `units`.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::compose::sandbox;
use crate::compose::treefile::Treefile;
use crate::util::run;

/// Run every script in order with the tree as its root, each in its own
/// sandbox (see [`crate::compose::sandbox`]): a script comes with the
/// treefile, runs as root, and must not be able to change, read or keep
/// running on the build machine. Only what it writes into the tree stays.
pub fn run_scripts(tf: &Treefile, tree: &Path) -> Result<()> {
    if tf.postprocess.is_empty() {
        return Ok(());
    }
    if !has_shell(tree) {
        bail!(
            "postprocess: the tree has no /bin/sh to run the scripts with; add a shell to the base or drop `postprocess`"
        );
    }
    sandbox::prepare(tree).context("postprocess: preparing the tree for the sandbox")?;
    let access = sandbox::Access {
        network: tf.postprocess_network,
    };
    for (i, script) in tf.postprocess.iter().enumerate() {
        let first = script.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        crate::progress::step(
            "compose",
            &format!("Running postprocess[{i}]: {}", first.trim()),
        );
        let log = tempfile::tempfile().context("creating a log file for postprocess")?;
        let status = sandbox::command(tree, access, &["/bin/sh", "-e", "-c", script])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("log file")?)
            .stderr(log.try_clone().context("log file")?)
            .status()
            .with_context(|| {
                format!(
                    "postprocess[{i}]: starting bwrap (package bubblewrap) to run the script in {}",
                    tree.display()
                )
            })?;
        if !status.success() {
            let output = read_log(log);
            bail!(
                "postprocess[{i}] ({}) failed with {status}; its output:\n{}",
                first.trim(),
                output.trim_end()
            );
        }
    }
    Ok(())
}

fn read_log(mut f: fs::File) -> String {
    use std::io::{Read, Seek};
    let mut s = String::new();
    let _ = f.rewind().and_then(|_| f.read_to_string(&mut s));
    s
}

/// `/bin/sh` resolved inside the tree (the usual `bin -> usr/bin` link is
/// relative; an absolute one is resolved against the tree, not the host).
fn has_shell(tree: &Path) -> bool {
    ["usr/bin/sh", "bin/sh"].iter().any(|p| {
        let p = tree.join(p);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => fs::read_link(&p).is_ok_and(|t| {
                t.is_relative() || tree.join(t.strip_prefix("/").unwrap_or(&t)).exists()
            }),
            Ok(_) => true,
            Err(_) => false,
        }
    })
}

/// Enable `units` and set `default-target` with `systemctl --root`, which
/// knows every [Install] section rule (aliases, WantedBy, templates).
pub fn enable_units(tf: &Treefile, tree: &Path) -> Result<()> {
    if !tf.units.is_empty() {
        run(
            Command::new("systemctl")
                .arg(format!("--root={}", tree.display()))
                .arg("enable")
                .args(&tf.units),
            &format!("units: enabling {}", tf.units.join(" ")),
        )?;
    }
    if let Some(target) = &tf.default_target {
        run(
            Command::new("systemctl")
                .arg(format!("--root={}", tree.display()))
                .arg("set-default")
                .arg(target),
            &format!("default-target: setting {target}"),
        )?;
    }
    Ok(())
}
