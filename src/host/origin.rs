//! Refspecs as operators write them (`[REMOTE:]REF`) and as origin files
//! record them (`REMOTE:REF`).

use anyhow::{bail, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refspec {
    pub remote: Option<String>,
    pub branch: String,
}

impl Refspec {
    /// Parse `[REMOTE:]REF`; an empty remote or ref is an error because it
    /// would silently select something the operator did not name.
    pub fn parse(s: &str) -> Result<Self> {
        let (remote, branch) = match s.split_once(':') {
            Some((r, b)) => {
                if r.is_empty() {
                    bail!("refspec {s:?}: empty remote name before ':'");
                }
                (Some(r.to_string()), b.to_string())
            }
            None => (None, s.to_string()),
        };
        if branch.is_empty() {
            bail!("refspec {s:?}: empty ref");
        }
        if branch.contains(char::is_whitespace) {
            bail!("refspec {s:?}: a ref cannot contain whitespace");
        }
        Ok(Refspec { remote, branch })
    }

    /// Fill in the remote from `current` when the operator gave only a ref.
    pub fn with_default_remote(self, current: Option<&str>) -> Self {
        match self.remote {
            Some(_) => self,
            None => Refspec {
                remote: current.map(str::to_string),
                branch: self.branch,
            },
        }
    }
}

impl std::fmt::Display for Refspec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.remote {
            Some(r) => write!(f, "{r}:{}", self.branch),
            None => write!(f, "{}", self.branch),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_remote_and_ref() {
        let r = Refspec::parse("origin:debian/12/x86_64/stable").unwrap();
        assert_eq!(r.remote.as_deref(), Some("origin"));
        assert_eq!(r.branch, "debian/12/x86_64/stable");
        assert_eq!(r.to_string(), "origin:debian/12/x86_64/stable");
    }

    #[test]
    fn bare_ref_takes_current_remote() {
        let r = Refspec::parse("testing")
            .unwrap()
            .with_default_remote(Some("origin"));
        assert_eq!(r.to_string(), "origin:testing");
        let r = Refspec::parse("other:testing")
            .unwrap()
            .with_default_remote(Some("origin"));
        assert_eq!(r.to_string(), "other:testing");
        let r = Refspec::parse("local").unwrap().with_default_remote(None);
        assert_eq!(r.to_string(), "local");
    }

    #[test]
    fn rejects_empty_parts() {
        assert!(Refspec::parse(":x").is_err());
        assert!(Refspec::parse("origin:").is_err());
        assert!(Refspec::parse("").is_err());
        assert!(Refspec::parse("a b").is_err());
    }
}
