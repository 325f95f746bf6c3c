//! `up` and `down` expressions as templates: SQL text whose column references can be replaced
//! (qualified with a table alias, or substituted by the value a statement writes) by splicing.

use std::ops::{ControlFlow, Range};

use sqlparser::ast::{Expr, Spanned, visit_expressions};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::splice::{Edits, LineIndex};

/// A parsed column expression and where its column references are.
#[derive(Debug, Clone)]
pub struct ColumnExpr {
    text: String,
    refs: Vec<(Range<usize>, String)>,
}

impl ColumnExpr {
    /// Parses a single SQL expression over unqualified column names.
    pub fn parse(text: &str) -> Result<ColumnExpr, String> {
        let dialect = PostgreSqlDialect {};
        let mut parser = Parser::new(&dialect)
            .try_with_sql(text)
            .map_err(|e| e.to_string())?;
        let expr = parser.parse_expr().map_err(|e| e.to_string())?;
        if parser.peek_token().token != sqlparser::tokenizer::Token::EOF {
            return Err(format!("{text:?} is not a single expression"));
        }
        let index = LineIndex::new(text);
        let mut refs = Vec::new();
        let mut bad = None;
        let _ = visit_expressions(&expr, |e| {
            if let Expr::Identifier(ident) = e {
                match index.range(ident.span) {
                    Some(r) => refs.push((r, super::normalize_ident(ident))),
                    None => bad = Some(ident.value.clone()),
                }
            }
            ControlFlow::<()>::Continue(())
        });
        if let Some(name) = bad {
            return Err(format!("cannot locate column {name:?} in {text:?}"));
        }
        // The whole expression must span the text so nothing is lost when it is embedded.
        let _ = expr.span();
        Ok(ColumnExpr {
            text: text.to_owned(),
            refs,
        })
    }

    /// The column names the expression reads.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.refs.iter().map(|(_, n)| n.as_str())
    }

    /// The expression with each column reference replaced by `f(column)`, in parentheses.
    pub fn render(&self, mut f: impl FnMut(&str) -> String) -> String {
        let mut edits = Edits::default();
        for (range, name) in &self.refs {
            edits.replace(range.clone(), f(name));
        }
        let body = edits
            .apply(&self.text)
            .expect("column references never overlap");
        format!("({body})")
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_with_columns_replaced() {
        let e = ColumnExpr::parse("CASE WHEN age ~ '^[0-9]+$' THEN age::integer END").unwrap();
        assert_eq!(e.columns().collect::<Vec<_>>(), ["age", "age"]);
        assert_eq!(
            e.render(|c| format!("u.{c}")),
            "(CASE WHEN u.age ~ '^[0-9]+$' THEN u.age::integer END)"
        );
        let e = ColumnExpr::parse("lower(\"Name\") || 'x''y'").unwrap();
        assert_eq!(e.columns().collect::<Vec<_>>(), ["Name"]);
        assert_eq!(e.render(|_| "$1".into()), "(lower($1) || 'x''y')");
        assert!(ColumnExpr::parse("a b").is_err());
        assert!(ColumnExpr::parse("").is_err());
    }
}
