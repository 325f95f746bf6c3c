//! The migration model the rewrite engine works from: which table, which column pairs, which
//! phase, and the table's physical shape (from the catalog). Pure data; built from the config
//! and the catalog by [`crate::snapshot`].

use std::sync::Arc;

pub use crate::config::{MigrationKind, Phase};

/// A schema-qualified name as PostgreSQL stores it (unquoted identifiers folded to lower case).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QualifiedName {
    pub schema: String,
    pub name: String,
}

impl QualifiedName {
    /// Parses `schema.table` or `table` (schema `public`), folding unquoted parts to lower case
    /// and honouring double quotes.
    pub fn parse(s: &str) -> Result<QualifiedName, String> {
        let parts = split_identifiers(s)?;
        match parts.as_slice() {
            [name] => Ok(QualifiedName {
                schema: "public".into(),
                name: name.clone(),
            }),
            [schema, name] => Ok(QualifiedName {
                schema: schema.clone(),
                name: name.clone(),
            }),
            _ => Err(format!("{s:?} is not a table name (schema.table)")),
        }
    }

    /// The name quoted for SQL: `"schema"."name"`.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl std::fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Splits a dotted identifier path, folding unquoted parts to lower case.
pub fn split_identifiers(s: &str) -> Result<Vec<String>, String> {
    let mut parts = Vec::new();
    let mut chars = s.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                    None => return Err(format!("unterminated quoted identifier in {s:?}")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if !(c.is_alphanumeric() || c == '_' || c == '$') {
                    return Err(format!("invalid character {c:?} in identifier {s:?}"));
                }
                part.extend(c.to_lowercase());
                chars.next();
            }
        }
        if part.is_empty() {
            return Err(format!("empty identifier in {s:?}"));
        }
        parts.push(part);
        match chars.next() {
            None => return Ok(parts),
            Some('.') => continue,
            Some(c) => return Err(format!("unexpected {c:?} in identifier {s:?}")),
        }
    }
}

/// Quotes an identifier when PostgreSQL would need it to keep its exact spelling.
pub fn quote_ident(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain && !is_reserved(s) {
        s.to_owned()
    } else {
        format!("\"{}\"", s.replace('"', "\"\""))
    }
}

/// Keywords that cannot be used as bare column names; quoting any keyword is always safe, so
/// this list only needs to err on the side of quoting.
fn is_reserved(s: &str) -> bool {
    const RESERVED: &[&str] = &[
        "all",
        "analyse",
        "analyze",
        "and",
        "any",
        "array",
        "as",
        "asc",
        "asymmetric",
        "both",
        "case",
        "cast",
        "check",
        "collate",
        "column",
        "constraint",
        "create",
        "current_catalog",
        "current_date",
        "current_role",
        "current_time",
        "current_timestamp",
        "current_user",
        "default",
        "deferrable",
        "desc",
        "distinct",
        "do",
        "else",
        "end",
        "except",
        "false",
        "fetch",
        "for",
        "foreign",
        "from",
        "grant",
        "group",
        "having",
        "in",
        "initially",
        "intersect",
        "into",
        "lateral",
        "leading",
        "limit",
        "localtime",
        "localtimestamp",
        "not",
        "null",
        "offset",
        "on",
        "only",
        "or",
        "order",
        "placing",
        "primary",
        "references",
        "returning",
        "select",
        "session_user",
        "some",
        "symmetric",
        "table",
        "then",
        "to",
        "trailing",
        "true",
        "union",
        "unique",
        "user",
        "using",
        "variadic",
        "when",
        "where",
        "window",
        "with",
    ];
    RESERVED.contains(&s)
}

/// One column of a table, as the catalog reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    /// `pg_attribute.atttypid`.
    pub type_oid: u32,
    /// `format_type(atttypid, atttypmod)`, usable in a cast: `character varying(20)`.
    pub type_sql: String,
    pub not_null: bool,
    /// The default expression (`pg_get_expr(adbin, adrelid)`), if any.
    pub default: Option<String>,
    /// A generated column (`GENERATED ALWAYS AS … STORED`): computed by PostgreSQL, never
    /// written.
    pub generated: bool,
    /// `GENERATED ALWAYS AS IDENTITY`: an INSERT giving it a value needs `OVERRIDING SYSTEM
    /// VALUE` (pgshift copies the other table's value into it).
    pub identity_always: bool,
}

/// A table's physical shape: live columns in physical order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableShape {
    pub name: QualifiedName,
    pub columns: Vec<ColumnInfo>,
    /// Columns of the primary key (or the first unique key), in key order; may be empty.
    pub key: Vec<String>,
}

impl TableShape {
    pub fn column(&self, name: &str) -> Option<&ColumnInfo> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// One `[[migration.columns]]` resolved: `up` computes `new` from the old row, `down` computes
/// `old` from the new row. Both are SQL expressions over unqualified column names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnPair {
    pub old: String,
    pub new: String,
    pub up: String,
    pub down: String,
}

/// A `kind = "columns"` migration as the rewrite engine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnsMigration {
    pub name: String,
    pub database: String,
    pub table: QualifiedName,
    pub phase: Phase,
    pub pairs: Vec<ColumnPair>,
}

/// A table under one or more active column migrations, with its shape.
#[derive(Debug, Clone)]
pub struct MigratedTable {
    pub shape: TableShape,
    /// The migrations on this table whose phase is not `planned`.
    pub migrations: Vec<Arc<ColumnsMigration>>,
}

/// A `kind = "table"` migration resolved against both tables: for every column of each table,
/// the SQL expression computing it from a row of the other one (over unqualified column names),
/// or `None` when nothing feeds it (its default, else NULL, applies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMove {
    pub name: String,
    pub database: String,
    pub phase: Phase,
    pub old: TableShape,
    pub new: TableShape,
    /// Columns identifying a row in both tables.
    pub key: Vec<String>,
    /// One entry per column of `new`, in physical order.
    pub new_from_old: Vec<(String, Option<String>)>,
    /// One entry per column of `old`, in physical order.
    pub old_from_new: Vec<(String, Option<String>)>,
}

impl TableMove {
    /// The table reads are served from in this phase.
    pub fn reads_new(&self) -> bool {
        self.phase >= Phase::Switch
    }

    /// Both tables are written in expand and switch.
    pub fn dual_writes(&self) -> bool {
        matches!(self.phase, Phase::Expand | Phase::Switch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fold_and_quote_like_postgres() {
        let n = QualifiedName::parse("Public.Users").unwrap();
        assert_eq!((n.schema.as_str(), n.name.as_str()), ("public", "users"));
        let n = QualifiedName::parse("\"My Schema\".\"Tab\"\"le\"").unwrap();
        assert_eq!(
            (n.schema.as_str(), n.name.as_str()),
            ("My Schema", "Tab\"le")
        );
        assert_eq!(n.quoted(), "\"My Schema\".\"Tab\"\"le\"");
        assert_eq!(QualifiedName::parse("users").unwrap().schema, "public");
        assert!(QualifiedName::parse("a.b.c").is_err());
        assert!(QualifiedName::parse("a b").is_err());
        assert_eq!(quote_ident("user_name"), "user_name");
        assert_eq!(quote_ident("user"), "\"user\"");
        assert_eq!(quote_ident("Name"), "\"Name\"");
    }
}
