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
    #[error("kernel argument {0:?} contains a control character (newline, tab, escape...); boot entries hold one line of arguments")]
    ControlChar(String),
    #[error("kernel argument {0:?} contains a non-ASCII character; the kernel splits its command line on bytes such as 0xA0 that UTF-8 text contains")]
    NonAscii(String),
    #[error("kernel argument {0:?} has an unbalanced double quote")]
    UnbalancedQuote(String),
    #[error("kernel argument {0:?} contains a space outside double quotes, so the kernel would read it as several arguments; quote the value (KEY=\"A B\") or pass each argument on its own")]
    Space(String),
}

/// Check that `arg` is exactly one argument as the kernel (and systemd-boot,
/// and libostree's BLS writer) will split the command line: anything else
/// would be written into the one-line `options` of a boot entry and change
/// its meaning, or break the entry file (a newline starts a new key).
pub fn validate(arg: &str) -> Result<(), KargsError> {
    if arg.is_empty() {
        return Err(KargsError::Empty);
    }
    if arg.chars().any(char::is_control) {
        return Err(KargsError::ControlChar(arg.to_string()));
    }
    if !arg.is_ascii() {
        return Err(KargsError::NonAscii(arg.to_string()));
    }
    let mut quoted = false;
    for c in arg.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => return Err(KargsError::Space(arg.to_string())),
            _ => {}
        }
    }
    if quoted {
        return Err(KargsError::UnbalancedQuote(arg.to_string()));
    }
    Ok(())
}

/// `validate` for a list, naming the first bad argument.
pub fn validate_all(args: &[String]) -> Result<(), KargsError> {
    args.iter().try_for_each(|a| validate(a))
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
    /// Append unless this exact argument is already there.
    AppendIfMissing(String),
    /// Delete if present; absent is no error (ambiguous still is).
    DeleteIfPresent(String),
}

/// Apply `edits` in order to `args`.
pub fn apply(args: &[String], edits: &[Edit]) -> Result<Vec<String>, KargsError> {
    let mut args = args.to_vec();
    for edit in edits {
        match edit {
            Edit::Append(a) => {
                validate(a)?;
                args.push(a.clone());
            }
            Edit::Delete(a) => delete(&mut args, a)?,
            Edit::AppendIfMissing(a) => {
                validate(a)?;
                if !args.contains(a) {
                    args.push(a.clone());
                }
            }
            Edit::DeleteIfPresent(a) => match delete(&mut args, a) {
                Err(KargsError::NotPresent(_)) => {}
                other => other?,
            },
            Edit::Replace(a) => {
                validate(a)?;
                replace(&mut args, a)?
            }
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
    fn validate_accepts_single_arguments_only() {
        for ok in [
            "quiet",
            "console=ttyS0,115200",
            r#"foo="a b""#,
            r#""x y"=1"#,
            "a=b=c",
        ] {
            assert_eq!(validate(ok), Ok(()), "{ok:?}");
        }
        for (bad, err) in [
            ("foo=1\nbar", KargsError::ControlChar("foo=1\nbar".into())),
            ("a\tb", KargsError::ControlChar("a\tb".into())),
            ("a\0b", KargsError::ControlChar("a\0b".into())),
            ("e=\x1b", KargsError::ControlChar("e=\x1b".into())),
            ("\u{85}", KargsError::ControlChar("\u{85}".into())),
            ("à", KargsError::NonAscii("à".into())),
            (
                r#"foo="open"#,
                KargsError::UnbalancedQuote(r#"foo="open"#.into()),
            ),
            ("foo=a b", KargsError::Space("foo=a b".into())),
            (" lead", KargsError::Space(" lead".into())),
            ("trail ", KargsError::Space("trail ".into())),
            (r#"x="a b" y"#, KargsError::Space(r#"x="a b" y"#.into())),
            ("\u{a0}nbsp", KargsError::NonAscii("\u{a0}nbsp".into())),
            ("", KargsError::Empty),
        ] {
            assert_eq!(validate(bad), Err(err), "{bad:?}");
        }
    }

    #[test]
    fn edits_validate_what_they_write() {
        assert_eq!(
            apply(&v("a=1"), &[Edit::Append("b=1\nc".into())]),
            Err(KargsError::ControlChar("b=1\nc".into()))
        );
        assert_eq!(
            apply(&v("a=1"), &[Edit::Replace("a=1 2".into())]),
            Err(KargsError::Space("a=1 2".into()))
        );
        // A quoted value is one argument to every rule.
        let out = apply(&v("a=1"), &[Edit::Append(r#"f="x y""#.into())]).unwrap();
        assert_eq!(split(&out.join(" ")), out);
        assert_eq!(apply(&out, &[Edit::Delete("f".into())]).unwrap(), v("a=1"));
    }

    #[test]
    fn managed_ostree_arg_is_dropped() {
        assert_eq!(
            strip_ostree_managed(&v("quiet ostree=/ostree/boot.1/x/y/0 rw")),
            v("quiet rw")
        );
    }
}
