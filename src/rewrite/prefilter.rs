//! The pre-filter: one Aho-Corasick pass over a statement's bytes, case-insensitively, for the
//! names of migrated tables. A statement that mentions none of them is forwarded untouched
//! without being parsed; a false positive (the name inside a string or a longer identifier)
//! only costs a parse.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

/// Finds mentions of migrated table names.
#[derive(Debug, Clone)]
pub struct Prefilter {
    matcher: Option<AhoCorasick>,
}

impl Prefilter {
    /// A filter for these table names (unqualified; quoting and schema do not matter, since
    /// any spelling of the table contains its name).
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Prefilter {
        let mut names: Vec<&str> = names.into_iter().filter(|n| !n.is_empty()).collect();
        names.sort_unstable();
        names.dedup();
        if names.is_empty() {
            return Prefilter { matcher: None };
        }
        let matcher = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostFirst)
            .build(&names)
            .expect("table names form a valid automaton");
        Prefilter {
            matcher: Some(matcher),
        }
    }

    /// True when `sql` may touch a migrated table and must be parsed.
    #[inline]
    pub fn may_touch(&self, sql: &[u8]) -> bool {
        match &self.matcher {
            Some(m) => m.is_match(sql),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_names_in_any_case_and_nothing_else() {
        let f = Prefilter::new(["users", "orders"]);
        assert!(f.may_touch(b"select * from USERS"));
        assert!(f.may_touch(b"update \"public\".\"orders\" set x = 1"));
        assert!(!f.may_touch(b"select 1"));
        assert!(!f.may_touch(b"select * from pgbench_accounts"));
        assert!(!Prefilter::new([]).may_touch(b"select * from users"));
    }
}
