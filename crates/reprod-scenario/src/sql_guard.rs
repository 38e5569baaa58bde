//! What an invariant query may be: one read statement, checked by a real SQL parser before
//! anything is sent to a database.
//!
//! Read-only transactions (and SQLite's `query_only`) stop most writes, but not all: a
//! PostgreSQL superuser's `COPY ... TO PROGRAM` runs a shell command and `COPY ... TO 'file'`
//! writes a file inside a read-only transaction, and SQLite's `VACUUM INTO` creates a file with
//! `query_only` on. So a query is accepted only when it parses as exactly one `SELECT` (or
//! `WITH ... SELECT`, `VALUES`, `TABLE`) with no data-modifying part anywhere inside it, no
//! `SELECT ... INTO`, no row locks, and no call to a function that reads or writes server files,
//! signals other sessions or changes settings. The database-side protections stay on as well.

use std::ops::ControlFlow;

use sqlparser::ast::{Expr, Query, SetExpr, Statement, Visit, Visitor};
use sqlparser::dialect::{Dialect, GenericDialect, PostgreSqlDialect, SQLiteDialect};
use sqlparser::parser::Parser;

/// Which database an invariant query is for: it decides the SQL dialect it is parsed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite:...`
    Sqlite,
    /// `postgres://...`
    Postgres,
    /// Not known when the scenario loads (a URL from a placeholder): parsed generically.
    Unknown,
}

impl Backend {
    /// The backend of a database URL.
    pub fn of_url(url: &str) -> Backend {
        if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            Backend::Unknown
        }
    }
}

/// Functions an invariant query may not call: they read or write server files, load code,
/// signal other sessions, take locks, change settings or advance sequences.
const FORBIDDEN_FUNCTIONS: &[&str] = &[
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
    "pg_ls_logdir",
    "pg_ls_waldir",
    "pg_ls_tmpdir",
    "lo_import",
    "lo_export",
    "lo_unlink",
    "lo_create",
    "lo_put",
    "lo_from_bytea",
    "dblink",
    "dblink_exec",
    "dblink_connect",
    "dblink_send_query",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_switch_wal",
    "pg_promote",
    "pg_create_restore_point",
    "pg_logical_emit_message",
    "pg_notify",
    "set_config",
    "nextval",
    "setval",
    "pg_advisory_lock",
    "pg_advisory_xact_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "load_extension",
    "readfile",
    "writefile",
    "edit",
    "fts3_tokenizer",
];

/// Accepts `sql` only if it is one read statement with nothing in it that writes or escapes;
/// `Err` says what is wrong in words a scenario author can act on.
pub fn check_read_only(sql: &str, backend: Backend) -> Result<(), String> {
    let dialect: Box<dyn Dialect> = match backend {
        Backend::Sqlite => Box::new(SQLiteDialect {}),
        Backend::Postgres => Box::new(PostgreSqlDialect {}),
        Backend::Unknown => Box::new(GenericDialect {}),
    };
    let statements = Parser::parse_sql(dialect.as_ref(), sql).map_err(|e| {
        let first = sql.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
        if first.is_empty() || ["SELECT", "WITH", "VALUES", "TABLE", "("].iter().any(|k| first.starts_with(k)) {
            format!("the query does not parse as SQL: {e}")
        } else {
            format!("{first} is not a read; an invariant is one SELECT (or WITH ... SELECT) that returns the violating rows")
        }
    })?;
    let statement = match statements.as_slice() {
        [one] => one,
        [] => return Err("the query is empty".to_string()),
        many => {
            return Err(format!(
                "the query holds {} statements; an invariant is exactly one SELECT",
                many.len()
            ));
        }
    };
    if !matches!(statement, Statement::Query(_)) {
        return Err(format!(
            "{} is not a read; an invariant is one SELECT (or WITH ... SELECT) that returns the violating rows",
            statement_kind(statement)
        ));
    }
    let mut guard = Guard::default();
    if let ControlFlow::Break(problem) = statement.visit(&mut guard) {
        return Err(problem);
    }
    Ok(())
}

/// The first words of a statement, for messages: `COPY`, `VACUUM`, `PRAGMA`...
fn statement_kind(statement: &Statement) -> String {
    let text = statement.to_string();
    let words: Vec<&str> = text.split_whitespace().take(2).collect();
    match words.as_slice() {
        [first, second]
            if matches!(
                first.to_ascii_uppercase().as_str(),
                "CREATE" | "DROP" | "ALTER"
            ) =>
        {
            format!(
                "{} {}",
                first.to_ascii_uppercase(),
                second.to_ascii_uppercase()
            )
        }
        [first, ..] => first.to_ascii_uppercase(),
        [] => "the statement".to_string(),
    }
}

#[derive(Default)]
struct Guard {
    depth: usize,
}

impl Visitor for Guard {
    type Break = String;

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<String> {
        self.depth += 1;
        if self.depth > 1 && !matches!(statement, Statement::Query(_)) {
            return ControlFlow::Break(format!(
                "the query contains a {} inside it; an invariant may only read",
                statement_kind(statement)
            ));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<String> {
        if !query.locks.is_empty() {
            return ControlFlow::Break(
                "the query takes row locks (FOR UPDATE / FOR SHARE); an invariant only reads"
                    .to_string(),
            );
        }
        set_expr(&query.body)
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<String> {
        if let Expr::Function(f) = expr {
            let name = f
                .name
                .0
                .last()
                .map(|part| part.to_string().trim_matches('"').to_ascii_lowercase())
                .unwrap_or_default();
            if FORBIDDEN_FUNCTIONS.contains(&name.as_str()) {
                return ControlFlow::Break(format!(
                    "the query calls {name}(), which reads or writes outside the data, signals other sessions or changes state; an invariant may not"
                ));
            }
        }
        ControlFlow::Continue(())
    }
}

fn set_expr(body: &SetExpr) -> ControlFlow<String> {
    match body {
        SetExpr::Select(select) if select.into.is_some() => ControlFlow::Break(
            "SELECT ... INTO creates a table; an invariant only returns rows".to_string(),
        ),
        SetExpr::SetOperation { left, right, .. } => {
            set_expr(left)?;
            set_expr(right)
        }
        SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => {
            ControlFlow::Break(
                "the query modifies data (INSERT, UPDATE, DELETE or MERGE); an invariant may only read"
                    .to_string(),
            )
        }
        _ => ControlFlow::Continue(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(sql: &str, backend: Backend) -> String {
        check_read_only(sql, backend).expect_err(sql)
    }

    #[test]
    fn reads_are_accepted() {
        for (sql, backend) in [
            (
                "SELECT account_id, period, COUNT(*) FROM invoices GROUP BY 1, 2 HAVING COUNT(*) > 1",
                Backend::Postgres,
            ),
            (
                "WITH d AS (SELECT account_id FROM invoices) SELECT * FROM d",
                Backend::Sqlite,
            ),
            ("SELECT a FROM t UNION SELECT b FROM u", Backend::Unknown),
            ("SELECT * FROM pragma_table_info('t')", Backend::Sqlite),
            ("SELECT (SELECT 1) AS x, now()", Backend::Postgres),
        ] {
            assert_eq!(check_read_only(sql, backend), Ok(()), "{sql}");
        }
    }

    /// Each form that once got past the read-only protections, or could.
    #[test]
    fn writes_and_escapes_are_refused_with_a_reason() {
        let pg = Backend::Postgres;
        let lite = Backend::Sqlite;
        for (sql, backend, needle) in [
            (
                "COPY (SELECT 1) TO PROGRAM 'touch /tmp/x'",
                pg,
                "COPY is not a read",
            ),
            ("COPY invoices TO '/tmp/x'", pg, "COPY is not a read"),
            ("VACUUM INTO '/tmp/x.db'", lite, "VACUUM is not a read"),
            (
                "ATTACH DATABASE '/tmp/x.db' AS x",
                lite,
                "ATTACH is not a read",
            ),
            ("PRAGMA journal_mode = DELETE", lite, "PRAGMA is not a read"),
            (
                "DELETE FROM invoices RETURNING account_id",
                pg,
                "DELETE is not a read",
            ),
            ("SELECT 1; DROP TABLE invoices", pg, "2 statements"),
            ("DO $$ BEGIN PERFORM 1; END $$", pg, "not a read"),
            ("CALL cleanup()", pg, "CALL is not a read"),
            (
                "WITH gone AS (DELETE FROM invoices RETURNING account_id) SELECT * FROM gone",
                pg,
                "modifies data",
            ),
            ("SELECT * INTO copy FROM invoices", pg, "SELECT ... INTO"),
            ("SELECT * FROM invoices FOR UPDATE", pg, "row locks"),
            ("SELECT pg_read_file('/etc/passwd')", pg, "pg_read_file()"),
            ("SELECT lo_export(1, '/tmp/x')", pg, "lo_export()"),
            ("SELECT load_extension('x')", lite, "load_extension()"),
            ("SELECT nextval('s')", pg, "nextval()"),
            ("", pg, "empty"),
            ("SELEC 1", pg, "SELEC is not a read"),
            ("SELECT FROM WHERE", pg, "does not parse"),
        ] {
            let why = refused(sql, backend);
            assert!(why.contains(needle), "{sql}: {why}");
        }
    }
}
