//! The role each deployment plays, decided in one place from the boot order:
//! which one boots next, which one is running, which one `rollback` goes to,
//! which ones are pending. `status`, the planning rules and the verbs all ask
//! this type, so they cannot disagree about what "the rollback" is.

/// A deployment as the role and planning rules see it, in boot order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub osname: String,
    pub booted: bool,
    pub staged: bool,
    pub pinned: bool,
}

/// Roles of a deployment list (index 0 boots next).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles {
    slots: Vec<Slot>,
    booted: Option<usize>,
}

/// The roles of one deployment, as `status` shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Role {
    pub default: bool,
    pub booted: bool,
    pub staged: bool,
    pub pinned: bool,
    pub rollback: bool,
}

impl Roles {
    pub fn new(slots: Vec<Slot>) -> Self {
        let booted = slots.iter().position(|s| s.booted);
        Roles { slots, booted }
    }

    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The running deployment; `None` on a sysroot prepared offline.
    pub fn booted(&self) -> Option<usize> {
        self.booted
    }

    /// What `rollback` goes to: the deployment right after the booted one;
    /// without a booted deployment, the one right after the default. A
    /// deployment ahead of the booted one is pending, never the rollback.
    pub fn rollback(&self) -> Option<usize> {
        let after = self.booted.unwrap_or(0) + 1;
        (after < self.slots.len()).then_some(after)
    }

    /// Deployments ahead of the booted one: written or staged after this
    /// boot, not yet booted. Empty on an unbooted sysroot.
    pub fn pending(&self) -> std::ops::Range<usize> {
        0..self.booted.unwrap_or(0)
    }

    pub fn is_staged(&self, i: usize) -> bool {
        self.slots.get(i).is_some_and(|s| s.staged)
    }

    pub fn is_pinned(&self, i: usize) -> bool {
        self.slots.get(i).is_some_and(|s| s.pinned)
    }

    pub fn any_staged(&self) -> bool {
        self.slots.iter().any(|s| s.staged)
    }

    pub fn role(&self, i: usize) -> Role {
        let Some(s) = self.slots.get(i) else {
            return Role::default();
        };
        Role {
            default: i == 0,
            booted: Some(i) == self.booted,
            staged: s.staged,
            pinned: s.pinned,
            rollback: Some(i) == self.rollback(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(booted: Option<usize>, n: usize) -> Roles {
        Roles::new(
            (0..n)
                .map(|i| Slot {
                    osname: "debian".into(),
                    booted: Some(i) == booted,
                    staged: false,
                    pinned: false,
                })
                .collect(),
        )
    }

    #[test]
    fn rollback_follows_booted_or_default() {
        assert_eq!(roles(None, 2).rollback(), Some(1));
        assert_eq!(roles(None, 1).rollback(), None);
        assert_eq!(roles(Some(0), 3).rollback(), Some(1));
        // A pending deployment at 0 and the booted one at 1: the rollback is
        // what comes after the booted one, never the pending one.
        assert_eq!(roles(Some(1), 3).rollback(), Some(2));
        assert_eq!(roles(Some(1), 2).rollback(), None);
    }

    #[test]
    fn pending_is_what_comes_before_the_booted_one() {
        assert_eq!(roles(None, 3).pending(), 0..0);
        assert_eq!(roles(Some(0), 3).pending(), 0..0);
        assert_eq!(roles(Some(2), 3).pending(), 0..2);
    }

    #[test]
    fn each_deployment_gets_its_roles() {
        let r = roles(Some(1), 3);
        assert_eq!(
            r.role(0),
            Role {
                default: true,
                ..Role::default()
            }
        );
        assert!(r.role(1).booted && !r.role(1).default && !r.role(1).rollback);
        assert!(r.role(2).rollback);
        assert_eq!(r.role(7), Role::default());
    }
}
