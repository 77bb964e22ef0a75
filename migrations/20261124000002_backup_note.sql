-- Why a backup is not what was asked for (an incremental request that became a full backup).
ALTER TABLE backups ADD COLUMN note TEXT;
