//! Literal lifting, so that statements which differ only in their constants share one rewrite.
//!
//! Applications that inline their values (the simple query protocol, client-side "prepared"
//! statements of PHP PDO, Rails with `prepared_statements: false`, `psql`) send a new text for
//! every execution: `UPDATE users SET user_name = 'bob' WHERE id = 7`, then `… 'ann' … 8`. Keyed
//! by text, every one would be parsed and rewritten from scratch (tens of µs). Instead the plain
//! constants are lifted out as parameters numbered after the statement's own (`… = $1 WHERE id
//! = $2`), the lifted text is rewritten once, and each execution puts its own constants back
//! into the cached rewrite ([`Template::fill`]).
//!
//! This is exact because the rewrite engine treats a constant and a parameter alike: it copies
//! value expressions, it never reads them. The one place it tells them apart (INSERT … SELECT
//! with parameters is refused) makes the lifted form's outcome a refusal, and a refused lifted
//! form is never used: the statement is then rewritten from its own text.
//!
//! Only constants whose replacement by a parameter keeps the grammar are lifted: numbers and
//! standard `'…'` strings after punctuation that starts an expression (`( , = < > + - * / % | [`)
//! or after a keyword that does (`SELECT`, `WHERE`, `AND`, `THEN`, `LIMIT`, …). A string after a
//! type name (`DATE '2024-01-01'`, `varchar(3) 'x'`), next to another string (implicit
//! concatenation), an `E'…'`/`B'…'`/`U&'…'` string or a dollar-quoted one stays in the text, and
//! so in the cache key. The lexer follows PostgreSQL's rules with `standard_conforming_strings`
//! on, like the sqlparser dialect the engine parses with.

use std::ops::Range;

/// A statement with its liftable constants replaced by parameters `$base+1`, `$base+2`, ….
#[derive(Debug, PartialEq, Eq)]
pub struct Lifted<'a> {
    pub text: String,
    /// The constants, in order: constant `i` became `$base+1+i`.
    pub literals: Vec<&'a str>,
    pub base: u32,
}

/// PostgreSQL accepts at most this many parameters in one statement.
const MAX_PARAMS: u32 = 65_535;

/// Keywords after which a constant starts an expression (lower case).
const LIFT_AFTER: &[&str] = &[
    "and",
    "between",
    "else",
    "ilike",
    "like",
    "limit",
    "not",
    "offset",
    "or",
    "returning",
    "select",
    "then",
    "when",
    "where",
];

/// Type names that take a modifier in parentheses (`numeric(10, 2)`): no parameter there.
const TYPMOD_TYPES: &[&str] = &[
    "bit",
    "char",
    "character",
    "dec",
    "decimal",
    "float",
    "interval",
    "numeric",
    "time",
    "timestamp",
    "timestamptz",
    "timetz",
    "varbit",
    "varchar",
    "varying",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// An identifier or keyword, by its byte range.
    Word(usize, usize),
    /// A plain number or a standard string: a candidate for lifting.
    Constant {
        string: bool,
    },
    /// A parameter `$n`.
    Param(u32),
    /// Any other string or number, a quoted identifier.
    Opaque,
    Punct(u8),
}

/// A tokenizer that yields token ranges, skipping whitespace and comments.
struct Lexer<'a> {
    text: &'a [u8],
    pos: usize,
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_char(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

impl<'a> Lexer<'a> {
    fn peek(&self, ahead: usize) -> Option<u8> {
        self.text.get(self.pos + ahead).copied()
    }

    /// Skips whitespace and comments; `None` when a block comment does not end.
    fn skip_space(&mut self) -> Option<()> {
        loop {
            match self.peek(0) {
                Some(c) if c.is_ascii_whitespace() => self.pos += 1,
                Some(b'-') if self.peek(1) == Some(b'-') => {
                    while self.peek(0).is_some_and(|c| c != b'\n') {
                        self.pos += 1;
                    }
                }
                Some(b'/') if self.peek(1) == Some(b'*') => {
                    self.pos += 2;
                    let mut depth = 1;
                    while depth > 0 {
                        match (self.peek(0)?, self.peek(1)) {
                            (b'*', Some(b'/')) => {
                                depth -= 1;
                                self.pos += 2;
                            }
                            (b'/', Some(b'*')) => {
                                depth += 1;
                                self.pos += 2;
                            }
                            _ => self.pos += 1,
                        }
                    }
                }
                _ => return Some(()),
            }
        }
    }

    /// Skips a quoted run starting at the opening `quote`; `backslash` for E'…' strings.
    fn quoted(&mut self, quote: u8, backslash: bool) -> Option<()> {
        self.pos += 1;
        loop {
            let c = self.peek(0)?;
            self.pos += 1;
            if backslash && c == b'\\' {
                self.peek(0)?;
                self.pos += 1;
            } else if c == quote {
                if self.peek(0) == Some(quote) {
                    self.pos += 1;
                } else {
                    return Some(());
                }
            }
        }
    }

    /// Skips `$tag$…$tag$` starting at the first `$`; `None` when it is not one or never ends.
    fn dollar_quoted(&mut self) -> Option<()> {
        let start = self.pos;
        let mut end = start + 1;
        while self
            .text
            .get(end)
            .is_some_and(|&c| is_ident_char(c) && c != b'$')
        {
            end += 1;
        }
        if self.text.get(end) != Some(&b'$') {
            return None;
        }
        let tag = &self.text[start..=end];
        let body = end + 1;
        let close = self.text[body..]
            .windows(tag.len())
            .position(|w| w == tag)?;
        self.pos = body + close + tag.len();
        Some(())
    }

    /// The next token and its byte range; `Ok(None)` at the end, `Err(())` on text this lexer
    /// does not follow (an unterminated quote or comment): then nothing is lifted.
    fn next(&mut self) -> Result<Option<(Token, Range<usize>)>, ()> {
        self.skip_space().ok_or(())?;
        let start = self.pos;
        let Some(c) = self.peek(0) else {
            return Ok(None);
        };
        let token = match c {
            b'\'' => {
                self.quoted(b'\'', false).ok_or(())?;
                Token::Constant { string: true }
            }
            b'"' => {
                self.quoted(b'"', false).ok_or(())?;
                Token::Opaque
            }
            b'$' if self.peek(1).is_some_and(|d| d.is_ascii_digit()) => {
                self.pos += 1;
                while self.peek(0).is_some_and(|d| d.is_ascii_digit()) {
                    self.pos += 1;
                }
                let digits = std::str::from_utf8(&self.text[start + 1..self.pos]);
                Token::Param(digits.ok().and_then(|d| d.parse().ok()).ok_or(())?)
            }
            b'$' => {
                self.dollar_quoted().ok_or(())?;
                Token::Opaque
            }
            c if c.is_ascii_digit()
                || (c == b'.' && self.peek(1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                self.number()
            }
            c if is_ident_start(c) => {
                while self.peek(0).is_some_and(is_ident_char) {
                    self.pos += 1;
                }
                // E'…' takes backslash escapes; B'…', X'…', N'…', U&'…' are typed constants.
                if self.peek(0) == Some(b'\'') {
                    let escaped = self.pos - start == 1 && matches!(c, b'e' | b'E');
                    self.quoted(b'\'', escaped).ok_or(())?;
                    Token::Opaque
                } else {
                    Token::Word(start, self.pos)
                }
            }
            c => {
                self.pos += 1;
                Token::Punct(c)
            }
        };
        Ok(Some((token, start..self.pos)))
    }

    /// A numeric constant; `Opaque` when letters follow it (`0x1F`, `1_000`, `1e`).
    fn number(&mut self) -> Token {
        let digits = |l: &mut Lexer<'_>| {
            while l.peek(0).is_some_and(|d| d.is_ascii_digit()) {
                l.pos += 1;
            }
        };
        digits(self);
        if self.peek(0) == Some(b'.') && self.peek(1) != Some(b'.') {
            self.pos += 1;
            digits(self);
        }
        if matches!(self.peek(0), Some(b'e' | b'E')) {
            let sign = usize::from(matches!(self.peek(1), Some(b'+' | b'-')));
            if self.peek(1 + sign).is_some_and(|d| d.is_ascii_digit()) {
                self.pos += 1 + sign;
                digits(self);
            }
        }
        if self.peek(0).is_some_and(is_ident_char) {
            while self.peek(0).is_some_and(is_ident_char) {
                self.pos += 1;
            }
            return Token::Opaque;
        }
        Token::Constant { string: false }
    }
}

/// Whether a constant after `prev` can be a parameter instead.
fn starts_expression(text: &str, prev: Option<Token>) -> bool {
    match prev {
        Some(Token::Punct(c)) => b"(,=<>+-*/%|[".contains(&c),
        Some(Token::Word(s, e)) => {
            let word = &text[s..e];
            LIFT_AFTER.iter().any(|k| word.eq_ignore_ascii_case(k))
        }
        _ => false,
    }
}

/// Lifts the constants of `sql` whose statement already uses `params` parameters (at least);
/// `None` when there is nothing to lift or the text is beyond this lexer.
pub fn lift(sql: &str, params: usize) -> Option<Lifted<'_>> {
    let mut lexer = Lexer {
        text: sql.as_bytes(),
        pos: 0,
    };
    let mut tokens = Vec::new();
    let mut max_param = u32::try_from(params).ok()?;
    while let Some((token, range)) = lexer.next().ok()? {
        if let Token::Param(n) = token {
            max_param = max_param.max(n);
        }
        tokens.push((token, range));
    }
    let mut lifted: Vec<Range<usize>> = Vec::new();
    // Per open parenthesis: whether it holds a type modifier.
    let mut groups: Vec<bool> = Vec::new();
    for (i, (token, range)) in tokens.iter().enumerate() {
        let prev = i.checked_sub(1).map(|p| tokens[p].0);
        let Token::Constant { string } = *token else {
            match token {
                Token::Punct(b'(') => groups.push(matches!(prev, Some(Token::Word(s, e))
                    if TYPMOD_TYPES.iter().any(|t| sql[s..e].eq_ignore_ascii_case(t)))),
                Token::Punct(b')') => {
                    groups.pop();
                }
                _ => {}
            }
            continue;
        };
        if groups.last() == Some(&true) {
            continue;
        }
        let next = tokens.get(i + 1).map(|t| t.0);
        let beside_string = |t: Option<Token>| {
            matches!(
                t,
                Some(Token::Constant { string: true } | Token::Opaque | Token::Param(_))
            )
        };
        if string && (beside_string(prev) || beside_string(next)) {
            continue;
        }
        if starts_expression(sql, prev) {
            lifted.push(range.clone());
        }
    }
    if lifted.is_empty() || max_param + lifted.len() as u32 > MAX_PARAMS {
        return None;
    }
    let mut text = String::with_capacity(sql.len());
    let mut literals = Vec::with_capacity(lifted.len());
    let mut copied = 0;
    for (i, range) in lifted.iter().enumerate() {
        text.push_str(&sql[copied..range.start]);
        text.push('$');
        text.push_str(&(max_param + 1 + i as u32).to_string());
        literals.push(&sql[range.clone()]);
        copied = range.end;
    }
    text.push_str(&sql[copied..]);
    Some(Lifted {
        text,
        literals,
        base: max_param,
    })
}

/// A rewrite of a lifted text, ready to take each execution's constants.
#[derive(Debug, PartialEq, Eq)]
pub struct Template {
    /// Text runs and constant slots, in order.
    pieces: Vec<Piece>,
    /// Bytes of the text runs, for sizing the output.
    fixed: usize,
    /// How many constants the lifted text had.
    slots: usize,
}

#[derive(Debug, PartialEq, Eq)]
enum Piece {
    Text(Box<str>),
    Constant(usize),
}

impl Template {
    /// Finds the lifted parameters (`$n` with `n > base`) in `rewritten`, a rewrite of a
    /// lifted text with `slots` constants; `None` when its text is beyond the lexer or names
    /// a parameter the lifted text did not have.
    pub fn new(rewritten: &str, base: u32, slots: usize) -> Option<Template> {
        let mut lexer = Lexer {
            text: rewritten.as_bytes(),
            pos: 0,
        };
        let mut pieces = Vec::new();
        let mut fixed = 0;
        let mut copied = 0;
        while let Some((token, range)) = lexer.next().ok()? {
            let Token::Param(n) = token else {
                continue;
            };
            if n <= base {
                continue;
            }
            let slot = (n - base - 1) as usize;
            if slot >= slots {
                return None;
            }
            fixed += range.start - copied;
            pieces.push(Piece::Text(rewritten[copied..range.start].into()));
            pieces.push(Piece::Constant(slot));
            copied = range.end;
        }
        fixed += rewritten.len() - copied;
        pieces.push(Piece::Text(rewritten[copied..].into()));
        Some(Template {
            pieces,
            fixed,
            slots,
        })
    }

    /// The rewrite with these constants in their slots.
    pub fn fill(&self, literals: &[&str]) -> String {
        debug_assert_eq!(literals.len(), self.slots);
        let mut out =
            String::with_capacity(self.fixed + literals.iter().map(|l| l.len()).sum::<usize>());
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Constant(i) => out.push_str(literals[*i]),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lifted(sql: &str) -> Option<(String, Vec<&str>)> {
        lift(sql, 0).map(|l| (l.text, l.literals))
    }

    #[test]
    fn lifts_values_comparisons_and_assignments() {
        let (text, lits) =
            lifted("UPDATE users SET user_name = 'it''s', score = -5 WHERE id = 7").unwrap();
        assert_eq!(
            text,
            "UPDATE users SET user_name = $1, score = -$2 WHERE id = $3"
        );
        assert_eq!(lits, ["'it''s'", "5", "7"]);
        let (text, _) = lifted("insert into t (a, b) values (1.5e3, 'x') returning 1").unwrap();
        assert_eq!(text, "insert into t (a, b) values ($1, $2) returning $3");
        let (text, _) = lifted("select * from t where a between 1 and .5 limit 10").unwrap();
        assert_eq!(text, "select * from t where a between $1 and $2 limit $3");
    }

    #[test]
    fn numbers_after_the_statements_own_parameters() {
        let l = lift("select $2 + 1 from t where x = $1", 3).unwrap();
        assert_eq!(l.text, "select $2 + $4 from t where x = $1");
        assert_eq!(l.base, 3);
        let l = lift("select $12 + 1", 0).unwrap();
        assert_eq!(l.text, "select $12 + $13");
    }

    #[test]
    fn keeps_typed_escaped_quoted_and_adjacent_constants() {
        for sql in [
            "select date '2024-01-01' from t",
            "select interval '1 day' from t",
            "select varchar(3) 'abc' from t",
            "select E'a\\'b' from t",
            "select U&'d\\0061t' from t",
            "select B'101', X'1F' from t",
            "select $$ 'x' = 1 $$ from t",
            "select $q$ 1 $q$ from t",
            "select 'a'\n'b' from t",
            "select \"1\" from t",
            "select t1.c2 from t1",
            "select 0x1F, 1_000 from t",
            "select x::numeric(10, 2), cast(y as varchar(3)) from t",
            "alter table t alter c set default 5",
            "select 1 -- = 5\n from t /* = 'x' /* = 2 */ */",
        ] {
            let got = lift(sql, 0);
            let kept_all = got.as_ref().is_none_or(|l| {
                // Only `select 1` may lift in the last one.
                l.literals == ["1"]
            });
            assert!(kept_all, "{sql}: {got:?}");
        }
    }

    #[test]
    fn refuses_text_it_cannot_follow() {
        assert_eq!(lift("select 'unterminated = 1", 0), None);
        assert_eq!(lift("select 1 /* open", 0), None);
        assert_eq!(lift("select $tag$ never closed", 0), None);
        assert_eq!(lift("select * from t", 0), None);
    }

    #[test]
    fn templates_put_constants_back_everywhere_they_were_copied() {
        let l = lift("update users set user_name = 'bob' where id = 7", 0).unwrap();
        let rewritten = "update users set user_name = $1, display_name = ($1)::text where id = $2 \
                         and note <> '$1' and \"$2\" = $$ $1 $$";
        let t = Template::new(rewritten, l.base, l.literals.len()).unwrap();
        assert_eq!(
            t.fill(&l.literals),
            "update users set user_name = 'bob', display_name = ('bob')::text where id = 7 \
             and note <> '$1' and \"$2\" = $$ $1 $$"
        );
        assert_eq!(t.fill(&["'ann'", "8"]).matches("'ann'").count(), 2);
        // A parameter the lifted text never had means the rewrite is not a template.
        assert_eq!(Template::new("select $3", 0, 2), None);
        // The statement's own parameters stay.
        let t = Template::new("select $1, $2", 1, 1).unwrap();
        assert_eq!(t.fill(&["42"]), "select $1, 42");
    }

    #[test]
    fn cached_rewrites_of_lifted_statements_equal_their_own_rewrites() {
        use crate::migration::Phase;
        use crate::rewrite::{Outcome, Rewriter, fixtures};
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x11f7);
        let phases = [Phase::Expand, Phase::Switch, Phase::Contract];
        let rewriters: Vec<Rewriter> = phases
            .iter()
            .flat_map(|&p| {
                [
                    Rewriter::new(&[fixtures::users_table(p, p)], &[]).unwrap(),
                    Rewriter::new(&[], &[fixtures::orders_move(p)]).unwrap(),
                ]
            })
            .collect();
        let values = [
            "1",
            "-7",
            "3.25",
            "1e3",
            "'x'",
            "'O''Brien'",
            "'5'::int",
            "NULL",
            "date '2024-01-02'",
            "E'a\\'b'",
            "(2 + 40)",
            "'a' || 'b'",
            "$1",
            "'users'",
            "' -- not a comment'",
        ];
        let pick = |rng: &mut rand::rngs::StdRng| values[rng.random_range(0..values.len())];
        let mut lifted_rewrites = 0;
        for _ in 0..4000 {
            let rw = &rewriters[rng.random_range(0..rewriters.len())];
            let (a, b, c) = (pick(&mut rng), pick(&mut rng), pick(&mut rng));
            let sql = match rng.random_range(0..10) {
                0 => format!("UPDATE users SET user_name = {a}, age = {b} WHERE id = {c}"),
                1 => format!("INSERT INTO users (id, user_name, age) VALUES ({a}, {b}, {c})"),
                2 => format!(
                    "INSERT INTO users (id, display_name) VALUES ({a}, {b}) ON CONFLICT (id) DO \
                     UPDATE SET display_name = EXCLUDED.display_name || {c}"
                ),
                3 => format!("SELECT user_name, {a} FROM users WHERE age = {b} LIMIT {c}"),
                4 => {
                    format!("DELETE FROM users WHERE id BETWEEN {a} AND {b} OR user_name LIKE {c}")
                }
                5 => format!("INSERT INTO orders (id, customer, total) VALUES ({a}, {b}, {c})"),
                6 => format!("UPDATE orders SET total = {a}, note = {b} WHERE id = {c}"),
                7 => format!(
                    "INSERT INTO orders (id, customer) SELECT {a}, {b} WHERE {c} IS NOT NULL"
                ),
                8 => {
                    format!("SELECT total_cents + {a} FROM orders_v2 WHERE customer IN ({b}, {c})")
                }
                _ => format!("UPDATE orders_v2 SET total_cents = {a} WHERE id = {b}; SELECT {c}"),
            };
            let params = usize::from(sql.contains("$1"));
            let types = vec![0; params];
            let direct = rw.rewrite(&sql);
            let cached = rw.rewrite_cached(&sql, &types);
            assert_eq!(cached.outcome, direct, "{sql}");
            if lift(&sql, params).is_some() && matches!(direct, Outcome::Rewritten(_)) {
                lifted_rewrites += 1;
            }
        }
        assert!(
            lifted_rewrites > 1000,
            "only {lifted_rewrites} lifted rewrites"
        );
        // Statements of one shape share one entry.
        let rw =
            Rewriter::new(&[fixtures::users_table(Phase::Expand, Phase::Expand)], &[]).unwrap();
        for id in 0..50 {
            let sql = format!("UPDATE users SET age = '{id}' WHERE id = {id}");
            let cached = rw.rewrite_cached(&sql, &[]);
            assert_eq!(cached.outcome, rw.rewrite(&sql));
            assert!(
                matches!(&cached.outcome, Outcome::Rewritten(t) if t.contains(&format!("'{id}'")))
            );
        }
        assert_eq!((rw.shapes.len(), rw.cache.len()), (1, 0));
    }
}
