-- The outcome of each check of a backup: a restore drill, or a verification of its bytes.
CREATE TABLE IF NOT EXISTS checks (
    backup_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    checked_at TEXT NOT NULL,
    ok INTEGER NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS checks_by_backup ON checks (backup_id, kind, checked_at);
