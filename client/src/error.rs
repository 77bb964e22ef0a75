//! Why a call failed, as the caller must decide: the error kinds, their exit codes, the one line
//! that shows them, and what to do when the wrong thing is at the server's address.

use tonic::{Code, Status};

use crate::exit;

/// Why a call failed, by what the caller must decide.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server could not be reached or configured.
    #[error("cannot connect to {server}: {message}")]
    Connect {
        /// Server URL.
        server: String,
        /// Why.
        message: String,
    },
    /// The token is missing, malformed, expired or not accepted.
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
    /// The token is valid but lacks the right for this call.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The server refused the request as things stand (`FAILED_PRECONDITION`): the store holds
    /// events and `drop_existing` was not given, the restore needs `via_api`… The message says
    /// which and what to do; nothing was written.
    #[error("refused: {0}")]
    Refused(String),
    /// Another backup or restore runs (`FAILED_PRECONDITION`, reason `busy`); try again later.
    #[error("busy: {0}")]
    Busy(String),
    /// The service has no key that a backup needs (`FAILED_PRECONDITION`, reason
    /// `key-missing`).
    #[error("key missing: {0}")]
    KeyMissing(String),
    /// The service's keys do not open the backup (`FAILED_PRECONDITION`, reason `key-wrong`).
    #[error("wrong key: {0}")]
    KeyWrong(String),
    /// Bad arguments, or a confirmation that could not be asked; nothing was sent.
    #[error("{0}")]
    Usage(String),
    /// The backup does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The backup is damaged or does not match its manifest (`DATA_LOSS`); nothing of it was
    /// written.
    #[error("damaged backup: {0}")]
    DataLoss(String),
    /// The request is malformed.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// The server or one of its peers is unavailable (retry later).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The server does not offer this call.
    #[error("not supported by the server: {0}")]
    Unimplemented(String),
    /// The call ran out of time.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// Any other status.
    #[error("{code:?}: {message}")]
    Other {
        /// gRPC code.
        code: Code,
        /// Message.
        message: String,
    },
    /// A local problem (token file, ...).
    #[error("{0}")]
    Local(String),
}

/// One line for an error and its causes, each after a colon, leaving out a cause whose text the
/// line already holds (transport errors repeat theirs: "tcp connect error: tcp connect error").
pub fn error_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    add_causes(&mut line, e.source());
    line
}

/// A gRPC status in one line: its code, its message and, for a call that never reached the
/// server, the transport's causes (`Unavailable: tcp connect error: Connection refused (os error
/// 111)`), where the status's own `Display` prints debug structures.
pub fn status_line(s: &Status) -> String {
    format!("{:?}: {}", s.code(), status_message(s))
}

/// The status's message and the transport's causes, as in [`status_line`].
fn status_message(s: &Status) -> String {
    let mut m = s.message().to_string();
    add_causes(&mut m, std::error::Error::source(s));
    m
}

fn add_causes(line: &mut String, mut cause: Option<&(dyn std::error::Error + 'static)>) {
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
}

impl ClientError {
    /// The error with what to do when it says the wrong thing is at `server`: nothing listening,
    /// another gRPC service, a server that does not speak gRPC, TLS on one side only.
    pub fn explained(self, server: &str) -> Self {
        let connect = |message: String| ClientError::Connect {
            server: server.to_string(),
            message,
        };
        match self {
            ClientError::Connect { message, .. } if message.contains("Connection refused") => {
                connect(format!(
                    "{message} — is `backup-server serve` running there? Set --server or BACKUP_SERVER to its address"
                ))
            }
            ClientError::Connect { message, .. }
                if message.contains("InvalidContentType") || message.contains("corrupt message") =>
            {
                connect(format!(
                    "the server does not speak TLS ({message}): use http://, or give the service --tls-cert"
                ))
            }
            ClientError::Unimplemented(m) if m.contains("grpc-status header missing") => {
                connect(format!(
                    "the server answered plain HTTP, not gRPC ({m}): is --server the BackupService's gRPC port (not its metrics port)?"
                ))
            }
            ClientError::Unimplemented(m) => connect(format!(
                "the server does not offer monoskope.backup.v1.BackupService (it answered UNIMPLEMENTED{}): is --server (BACKUP_SERVER) the BackupService's gRPC address, not another service's?",
                if m.is_empty() { String::new() } else { format!(": {m}") }
            )),
            // A TLS server read as plaintext answers with bytes that are no HTTP/2 frame, or
            // closes the stream: which of the two comes first is a race.
            ClientError::Other { code, message }
                if matches!(code, Code::Internal | Code::Unknown | Code::Cancelled)
                    && (message.contains("frame with invalid size")
                        || message.contains("h2 protocol error")
                        || message.contains("transport error")) =>
            {
                connect(if server.starts_with("http://") {
                    format!(
                        "the server does not speak plaintext gRPC ({message}): if it serves TLS, use https:// (and --ca-file); else check that --server is the BackupService's gRPC port"
                    )
                } else {
                    format!(
                        "the server does not speak gRPC over HTTP/2 ({message}): is --server the BackupService's gRPC port?"
                    )
                })
            }
            other => other,
        }
    }

    /// The exit code this error ends a command with.
    pub fn exit(&self) -> exit::Exit {
        use exit::Exit;
        match self {
            ClientError::Connect { .. }
            | ClientError::Unavailable(_)
            | ClientError::DeadlineExceeded(_) => Exit::Unreachable,
            ClientError::Unauthenticated(_) | ClientError::PermissionDenied(_) => Exit::NotAllowed,
            ClientError::Busy(_) => Exit::Busy,
            ClientError::KeyMissing(_) => Exit::KeyMissing,
            ClientError::KeyWrong(_) => Exit::KeyWrong,
            ClientError::DataLoss(_) => Exit::Damaged,
            ClientError::NotFound(_) => Exit::NotFound,
            ClientError::Usage(_) | ClientError::InvalidArgument(_) => Exit::Usage,
            ClientError::Refused(_)
            | ClientError::Unimplemented(_)
            | ClientError::Other { .. }
            | ClientError::Local(_) => Exit::Failed,
        }
    }
}

impl From<Status> for ClientError {
    fn from(s: Status) -> Self {
        let m = status_message(&s);
        match s.code() {
            Code::Unauthenticated => ClientError::Unauthenticated(m),
            Code::PermissionDenied => ClientError::PermissionDenied(m),
            Code::FailedPrecondition => match s
                .metadata()
                .get(exit::REASON)
                .and_then(|v| v.to_str().ok())
                .and_then(exit::Exit::named)
            {
                Some(exit::Exit::Busy) => ClientError::Busy(m),
                Some(exit::Exit::KeyMissing) => ClientError::KeyMissing(m),
                Some(exit::Exit::KeyWrong) => ClientError::KeyWrong(m),
                _ => ClientError::Refused(m),
            },
            Code::NotFound => ClientError::NotFound(m),
            Code::InvalidArgument => ClientError::InvalidArgument(m),
            Code::Unavailable => ClientError::Unavailable(m),
            Code::Unimplemented => ClientError::Unimplemented(m),
            Code::DeadlineExceeded => ClientError::DeadlineExceeded(m),
            Code::DataLoss => ClientError::DataLoss(m),
            code => ClientError::Other { code, message: m },
        }
    }
}
