-- The catalog: an index of the backups and restores whose source of truth is the destination.
-- Portable SQL for SQLite, PostgreSQL and CockroachDB: TEXT and BIGINT only, times as RFC 3339
-- text in UTC (they sort as times), no sequences, no vendor functions.
CREATE TABLE IF NOT EXISTS backups (
    id VARCHAR(64) PRIMARY KEY,
    kind VARCHAR(16) NOT NULL,
    state VARCHAR(16) NOT NULL,
    parent_id VARCHAR(64),
    created_at TEXT NOT NULL,
    completed_at TEXT,
    created_by TEXT NOT NULL,
    source TEXT NOT NULL,
    event_count BIGINT NOT NULL,
    archive_bytes BIGINT NOT NULL,
    archive_sha256 TEXT,
    archive_key TEXT,
    first_event_time TEXT,
    last_event_time TEXT,
    events_sha256 TEXT,
    key_id TEXT,
    format_version TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS backups_by_state ON backups (state, id);

CREATE TABLE IF NOT EXISTS restores (
    id VARCHAR(64) PRIMARY KEY,
    backup_id VARCHAR(64) NOT NULL,
    state VARCHAR(16) NOT NULL,
    started_at TEXT NOT NULL,
    completed_at TEXT,
    created_by TEXT NOT NULL,
    sink TEXT NOT NULL,
    until_time TEXT,
    drop_existing BIGINT NOT NULL,
    chain TEXT NOT NULL,
    event_count BIGINT NOT NULL,
    archive_bytes BIGINT NOT NULL,
    error TEXT
);
