//! gRPC over a Unix socket, for the CLI and the container runtime client.

use std::{path::Path, time::Duration};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

/// Opens a gRPC channel to the server listening on the Unix socket at
/// `path`. `timeout` bounds the connection and every request on it.
pub async fn connect(path: &Path, timeout: Duration) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_owned();
    // The URI is required by tonic but unused: the connector ignores it.
    Endpoint::from_static("http://localhost")
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
}
