//! `backupctl`: the command line of monoskope-backup's BackupService — what `monoctl backup …`
//! offers. Exit codes: [`monoskope_backup_client::exit::Exit`] (0 success, 1 failure, 2 usage,
//! 3 unreachable, 4 not allowed, 5 key missing, 6 wrong key, 7 damaged, 8 busy, 9 not found);
//! a failure is one line on stderr.

use std::path::PathBuf;
use std::process::ExitCode;

mod context;
mod create;
mod describe;
mod drill;
mod list;
mod restore;
mod show;
mod status;
mod watch;

use clap::{Parser, Subcommand};
use monoskope_backup_client::{BackupClient, ClientError, ClientOptions};

/// Talk to monoskope-backup's BackupService.
///
/// The bearer token comes from --token-file or MONOSKOPE_TOKEN, never from an argument.
#[derive(Debug, Parser)]
#[command(name = "backupctl", version, propagate_version = true)]
struct Cli {
    /// The BackupService: http://HOST:PORT or https://HOST:PORT (default: the context's, else
    /// http://127.0.0.1:50051).
    #[arg(long, global = true, env = "BACKUP_SERVER")]
    server: Option<String>,
    /// The context to use (see `backupctl context`; default: the file's current context).
    #[arg(long, global = true, env = "BACKUPCTL_CONTEXT")]
    context: Option<String>,
    /// PEM CA certificate to trust for https:// (system roots otherwise).
    #[arg(long, global = true, env = "BACKUP_SERVER_CA")]
    ca_file: Option<PathBuf>,
    /// File holding the bearer token (default: the MONOSKOPE_TOKEN environment variable).
    #[arg(long, global = true, env = "BACKUP_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Longest a call may wait for an answer (connecting, listing, status; a `--wait` also
    /// stops once the service stops answering its status), e.g. 30s (default: the context's,
    /// else 30s).
    #[arg(long, global = true, env = "BACKUP_CLIENT_TIMEOUT", value_parser = parse_timeout)]
    timeout: Option<std::time::Duration>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum ContextCommand {
    /// List the contexts; the current one is marked with `*`.
    List,
    /// Make NAME the current context.
    Use {
        /// The context.
        name: String,
    },
    /// Add or change the context NAME from the --server, --token-file, --ca-file and --timeout
    /// given on this command line (only those change; the token itself is never stored), and
    /// make it current if there is none.
    Set {
        /// The context.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a backup of the EventStore; with --wait, wait for it and exit 1 if it failed.
    Create {
        /// Wait until the backup has ended, showing its progress (a spinner on a terminal, a line on stderr every 10 s otherwise).
        #[arg(long)]
        wait: bool,
        /// Back up only what the newest backup chain does not hold.
        #[arg(long)]
        incremental: bool,
        /// Print the backup as JSON (docs/JSON.md).
        #[arg(long)]
        json: bool,
    },
    /// List backups, newest first (a failed backup's error and a backup's note under its row).
    List {
        /// Print JSON (one array) instead of a table.
        #[arg(long)]
        json: bool,
        /// Also list running, failed and incomplete backups, and each continuous segment (without,
        /// a run of segments is one line: the window it covers).
        #[arg(long)]
        all: bool,
    },
    /// Restore a backup into the EventStore (admins only). Shows which backup (`latest` resolved) and asks for its id on a terminal unless --yes.
    Restore {
        /// Backup id, a unique prefix of one (e.g. 20261206T16), or `latest`.
        id: String,
        /// Restore exactly the events with timestamps up to and including this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// Replace the events already in the store.
        #[arg(long)]
        drop_existing: bool,
        /// Write through the EventStore API (republishes every event on a real Monoskope bus).
        #[arg(long)]
        via_api: bool,
        /// Wait until the restore has ended, showing its progress (a spinner on a terminal, a line on stderr every 10 s otherwise), and print what to do next.
        #[arg(long)]
        wait: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// Have the service make every check a restore makes before writing and print the plan
        /// (the chain, the target and its events); write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the restore (or with --dry-run its plan) as JSON (docs/JSON.md).
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup into a scratch EventStore (never the live one) and check it against its
    /// archive and the live store; exit 1 unless everything matched. Admins and machine identities.
    Drill {
        /// Backup id, a unique prefix of one (e.g. 20261206T16), or `latest`.
        #[arg(default_value = "latest")]
        id: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one backup in full: its chain (what a restore of it reads), size, events and their
    /// time range, key, lock, location, and the copy destinations' state.
    Describe {
        /// Backup id, a unique prefix of one (e.g. 20261206T16), or `latest`.
        id: String,
        /// Print JSON (docs/JSON.md): {backup, chain, copies}.
        #[arg(long)]
        json: bool,
    },
    /// Show the last backup success and failure, the running backup or restore (with progress), the last restore and the health of peers.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Named contexts (server, token file, CA, timeout) in ~/.config/monoskope-backup/backupctl.yaml
    /// (or BACKUPCTL_CONFIG), as kubectl keeps its contexts.
    Context {
        #[command(subcommand)]
        command: ContextCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page of backupctl (roff) to stdout.
    Man,
}

fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    monoskope_backup_client::term::quiet_on_closed_pipe();
    // A check for deployment manifests (the Helm chart's tests): the arguments parse, nothing runs.
    if std::env::var_os("MBK_PARSE_ONLY").is_some() {
        println!("arguments ok: {:?}", cli.command);
        return ExitCode::SUCCESS;
    }
    // Generated from the CLI's own definition; no server needed.
    match &cli.command {
        Command::Completions { .. } | Command::Man => {
            let mut out = Vec::new();
            let made = match &cli.command {
                Command::Completions { shell } => {
                    clap_complete::generate(*shell, &mut Cli::command(), "backupctl", &mut out);
                    Ok(())
                }
                _ => clap_mangen::Man::new(Cli::command()).render(&mut out),
            };
            // A closed pipe (`| head`) ends the output quietly.
            return match made.and_then(|()| std::io::Write::write_all(&mut std::io::stdout(), &out))
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => fail(&e.to_string()),
            };
        }
        Command::Context { command } => {
            return match contexts(command, &cli, &matches) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("backupctl: error: {e}");
                    e.exit().into()
                }
            };
        }
        _ => {}
    }
    let target = match Target::of(&cli) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("backupctl: error: {e}");
            return e.exit().into();
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&e.to_string()),
    };
    let server = target.server.clone();
    match rt.block_on(run(cli, target)) {
        Ok(code) => code,
        Err(e) => {
            let e = e.explained(&server);
            eprintln!("backupctl: error: {e}");
            e.exit().into()
        }
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("backupctl: error: {msg}");
    ExitCode::from(1)
}

/// Where the service is and how to reach it: flags and environment, then the context, then the
/// defaults.
struct Target {
    server: String,
    token_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    timeout: std::time::Duration,
}

impl Target {
    fn of(cli: &Cli) -> Result<Self, ClientError> {
        let ctx = match context::path() {
            Some(p) => context::ContextFile::load(&p)?
                .pick(cli.context.as_deref())?
                .map(|(_, c)| c)
                .unwrap_or_default(),
            None if cli.context.is_some() => {
                return Err(ClientError::Usage(
                    "--context: no context file (set HOME or BACKUPCTL_CONFIG)".into(),
                ))
            }
            None => context::Context::default(),
        };
        let timeout = match (cli.timeout, &ctx.timeout) {
            (Some(t), _) => t,
            (None, Some(t)) => parse_timeout(t)
                .map_err(|e| ClientError::Usage(format!("the context's timeout: {e}")))?,
            (None, None) => monoskope_backup_client::DEFAULT_TIMEOUT,
        };
        Ok(Target {
            server: cli
                .server
                .clone()
                .or(ctx.server)
                .unwrap_or_else(|| "http://127.0.0.1:50051".into()),
            token_file: cli.token_file.clone().or(ctx.token_file),
            ca_file: cli.ca_file.clone().or(ctx.ca_file),
            timeout,
        })
    }
}

/// `backupctl context …`: read and write the context file; no server involved.
fn contexts(
    command: &ContextCommand,
    cli: &Cli,
    matches: &clap::ArgMatches,
) -> Result<(), ClientError> {
    let path = context::path().ok_or_else(|| {
        ClientError::Usage("no context file: set HOME or BACKUPCTL_CONFIG".into())
    })?;
    let mut file = context::ContextFile::load(&path)?;
    match command {
        ContextCommand::List => {
            if file.contexts.is_empty() {
                println!("no contexts in {}", path.display());
            }
            for (name, c) in &file.contexts {
                let mark = if file.current.as_deref() == Some(name) {
                    "*"
                } else {
                    " "
                };
                println!(
                    "{mark} {name:<16} {}{}",
                    c.server.as_deref().unwrap_or("-"),
                    c.token_file
                        .as_ref()
                        .map(|t| format!("  token {}", t.display()))
                        .unwrap_or_default()
                );
            }
            Ok(())
        }
        ContextCommand::Use { name } => {
            file.pick(Some(name))?;
            file.current = Some(name.clone());
            file.save(&path)?;
            println!("current context: {name}");
            Ok(())
        }
        ContextCommand::Set { name } => {
            // Only what is on this command line: a BACKUP_SERVER in the environment is not a
            // wish to store it.
            let given = |id: &str| {
                matches
                    .subcommand_matches("context")
                    .and_then(|m| m.subcommand_matches("set"))
                    .and_then(|m| m.value_source(id))
                    == Some(clap::parser::ValueSource::CommandLine)
            };
            let c = file.contexts.entry(name.clone()).or_default();
            if given("server") {
                c.server = cli.server.clone();
            }
            if given("token_file") {
                c.token_file = cli.token_file.clone();
            }
            if given("ca_file") {
                c.ca_file = cli.ca_file.clone();
            }
            if given("timeout") {
                c.timeout = cli
                    .timeout
                    .map(|t| humantime::format_duration(t).to_string());
            }
            if file.current.is_none() {
                file.current = Some(name.clone());
            }
            file.save(&path)?;
            println!("context {name} saved in {}", path.display());
            Ok(())
        }
    }
}

async fn run(cli: Cli, target: Target) -> Result<ExitCode, ClientError> {
    let mut opts = ClientOptions::new(target.server.clone());
    opts.timeout = Some(target.timeout);
    let opts = opts
        .with_ca_file(target.ca_file.clone())
        .with_token_from_env_or_file(target.token_file.as_deref())?;
    let mut client = BackupClient::connect(&opts).await?;
    match cli.command {
        Command::Create {
            wait,
            incremental,
            json,
        } => create::run(&mut client, wait, incremental, json).await,
        Command::List { json, all } => list::run(&mut client, json, all).await,
        Command::Restore {
            id,
            until,
            drop_existing,
            via_api,
            wait,
            yes,
            dry_run,
            json,
        } => {
            let flags = restore::Flags {
                json,
                drop_existing,
                via_api,
                wait,
                yes,
                dry_run,
            };
            restore::run(&mut client, id, until, flags).await
        }
        Command::Drill { id, json } => drill::run(&mut client, &id, json).await,
        Command::Describe { id, json } => describe::run(&mut client, &id, json).await,
        Command::Status { json } => status::run(&mut client, json).await,
        Command::Completions { .. } | Command::Man | Command::Context { .. } => {
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A timeout: a duration longer than zero, e.g. `30s` or `2m`.
fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    match humantime::parse_duration(s.trim()) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("a timeout must be longer than zero".into()),
        Err(e) => Err(format!("{s:?} is not a duration ({e}); use e.g. 30s, 2m")),
    }
}
