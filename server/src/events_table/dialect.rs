//! Which database holds the events table, and the statements each path may send to
//! CockroachDB, as values: every statement with the line of CockroachDB's documentation that
//! allows it (`docs/COCKROACHDB.md` lists the same; a test keeps the two equal).
//!
//! Nothing here has been run against CockroachDB (it cannot run on the machines this project is
//! built on). The table source reads CockroachDB in one historical transaction (below); the
//! table sink refuses CockroachDB before it writes anything, and its designed path (a staging
//! table renamed into place) is kept here as a plan with tests, not executed.

/// The database behind an events-table URL, as `SELECT version()` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL (any server whose version string does not name CockroachDB).
    Postgres,
    /// CockroachDB, with its version as printed (`v21.2.7`), when found.
    Cockroach(String),
}

impl Dialect {
    /// The dialect of a `SELECT version()` answer.
    pub fn of_version(version: &str) -> Self {
        if !version.contains("CockroachDB") {
            return Dialect::Postgres;
        }
        let v = version
            .split_whitespace()
            .find(|w| w.starts_with('v') && w[1..].starts_with(|c: char| c.is_ascii_digit()))
            .unwrap_or("of an unknown version");
        Dialect::Cockroach(v.to_string())
    }

    /// Whether this is CockroachDB.
    pub fn is_cockroach(&self) -> bool {
        matches!(self, Dialect::Cockroach(_))
    }

    /// In words: "PostgreSQL", "CockroachDB v21.2.7".
    pub fn name(&self) -> String {
        match self {
            Dialect::Postgres => "PostgreSQL".into(),
            Dialect::Cockroach(v) => format!("CockroachDB {v}"),
        }
    }
}

/// One statement a path sends, and why CockroachDB accepts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The SQL, with `{…}` where a value is filled in.
    pub sql: String,
    /// CockroachDB's documentation page (v21.2) and what it says that allows the statement.
    pub allowed_by: &'static str,
}

fn st(sql: impl Into<String>, allowed_by: &'static str) -> Statement {
    Statement {
        sql: sql.into(),
        allowed_by,
    }
}

/// How the table source begins its snapshot on CockroachDB: one explicit transaction at a
/// historical timestamp (a few seconds in the past), so every statement of the backup reads the
/// same consistent snapshot, takes no locks, and cannot fail with a serialization retry error
/// (40001) however long it runs — a historical read does not conflict with writers. Events
/// stored in the last few seconds are in the next backup.
pub const BEGIN_HISTORICAL: &str = "BEGIN AS OF SYSTEM TIME follower_read_timestamp()";

/// Whether the events table exists, on CockroachDB (within the snapshot).
pub const TABLE_EXISTS: &str = "SELECT count(*) > 0 FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = 'event_records'";

/// The statements of a full backup read on CockroachDB, in the order they are sent.
pub fn source_full(columns: &str, order_by: &str) -> Vec<Statement> {
    vec![
        st(
            "SELECT version()",
            "functions-and-operators: version(), the node's version string",
        ),
        st(
            BEGIN_HISTORICAL,
            "as-of-system-time: the clause is supported \"In BEGIN, after the BEGIN keyword\"; follower_read_timestamp() is statement_timestamp() less a few seconds (4.8 s in v21.2)",
        ),
        st(
            TABLE_EXISTS,
            "information-schema: the tables view lists the tables of each schema",
        ),
        st(
            format!(r#"SELECT {columns} FROM "event_records" e {order_by}"#),
            "order-by: SELECT … ORDER BY; a sort larger than memory spills to the node's temporary storage (cockroach start --max-disk-temp-storage)",
        ),
        st(
            "COMMIT",
            "commit-transaction: COMMIT ends the transaction",
        ),
    ]
}

/// The statements of an incremental read on CockroachDB: the highest version of every
/// aggregate, then the new events of those that grew, both in the same historical transaction.
pub fn source_incremental(max_per_aggregate: &str, grown: &str) -> Vec<Statement> {
    let mut s = source_full("{columns}", "");
    s.truncate(3);
    s.push(st(
        max_per_aggregate,
        "select-clause: GROUP BY with the aggregate functions max() and count(); the UNIQUE index on (aggregate_id, aggregate_type, aggregate_version) covers it",
    ));
    s.push(st(
        grown,
        "table-expressions: unnest() of several arrays as a table in FROM, and a LATERAL subquery joined to it",
    ));
    s.push(st(
        "COMMIT",
        "commit-transaction: COMMIT ends the transaction",
    ));
    s
}

/// The designed all-or-nothing restore into CockroachDB (not executed: the sink refuses
/// CockroachDB before it writes anything, until this plan has been run against it). No
/// `LOCK TABLE` (CockroachDB has none) and no `DROP CONSTRAINT` of a unique constraint (which
/// CockroachDB refuses: it is an index): the events go into a staging table created with
/// Monoskope's DDL, then one transaction renames the old table away and the staging table into
/// place, so readers see the old events or the restored ones; the old table is dropped after the
/// commit. `staging` and `old` are table names unique to the restore.
pub fn sink_staging_swap(create_table: &str, staging: &str, old: &str) -> Vec<Statement> {
    let create_staging = create_table.replacen(
        r#"CREATE TABLE IF NOT EXISTS "event_records""#,
        &format!(r#"CREATE TABLE "{staging}""#),
        1,
    );
    vec![
        st(
            "SELECT version()",
            "functions-and-operators: version(), the node's version string",
        ),
        st(
            create_staging,
            "create-table: CREATE TABLE with PRIMARY KEY and UNIQUE constraints (the DDL Monoskope's EventStore itself issues on CockroachDB)",
        ),
        st(
            format!(r#"COPY "{staging}" ("event_id", "event_type", "aggregate_id", "aggregate_type", "aggregate_version", "timestamp", "metadata", "data") FROM STDIN"#),
            "copy-from: COPY … FROM STDIN in text or CSV format (not binary); a large COPY may commit in batches, harmless in a staging table nobody reads",
        ),
        st(
            format!(r#"SELECT count(*) FROM "{staging}""#),
            "select-clause: a count; the staging table must hold every event the archive authenticated",
        ),
        st("BEGIN", "begin-transaction: BEGIN starts an explicit transaction"),
        st(
            "SELECT count(*) FROM \"event_records\"",
            "select-clause: a count; the store must still be empty (or --drop-existing), checked inside the swap",
        ),
        st(
            format!(r#"ALTER TABLE "event_records" RENAME TO "{old}""#),
            "rename-table: ALTER TABLE … RENAME TO; online-schema-changes: schema changes may run inside an explicit transaction (to be proven on v21.2 with both renames in one)",
        ),
        st(
            format!(r#"ALTER TABLE "{staging}" RENAME TO "event_records""#),
            "rename-table: ALTER TABLE … RENAME TO",
        ),
        st("COMMIT", "commit-transaction: COMMIT ends the transaction"),
        st(
            format!(r#"DROP TABLE "{old}""#),
            "drop-table: DROP TABLE, after the commit (the old events stay until the swap is durable)",
        ),
    ]
}

/// The statements of `paths` as the Markdown table `docs/COCKROACHDB.md` holds.
pub fn markdown_table(paths: &[(&str, Vec<Statement>)]) -> String {
    let mut out = String::from(
        "| path | # | statement | allowed by (CockroachDB v21.2 docs) |\n|---|---|---|---|\n",
    );
    for (path, statements) in paths {
        for (i, s) in statements.iter().enumerate() {
            out.push_str(&format!(
                "| {path} | {} | `{}` | {} |\n",
                i + 1,
                s.sql.replace('|', "\\|"),
                s.allowed_by.replace('|', "\\|")
            ));
        }
    }
    out
}

/// Why the table sink refuses CockroachDB, in one line (before anything is written).
pub fn sink_refusal(d: &Dialect) -> String {
    format!(
        "the events database is {}: restoring into the events table has been run on PostgreSQL only, and its CockroachDB path (a staging table renamed into place, docs/COCKROACHDB.md) has not been run against CockroachDB, so nothing was written; restore into a PostgreSQL events table, or through the EventStore API (--via-api, which replays every event onto the message bus)",
        d.name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialect_from_version_strings() {
        assert_eq!(
            Dialect::of_version("PostgreSQL 15.18 (Debian 15.18-0+deb12u1) on x86_64-pc-linux-gnu"),
            Dialect::Postgres
        );
        let c = Dialect::of_version(
            "CockroachDB CCL v21.2.7 (x86_64-unknown-linux-gnu, built 2022/03/14 16:35:55, go1.16.6)",
        );
        assert_eq!(c, Dialect::Cockroach("v21.2.7".into()));
        assert_eq!(c.name(), "CockroachDB v21.2.7");
        assert!(c.is_cockroach());
        assert_eq!(
            Dialect::of_version("CockroachDB OSS"),
            Dialect::Cockroach("of an unknown version".into())
        );
    }

    /// Statements CockroachDB's documentation says it does not support; none may appear in a
    /// CockroachDB path.
    const FORBIDDEN: &[&str] = &[
        "LOCK TABLE",
        "DROP CONSTRAINT",
        "FORMAT binary",
        "FREEZE",
        "TRUNCATE",
        "lock_timeout",
        "REPEATABLE READ",
        "pg_locks",
        "to_regclass",
        "SET LOCAL",
    ];

    fn check(plan: &[Statement]) {
        for s in plan {
            for f in FORBIDDEN {
                assert!(!s.sql.contains(f), "{f} in {}", s.sql);
            }
            assert!(!s.allowed_by.is_empty(), "{} has no reason", s.sql);
        }
    }

    #[test]
    fn the_source_reads_one_historical_snapshot_without_locks() {
        let plan = source_full("e.event_id", "ORDER BY e.\"timestamp\"");
        check(&plan);
        let sql: Vec<&str> = plan.iter().map(|s| s.sql.as_str()).collect();
        assert_eq!(sql[0], "SELECT version()", "detected before anything else");
        assert_eq!(sql[1], BEGIN_HISTORICAL);
        assert!(sql[1].contains("AS OF SYSTEM TIME"));
        assert_eq!(*sql.last().expect("statements"), "COMMIT");
        let inc = source_incremental("SELECT max(…)", "SELECT … unnest(…)");
        check(&inc);
        assert_eq!(inc[1].sql, BEGIN_HISTORICAL);
        assert_eq!(inc.len(), 6);
    }

    #[test]
    fn the_sink_plan_swaps_a_staging_table_in_one_transaction() {
        let plan = sink_staging_swap(
            super::super::CREATE_TABLE,
            "event_records_restore_1",
            "event_records_old_1",
        );
        check(&plan);
        let sql: Vec<&str> = plan.iter().map(|s| s.sql.as_str()).collect();
        assert_eq!(sql[0], "SELECT version()");
        assert!(
            sql[1].starts_with(r#"CREATE TABLE "event_records_restore_1" ("event_id" uuid"#),
            "{}",
            sql[1]
        );
        assert!(
            sql[1].contains(r#"UNIQUE ("aggregate_id", "aggregate_type", "aggregate_version")"#)
        );
        // Nothing touches event_records before the swap's transaction begins.
        let begin = sql.iter().position(|s| *s == "BEGIN").expect("BEGIN");
        assert!(sql[..begin]
            .iter()
            .all(|s| !s.contains(r#""event_records" "#) && !s.contains(r#"FROM "event_records""#)));
        let commit = sql.iter().position(|s| *s == "COMMIT").expect("COMMIT");
        assert!(sql[begin..commit]
            .iter()
            .any(|s| s.contains(r#"RENAME TO "event_records_old_1""#)));
        assert!(sql[begin..commit]
            .iter()
            .any(|s| s.contains(r#""event_records_restore_1" RENAME TO "event_records""#)));
        assert_eq!(
            sql[commit + 1],
            r#"DROP TABLE "event_records_old_1""#,
            "dropped after the commit"
        );
    }

    #[test]
    fn the_sink_refusal_names_the_database_and_the_ways_out() {
        let m = sink_refusal(&Dialect::Cockroach("v21.2.7".into()));
        assert!(m.contains("CockroachDB v21.2.7"), "{m}");
        assert!(m.contains("nothing was written"), "{m}");
        assert!(m.contains("--via-api"), "{m}");
        assert!(!m.contains('\n'));
    }
}
