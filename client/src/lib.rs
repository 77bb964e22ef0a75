//! Client of the BackupService.
