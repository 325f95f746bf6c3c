//! The walk's visitor: queries and CTE scopes, table factors (replaced by derived tables), and
//! column references of the DML target; the edits themselves are the [`Walker`]'s.

use super::*;

impl Visitor for Walker<'_, '_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        self.depth += 1;
        if self.depth == 1 {
            self.root_query = self.root == Some(query as *const Query);
        }
        // A CTE name is visible after its own definition (inside it too when RECURSIVE): an
        // earlier sibling or its own body still sees the real table of that name.
        let names = query
            .with
            .as_ref()
            .map(|w| {
                w.cte_tables
                    .iter()
                    .map(|c| {
                        let from = if w.recursive {
                            0
                        } else {
                            self.index
                                .offset(c.closing_paren_token.0.span.end)
                                .unwrap_or(usize::MAX)
                        };
                        (normalize_ident(&c.alias.name), from)
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.ctes.push(names);
        if self.skipping == 0 && self.rw.is_some_and(|rw| rw.any_dropped()) {
            self.expand_wildcards(&query.body)?;
        }
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _query: &Query) -> ControlFlow<()> {
        self.depth -= 1;
        self.ctes.pop();
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        self.statements += 1;
        if self.statements == 1 {
            self.root = match statement {
                Statement::Query(q) => Some(&**q as *const Query),
                Statement::Insert(i) => i.source.as_deref().map(|q| q as *const Query),
                _ => None,
            };
            self.top_is_dml = matches!(statement, Statement::Update(_) | Statement::Delete(_));
        }
        if self.skipping > 0 || self.handled.iter().any(|h| std::ptr::eq(*h, statement)) {
            self.skipping += 1;
            return ControlFlow::Continue(());
        }
        if self.statements > 1
            && matches!(
                statement,
                Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_)
            )
            && let Some(rw) = self.rw
            && let Some(plan) = touched_tables(rw, statement).first()
        {
            return self.refuse(
                plan,
                "this data-modifying statement is nested where pgshift cannot rewrite it; \
                 use it directly in WITH"
                    .into(),
            );
        }
        ControlFlow::Continue(())
    }

    fn post_visit_statement(&mut self, _statement: &Statement) -> ControlFlow<()> {
        self.skipping = self.skipping.saturating_sub(1);
        ControlFlow::Continue(())
    }

    fn post_visit_table_factor(&mut self, _factor: &TableFactor) -> ControlFlow<()> {
        self.factors -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        let enclosing = self.factors;
        self.factors += 1;
        if self.skipping > 0 {
            return ControlFlow::Continue(());
        }
        let TableFactor::Table {
            name,
            alias,
            args,
            with_hints,
            version,
            partitions,
            with_ordinality,
            json_path,
            sample,
            index_hints,
        } = factor
        else {
            return ControlFlow::Continue(());
        };
        if args.is_some() {
            return ControlFlow::Continue(()); // a table function, not a table
        }
        let Some(parts) = idents(name) else {
            return ControlFlow::Continue(());
        };
        let at = self.index.offset(name.span().start).unwrap_or(0);
        if self.is_cte(&parts, at) {
            return ControlFlow::Continue(());
        }
        // sqlparser reads `ONLY users` as a table named "only" aliased "users".
        if let ([only], Some(alias)) = (parts.as_slice(), alias)
            && only.quote_style.is_none()
            && only.value.eq_ignore_ascii_case("only")
            && let Some(rw) = self.rw
            && let Some(plan) = rw.resolve(std::slice::from_ref(&alias.name))
        {
            let plan = plan.clone();
            return self.refuse(
                &plan,
                "ONLY on a table under migration is not supported".into(),
            );
        }
        if let Some(target) = self.target
            && self.depth > 0
        {
            let visible = match alias {
                Some(a) => normalize_ident(&a.name),
                None => parts.last().map(normalize_ident).unwrap_or_default(),
            };
            if visible == target.qualifier {
                let plan = target.plan.clone();
                return self.refuse(
                    &plan,
                    format!(
                        "the name {visible} is reused inside a subquery of this statement; alias it differently"
                    ),
                );
            }
        }
        let Some(plan) = self.rw.and_then(|rw| rw.resolve(&parts)).cloned() else {
            return ControlFlow::Continue(());
        };
        if let Some(target) = self.target
            && self.index.offset(name.span().start) == Some(target.name_start)
        {
            return ControlFlow::Continue(());
        }
        if let Some(a) = alias {
            self.replaced.push((normalize_ident(&a.name), plan.clone()));
        }
        // Only a bare name (sqlparser's plain table path) at the statement's own level may be
        // replaced without a second parse (see `replace_table`).
        let top_level = enclosing == 0
            && self.statements == 1
            && match self.depth {
                0 => self.top_is_dml,
                1 => self.root_query,
                _ => false,
            };
        let bare = with_hints.is_empty()
            && version.is_none()
            && partitions.is_empty()
            && !with_ordinality
            && json_path.is_none()
            && sample.is_none()
            && index_hints.is_empty();
        self.replace_table(&plan, name, alias.is_some(), top_level && bare)
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if self.skipping > 0 {
            return ControlFlow::Continue(());
        }
        if let Expr::Identifier(ident) = expr
            && self.rw.is_some()
        {
            self.bare.push(normalize_ident(ident));
        }
        let Some(target) = self.target else {
            return ControlFlow::Continue(());
        };
        match expr {
            Expr::Identifier(ident) if target.matches_unqualified => {
                let column = normalize_ident(ident);
                if target.plan.non_authoritative(&column).is_none() {
                    return ControlFlow::Continue(());
                }
                if self.depth > 0 || target.has_other_tables {
                    return self.refuse(
                        &target.plan,
                        format!(
                            "column {column} is ambiguous here; qualify it with the table name or alias"
                        ),
                    );
                }
                self.replace_column(target, expr, &column)
            }
            Expr::CompoundIdentifier(parts) if parts.len() == 2 => {
                if normalize_ident(&parts[0]) != target.qualifier {
                    return ControlFlow::Continue(());
                }
                let column = normalize_ident(&parts[1]);
                self.replace_column(target, expr, &column)
            }
            // schema.table.column naming the target (only valid when it has no alias).
            Expr::CompoundIdentifier(parts) if parts.len() == 3 => {
                let name = target.plan.name();
                if normalize_ident(&parts[0]) != name.schema
                    || normalize_ident(&parts[1]) != name.name
                    || target.qualifier != name.name
                {
                    return ControlFlow::Continue(());
                }
                let column = normalize_ident(&parts[2]);
                self.replace_column(target, expr, &column)
            }
            _ => ControlFlow::Continue(()),
        }
    }
}
