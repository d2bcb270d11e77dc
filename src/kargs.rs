//! Kernel argument editing, kept free of I/O so every rule is unit-tested.
//!
//! The rules follow rpm-ostree's `kargs`: `--append` always adds, `--delete`
//! and `--replace` must match exactly one existing argument, so that a typo
//! is an error instead of a silent no-op.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum KargsError {
    #[error("kernel argument {0:?} is not present")]
    NotPresent(String),
    #[error("kernel argument key {0:?} has several values; name the one meant as KEY=VALUE")]
    Ambiguous(String),
    #[error("--replace needs KEY=VALUE (or KEY=OLD=NEW), got {0:?}")]
    ReplaceNeedsValue(String),
    #[error("empty kernel argument")]
    Empty,
}

/// Split a kernel command line into arguments; double quotes group spaces
/// (as the kernel itself does), and stay part of the argument.
pub fn split(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn key_of(arg: &str) -> &str {
    arg.split_once('=').map_or(arg, |(k, _)| k)
}

/// One requested change, in the order given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    Append(String),
    Delete(String),
    Replace(String),
}

/// Apply `edits` in order to `args`.
pub fn apply(args: &[String], edits: &[Edit]) -> Result<Vec<String>, KargsError> {
    let mut args = args.to_vec();
    for edit in edits {
        match edit {
            Edit::Append(a) => {
                if a.is_empty() {
                    return Err(KargsError::Empty);
                }
                args.push(a.clone());
            }
            Edit::Delete(a) => delete(&mut args, a)?,
            Edit::Replace(a) => replace(&mut args, a)?,
        }
    }
    Ok(args)
}

fn delete(args: &mut Vec<String>, what: &str) -> Result<(), KargsError> {
    if what.is_empty() {
        return Err(KargsError::Empty);
    }
    if what.contains('=') {
        let pos = args
            .iter()
            .position(|a| a == what)
            .ok_or_else(|| KargsError::NotPresent(what.to_string()))?;
        args.remove(pos);
        return Ok(());
    }
    let matching: Vec<usize> = (0..args.len())
        .filter(|&i| key_of(&args[i]) == what)
        .collect();
    match matching.as_slice() {
        [] => Err(KargsError::NotPresent(what.to_string())),
        [i] => {
            args.remove(*i);
            Ok(())
        }
        _ => Err(KargsError::Ambiguous(what.to_string())),
    }
}

fn replace(args: &mut [String], what: &str) -> Result<(), KargsError> {
    let (key, rest) = what
        .split_once('=')
        .ok_or_else(|| KargsError::ReplaceNeedsValue(what.to_string()))?;
    if key.is_empty() {
        return Err(KargsError::ReplaceNeedsValue(what.to_string()));
    }
    // KEY=OLD=NEW picks one of several values; plain KEY=VALUE needs a unique key.
    let (old, new) = match rest.split_once('=') {
        Some((old, new)) if args.iter().any(|a| a == &format!("{key}={old}")) => {
            (Some(format!("{key}={old}")), new)
        }
        _ => (None, rest),
    };
    let target = match old {
        Some(old) => args.iter().position(|a| *a == old),
        None => {
            let matching: Vec<usize> = (0..args.len())
                .filter(|&i| key_of(&args[i]) == key)
                .collect();
            match matching.as_slice() {
                [] => None,
                [i] => Some(*i),
                _ => return Err(KargsError::Ambiguous(key.to_string())),
            }
        }
    };
    let i = target.ok_or_else(|| KargsError::NotPresent(key.to_string()))?;
    args[i] = format!("{key}={new}");
    Ok(())
}

/// Arguments libostree adds itself on every deployment; they are not the
/// operator's to edit and must not be fed back as overrides.
pub fn strip_ostree_managed(args: &[String]) -> Vec<String> {
    args.iter()
        .filter(|a| key_of(a) != "ostree")
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        split(s)
    }

    #[test]
    fn split_respects_quotes() {
        assert_eq!(
            split(r#"quiet  foo="a b" x=1"#),
            vec!["quiet", r#"foo="a b""#, "x=1"]
        );
        assert!(split("   ").is_empty());
    }

    #[test]
    fn append_keeps_duplicates_in_order() {
        let out = apply(
            &v("console=tty0"),
            &[
                Edit::Append("console=ttyS0".into()),
                Edit::Append("quiet".into()),
            ],
        )
        .unwrap();
        assert_eq!(out, v("console=tty0 console=ttyS0 quiet"));
    }

    #[test]
    fn delete_by_key_needs_a_unique_key() {
        assert_eq!(
            apply(&v("a=1 quiet"), &[Edit::Delete("a".into())]).unwrap(),
            v("quiet")
        );
        assert_eq!(
            apply(&v("c=1 c=2"), &[Edit::Delete("c".into())]),
            Err(KargsError::Ambiguous("c".into()))
        );
        assert_eq!(
            apply(&v("c=1 c=2"), &[Edit::Delete("c=2".into())]).unwrap(),
            v("c=1")
        );
        assert_eq!(
            apply(&v("quiet"), &[Edit::Delete("splash".into())]),
            Err(KargsError::NotPresent("splash".into()))
        );
        assert_eq!(
            apply(&v("c=1"), &[Edit::Delete("c=3".into())]),
            Err(KargsError::NotPresent("c=3".into()))
        );
    }

    #[test]
    fn replace_changes_value_in_place() {
        assert_eq!(
            apply(&v("a quiet=0 b"), &[Edit::Replace("quiet=1".into())]).unwrap(),
            v("a quiet=1 b")
        );
        assert_eq!(
            apply(&v("c=1 c=2"), &[Edit::Replace("c=2=5".into())]).unwrap(),
            v("c=1 c=5")
        );
        assert_eq!(
            apply(&v("c=1 c=2"), &[Edit::Replace("c=9".into())]),
            Err(KargsError::Ambiguous("c".into()))
        );
        assert_eq!(
            apply(&v("a"), &[Edit::Replace("b=1".into())]),
            Err(KargsError::NotPresent("b".into()))
        );
        assert_eq!(
            apply(&v("a"), &[Edit::Replace("a".into())]),
            Err(KargsError::ReplaceNeedsValue("a".into()))
        );
    }

    #[test]
    fn managed_ostree_arg_is_dropped() {
        assert_eq!(
            strip_ostree_managed(&v("quiet ostree=/ostree/boot.1/x/y/0 rw")),
            v("quiet rw")
        );
    }
}
