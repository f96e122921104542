//! The mutual-TLS listener: the agent presents its certificate, and only a
//! client whose certificate chains to the configured CA gets past the
//! handshake. Certificates, key, CA and access configuration are reloaded
//! when their files change; connections already open keep the
//! configuration they were made with.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, Semaphore},
};
use tokio_rustls::{
    rustls::{self, server::WebPkiClientVerifier, RootCertStore, ServerConfig},
    server::TlsStream,
    TlsAcceptor,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::Routes;
use tracing::{debug, info, warn};

use super::{
    audit::{AuditLog, Entry},
    authz::{AccessConfig, AccessError, AuthzLayer},
    reload::Watched,
};
use crate::agent::error_chain;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; the listener waits beyond that.
const MAX_HANDSHAKES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    // The PEM parser's own error is left out: it may quote a line of the
    // key file.
    #[error("{} holds no usable PEM private key", path.display())]
    NoKey { path: PathBuf },
    #[error("the CA certificates in {} cannot verify clients", path.display())]
    ClientCa {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    #[error("the key {} does not fit the certificate {}", key.display(), cert.display())]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("the TLS library refused the configuration")]
    Config {
        #[source]
        source: rustls::Error,
    },
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// The files of the listener's TLS configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The agent's certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// The agent's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA certificates that sign client certificates, PEM.
    pub client_ca: PathBuf,
}

impl TlsFiles {
    fn paths(&self) -> Vec<PathBuf> {
        vec![self.cert.clone(), self.key.clone(), self.client_ca.clone()]
    }
}

/// Builds the server configuration: TLS 1.3 only, HTTP/2, and a client
/// certificate signed by the client CA required.
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = Arc::new(client_roots(&files.client_ca)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|source| TlsError::ClientCa {
            path: files.client_ca.clone(),
            source,
        })?;
    let chain = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;

    let mismatch = |source| TlsError::KeyMismatch {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Config { source })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(mismatch)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Every certificate of a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::NoKey {
        path: path.to_path_buf(),
    })
}

fn client_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    // Unusable entries are skipped; an empty store fails in the verifier.
    roots.add_parsable_certificates(read_certs(path)?);
    Ok(roots)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Everything the listener needs, loaded and ready to serve.
pub struct Remote {
    pub listener: TcpListener,
    pub tls: Arc<Watched<ServerConfig>>,
    pub access: Arc<Watched<AccessConfig>>,
    pub audit: Arc<AuditLog>,
    /// How often the files are checked for changes.
    pub reload_every: Duration,
    files: TlsFiles,
    access_file: PathBuf,
}

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Access(#[from] AccessError),
}

impl Remote {
    /// Loads the TLS files and the access configuration and binds `addr`.
    pub async fn bind(
        addr: SocketAddr,
        files: TlsFiles,
        access_file: PathBuf,
        audit: Arc<AuditLog>,
        reload_every: Duration,
    ) -> Result<Self, RemoteError> {
        let tls = Watched::load(files.paths(), || server_config(&files))?;
        let access = Watched::load(vec![access_file.clone()], || {
            AccessConfig::load(&access_file)
        })?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| TlsError::Bind { addr, source })?;
        Ok(Self {
            listener,
            tls: Arc::new(tls),
            access: Arc::new(access),
            audit,
            reload_every,
            files,
            access_file,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `routes` behind [`AuthzLayer`] until `shutdown` completes.
    pub async fn serve(
        self,
        routes: Routes,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let (tx, rx) = mpsc::channel(MAX_HANDSHAKES);
        let reloader = tokio::spawn(reload_loop(
            self.tls.clone(),
            self.access.clone(),
            self.files.clone(),
            self.access_file.clone(),
            self.reload_every,
        ));
        let acceptor = tokio::spawn(accept_loop(
            self.listener,
            self.tls.clone(),
            self.audit.clone(),
            tx,
        ));

        let result = tonic::transport::Server::builder()
            .layer(AuthzLayer::new(self.access.clone(), self.audit.clone()))
            .add_routes(routes)
            .serve_with_incoming_shutdown(ReceiverStream::new(rx), shutdown)
            .await;
        acceptor.abort();
        reloader.abort();
        result
    }
}

type Accepted = Result<TlsStream<TcpStream>, io::Error>;

/// Accepts TCP connections and runs each handshake in its own task, with
/// the configuration in force when the connection came; failed handshakes
/// are audited. Ends when the server stops taking connections.
async fn accept_loop(
    listener: TcpListener,
    tls: Arc<Watched<ServerConfig>>,
    audit: Arc<AuditLog>,
    tx: mpsc::Sender<Accepted>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = tokio::select! {
            _ = tx.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: wait instead of spinning.
                    warn!(error = %e, "cannot accept a TCP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = TlsAcceptor::from(tls.current());
        let (tx, audit) = (tx.clone(), audit.clone());
        tokio::spawn(async move {
            let _slot = slot;
            match handshake(acceptor, tcp).await {
                Ok(stream) => {
                    let _ = tx.send(Ok(stream)).await;
                }
                Err(reason) => refused_connection(&audit, peer, reason),
            }
        });
    }
}

async fn handshake(acceptor: TlsAcceptor, tcp: TcpStream) -> Result<TlsStream<TcpStream>, String> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
        Err(_) => Err(format!(
            "no TLS handshake within {}s",
            HANDSHAKE_TIMEOUT.as_secs()
        )),
    }
}

/// Known shortcoming: every failed handshake is one audit line, so a port
/// scan of the listener writes as many lines as it makes connections.
fn refused_connection(audit: &AuditLog, peer: SocketAddr, reason: String) {
    debug!(peer = %peer, reason, "connection refused");
    let status = tonic::Status::unauthenticated(reason);
    let mut entry = Entry::new("unauthenticated", "connect");
    entry.peer = Some(peer.to_string());
    audit.write(&entry.with_result(false, Some(&status)));
}

async fn reload_loop(
    tls: Arc<Watched<ServerConfig>>,
    access: Arc<Watched<AccessConfig>>,
    files: TlsFiles,
    access_file: PathBuf,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match tls.reload_if_changed(|| server_config(&files)) {
            Some(Ok(())) => info!(cert = %files.cert.display(), "reloaded the TLS files"),
            Some(Err(e)) => warn!(error = %error_chain(&e), "kept the TLS files in force"),
            None => {}
        }
        match access.reload_if_changed(|| AccessConfig::load(&access_file)) {
            Some(Ok(())) => info!(
                path = %access_file.display(),
                identities = access.current().len(),
                "reloaded the access configuration"
            ),
            Some(Err(e)) => {
                warn!(error = %error_chain(&e), "kept the access configuration in force")
            }
            None => {}
        }
    }
}

/// What a client needs to reach an agent's listener.
#[derive(Clone, Debug)]
pub struct ClientTls {
    /// `https://HOST:PORT`.
    pub endpoint: String,
    /// The CA that signed the agent's certificate.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The name to expect in the agent's certificate, when it differs from
    /// the endpoint's host.
    pub server_name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Files(#[from] TlsError),
    #[error("cannot reach the agent at {endpoint}")]
    Transport {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Opens a gRPC channel to an agent's mutual-TLS listener. `timeout`
/// bounds the connection and every request on it.
pub async fn connect(
    client: &ClientTls,
    timeout: Duration,
) -> Result<tonic::transport::Channel, ConnectError> {
    let ca = read(&client.ca)?;
    let cert = read(&client.cert)?;
    let key = read(&client.key)?;
    let mut config = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .identity(tonic::transport::Identity::from_pem(cert, key));
    if let Some(name) = &client.server_name {
        config = config.domain_name(name.clone());
    }
    let transport = |source| ConnectError::Transport {
        endpoint: client.endpoint.clone(),
        source,
    };
    tonic::transport::Endpoint::from_shared(client.endpoint.clone())
        .map_err(transport)?
        .tls_config(config)
        .map_err(transport)?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .map_err(transport)
}
