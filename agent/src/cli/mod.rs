//! The `stockade` command: asks the agent on this node, over its Unix
//! socket (or a remote agent over mutual TLS, with --endpoint), what it
//! sees and what it enforces, and sends it orders.
//!
//! The binary only parses [`Cli`] and calls [`run`]; everything else lives
//! here so that it is tested without an agent or root.

mod allow;
mod args;
mod commands;
mod contain;
mod json;
mod orders;
mod render;
mod table;
#[cfg(test)]
mod tests;

use std::{
    error::Error as _,
    io,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

pub use self::{
    allow::{format_allow_rule, parse_allow_rule, AllowSpecError},
    args::{Cli, Command, Output},
};

/// Why a command failed, worded to say what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("is stockade-agent running? socket {} not found", path.display())]
    SocketMissing { path: PathBuf },

    #[error("the socket is root-only: run as root ({} refused access)", path.display())]
    SocketForbidden { path: PathBuf },

    #[error("is stockade-agent running? nothing listens on socket {}", path.display())]
    SocketRefused { path: PathBuf },

    #[error("cannot reach the agent on socket {}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },

    #[error(
        "no answer from the agent within {}: is it stuck? --timeout waits longer",
        humanize(*timeout)
    )]
    NoAnswer { timeout: Duration },

    #[error("--endpoint needs {flag} as well: --ca, --cert and --key go with it")]
    RemoteFlag { flag: &'static str },

    #[error("cannot reach the agent over mutual TLS")]
    Remote {
        #[source]
        source: crate::access::tls::ConnectError,
    },

    // The status is not a `#[source]`: its message is already in this one.
    #[error("the agent answered {}: {}{}", code_name(status.code()), status.message(), broken_hint(status))]
    Rpc { status: tonic::Status },
}

/// A broken connection is reported by tonic as UNKNOWN or UNAVAILABLE: the
/// agent may have acted before it broke.
fn broken_hint(status: &tonic::Status) -> &'static str {
    match status.code() {
        tonic::Code::Unknown | tonic::Code::Unavailable => {
            " (the connection broke: the order may have been applied; \
             check `stockade isolations` or `stockade orders`)"
        }
        _ => "",
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::Rpc { status }
    }
}

impl Error {
    /// 2 when the order itself is wrong or cannot apply here, 1 otherwise.
    pub fn exit_code(&self) -> ExitCode {
        use tonic::Code;

        match self {
            Error::Rpc { status } => match status.code() {
                Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition => {
                    ExitCode::from(2)
                }
                _ => ExitCode::FAILURE,
            },
            _ => ExitCode::FAILURE,
        }
    }
}

/// Runs the command, prints its output or its error, and tells the exit code.
pub async fn run(cli: &Cli) -> ExitCode {
    match execute(cli).await {
        Ok(report) => {
            print!("{}", report.text);
            report.exit_code()
        }
        Err(err) => {
            eprintln!("stockade: {}", with_causes(&err));
            err.exit_code()
        }
    }
}

/// What a command prints, and whether it found a problem to report
/// through its exit code (as `doctor` does for missing features).
#[derive(Debug)]
pub struct Report {
    /// What goes to standard output.
    pub text: String,
    /// Exit with 1 although the agent answered.
    pub problem: bool,
}

impl Report {
    fn plain(text: String) -> Self {
        Report {
            text,
            problem: false,
        }
    }

    fn exit_code(&self) -> ExitCode {
        if self.problem {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    }
}

/// Connects to the agent and runs the command, without printing.
pub async fn execute(cli: &Cli) -> Result<Report, Error> {
    let remote = cli.remote().map_err(|flag| Error::RemoteFlag { flag })?;
    let channel = match remote {
        Some(remote) => crate::access::tls::connect(&remote, cli.timeout)
            .await
            .map_err(|source| Error::Remote { source })?,
        None => connect(&cli.socket, cli.timeout).await?,
    };
    let mut client = stockade_proto::v1::stockade_client::StockadeClient::new(channel);
    let result = commands::execute(&cli.command, &mut client, cli.output).await;
    result.map_err(|err| match err {
        Error::Rpc { status } if is_deadline(&status) => Error::NoAnswer {
            timeout: cli.timeout,
        },
        err => err,
    })
}

/// Whether the status is the client's own deadline firing: the agent's
/// statuses come off the wire and carry no source error.
fn is_deadline(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Cancelled && status.source().is_some()
}

fn humanize(duration: Duration) -> String {
    match duration.subsec_millis() {
        0 => format!("{}s", duration.as_secs()),
        _ => format!("{}ms", duration.as_millis()),
    }
}

async fn connect(path: &Path, timeout: Duration) -> Result<tonic::transport::Channel, Error> {
    crate::uds::connect(path, timeout).await.map_err(|source| {
        let kind = io_cause(&source).map(io::Error::kind);
        kind.and_then(|kind| socket_error(kind, path))
            .unwrap_or_else(|| Error::Connect {
                path: path.to_path_buf(),
                source,
            })
    })
}

/// The advice for a socket the system refused to connect to, if any.
fn socket_error(kind: io::ErrorKind, path: &Path) -> Option<Error> {
    let path = path.to_path_buf();
    match kind {
        io::ErrorKind::NotFound => Some(Error::SocketMissing { path }),
        io::ErrorKind::PermissionDenied => Some(Error::SocketForbidden { path }),
        io::ErrorKind::ConnectionRefused => Some(Error::SocketRefused { path }),
        _ => None,
    }
}

/// The operating system's error somewhere in the chain, if any.
fn io_cause<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut cause = Some(err);
    while let Some(err) = cause {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io);
        }
        cause = err.source();
    }
    None
}

/// `err: cause: cause`, as one line.
fn with_causes(err: &Error) -> String {
    let mut line = err.to_string();
    let mut cause = err.source();
    while let Some(err) = cause {
        line.push_str(&format!(": {err}"));
        cause = err.source();
    }
    line
}

/// The gRPC name of a status code, as in `NOT_FOUND`.
pub fn code_name(code: tonic::Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}
