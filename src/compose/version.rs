//! `automatic-version-prefix`: the next version of a ref (pure).

/// The next version for `prefix` given the versions already on the ref:
/// `PREFIX.0` first, then one past the highest `PREFIX.N` ever used, so a
/// version never repeats on a ref even after a history of manual versions.
pub fn next_version<'a>(prefix: &str, existing: impl IntoIterator<Item = &'a str>) -> String {
    let highest = existing
        .into_iter()
        .filter_map(|v| v.strip_prefix(prefix)?.strip_prefix('.'))
        .filter_map(|rest| rest.split('.').next()?.parse::<u64>().ok())
        .max();
    match highest {
        Some(n) => format!("{prefix}.{}", n + 1),
        None => format!("{prefix}.0"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_version_is_dot_zero() {
        assert_eq!(next_version("1", []), "1.0");
    }

    #[test]
    fn increments_past_the_highest() {
        assert_eq!(next_version("1", ["1.1", "1.0"]), "1.2");
        assert_eq!(next_version("1", ["1.9", "1.10", "1.2"]), "1.11");
    }

    #[test]
    fn ignores_other_prefixes_and_lookalikes() {
        assert_eq!(next_version("1", ["10.4", "2.7", "1x.3", "1"]), "1.0");
        assert_eq!(
            next_version("2024.5", ["2024.5.3", "2024.50.9"]),
            "2024.5.4"
        );
    }

    #[test]
    fn never_repeats_after_prefix_change_back() {
        let hist = ["2.0", "1.3", "1.2"];
        assert_eq!(next_version("1", hist), "1.4");
    }
}
