//! `backup-server`: the BackupService, its one-shot commands and the embedded EventStore.

fn main() -> std::process::ExitCode {
    monoskope_backup::cli::main()
}
