//! Exit codes a script can branch on, the same for `backupctl` and `backup-server` (documented in
//! `docs/REFERENCE.md`, "Exit codes", which a test keeps equal to [`Exit::ALL`]).
//!
//! The service names the finer reasons of a `FAILED_PRECONDITION` (busy, a key missing, a wrong
//! key) in the status metadata [`REASON`], so a client tells them apart without reading messages.

/// Status metadata naming why a call was refused: `busy`, `key-missing` or `key-wrong`.
pub const REASON: &str = "mbk-reason";

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It did what was asked.
    Ok,
    /// It failed for a reason below none of the others name (the message says which).
    Failed,
    /// Bad arguments or configuration, or a confirmation that could not be asked: nothing ran.
    Usage,
    /// The service, the EventStore, a database, the destination or the catalog did not answer
    /// (refused, timed out, unreachable).
    Unreachable,
    /// The token is missing, invalid or lacks the right.
    NotAllowed,
    /// No key was given that a backup needs (or its key file is gone).
    KeyMissing,
    /// The keys given do not open the backup.
    KeyWrong,
    /// A backup is damaged or does not match its manifest; verification failed.
    Damaged,
    /// Another backup or restore runs (here or in a process sharing the catalog).
    Busy,
    /// No such backup (or no backup at all).
    NotFound,
}

impl Exit {
    /// Every exit, in code order.
    pub const ALL: [Exit; 10] = [
        Exit::Ok,
        Exit::Failed,
        Exit::Usage,
        Exit::Unreachable,
        Exit::NotAllowed,
        Exit::KeyMissing,
        Exit::KeyWrong,
        Exit::Damaged,
        Exit::Busy,
        Exit::NotFound,
    ];

    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::Unreachable => 3,
            Exit::NotAllowed => 4,
            Exit::KeyMissing => 5,
            Exit::KeyWrong => 6,
            Exit::Damaged => 7,
            Exit::Busy => 8,
            Exit::NotFound => 9,
        }
    }

    /// Its name in the docs and in [`REASON`] metadata.
    pub fn name(self) -> &'static str {
        match self {
            Exit::Ok => "ok",
            Exit::Failed => "failed",
            Exit::Usage => "usage",
            Exit::Unreachable => "unreachable",
            Exit::NotAllowed => "not-allowed",
            Exit::KeyMissing => "key-missing",
            Exit::KeyWrong => "key-wrong",
            Exit::Damaged => "damaged",
            Exit::Busy => "busy",
            Exit::NotFound => "not-found",
        }
    }

    /// What it means, as the reference says.
    pub fn meaning(self) -> &'static str {
        match self {
            Exit::Ok => "it did what was asked",
            Exit::Failed => "it failed for a reason none of the codes below names (the message says which); nothing half-done is left",
            Exit::Usage => "a flag, environment variable or config value is malformed, out of range or in conflict with another, or a confirmation was needed and there is no terminal: nothing ran",
            Exit::Unreachable => "the service, the EventStore, a database, the destination or the catalog did not answer (refused, timed out, unreachable)",
            Exit::NotAllowed => "the token is missing, invalid or lacks the right (or the destination refused the credentials)",
            Exit::KeyMissing => "no key was given that the backup needs (or its key file is gone)",
            Exit::KeyWrong => "the keys given do not open the backup",
            Exit::Damaged => "a backup is damaged or does not match its manifest; verification failed",
            Exit::Busy => "another backup or restore runs, in this service or a process sharing its catalog",
            Exit::NotFound => "no such backup, or nothing of monoskope-backup at the destination",
        }
    }

    /// The reference's table of exit codes (`docs/REFERENCE.md` holds exactly this).
    pub fn markdown_table() -> String {
        let mut t = String::from("| code | name | meaning |\n|---|---|---|\n");
        for e in Exit::ALL {
            t.push_str(&format!(
                "| {} | `{}` | {} |\n",
                e.code(),
                e.name(),
                e.meaning()
            ));
        }
        t
    }

    /// The exit named `name`.
    pub fn named(name: &str) -> Option<Exit> {
        Exit::ALL.into_iter().find(|e| e.name() == name)
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e.code())
    }
}
