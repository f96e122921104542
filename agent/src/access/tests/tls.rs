//! The mutual-TLS listener end to end, on 127.0.0.1, with throw-away
//! certificates and an agent over a fake cgroup tree.

use std::{
    fs,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use stockade_proto::v1::{
    self, pod_selector::Target, stockade_client::StockadeClient, PodName, PodSelector,
};
use tokio::{sync::oneshot, task::JoinHandle};
use tokio_rustls::rustls;
use tonic::{service::Routes, transport::Channel, Code};

use super::pki::{ClientFiles, Pki, Signer};
use crate::{
    access::{
        audit::AuditLog,
        guards::{GuardConfig, Guards},
        stockade_server,
        tls::{self, ClientTls, Remote, TlsFiles},
        Gate,
    },
    agent::{Agent, Settings},
    api::Service,
};

const POD_UID: &str = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";
const ABSENT_UID: &str = "11111111-2222-4333-8444-555555555555";

const ACCESS: &str = r#"
[identities]
"spiffe://test/ns/soc/sa/reader" = "reader"
"spiffe://test/ns/soc/sa/isolator" = "isolator"
"responder.soc.test" = "responder"
"#;

/// An agent serving the API on a mutual-TLS listener on 127.0.0.1.
struct Harness {
    pki: Pki,
    addr: SocketAddr,
    audit: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    _cgroup: tempfile::TempDir,
}

impl Harness {
    async fn start() -> Self {
        let pki = Pki::new();
        pki.write_agent(1);
        fs::write(pki.path("access.toml"), ACCESS).unwrap();
        let cgroup = tempfile::tempdir().unwrap();
        let pod_dir = cgroup
            .path()
            .join(format!("kubepods/besteffort/pod{POD_UID}"));
        fs::create_dir_all(pod_dir).unwrap();

        let audit = pki.path("audit.log");
        let audit_log = Arc::new(AuditLog::open(&audit).unwrap());
        let service = service(cgroup.path().into(), pki.path("pins"), audit_log.clone()).await;
        let files = TlsFiles {
            cert: pki.path("agent.pem"),
            key: pki.path("agent.key"),
            client_ca: pki.ca(),
        };
        let reload = Duration::from_millis(100);
        let localhost: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let remote = Remote::bind(localhost, files, pki.path("access.toml"), audit_log, reload);
        let remote = remote.await.unwrap();
        let addr = remote.local_addr().unwrap();

        let (stop, stopped) = oneshot::channel::<()>();
        let routes = Routes::new(stockade_server(service));
        let server = tokio::spawn(remote.serve(routes, async {
            let _ = stopped.await;
        }));
        Self {
            pki,
            addr,
            audit,
            stop: Some(stop),
            server: Some(server),
            _cgroup: cgroup,
        }
    }

    fn client_tls(&self, files: &ClientFiles) -> ClientTls {
        ClientTls {
            endpoint: format!("https://{}", self.addr),
            ca: self.pki.ca(),
            cert: files.cert.clone(),
            key: files.key.clone(),
            server_name: None,
        }
    }

    /// A client holding a certificate of ours for `san`.
    async fn client(&self, san: &str) -> StockadeClient<Channel> {
        let name = san.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        let files = self.pki.client(&name, san, Signer::Ours, false);
        let tls = self.client_tls(&files);
        let channel = tls::connect(&tls, Duration::from_secs(5)).await;
        StockadeClient::new(channel.unwrap())
    }

    /// Waits for an audit line holding every one of `needles`.
    async fn audited(&self, needles: &[&str]) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = fs::read_to_string(&self.audit).unwrap_or_default();
            let found = text.lines().find(|l| needles.iter().all(|n| l.contains(n)));
            if let Some(line) = found {
                return serde_json::from_str(line).unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "no audit line with {needles:?} in:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }
}

async fn service(cgroup_root: PathBuf, pins: PathBuf, audit: Arc<AuditLog>) -> Service {
    let settings = Settings {
        node_name: "test-node".into(),
        pin_root: pins.clone(),
        cri_socket: None,
        cri_timeout: Duration::from_secs(1),
        cgroup_root: Some(cgroup_root),
        containment: Default::default(),
        state_dir: pins.with_extension("state"),
    };
    let agent = tokio::task::spawn_blocking(move || Agent::start(settings, None));
    let agent = Arc::new(agent.await.unwrap().unwrap());
    let guards = Guards::new(GuardConfig::default());
    Service::new(agent).with_gate(Arc::new(Gate::new(guards, audit)))
}

fn by_uid(uid: &str) -> Option<PodSelector> {
    Some(PodSelector {
        target: Some(Target::Uid(uid.into())),
    })
}

fn isolate(uid: &str) -> v1::IsolateRequest {
    v1::IsolateRequest {
        pod: by_uid(uid),
        reason: "test".into(),
        ..v1::IsolateRequest::default()
    }
}

/// A client with `files` must not get an answer.
async fn refused(harness: &Harness, files: &ClientFiles) {
    let tls = harness.client_tls(files);
    let reply = match tls::connect(&tls, Duration::from_secs(5)).await {
        Ok(channel) => {
            StockadeClient::new(channel)
                .get_info(v1::GetInfoRequest {})
                .await
        }
        Err(_) => return,
    };
    let status = reply.expect_err("a refused client got an answer");
    assert_ne!(status.code(), Code::Ok);
}

#[tokio::test]
async fn a_client_without_a_certificate_fails_the_handshake_and_is_audited() {
    let harness = Harness::start().await;
    let config = tonic::transport::ClientTlsConfig::new().ca_certificate(
        tonic::transport::Certificate::from_pem(fs::read(harness.pki.ca()).unwrap()),
    );
    let endpoint = Channel::from_shared(format!("https://{}", harness.addr)).unwrap();
    let reply = match endpoint.tls_config(config).unwrap().connect().await {
        Ok(channel) => {
            StockadeClient::new(channel)
                .get_info(v1::GetInfoRequest {})
                .await
        }
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
    };

    assert!(reply.is_err());
    let line = harness.audited(&["\"connect\"", "no certificates"]).await;
    assert_eq!(line["caller"], "unauthenticated");
    assert_eq!(line["result"], "refused");
    harness.stop().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_and_audited() {
    let harness = Harness::start().await;
    let rogue = harness
        .pki
        .client("rogue", "responder.soc.test", Signer::Other, false);

    refused(&harness, &rogue).await;

    harness.audited(&["\"connect\"", "UnknownIssuer"]).await;
    harness.stop().await;
}

#[tokio::test]
async fn an_expired_certificate_is_refused_and_audited() {
    let harness = Harness::start().await;
    let expired = harness
        .pki
        .client("expired", "responder.soc.test", Signer::Ours, true);

    refused(&harness, &expired).await;

    harness.audited(&["\"connect\"", "expired"]).await;
    harness.stop().await;
}

#[tokio::test]
async fn an_unknown_identity_is_unauthenticated_and_audited() {
    let harness = Harness::start().await;
    let mut stranger = harness.client("spiffe://test/ns/other/sa/stranger").await;

    let status = stranger.get_info(v1::GetInfoRequest {}).await.unwrap_err();

    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("not in the access configuration"));
    let line = harness.audited(&["stranger", "UNAUTHENTICATED"]).await;
    assert_eq!(line["caller"], "spiffe://test/ns/other/sa/stranger");
    assert_eq!(line["action"], "/stockade.v1.Stockade/GetInfo");
    assert!(line["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    harness.stop().await;
}

#[tokio::test]
async fn a_reader_reads_but_cannot_isolate() {
    let harness = Harness::start().await;
    let mut reader = harness.client("spiffe://test/ns/soc/sa/reader").await;

    let info = reader.get_info(v1::GetInfoRequest {}).await.unwrap();
    let pods = reader.list_pods(v1::ListPodsRequest {}).await.unwrap();
    let status = reader.isolate(isolate(POD_UID)).await.unwrap_err();

    assert_eq!(info.into_inner().node_name, "test-node");
    assert_eq!(pods.into_inner().pods.len(), 1);
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "spiffe://test/ns/soc/sa/reader has role reader; \
         /stockade.v1.Stockade/Isolate needs isolator"
    );
    harness
        .audited(&["sa/reader", "PERMISSION_DENIED", "needs isolator"])
        .await;
    harness.stop().await;
}

#[tokio::test]
async fn an_isolator_gets_past_authorization_for_isolate_but_not_for_freeze() {
    let harness = Harness::start().await;
    let mut isolator = harness.client("spiffe://test/ns/soc/sa/isolator").await;

    let absent = isolator.isolate(isolate(ABSENT_UID)).await.unwrap_err();
    let freeze = v1::FreezeRequest {
        pod: by_uid(POD_UID),
        reason: "test".into(),
        ..v1::FreezeRequest::default()
    };
    let frozen = isolator.freeze(freeze).await.unwrap_err();

    assert_eq!(absent.code(), Code::NotFound, "{absent:?}");
    let line = harness
        .audited(&["sa/isolator", "\"isolate\"", ABSENT_UID])
        .await;
    assert_eq!(line["code"], "NOT_FOUND");
    assert_eq!(frozen.code(), Code::PermissionDenied);
    assert!(frozen.message().ends_with("Freeze needs responder"));
    harness.stop().await;
}

#[tokio::test]
async fn certificates_rotate_without_a_restart() {
    let harness = Harness::start().await;
    let files = harness
        .pki
        .client("responder", "responder.soc.test", Signer::Ours, false);
    let mut connected = harness.client("responder.soc.test").await;
    connected.get_info(v1::GetInfoRequest {}).await.unwrap();
    assert_eq!(served_serial(&harness, &files).await, "1");

    harness.pki.write_agent(2);
    let deadline = Instant::now() + Duration::from_secs(5);
    while served_serial(&harness, &files).await != "2" {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    connected.get_info(v1::GetInfoRequest {}).await.unwrap();
    let mut fresh = harness.client("responder.soc.test").await;
    fresh.get_info(v1::GetInfoRequest {}).await.unwrap();
    harness.stop().await;
}

/// The serial number of the certificate the listener presents now.
async fn served_serial(harness: &Harness, client: &ClientFiles) -> String {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(tls::read_certs(&harness.pki.ca()).unwrap());
    let chain = tls::read_certs(&client.cert).unwrap();
    let key = rustls_pki_types::pem::PemObject::from_pem_file(&client.key).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(harness.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let stream = connector.connect(name, tcp).await.unwrap();
    let served = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, cert) = <x509_parser::certificate::X509Certificate as x509_parser::prelude::FromDer<
        '_,
        _,
    >>::from_der(&served)
    .unwrap();
    cert.serial.to_string()
}

#[tokio::test]
async fn the_access_configuration_reloads_without_a_restart() {
    let harness = Harness::start().await;
    let mut reader = harness.client("spiffe://test/ns/soc/sa/reader").await;
    let denied = reader.isolate(isolate(ABSENT_UID)).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    let promoted = ACCESS.replace("reader\" = \"reader\"", "reader\" = \"isolator\"");
    fs::write(harness.pki.path("access.toml.next"), promoted).unwrap();
    fs::rename(
        harness.pki.path("access.toml.next"),
        harness.pki.path("access.toml"),
    )
    .unwrap();

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = reader.isolate(isolate(ABSENT_UID)).await.unwrap_err();
        if status.code() == Code::NotFound {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new role never applied: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    harness.stop().await;
}

#[tokio::test]
async fn hostile_inputs_are_refused_naming_the_field() {
    let harness = Harness::start().await;
    let mut responder = harness.client("responder.soc.test").await;
    let by_name = |namespace: &str, name: &str| {
        Some(PodSelector {
            target: Some(Target::Name(PodName {
                namespace: namespace.into(),
                name: name.into(),
            })),
        })
    };
    let rule = |cidr: &str| v1::AllowRule {
        cidr: cidr.into(),
        ..v1::AllowRule::default()
    };
    let cases = [
        (
            "pod.name.namespace",
            v1::IsolateRequest {
                pod: by_name("../../etc", "web"),
                ..isolate(POD_UID)
            },
        ),
        (
            "pod.name.name",
            v1::IsolateRequest {
                pod: by_name("shop", &"a".repeat(300)),
                ..isolate(POD_UID)
            },
        ),
        ("pod.uid", isolate("not-a-uuid")),
        ("pod.uid", isolate(&"a".repeat(10_000))),
        (
            "allow[0].cidr",
            v1::IsolateRequest {
                allow: vec![rule("10.0.0.0/33")],
                ..isolate(POD_UID)
            },
        ),
        (
            "allow",
            v1::IsolateRequest {
                allow: vec![rule("10.0.0.1"); 17],
                ..isolate(POD_UID)
            },
        ),
        (
            "reason",
            v1::IsolateRequest {
                reason: "x".repeat(1000),
                ..isolate(POD_UID)
            },
        ),
        (
            "reference",
            v1::IsolateRequest {
                reference: "x".repeat(1000),
                ..isolate(POD_UID)
            },
        ),
    ];
    for (field, request) in cases {
        let status = responder.isolate(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().starts_with(&format!("{field}: ")),
            "{field}: {status:?}"
        );
    }
    harness
        .audited(&["\"isolate\"", "INVALID_ARGUMENT", "pod.name.namespace"])
        .await;
    harness.stop().await;
}

#[tokio::test]
async fn a_message_over_64_kib_is_refused_before_it_is_decoded() {
    let harness = Harness::start().await;
    let mut responder = harness.client("responder.soc.test").await;
    let huge = v1::IsolateRequest {
        reason: "x".repeat(100 * 1024),
        ..isolate(POD_UID)
    };

    let status = responder.isolate(huge).await.unwrap_err();

    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    let fine = responder.isolate(isolate(ABSENT_UID)).await.unwrap_err();
    assert_eq!(fine.code(), Code::NotFound);
    harness.stop().await;
}

#[tokio::test]
async fn the_audit_log_never_holds_key_material() {
    let harness = Harness::start().await;
    let mut responder = harness.client("responder.soc.test").await;
    let mut reader = harness.client("spiffe://test/ns/soc/sa/reader").await;
    let _ = responder.isolate(isolate(POD_UID)).await;
    let _ = responder
        .release(v1::ReleaseRequest {
            order_id: String::new(),
            all: false,
            pod: by_uid(POD_UID),
            reason: "done".into(),
            dry_run: true,
        })
        .await;
    let _ = reader.isolate(isolate(POD_UID)).await;
    let rogue = harness
        .pki
        .client("rogue", "responder.soc.test", Signer::Other, false);
    refused(&harness, &rogue).await;
    harness.audited(&["UnknownIssuer"]).await;

    let audit = fs::read_to_string(&harness.audit).unwrap();
    let secrets = harness.pki.key_material();
    assert!(audit.lines().count() >= 3, "{audit}");
    assert!(
        secrets.len() >= 6,
        "the test must look for some key material"
    );
    for secret in secrets {
        assert!(
            !audit.contains(&secret),
            "key material in the audit log: {secret}"
        );
    }
    assert!(!audit.contains("PRIVATE KEY"));
    harness.stop().await;
}

#[tokio::test]
async fn the_cli_reaches_a_remote_agent_with_its_certificate() {
    use clap::Parser;

    let harness = Harness::start().await;
    let files = harness.pki.client(
        "reader",
        "spiffe://test/ns/soc/sa/reader",
        Signer::Ours,
        false,
    );
    let endpoint = format!("https://localhost:{}", harness.addr.port());
    let ca = harness.pki.ca();
    let args = [
        "stockade".as_ref(),
        "--endpoint".as_ref(),
        endpoint.as_str().as_ref(),
        "--ca".as_ref(),
        ca.as_os_str(),
        "--cert".as_ref(),
        files.cert.as_os_str(),
        "--key".as_ref(),
        files.key.as_os_str(),
        "-o".as_ref(),
        "json".as_ref(),
        "status".as_ref(),
    ];
    let cli = crate::cli::Cli::try_parse_from::<_, &std::ffi::OsStr>(args).unwrap();

    let report = crate::cli::execute(&cli).await.unwrap();

    let json: serde_json::Value = serde_json::from_str(&report.text).unwrap();
    assert_eq!(json["pods"], 1, "{json}");
    harness.stop().await;
}
