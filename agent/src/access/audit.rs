//! The audit log: one JSON line per order and per refusal, appended to a
//! file opened with `O_APPEND`, so that concurrent writers never overwrite
//! each other and the agent never rewrites what it wrote.
//!
//! A line holds who asked, what, about which pod, and what came of it:
//! never a certificate, a key or a request body.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::Mutex,
};

use serde::Serialize;
use tonic::Code;
use tracing::warn;

/// Free text from a request is cut to this many characters in a line.
const MAX_FIELD: usize = 300;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open the audit log {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What came of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The order was carried out.
    Done,
    /// A dry run passed every check; nothing was done.
    DryRun,
    /// The agent would not act: authentication, role, validation or guard.
    Refused,
    /// The agent tried, or could not find the target.
    Failed,
}

impl Outcome {
    /// The outcome a gRPC status code stands for.
    pub fn of(code: Code, dry_run: bool) -> Self {
        match code {
            Code::Ok if dry_run => Self::DryRun,
            Code::Ok => Self::Done,
            Code::Unauthenticated
            | Code::PermissionDenied
            | Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::ResourceExhausted
            | Code::AlreadyExists
            | Code::OutOfRange => Self::Refused,
            _ => Self::Failed,
        }
    }
}

/// One line of the log.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    /// RFC 3339, UTC.
    pub time: String,
    /// `local:root` for the Unix socket, the certificate's identity for a
    /// remote client, `unauthenticated` when none was established.
    pub caller: String,
    /// The remote address, for TCP clients.
    pub peer: Option<String>,
    pub order_id: Option<String>,
    /// `isolate`, `release`, ... for orders; the gRPC method or `connect`
    /// for refusals before any order was read.
    pub action: String,
    /// The pod as the request named it: `namespace/name` or `uid ...`.
    pub target: Option<String>,
    pub dry_run: bool,
    pub result: Outcome,
    /// The gRPC status code name, `OK` on success.
    pub code: String,
    /// Why it was refused or failed.
    pub reason: Option<String>,
}

impl Entry {
    /// An entry stamped now, for `caller` doing `action`.
    pub fn new(caller: impl Into<String>, action: impl Into<String>) -> Self {
        Self {
            time: now_rfc3339(),
            caller: cut(&caller.into()),
            peer: None,
            order_id: None,
            action: cut(&action.into()),
            target: None,
            dry_run: false,
            result: Outcome::Done,
            code: "OK".into(),
            reason: None,
        }
    }

    /// Sets the result, code and reason from a gRPC status (`None` for
    /// success).
    pub fn with_result(mut self, dry_run: bool, status: Option<&tonic::Status>) -> Self {
        let code = status.map_or(Code::Ok, tonic::Status::code);
        self.dry_run = dry_run;
        self.result = Outcome::of(code, self.dry_run);
        self.code = crate::cli::code_name(code);
        self.reason = status.map(|s| cut(s.message()));
        self
    }

    pub fn with_target(mut self, target: Option<String>) -> Self {
        self.target = target.map(|t| cut(&t));
        self
    }
}

enum Sink {
    File { file: File, path: PathBuf },
    Stderr,
}

/// Where audit lines go.
pub struct AuditLog {
    sink: Mutex<Sink>,
}

impl AuditLog {
    /// Appends to `path`, creating it with mode 0600.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| AuditError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let path = path.to_path_buf();
        Ok(Self {
            sink: Mutex::new(Sink::File { file, path }),
        })
    }

    /// Writes lines to standard error, beside the logs, when no file is
    /// configured.
    pub fn stderr() -> Self {
        Self {
            sink: Mutex::new(Sink::Stderr),
        }
    }

    /// Where lines go, for the start-up banner.
    pub fn describe(&self) -> String {
        match &*self.lock() {
            Sink::File { path, .. } => path.display().to_string(),
            Sink::Stderr => "stderr".into(),
        }
    }

    /// Appends one line. A failed write is logged and the order goes on:
    /// containment matters more than its record.
    pub fn write(&self, entry: &Entry) {
        let mut line = match serde_json::to_vec(entry) {
            Ok(line) => line,
            Err(e) => return warn!(error = %e, "cannot encode an audit line"),
        };
        line.push(b'\n');
        // One write call per line: with O_APPEND the kernel places it whole
        // at the end of the file.
        let result = match &mut *self.lock() {
            Sink::File { file, .. } => file.write_all(&line),
            Sink::Stderr => io::stderr().lock().write_all(&line),
        };
        if let Err(e) = result {
            warn!(error = %e, "cannot write to the audit log");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sink> {
        self.sink.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Untrusted text, cut to [`MAX_FIELD`] characters; JSON encoding takes
/// care of quotes and control characters.
fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_FIELD) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn lines_are_appended_as_json_and_never_truncate_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        fs::write(&path, "earlier line\n").unwrap();

        let log = AuditLog::open(&path).unwrap();
        let status = tonic::Status::permission_denied("reader may not isolate");
        log.write(&Entry::new("spiffe://x/reader", "isolate").with_result(false, Some(&status)));
        drop(log);
        let log = AuditLog::open(&path).unwrap();
        log.write(&Entry::new("local:root", "release").with_result(false, None));

        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "earlier line");
        let first: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(first["result"], "refused");
        assert_eq!(first["code"], "PERMISSION_DENIED");
        assert_eq!(first["reason"], "reader may not isolate");
        let second: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
        assert_eq!(
            (second["result"].as_str(), second["code"].as_str()),
            (Some("done"), Some("OK"))
        );
        assert!(second["time"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn the_file_is_private_to_root() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        AuditLog::open(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn hostile_text_stays_on_one_line_and_is_cut() {
        let entry =
            Entry::new("x", "isolate").with_target(Some(format!("a\nb{}", "c".repeat(500))));
        let line = serde_json::to_string(&entry).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(entry.target.unwrap().chars().count(), MAX_FIELD + 1);
    }

    #[test]
    fn dry_runs_and_failures_are_told_apart() {
        assert_eq!(Outcome::of(Code::Ok, true), Outcome::DryRun);
        assert_eq!(Outcome::of(Code::NotFound, false), Outcome::Failed);
        assert_eq!(Outcome::of(Code::Internal, true), Outcome::Failed);
        assert_eq!(
            Outcome::of(Code::ResourceExhausted, false),
            Outcome::Refused
        );
    }
}
