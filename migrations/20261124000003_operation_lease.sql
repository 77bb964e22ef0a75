-- Which process runs an operation (backup, restore, drill) against this catalog. Every process
-- sharing the catalog — the service, a one-shot `backup-server backup` or `restore`, a second
-- replica — takes this one row before it starts and renews it while it runs, so a second
-- operation waits its turn and a RUNNING record is known to be a live process's. A row not
-- renewed for longer than the lease's time to live is a dead process's and may be taken over.
CREATE TABLE IF NOT EXISTS operation_lease (
    slot BIGINT PRIMARY KEY,
    holder TEXT NOT NULL,
    kind VARCHAR(16) NOT NULL,
    operation_id VARCHAR(64) NOT NULL,
    acquired_at TEXT NOT NULL,
    renewed_at_ms BIGINT NOT NULL
);
