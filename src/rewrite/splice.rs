//! Text surgery on the original statement. sqlparser's printer is not faithful (quoted
//! literals, `- -1`, comments), so a rewritten statement is the original text with new text
//! spliced in at parsed spans; every byte outside an edit is the client's own.

use std::ops::Range;

use sqlparser::tokenizer::{Location, Span};

/// Maps sqlparser locations (1-based line, 1-based column in characters) to byte offsets.
pub struct LineIndex<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
    /// Byte offset of the first non-ASCII byte (the text's length when there is none): before
    /// it, columns are bytes and a location is found without counting characters.
    first_non_ascii: usize,
}

impl<'a> LineIndex<'a> {
    pub fn new(text: &'a str) -> LineIndex<'a> {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        let first_non_ascii = text
            .bytes()
            .position(|b| !b.is_ascii())
            .unwrap_or(text.len());
        LineIndex {
            text,
            line_starts,
            first_non_ascii,
        }
    }

    /// Byte offset of a location; `None` for the empty location or one past the text.
    pub fn offset(&self, loc: Location) -> Option<usize> {
        if loc.line == 0 || loc.column == 0 {
            return None;
        }
        let start = *self.line_starts.get(loc.line as usize - 1)?;
        let line = &self.text[start..];
        let col = loc.column as usize - 1;
        let ascii_end = start + line.len().min(col + 1);
        if ascii_end <= self.first_non_ascii || line.as_bytes()[..ascii_end - start].is_ascii() {
            return (start + col <= self.text.len()).then_some(start + col);
        }
        match line.char_indices().nth(col) {
            Some((i, _)) => Some(start + i),
            None if line.chars().count() == col => Some(self.text.len()),
            None => None,
        }
    }

    /// Byte range of a span (sqlparser spans end exclusively).
    pub fn range(&self, span: Span) -> Option<Range<usize>> {
        let start = self.offset(span.start)?;
        let end = self.offset(span.end)?;
        (start <= end).then_some(start..end)
    }

    pub fn text(&self) -> &'a str {
        self.text
    }
}

/// Non-overlapping replacements of byte ranges; insertions are empty ranges.
#[derive(Debug, Default)]
pub struct Edits {
    edits: Vec<(Range<usize>, String)>,
    /// Indices of replacements whose text already contains the rewritten content of their
    /// range; other edits inside them are superseded.
    covering: Vec<usize>,
    /// How the final check treats some edits (by index); the others are checked as they are.
    checks: Vec<(usize, Check)>,
    /// Statements being rewritten inside another one's parentheses (data-modifying CTEs):
    /// their edits are never parse-neutral (the argument holds at a statement's own level).
    nested: usize,
}

/// How the check of a rewrite (the output parses into as many statements) treats one edit.
#[derive(Debug)]
enum Check {
    /// Parse-neutral by construction (docs/rewrite.md, "Check"): a statement whose edits
    /// are all such parses exactly as the client's text did, so it needs no second parse.
    Neutral,
    /// Parsed with this text in the edit's place: a short stand-in for a fragment verified
    /// once, which parses wherever the stand-in does.
    StandIn(String),
}

/// What the check of a rewritten text must parse.
#[derive(Debug, PartialEq, Eq)]
pub enum CheckText {
    /// Nothing: every edit is parse-neutral, so the output parses as the input did.
    Neutral,
    /// The output itself.
    Output,
    /// The output with stand-ins for verified fragments.
    StandIns(String),
}

impl Edits {
    pub fn replace(&mut self, range: Range<usize>, text: impl Into<String>) {
        self.edits.push((range, text.into()));
    }

    pub fn insert(&mut self, at: usize, text: impl Into<String>) {
        self.edits.push((at..at, text.into()));
    }

    /// [`Self::replace`] with an edit shown to leave the statement parsing as it did (a table
    /// name becoming a verified derived table; see `scope::Walker::replace_table`).
    pub fn replace_neutral(&mut self, range: Range<usize>, text: impl Into<String>) {
        if self.nested == 0 {
            self.checks.push((self.edits.len(), Check::Neutral));
        }
        self.edits.push((range, text.into()));
    }

    /// Edits from here to [`Self::leave_nested`] belong to a statement nested in another.
    pub fn enter_nested(&mut self) {
        self.nested += 1;
    }

    pub fn leave_nested(&mut self) {
        self.nested -= 1;
    }

    /// [`Self::replace`] whose check parses `stand_in` in place of `text` (`text` holds a
    /// verified fragment that parses wherever `stand_in` does; see `moves::rewrite`).
    pub fn replace_with_stand_in(
        &mut self,
        range: Range<usize>,
        text: impl Into<String>,
        stand_in: String,
    ) {
        self.checks
            .push((self.edits.len(), Check::StandIn(stand_in)));
        self.edits.push((range, text.into()));
    }

    /// Replaces `range` with `text` that was built from the range's own rewritten text
    /// ([`Self::apply_within`]), so other edits inside `range` are already part of it.
    pub fn replace_covering(&mut self, range: Range<usize>, text: impl Into<String>) {
        self.covering.push(self.edits.len());
        self.edits.push((range, text.into()));
    }

    pub fn is_empty(&self) -> bool {
        self.edits.is_empty()
    }

    /// `text[range]` with the edits that lie inside it applied.
    pub fn apply_within(&self, text: &str, range: Range<usize>) -> Option<String> {
        let mut inner = Edits::default();
        for (r, new) in &self.edits {
            if r.start >= range.start
                && r.end <= range.end
                && !(r.is_empty() && (r.start == range.start || r.end == range.end))
            {
                inner
                    .edits
                    .push((r.start - range.start..r.end - range.start, new.clone()));
            }
        }
        inner.apply(&text[range])
    }

    /// Applies the edits; `None` when two of them overlap (a rewrite bug, refused upstream).
    pub fn apply(self, text: &str) -> Option<String> {
        self.splice(text, |i| &self.edits[i].1)
    }

    /// What the check of [`Self::apply`]'s output must parse: nothing when every edit is
    /// parse-neutral, else the output with each stand-in in place of its edit.
    pub fn check_text(&self, text: &str) -> Option<CheckText> {
        if !self.edits.is_empty()
            && self.covering.is_empty()
            && self.checks.len() == self.edits.len()
            && self.checks.iter().all(|(_, c)| matches!(c, Check::Neutral))
        {
            return Some(CheckText::Neutral);
        }
        if !self
            .checks
            .iter()
            .any(|(_, c)| matches!(c, Check::StandIn(_)))
        {
            return Some(CheckText::Output);
        }
        let with_stand_ins = self.splice(text, |i| {
            match self.checks.iter().find(|(at, _)| *at == i) {
                Some((_, Check::StandIn(s))) => s,
                _ => &self.edits[i].1,
            }
        })?;
        Some(CheckText::StandIns(with_stand_ins))
    }

    /// `text` with the edits applied, edit `i` contributing `pick(i)`.
    fn splice<'s>(&'s self, text: &str, pick: impl Fn(usize) -> &'s str) -> Option<String> {
        let covering: Vec<&Range<usize>> =
            self.covering.iter().map(|&i| &self.edits[i].0).collect();
        let mut order: Vec<usize> = (0..self.edits.len())
            .filter(|&i| {
                let r = &self.edits[i].0;
                self.covering.contains(&i)
                    || !covering.iter().any(|c| {
                        c.start <= r.start
                            && r.end <= c.end
                            && !(r.is_empty() && (r.start == c.start || r.end == c.end))
                    })
            })
            .collect();
        // Stable sort keeps insertions at one point in the order they were made.
        order.sort_by_key(|&i| (self.edits[i].0.start, self.edits[i].0.end));
        let added: usize = order.iter().map(|&i| pick(i).len()).sum();
        let mut out = String::with_capacity(text.len() + added);
        let mut pos = 0;
        for i in order {
            let range = &self.edits[i].0;
            if range.start < pos || range.end > text.len() {
                return None;
            }
            out.push_str(&text[pos..range.start]);
            out.push_str(pick(i));
            pos = range.end;
        }
        out.push_str(&text[pos..]);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(line: u64, column: u64) -> Location {
        Location { line, column }
    }

    #[test]
    fn offsets_count_characters_per_line() {
        let idx = LineIndex::new("ab\n'é' x\n");
        assert_eq!(idx.offset(loc(1, 1)), Some(0));
        assert_eq!(idx.offset(loc(2, 1)), Some(3));
        // 'é' is two bytes: column 4 (the space) is at byte 3 + 4.
        assert_eq!(idx.offset(loc(2, 4)), Some(7));
        assert_eq!(idx.offset(loc(0, 0)), None);
    }

    /// The offset as computed before the ASCII shortcut: characters counted per line.
    fn offset_by_chars(text: &str, loc: Location) -> Option<usize> {
        if loc.line == 0 || loc.column == 0 {
            return None;
        }
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        let start = *starts.get(loc.line as usize - 1)?;
        let line = &text[start..];
        let col = loc.column as usize - 1;
        match line.char_indices().nth(col) {
            Some((i, _)) => Some(start + i),
            None if line.chars().count() == col => Some(text.len()),
            None => None,
        }
    }

    #[test]
    fn the_ascii_shortcut_finds_the_same_offsets() {
        for text in [
            "SELECT 1",
            "SELECT 'é'\nFROM users -- ü\n WHERE x = 'ß'",
            "é",
            "\n\nab\ncd",
            "ab\n'é' x\n",
            "",
        ] {
            let idx = LineIndex::new(text);
            for line in 0..6 {
                for column in 0..(text.len() as u64 + 3) {
                    let l = loc(line, column);
                    assert_eq!(idx.offset(l), offset_by_chars(text, l), "{text:?} {l:?}");
                }
            }
        }
    }

    #[test]
    fn check_texts_follow_the_edits() {
        let text = "SELECT a FROM t; SELECT b FROM t";
        let mut e = Edits::default();
        e.replace_neutral(14..15, "(SELECT 1) AS t");
        assert_eq!(e.check_text(text), Some(CheckText::Neutral));
        e.replace(7..8, "x");
        assert_eq!(e.check_text(text), Some(CheckText::Output));
        let mut e = Edits::default();
        e.replace_with_stand_in(17..32, "SELECT long", "SELECT 1".into());
        e.replace_neutral(14..15, "(SELECT 1) AS t");
        assert_eq!(
            e.check_text(text),
            Some(CheckText::StandIns(
                "SELECT a FROM (SELECT 1) AS t; SELECT 1".into()
            ))
        );
        assert_eq!(
            e.apply(text).unwrap(),
            "SELECT a FROM (SELECT 1) AS t; SELECT long"
        );
        let mut e = Edits::default();
        e.enter_nested();
        e.replace_neutral(14..15, "(SELECT 1) AS t");
        e.leave_nested();
        assert_eq!(e.check_text(text), Some(CheckText::Output));
    }

    #[test]
    fn only_one_parenthesized_query_is_a_neutral_derived_table() {
        assert!(neutral_derived("(SELECT id, (a)::text AS b FROM public.t)"));
        for text in [
            "SELECT 1",
            "(SELECT 1) x",
            "(SELECT 1) UNION (SELECT 2)",
            "(SELECT 1; SELECT 2)",
            "(SELECT 1 -- c)",
            "(SELECT (1)",
            "(t JOIN u ON true)",
            " (SELECT 1)",
        ] {
            assert!(!neutral_derived(text), "{text}");
        }
        let deep = format!("(SELECT {}1{})", "(".repeat(60), ")".repeat(60));
        assert!(!neutral_derived(&deep));
    }

    #[test]
    fn edits_apply_in_order_and_refuse_overlaps() {
        let mut e = Edits::default();
        e.replace(7..12, "(SELECT 1) AS users");
        e.insert(0, "/* a */");
        e.insert(0, "/* b */");
        assert_eq!(
            e.apply("SELECT users.x").unwrap(),
            "/* a *//* b */SELECT (SELECT 1) AS users.x"
        );
        let mut e = Edits::default();
        e.replace(0..5, "a");
        e.replace(3..6, "b");
        assert!(e.apply("0123456789").is_none());
    }
}

/// Exact byte ranges of the comma-separated items in `text[inner]` (the inside of a
/// parenthesized list), found by tokenizing: expression spans from the parser can stop short
/// (a function call's span ends at its name), token positions cannot. `None` if the text does
/// not tokenize or an item is empty.
pub fn list_items(text: &str, inner: Range<usize>) -> Option<Vec<Range<usize>>> {
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::tokenizer::{Token, Tokenizer};
    let slice = &text[inner.clone()];
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, slice)
        .tokenize_with_location()
        .ok()?;
    let index = LineIndex::new(slice);
    let mut items = Vec::new();
    let mut depth = 0i32;
    let mut current: Option<Range<usize>> = None;
    for t in &tokens {
        match &t.token {
            Token::Whitespace(_) | Token::EOF => continue,
            Token::Comma if depth == 0 => {
                items.push(current.take()?);
                continue;
            }
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket => depth -= 1,
            _ => {}
        }
        let r = index.range(t.span)?;
        current = Some(match current {
            Some(c) => c.start..r.end,
            None => r,
        });
    }
    items.push(current?);
    Some(
        items
            .into_iter()
            .map(|r| inner.start + r.start..inner.start + r.end)
            .collect(),
    )
}

/// The exact byte range of an UPDATE assignment's value: after the `=` that follows the SET
/// target ending at `target_end`, up to the next top-level comma, `WHERE`, `FROM`,
/// `RETURNING`, `;` or the end. (A cast's or a negative number's parser span leaves out `::t`
/// or the `-`; tokens do not.)
pub fn assignment_value(text: &str, target_end: usize) -> Option<Range<usize>> {
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::keywords::Keyword;
    use sqlparser::tokenizer::{Token, Tokenizer};
    let slice = &text[target_end..];
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, slice)
        .tokenize_with_location()
        .ok()?;
    let index = LineIndex::new(slice);
    let mut tokens = tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)));
    if tokens.next()?.token != Token::Eq {
        return None;
    }
    let mut depth = 0i32;
    let mut range: Option<Range<usize>> = None;
    for t in tokens {
        match &t.token {
            Token::EOF | Token::SemiColon => break,
            Token::Comma if depth == 0 => break,
            Token::Word(w)
                if depth == 0
                    && matches!(
                        w.keyword,
                        Keyword::WHERE | Keyword::FROM | Keyword::RETURNING
                    ) =>
            {
                break;
            }
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket => depth -= 1,
            _ => {}
        }
        let r = index.range(t.span)?;
        range = Some(match range {
            Some(c) => c.start..r.end,
            None => r,
        });
    }
    range.map(|r| target_end + r.start..target_end + r.end)
}

/// The exact end of an INSERT's source query starting at `start`: before a top-level
/// `ON CONFLICT`, `RETURNING`, `;` or the end.
pub fn insert_source_end(text: &str, start: usize) -> Option<usize> {
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::keywords::Keyword;
    use sqlparser::tokenizer::{Token, Tokenizer};
    let slice = &text[start..];
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, slice)
        .tokenize_with_location()
        .ok()?;
    let index = LineIndex::new(slice);
    let words: Vec<&sqlparser::tokenizer::TokenWithSpan> = tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .collect();
    let mut depth = 0i32;
    let mut end = None;
    for (i, t) in words.iter().enumerate() {
        let keyword = |t: &sqlparser::tokenizer::TokenWithSpan| match &t.token {
            Token::Word(w) => Some(w.keyword),
            _ => None,
        };
        match &t.token {
            Token::EOF | Token::SemiColon => break,
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket => depth -= 1,
            _ if depth == 0 && keyword(t) == Some(Keyword::RETURNING) => break,
            _ if depth == 0
                && keyword(t) == Some(Keyword::ON)
                && words.get(i + 1).and_then(|n| keyword(n)) == Some(Keyword::CONFLICT) =>
            {
                break;
            }
            _ => {}
        }
        end = Some(index.range(t.span)?.end);
    }
    end.map(|e| start + e)
}

/// Where each statement of a multi-statement string starts: after each top-level `;`
/// (skipping whitespace and comments), by tokens. `None` when the text does not tokenize.
pub fn statement_starts(text: &str) -> Option<Vec<usize>> {
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::tokenizer::{Token, Tokenizer};
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, text)
        .tokenize_with_location()
        .ok()?;
    let index = LineIndex::new(text);
    let mut starts = Vec::new();
    let mut expecting = true;
    for t in &tokens {
        match &t.token {
            Token::Whitespace(_) | Token::EOF => {}
            Token::SemiColon => expecting = true,
            _ if expecting => {
                starts.push(index.range(t.span)?.start);
                expecting = false;
            }
            _ => {}
        }
    }
    Some(starts)
}

#[cfg(test)]
mod list_tests {
    use super::*;

    #[test]
    fn items_are_split_at_top_level_commas_only() {
        let text = "(gen_random_uuid()::text, lower( 'a,b' ) /* c, d */, (1, 2), $1)";
        let items = list_items(text, 1..text.len() - 1).unwrap();
        let got: Vec<&str> = items.iter().map(|r| &text[r.clone()]).collect();
        assert_eq!(
            got,
            ["gen_random_uuid()::text", "lower( 'a,b' )", "(1, 2)", "$1"]
        );
        assert!(list_items("(1,,2)", 1..5).is_none());
    }

    #[test]
    fn assignment_values_are_exact() {
        let text = "UPDATE t SET a = -3, b = '1'::int, c = f(x, (y)) WHERE a = 1";
        let value = |target: &str| {
            let end = text.find(target).unwrap() + target.len();
            assignment_value(text, end).map(|r| &text[r])
        };
        assert_eq!(value("SET a"), Some("-3"));
        assert_eq!(value(", b"), Some("'1'::int"));
        assert_eq!(value(", c"), Some("f(x, (y))"));
        assert_eq!(assignment_value("SET a b", 5), None);
    }

    #[test]
    fn statements_start_after_top_level_semicolons() {
        let text = "select ';'; /* ; */ insert into t values (1);\n select $$;$$";
        let starts = statement_starts(text).unwrap();
        let firsts: Vec<&str> = starts.iter().map(|&s| &text[s..s + 6]).collect();
        assert_eq!(firsts, ["select", "insert", "select"]);
    }

    #[test]
    fn insert_sources_end_before_on_conflict_and_returning() {
        let text = "INSERT INTO t (a) SELECT x FROM s JOIN r ON r.id = s.id ON CONFLICT DO NOTHING";
        let start = text.find("SELECT").unwrap();
        let end = insert_source_end(text, start).unwrap();
        assert_eq!(&text[start..end], "SELECT x FROM s JOIN r ON r.id = s.id");
        let text = "INSERT INTO t SELECT (1) RETURNING a;";
        let start = text.find("SELECT").unwrap();
        assert_eq!(
            &text[start..insert_source_end(text, start).unwrap()],
            "SELECT (1)"
        );
    }
}

/// Whether `derived` (a plan's `(SELECT … FROM table)`) may stand for a table name without a
/// second parse of the statement: it is one parenthesized query (its first `(` closes at its
/// last `)`, no `;`) that sqlparser reads as a derived table. See `scope::Walker::replace_table`
/// and docs/rewrite.md ("Check").
pub fn neutral_derived(derived: &str) -> bool {
    use sqlparser::ast::{SetExpr, Statement, TableFactor};
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;
    use sqlparser::tokenizer::{Token, Tokenizer};
    if !derived.starts_with('(') || !derived.ends_with(')') {
        return false;
    }
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, derived).tokenize() else {
        return false;
    };
    let mut depth = 0i32;
    let mut closed = false;
    for t in tokens.iter().filter(|t| !matches!(t, Token::Whitespace(_))) {
        if closed {
            return false; // something after the parenthesis that closes the first one
        }
        match t {
            Token::LParen => depth += 1,
            Token::RParen => {
                depth -= 1;
                closed = depth == 0;
            }
            Token::SemiColon => return false,
            _ if depth == 0 => return false,
            _ => {}
        }
    }
    if !closed {
        return false;
    }
    let sql = format!("SELECT * FROM {derived} AS pgshift_t");
    // Where it replaces a name, at most three parser frames are open (statement, query, table
    // factor), as here; three fewer levels to spare must do too, for a margin.
    let parses_within = |limit: usize| {
        Parser::new(&PostgreSqlDialect {})
            .with_recursion_limit(limit)
            .try_with_sql(&sql)
            .and_then(|mut p| p.parse_statements())
            .is_ok()
    };
    if !(47..50).all(parses_within) {
        return false;
    }
    let Ok(statements) = Parser::parse_sql(&PostgreSqlDialect {}, &sql) else {
        return false;
    };
    let [Statement::Query(query)] = statements.as_slice() else {
        return false;
    };
    let SetExpr::Select(select) = query.body.as_ref() else {
        return false;
    };
    matches!(
        select.from.as_slice(),
        [from] if from.joins.is_empty()
            && matches!(
                &from.relation,
                TableFactor::Derived { lateral: false, alias: Some(_), sample: None, .. }
            )
    )
}

/// Whether `c`, just before a replaced range, ends the token before it whatever follows (it
/// is whitespace, which only a whitespace token or a `--` comment ends with, or `(` or `,`).
pub fn closes_token_before(c: Option<u8>) -> bool {
    matches!(c, None | Some(b' ' | b'\t' | b'\n' | b'\r' | b'(' | b','))
}

/// Whether `c`, just after a replaced range, starts a token that does not depend on the one
/// before it (whitespace, `)`, `,`, `;`, or the end of the text).
pub fn opens_token_after(c: Option<u8>) -> bool {
    matches!(
        c,
        None | Some(b' ' | b'\t' | b'\n' | b'\r' | b')' | b',' | b';')
    )
}
