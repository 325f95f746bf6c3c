//! Writes naming the table reads are *not* served from: the UPDATE or DELETE is translated onto
//! the authoritative table, seen through the named table's shape, and the named table is kept
//! in step from the result.

use super::*;

impl Writer<'_> {
    /// An UPDATE naming the table reads are *not* served from (`self.side`): the target rows
    /// are those of the authoritative table, seen through the named table's shape (locked),
    /// the authoritative table's columns fed by the SET columns are recomputed from the updated
    /// row, and in expand/switch the named table is upserted from it.
    pub(in crate::rewrite::moves) fn translated_update(
        &self,
        update: &Update,
        auth: Side,
    ) -> Result<String, Refusal> {
        let named = self.side;
        let clauses = self.update_clauses(update)?;
        let (_, q) = self.target(&update.table.relation)?;
        let sets = self.assignments(update, named)?;
        let select = self.update_select(&q, named, &sets);
        let columns = &self.plan.shape(named).columns;
        let mut cte = format!(
            "SELECT {} FROM {} AS {q}",
            select.join(", "),
            self.derived(named)
        );
        if let Some(from) = clauses.body(Keyword::FROM) {
            cte.push_str(&format!(", {}", self.piece(from)?));
        }
        if let Some(w) = clauses.body(Keyword::WHERE) {
            cte.push_str(&format!(" WHERE {}", self.piece(w)?));
        }
        cte.push_str(&format!(" FOR UPDATE OF {q}"));
        let set_names: Vec<&str> = sets.iter().map(|(c, _)| c.as_str()).collect();
        let final_col = |c: &str| match set_names.iter().position(|s| *s == c) {
            Some(i) => format!("pgshift_u.pgshift_s{}", i + 1),
            None => match columns.iter().position(|col| col.name == c) {
                Some(i) => format!("pgshift_u.pgshift_c{}", i + 1),
                None => format!("pgshift_u.{}", quote_ident(c)),
            },
        };
        let mut set_list = Vec::new();
        for (column, expr) in self.plan.written(auth) {
            if !expr.columns().any(|c| set_names.contains(&c)) {
                continue;
            }
            set_list.push(format!(
                "{} = {}::{}",
                quote_ident(column),
                expr.render(final_col),
                self.plan.type_of(auth, column)
            ));
        }
        if set_list.is_empty() {
            // Only columns the authoritative table lacks are set: the rows still count.
            let k = quote_ident(&self.plan.moved.key[0]);
            set_list.push(format!("{k} = pgshift_t.{k}"));
        }
        let mut ctes = vec![format!("pgshift_u AS MATERIALIZED ({cte})")];
        if self.plan.moved.dual_writes() {
            // The named table gets the updated row: its fed columns and the SET ones.
            let mut names = Vec::new();
            let mut values = Vec::new();
            for (i, c) in columns.iter().enumerate() {
                let fed = self.plan.written(named).any(|(n, _)| n == &c.name);
                if c.generated || (!fed && !set_names.contains(&c.name.as_str())) {
                    continue;
                }
                names.push(quote_ident(&c.name));
                values.push(match set_names.iter().position(|s| *s == c.name) {
                    Some(j) => format!("pgshift_u.pgshift_s{}", j + 1),
                    None => format!("pgshift_u.pgshift_c{}", i + 1),
                });
            }
            ctes.push(format!(
                "pgshift_m AS ({})",
                self.plan
                    .upsert_columns(named, &names, &values, "pgshift_u")
            ));
        }
        let target = self.plan.shape(auth).name.quoted();
        let mut out = format!(
            "WITH {} UPDATE {target} AS pgshift_t SET {} FROM pgshift_u WHERE {}",
            ctes.join(", "),
            set_list.join(", "),
            self.key_match_prefixed("pgshift_t", "pgshift_u", named)
        );
        self.translated_returning(&mut out, update.returning.as_deref(), &clauses, &q, auth)?;
        Ok(out)
    }

    /// A DELETE naming the non-authoritative table: the keys come from the authoritative
    /// table seen through the named shape (locked); the authoritative rows go, and in
    /// expand/switch the named table's too.
    pub(in crate::rewrite::moves) fn translated_delete(
        &self,
        delete: &Delete,
        auth: Side,
    ) -> Result<String, Refusal> {
        let named = self.side;
        let (clauses, _, q) = self.delete_clauses(delete)?;
        let cte = self.delete_keys(&clauses, &format!("{} AS {q}", self.derived(named)), &q)?;
        let mut ctes = vec![format!("pgshift_d AS MATERIALIZED ({cte})")];
        if self.plan.moved.dual_writes() {
            ctes.push(format!(
                "pgshift_m AS (DELETE FROM {} AS pgshift_o USING pgshift_d WHERE {})",
                self.plan.shape(named).name.quoted(),
                self.key_match_keys("pgshift_o")
            ));
        }
        let target = self.plan.shape(auth).name.quoted();
        let mut out = format!(
            "WITH {} DELETE FROM {target} AS pgshift_t USING pgshift_d WHERE {}",
            ctes.join(", "),
            self.key_match_keys("pgshift_t")
        );
        self.translated_returning(&mut out, delete.returning.as_deref(), &clauses, &q, auth)?;
        Ok(out)
    }

    /// The rows of `side` as computed from the other table (what reads of `side` see when the
    /// other one is authoritative).
    fn derived(&self, side: Side) -> String {
        let source = self.plan.shape(side.other()).name.quoted();
        let cols: Vec<String> = self
            .plan
            .fed(side)
            .iter()
            .map(|(column, expr)| {
                let value = match expr {
                    Some(e) => e.render(quote_ident),
                    None => "NULL".to_owned(),
                };
                format!(
                    "{value}::{} AS {}",
                    self.plan.type_of(side, column),
                    quote_ident(column)
                )
            })
            .collect();
        format!("(SELECT {} FROM {source})", cols.join(", "))
    }

    /// RETURNING of a statement run on the authoritative table (`pgshift_t`), in the named
    /// table's shape.
    fn translated_returning(
        &self,
        out: &mut String,
        returning: Option<&[SelectItem]>,
        clauses: &Clauses,
        qualifier: &str,
        auth: Side,
    ) -> Result<(), Refusal> {
        debug_assert_ne!(auth, self.side);
        if let (Some(items), Some(body)) = (returning, clauses.body(Keyword::RETURNING)) {
            let items = self.returning_items(items, body)?;
            out.push_str(&self.returning_via(
                &items,
                &self.plan.row_as(self.side, "pgshift_t"),
                qualifier,
                "",
            ));
        }
        Ok(())
    }
}
