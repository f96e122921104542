//! Serving the API on the node-local Unix socket (root only).

use std::{
    fs,
    os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt},
    path::Path,
};

use tokio::net::{UnixListener, UnixStream};
use tokio_stream::{wrappers::UnixListenerStream, Stream, StreamExt};
use tracing::warn;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot prepare the socket folder {path}")]
    SocketDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: String },
    #[error("another agent is already serving on {path}")]
    InUse { path: String },
    #[error("cannot listen on {path}")]
    Bind {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Binds `path` with mode 0600 in a folder of mode 0700, replacing a stale
/// socket left by a dead agent, and yields only connections from root.
pub async fn bind_root_only(
    path: &Path,
) -> Result<impl Stream<Item = std::io::Result<UnixStream>>, ServerError> {
    let shown = path.display().to_string();
    if let Some(dir) = path.parent() {
        make_private_dir(dir).map_err(|source| ServerError::SocketDir {
            path: shown.clone(),
            source,
        })?;
    }
    if let Ok(meta) = fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ServerError::NotASocket { path: shown });
        }
        if UnixStream::connect(path).await.is_ok() {
            return Err(ServerError::InUse { path: shown });
        }
        let _ = fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|source| ServerError::Bind {
        path: shown.clone(),
        source,
    })?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|source| {
        ServerError::Bind {
            path: shown,
            source,
        }
    })?;

    Ok(UnixListenerStream::new(listener).filter(|conn| match conn {
        Ok(stream) => is_root(stream),
        Err(_) => true,
    }))
}

/// Creates the socket's folder with mode 0700 when it is missing. An
/// existing folder is left as it is: it may be shared (like /tmp), and the
/// socket's own mode 0600 and the peer check keep other users out.
fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// The file mode is the first gate; the peer's credentials are the second.
fn is_root(stream: &UnixStream) -> bool {
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == 0 => true,
        Ok(cred) => {
            warn!(peer.uid = cred.uid(), peer.pid = ?cred.pid(), "refused a non-root client");
            false
        }
        Err(e) => {
            warn!(error = %e, "refused a client whose credentials cannot be read");
            false
        }
    }
}
