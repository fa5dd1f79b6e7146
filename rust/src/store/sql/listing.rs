//! The statements of the operators' reads (see [`crate::store::listing`]), for either dialect.
//!
//! A listing's statement depends on which conditions its filter has, so it is built per call
//! (each shape is then cached by the connection as any statement): a condition left out is
//! absent from the statement, where `(? IS NULL OR ...)` would keep the planner from the
//! indexes.

use super::connect::Dialect;
use crate::store::{Cursor, Filter, Status};

/// A value bound to a statement's placeholder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Param {
    Text(String),
    Int(i64),
    Bytes(Vec<u8>),
}

/// A statement and its parameters, in placeholder order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Built {
    pub(super) sql: String,
    pub(super) params: Vec<Param>,
}

/// The columns of an execution a listing answers, in the order [`Built`] rows hold them.
const LISTED: &str = "id, workflow, parent, status, result, interrupted, created_ms, \
                      updated_ms, no";

/// An instant or count as the database stores it: a u64 past `i64::MAX` is as good as it.
fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

struct Builder {
    dialect: Dialect,
    conditions: Vec<String>,
    params: Vec<Param>,
}

impl Builder {
    fn new(dialect: Dialect) -> Self {
        Self {
            dialect,
            conditions: Vec::new(),
            params: Vec::new(),
        }
    }

    /// A placeholder for `param`.
    fn bind(&mut self, param: Param) -> String {
        self.params.push(param);
        match self.dialect {
            Dialect::Sqlite => format!("?{}", self.params.len()),
            Dialect::Postgres => format!("${}", self.params.len()),
        }
    }

    fn filter(&mut self, filter: &Filter) {
        if let Some(workflow) = &filter.workflow {
            let at = self.bind(Param::Text(workflow.clone()));
            self.conditions.push(format!("e.workflow = {at}"));
        }
        if let Some(status) = filter.status {
            let at = self.bind(Param::Text(status.as_str().to_owned()));
            self.conditions.push(format!("e.status = {at}"));
        }
        if !filter.result_prefixes.is_empty() {
            let mut any = Vec::with_capacity(filter.result_prefixes.len());
            for prefix in &filter.result_prefixes {
                let length = prefix.len();
                let at = self.bind(Param::Bytes(prefix.clone()));
                any.push(match self.dialect {
                    // On a BLOB, substr counts bytes.
                    Dialect::Sqlite => format!("substr(e.result, 1, {length}) = {at}"),
                    Dialect::Postgres => {
                        format!("substring(e.result FROM 1 FOR {length}) = {at}")
                    }
                });
            }
            self.conditions.push(format!("({})", any.join(" OR ")));
        }
        if let Some(from) = filter.created_from_ms {
            let at = self.bind(Param::Int(int(from)));
            self.conditions.push(format!("e.created_ms >= {at}"));
        }
        if let Some(before) = filter.created_before_ms {
            let at = self.bind(Param::Int(int(before)));
            self.conditions.push(format!("e.created_ms < {at}"));
        }
    }

    fn after(&mut self, after: Option<Cursor>) {
        if let Some(cursor) = after {
            let created = self.bind(Param::Int(int(cursor.created_ms)));
            let no = self.bind(Param::Int(int(cursor.no)));
            // A row value: both dialects read it as a range of the (created_ms, no) order.
            self.conditions
                .push(format!("(e.created_ms, e.no) < ({created}, {no})"));
        }
    }

    /// `FROM` and `WHERE`: on PostgreSQL, the executions not complete are read through
    /// `active` (the status column has no index there).
    fn source(&self, prefix: &str, filter: &Filter) -> String {
        let through_active = self.dialect == Dialect::Postgres
            && matches!(filter.status, Some(Status::Running | Status::Suspended));
        let from = if through_active {
            // Each one looked up by number; `OFFSET 0` keeps the subquery from being
            // flattened into a join the planner might hash over the whole table.
            format!(
                "{prefix}active a CROSS JOIN LATERAL (SELECT {LISTED} FROM {prefix}executions \
                 WHERE no = a.no OFFSET 0) e"
            )
        } else {
            format!("{prefix}executions e")
        };
        if self.conditions.is_empty() {
            from
        } else {
            format!("{from} WHERE {}", self.conditions.join(" AND "))
        }
    }
}

/// Up to `limit + 1` executions passing `filter` after `after`, newest first: one more than a
/// page, which says whether another page follows.
pub(super) fn list(
    dialect: Dialect,
    prefix: &str,
    filter: &Filter,
    after: Option<Cursor>,
    limit: usize,
) -> Built {
    let mut builder = Builder::new(dialect);
    builder.filter(filter);
    builder.after(after);
    let source = builder.source(prefix, filter);
    let rows = builder.bind(Param::Int(
        i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX),
    ));
    let columns = LISTED
        .split(", ")
        .map(|c| format!("e.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    Built {
        sql: format!(
            "SELECT {columns} FROM {source} ORDER BY e.created_ms DESC, e.no DESC LIMIT {rows}"
        ),
        params: builder.params,
    }
}

/// How many executions pass `filter`, counting no further than `cap`.
pub(super) fn count(dialect: Dialect, prefix: &str, filter: &Filter, cap: u64) -> Built {
    let mut builder = Builder::new(dialect);
    builder.filter(filter);
    let source = builder.source(prefix, filter);
    let cap = builder.bind(Param::Int(int(cap)));
    Built {
        sql: format!("SELECT count(*) FROM (SELECT 1 FROM {source} LIMIT {cap}) counted"),
        params: builder.params,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_holds_only_the_conditions_given() {
        let bare = list(Dialect::Sqlite, "p_", &Filter::default(), None, 10);
        assert_eq!(
            bare.sql,
            "SELECT e.id, e.workflow, e.parent, e.status, e.result, e.interrupted, \
             e.created_ms, e.updated_ms, e.no FROM p_executions e \
             ORDER BY e.created_ms DESC, e.no DESC LIMIT ?1"
        );
        assert_eq!(bare.params, [Param::Int(11)]);
        let filter = Filter {
            workflow: Some("W".into()),
            status: Some(Status::Suspended),
            result_prefixes: vec![b"ab".to_vec(), b"c".to_vec()],
            created_from_ms: Some(5),
            created_before_ms: Some(u64::MAX),
        };
        let after = Some(Cursor {
            created_ms: 7,
            no: 3,
        });
        let full = list(Dialect::Postgres, "p_", &filter, after, 2);
        assert!(full.sql.contains("FROM p_active a CROSS JOIN LATERAL"));
        assert!(full.sql.contains(
            "WHERE e.workflow = $1 AND e.status = $2 AND \
             (substring(e.result FROM 1 FOR 2) = $3 OR substring(e.result FROM 1 FOR 1) = $4) \
             AND e.created_ms >= $5 AND e.created_ms < $6 AND (e.created_ms, e.no) < ($7, $8) \
             ORDER BY"
        ));
        assert!(full.sql.ends_with("LIMIT $9"));
        assert_eq!(full.params[5], Param::Int(i64::MAX));
        assert_eq!(full.params.len(), 9);
        let counted = count(Dialect::Sqlite, "p_", &filter, 100);
        assert!(counted
            .sql
            .starts_with("SELECT count(*) FROM (SELECT 1 FROM p_executions e"));
        assert!(counted.sql.ends_with("LIMIT ?7) counted"));
    }
}
