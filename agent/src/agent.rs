//! The path of an order: validate, resolve, enforce, verify, report.
//!
//! [`Agent`] holds the node's state and answers the API; `api.rs` only
//! turns its results into gRPC replies.

use std::{
    collections::{BTreeMap, VecDeque},
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use prost::Message;

use stockade_ebpf::abi::{StkPolicy, STK_F_ALLOW_NODE_PROBES, STK_F_ISOLATED};
use stockade_proto::v1;
use tracing::{info, warn};

use crate::{
    cgroup::{self, Cgroup2, CgroupError, PodCgroup, PodUid},
    contain::{self, Containment},
    cri::{CriClient, CriPod},
    enforce::{self, Attached, EnforceError, Enforcer},
    fault,
    features::{self, Feature},
    ledger::{
        action, fingerprint, Clock, Failure, InFlight, InFlightGuard, Ledger, LedgerError,
        NewOrder, OrderRecord, OrderState, SystemClock,
    },
    orders::{self, Orders},
    validate::{self, AllowEntry, FieldError, IsolateOrder, Mode, PodTarget},
};

/// The name shown for a pod's sandbox (pause) container.
pub const SANDBOX_NAME: &str = "(sandbox)";

/// How many refused attempts are kept per isolation.
const RECENT_REFUSALS: usize = 32;

/// What the agent needs to know to start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_name: String,
    /// Folder on bpffs for the agent's pins.
    pub pin_root: PathBuf,
    /// The CRI socket, if any.
    pub cri_socket: Option<PathBuf>,
    /// Deadline of every CRI call.
    pub cri_timeout: Duration,
    /// The cgroup2 mount; found from /proc/self/mountinfo when `None`.
    pub cgroup_root: Option<PathBuf>,
    /// How freeze, kill, terminate and the exec guard are carried out.
    pub containment: contain::ContainSettings,
    /// Folder of the order ledger (`/var/lib/stockade` by default).
    pub state_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    MissingFeature(String),
    #[error("{0}")]
    AlreadyIsolated(String),
    #[error("the kernel refused: {0}")]
    Kernel(String),
    #[error("verification failed: {0}")]
    NotVerified(String),
    /// A freeze, thaw or kill that the kernel did not confirm in time.
    #[error("{0}")]
    Deadline(String),
    /// An order id sent again with other content.
    #[error("{0}")]
    OrderConflict(String),
    /// The first answer to an order id sent again: it failed so.
    #[error("{message}")]
    Replayed { code: i32, message: String },
    /// An order id whose first order has no outcome yet.
    #[error("{0}")]
    Unsettled(String),
    /// The ledger could not be read or written.
    #[error("the order ledger failed: {0}")]
    Ledger(String),
}

impl From<EnforceError> for AgentError {
    fn from(err: EnforceError) -> Self {
        Self::Kernel(error_chain(&err))
    }
}

impl From<CgroupError> for AgentError {
    fn from(err: CgroupError) -> Self {
        match err {
            CgroupError::NotFound { .. } => Self::NotFound(error_chain(&err)),
            CgroupError::Io { .. } => Self::Kernel(error_chain(&err)),
            _ => Self::Refused(error_chain(&err)),
        }
    }
}

/// An error and its causes, as one line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        msg.push_str(": ");
        msg.push_str(&cause.to_string());
        source = cause.source();
    }
    msg
}

/// One isolation the agent holds, with what it was ordered.
#[derive(Debug, Clone)]
struct Record {
    pod: PodCgroup,
    namespace: String,
    name: String,
    mode: Mode,
    allow: Vec<AllowEntry>,
    reason: String,
    reference: String,
    received_at: SystemTime,
    enforced_at: SystemTime,
    refusals: VecDeque<v1::Refusal>,
    /// The ledger's order; empty for pins adopted with no order.
    order_id: String,
    expires_at: Option<SystemTime>,
}

/// The node agent.
pub struct Agent {
    settings: Settings,
    cgroups: Option<Cgroup2>,
    own_cgroup: String,
    features: Vec<Feature>,
    enforcer: Option<Mutex<Enforcer>>,
    cri: Option<CriClient>,
    /// Held while an order checks the pod's state and changes it, so two
    /// concurrent orders for one pod cannot both act.
    mutation: Mutex<()>,
    records: Mutex<BTreeMap<u64, Record>>,
    containment: Containment,
    started_at: SystemTime,
    orders: Orders,
    /// The API server's index of this node's pods, when one is configured:
    /// names pods the runtime does not name.
    pod_index: std::sync::OnceLock<crate::k8s::PodIndex>,
    /// One containment order at a time per pod cgroup (`cgroup:<id>`), so
    /// that a freeze and a thaw sent together are carried out one after
    /// the other and each reply says what the kernel did for it.
    pod_turns: InFlight,
}

impl Agent {
    /// Probes the kernel, loads the programs, opens the ledger and
    /// reconciles it with the pins an earlier agent left. Blocking: run it
    /// off the async runtime.
    pub fn start(settings: Settings, cri: Option<CriClient>) -> Result<Self, LedgerError> {
        Self::start_with_clock(settings, cri, Arc::new(SystemClock))
    }

    /// Like [`Agent::start`], reading the time (order stamps, TTLs) from
    /// `clock`.
    pub fn start_with_clock(
        settings: Settings,
        cri: Option<CriClient>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, LedgerError> {
        let ledger = Ledger::open_with_clock(&settings.state_dir, clock.clone())?;
        let orders = Orders::new(ledger, clock);
        let cgroups = match &settings.cgroup_root {
            Some(root) => Some(Cgroup2::at(root.clone())),
            None => Cgroup2::discover()
                .inspect_err(|e| warn!(error = %error_chain(e), "no cgroup2 hierarchy"))
                .ok(),
        };
        let own_cgroup = cgroups
            .as_ref()
            .and_then(|c| c.own_cgroup().ok())
            .unwrap_or_default();
        let mut features = features::probe(cgroups.as_ref().map(|c| c.root()), &settings.pin_root);

        let enforcer = load_enforcer(&settings, &mut features);
        let containment =
            Containment::start(&settings, cgroups.as_ref(), &own_cgroup, &mut features);
        let agent = Self {
            settings,
            cgroups,
            own_cgroup,
            features,
            enforcer: enforcer.map(Mutex::new),
            cri,
            mutation: Mutex::new(()),
            records: Mutex::new(BTreeMap::new()),
            containment,
            started_at: SystemTime::now(),
            orders,
            pod_turns: InFlight::new(),
            pod_index: std::sync::OnceLock::new(),
        };
        agent.refresh_node_addrs();
        agent.reconcile();
        agent.expire_due();
        Ok(agent)
    }

    /// Names pods through the API server's pod index where the runtime
    /// does not (no runtime socket, or a runtime that is down). Set once.
    pub fn use_pod_index(&self, index: crate::k8s::PodIndex) {
        let _ = self.pod_index.set(index);
    }

    /// The namespace and name the pod index gives the pod `uid`.
    pub(crate) fn indexed_name(&self, uid: &str) -> Option<(String, String)> {
        let info = self.pod_index.get()?.by_uid(uid)?;
        Some((info.namespace, info.name))
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn features(&self) -> &[Feature] {
        &self.features
    }

    /// Takes the ring buffer of refused attempts, if programs are loaded.
    pub fn take_events(&self) -> Option<aya::maps::RingBuf<aya::maps::MapData>> {
        self.enforcer.as_ref()?.lock().ok()?.take_events().ok()
    }

    /// Takes the ring buffer of execs the guard killed, if it loaded.
    pub fn take_guard_events(&self) -> Option<aya::maps::RingBuf<aya::maps::MapData>> {
        self.containment.guard()?.take_events().ok()
    }

    pub(crate) fn containment(&self) -> &Containment {
        &self.containment
    }

    /// The agent's cgroup now: read again for every order, because a
    /// process can be moved into a pod's cgroup after the agent started.
    pub(crate) fn own_cgroup(&self) -> String {
        let live = self.cgroups.as_ref().and_then(|c| c.own_cgroup().ok());
        live.unwrap_or_else(|| self.own_cgroup.clone())
    }

    pub(crate) fn order_book(&self) -> &Orders {
        &self.orders
    }

    /// Waits for the turn of the pod whose cgroup is `cgroup_id`.
    pub(crate) async fn pod_turn(&self, cgroup_id: u64) -> InFlightGuard {
        self.pod_turns.acquire(&format!("cgroup:{cgroup_id}")).await
    }

    pub(crate) fn cri(&self) -> Option<&CriClient> {
        self.cri.as_ref()
    }

    pub(crate) fn is_isolated(&self, cgroup_id: u64) -> bool {
        self.lock_records().contains_key(&cgroup_id)
    }

    /// The agent's version, node and kernel features.
    pub fn info(&self) -> v1::AgentInfo {
        v1::AgentInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            node_name: self.settings.node_name.clone(),
            kernel_release: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            cgroup2_mount: self
                .cgroups
                .as_ref()
                .map(|c| c.root().display().to_string())
                .unwrap_or_default(),
            bpffs_dir: self
                .settings
                .pin_root
                .join(enforce::PIN_LAYOUT)
                .display()
                .to_string(),
            features: self.features.iter().map(feature_to_proto).collect(),
            started_at: Some(self.started_at.into()),
            pod_metadata_source: match &self.cri {
                Some(c) => format!("cri:{}", c.socket().display()),
                None => "cgroup-tree".into(),
            },
        }
    }

    /// The pods on this node, from the cgroup tree, named by the runtime.
    pub async fn pods(&self) -> Result<Vec<v1::Pod>, AgentError> {
        let cgroups = self.cgroups()?;
        let found = cgroups.scan_pods()?;
        let named = self.runtime_pods().await;
        let isolated = self.lock_records().keys().copied().collect::<Vec<_>>();
        let contained = self
            .containment
            .guard()
            .and_then(|g| g.contained_ids().ok())
            .unwrap_or_default();
        Ok(found
            .iter()
            .map(|p| {
                let mut pod = pod_to_proto(
                    p,
                    named.iter().find(|n| n.uid == p.uid.as_str()),
                    isolated.contains(&p.cgroup_id),
                );
                pod.frozen = contain::freeze::read_freeze(&cgroups.abs(&p.path)).unwrap_or(false);
                pod.contained = contained.contains(&p.cgroup_id);
                if pod.namespace.is_empty() {
                    if let Some((namespace, name)) = self.indexed_name(&pod.uid) {
                        (pod.namespace, pod.name) = (namespace, name);
                    }
                }
                pod
            })
            .collect())
    }

    /// Isolates a pod: the whole order path, acted on once per order id.
    pub async fn isolate(&self, req: &v1::IsolateRequest) -> Result<v1::Isolation, AgentError> {
        let received_at = self.orders.now();
        let order = validate::isolate(req)?;
        let id = orders::order_id(&req.order_id, "order_id")?;
        self.require(features::ISOLATE)?;

        let _turn = self.orders.turn(&id).await;
        let fp = content_fingerprint(
            action::ISOLATE,
            v1::IsolateRequest {
                order_id: String::new(),
                ..req.clone()
            },
        );
        if let Some(first) = self.orders.known(&id, action::ISOLATE, fp).await? {
            return first;
        }
        let resolved = self.resolve(&order.target).await;
        let expires_at = orders::expiry(received_at, req.ttl_seconds);
        let mut new = new_order(&id, action::ISOLATE, fp, req.encode_to_vec(), received_at);
        new.expires_at = expires_at;
        if let Ok((pod, _)) = &resolved {
            (new.pod_uid, new.cgroup_id) = (pod.uid.to_string(), pod.cgroup_id);
        }

        let act = async {
            fault::point("isolate:after_begin");
            let (pod, cri) = resolved?;
            let stamps = Stamps {
                order_id: id.clone(),
                received_at,
                expires_at,
            };
            let isolation = self.enforce_isolation(order, pod, cri, stamps)?;
            fault::point("isolate:before_finish");
            Ok(isolation)
        };
        self.orders.run(new, act).await
    }

    /// Attaches, verifies and records an isolation the ledger accepted.
    fn enforce_isolation(
        &self,
        order: IsolateOrder,
        pod: PodCgroup,
        cri: Option<CriPod>,
        stamps: Stamps,
    ) -> Result<v1::Isolation, AgentError> {
        let _mutation = self.lock_mutation();
        cgroup::check_target(&pod.path, &self.own_cgroup())?;
        if let Some(existing) = self.lock_records().get(&pod.cgroup_id) {
            return Err(AgentError::AlreadyIsolated(format!(
                "pod {} is already isolated (since {}, order {}); release it first",
                pod.uid,
                humantime_utc(existing.enforced_at),
                existing.order_id,
            )));
        }

        let span = tracing::info_span!("isolate", pod.uid = %pod.uid, cgroup.id = pod.cgroup_id, order.id = %stamps.order_id);
        let _enter = span.enter();
        if order.mode == Mode::AllowNodeProbes {
            self.refresh_node_addrs();
        }
        let policy = policy_for(&order);
        let abs = self.cgroups()?.abs(&pod.path);
        let attached = self
            .lock_enforcer()?
            .isolate(&abs, pod.cgroup_id, &policy)?;
        let enforced_at = SystemTime::now();
        self.verify_isolated(&attached, pod.cgroup_id, &policy)?;

        let names = cri.map(|c| (c.namespace, c.name)).unwrap_or_default();
        let record = new_record(pod, names, order, &stamps, enforced_at);
        info!(
            pod.namespace = %record.namespace,
            pod.name = %record.name,
            order.mode = mode_name(record.mode),
            latency_us = enforced_at.duration_since(stamps.received_at).unwrap_or_default().as_micros() as u64,
            "pod isolated"
        );
        let reply = self.isolation_to_proto(&record, attached);
        self.lock_records().insert(record.pod.cgroup_id, record);
        Ok(reply)
    }

    /// Lifts an isolation, removing exactly our attachments; once per
    /// order id.
    pub async fn release(
        &self,
        req: &v1::ReleaseRequest,
    ) -> Result<v1::ReleaseResponse, AgentError> {
        let received_at = self.orders.now();
        let (target, _reason) = validate::release(req)?;
        let id = orders::order_id(&req.order_id, "order_id")?;
        self.require(features::ISOLATE)?;

        let _turn = self.orders.turn(&id).await;
        let fp = content_fingerprint(
            action::RELEASE,
            v1::ReleaseRequest {
                order_id: String::new(),
                ..req.clone()
            },
        );
        if let Some(first) = self.orders.known(&id, action::RELEASE, fp).await? {
            return first;
        }
        let resolved = self.resolve_isolated(&target).await;
        let mut new = new_order(&id, action::RELEASE, fp, req.encode_to_vec(), received_at);
        if let Ok((cgroup_id, _, _)) = &resolved {
            new.cgroup_id = *cgroup_id;
            new.pod_uid = self.uid_of(*cgroup_id, &resolved);
        }

        let act = async {
            let (cgroup_id, pod, path) = resolved?;
            let span = tracing::info_span!("release", cgroup.id = cgroup_id, order.id = %id);
            let _enter = span.enter();
            let foreign = self.lift_isolated(cgroup_id, path.as_deref())?;
            self.mark_lifted(cgroup_id, OrderState::Released).await;
            info!(foreign_programs_left = foreign, "pod released");
            Ok(v1::ReleaseResponse {
                pod: pod.map(|(p, cri)| pod_to_proto(&p, cri.as_ref(), false)),
                received_at: Some(received_at.into()),
                verified_at: Some(SystemTime::now().into()),
                foreign_programs_left: foreign,
                dry_run: false,
                released: Vec::new(),
            })
        };
        self.orders.run(new, act).await
    }

    /// Changes when an isolation ends by itself; once per order id.
    pub async fn extend(
        &self,
        req: &v1::ExtendIsolationRequest,
    ) -> Result<v1::IsolateResponse, AgentError> {
        let received_at = self.orders.now();
        let target = validate::pod_selector(req.pod.as_ref(), "pod")?;
        let id = orders::order_id(&req.order_id, "order_id")?;

        let _turn = self.orders.turn(&id).await;
        let fp = content_fingerprint(
            orders::EXTEND,
            v1::ExtendIsolationRequest {
                order_id: String::new(),
                ..req.clone()
            },
        );
        if let Some(first) = self.orders.known(&id, orders::EXTEND, fp).await? {
            return first;
        }
        let resolved = self.resolve_isolated(&target).await;
        let mut new = new_order(&id, orders::EXTEND, fp, req.encode_to_vec(), received_at);
        if let Ok((cgroup_id, _, _)) = &resolved {
            new.cgroup_id = *cgroup_id;
            new.pod_uid = self.uid_of(*cgroup_id, &resolved);
        }

        let act = async {
            let (cgroup_id, _, _) = resolved?;
            let expires_at = orders::expiry(self.orders.now(), req.ttl_seconds);
            let isolation = self.set_expiry(cgroup_id, expires_at).await?;
            Ok(v1::IsolateResponse {
                isolation: Some(isolation),
                dry_run: false,
            })
        };
        self.orders.run(new, act).await
    }

    /// Stores a new expiry for the isolation of `cgroup_id`.
    async fn set_expiry(
        &self,
        cgroup_id: u64,
        expires_at: Option<SystemTime>,
    ) -> Result<v1::Isolation, AgentError> {
        let order_id = self.record_of(cgroup_id)?.order_id;
        if order_id.is_empty() {
            return Err(AgentError::Refused(
                "this isolation was adopted from pins with no order in the ledger, so it has \
                 no expiry to change: release it and isolate again"
                    .into(),
            ));
        }
        let owned = order_id.clone();
        self.orders
            .blocking(move |l| l.set_expiry(&owned, expires_at))
            .await?;
        if let Some(record) = self.lock_records().get_mut(&cgroup_id) {
            record.expires_at = expires_at;
        }
        info!(order.id = %order_id, cgroup.id = cgroup_id, "isolation expiry changed");
        let record = self.record_of(cgroup_id)?;
        Ok(self.isolation_to_proto(&record, self.attached_now(&record)))
    }

    fn record_of(&self, cgroup_id: u64) -> Result<Record, AgentError> {
        self.lock_records()
            .get(&cgroup_id)
            .cloned()
            .ok_or_else(|| AgentError::NotFound(format!("cgroup {cgroup_id} is not isolated")))
    }

    /// The pod UID of an isolated cgroup, from the resolution or the record.
    fn uid_of(&self, cgroup_id: u64, resolved: &Resolved) -> String {
        match resolved {
            Ok((_, Some((pod, _)), _)) => pod.uid.to_string(),
            _ => self
                .lock_records()
                .get(&cgroup_id)
                .map(|r| r.pod.uid.to_string())
                .unwrap_or_default(),
        }
    }

    /// Removes our attachments from `cgroup_id` and forgets its record;
    /// the foreign programs left, when the cgroup is still there.
    /// Lifts the isolation of `cgroup_id` if it is still in force when this
    /// order gets its turn; a concurrent release that came first wins.
    fn lift_isolated(
        &self,
        cgroup_id: u64,
        path: Option<&std::path::Path>,
    ) -> Result<u32, AgentError> {
        let _mutation = self.lock_mutation();
        let known = self.lock_records().contains_key(&cgroup_id);
        if !known && self.lock_enforcer()?.policy(cgroup_id)?.is_none() {
            return Err(AgentError::NotFound(format!(
                "cgroup {cgroup_id} is not isolated (released by another order)"
            )));
        }
        self.lift(cgroup_id, path)
    }

    fn lock_mutation(&self) -> MutexGuard<'_, ()> {
        // The guarded data lives elsewhere; a poisoned lock is still a lock.
        self.mutation.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lift(&self, cgroup_id: u64, path: Option<&std::path::Path>) -> Result<u32, AgentError> {
        self.lock_enforcer()?.release(cgroup_id)?;
        let foreign = match path {
            Some(abs) if abs.exists() => verify_released(abs)?,
            _ => 0,
        };
        self.lock_records().remove(&cgroup_id);
        Ok(foreign)
    }

    /// Marks every in-force isolation order of `cgroup_id` as `state`.
    async fn mark_lifted(&self, cgroup_id: u64, state: OrderState) {
        let marked = self
            .orders
            .blocking(move |l| mark_lifted(l, cgroup_id, state))
            .await;
        if let Err(e) = marked {
            warn!(cgroup.id = cgroup_id, error = %e, "released, but the ledger still says enforced");
        }
    }

    /// Marks the in-force `what` orders (freeze, contain) of `cgroup_id`
    /// released, once their undoing was verified.
    pub(crate) async fn mark_undone(&self, what: &'static str, cgroup_id: u64) {
        let marked = self
            .orders
            .blocking(move |l| mark_ended(l, what, cgroup_id, OrderState::Released))
            .await;
        if let Err(e) = marked {
            warn!(cgroup.id = cgroup_id, order.action = what, error = %e, "undone, but the ledger still says enforced");
        }
    }

    /// Lifts the isolations whose TTL passed and marks them `Expired`.
    /// Blocking.
    pub fn expire_due(&self) {
        let lift = |rec: &OrderRecord| {
            let path = self
                .lock_records()
                .get(&rec.cgroup_id)
                .map(|r| r.pod.path.clone());
            let abs = match (&self.cgroups, path) {
                (Some(c), Some(p)) => Some(c.abs(&p)),
                _ => None,
            };
            let _mutation = self.lock_mutation();
            self.lift(rec.cgroup_id, abs.as_deref()).map(drop)
        };
        let ledger = self.orders.ledger();
        if let Err(e) = orders::expire_due(ledger, self.orders.now(), lift) {
            warn!(error = %error_chain(&e), "cannot read the isolations due to expire");
        }
    }

    /// Expires isolations every `period` until the process ends.
    pub async fn run_expiry(agent: Arc<Self>, period: Duration) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let agent = agent.clone();
            let _ = tokio::task::spawn_blocking(move || agent.expire_due()).await;
        }
    }

    /// One order from the ledger.
    pub async fn order(&self, id: &str) -> Result<v1::Order, AgentError> {
        let owned = id.to_owned();
        let rec = self.orders.blocking(move |l| l.get(&owned)).await?;
        rec.map(|r| orders::order_to_proto(&r))
            .ok_or_else(|| AgentError::NotFound(format!("order {id} is not in the ledger")))
    }

    /// Orders from the ledger, newest first.
    pub async fn orders(&self, req: &v1::ListOrdersRequest) -> Result<Vec<v1::Order>, AgentError> {
        let filter = orders::list_filter(req)?;
        let recs = self.orders.blocking(move |l| l.list(&filter)).await?;
        Ok(recs.iter().map(orders::order_to_proto).collect())
    }

    /// The isolations in force, as read back from the kernel now.
    pub fn isolations(&self) -> Result<Vec<v1::Isolation>, AgentError> {
        let records: Vec<Record> = self.lock_records().values().cloned().collect();
        // The containers as the tree holds them now, not as at the order:
        // a restarted container has a new id and cgroup (C05).
        let live = match &self.cgroups {
            Some(c) => c.scan_pods().unwrap_or_default(),
            None => Vec::new(),
        };
        let mut out = Vec::new();
        for mut record in records {
            if let Some(pod) = live.iter().find(|p| p.cgroup_id == record.pod.cgroup_id) {
                record.pod.containers = pod.containers.clone();
            }
            let attached = self.attached_now(&record);
            out.push(self.isolation_to_proto(&record, attached));
        }
        Ok(out)
    }

    /// Our programs attached to the record's cgroup, as the kernel says now.
    fn attached_now(&self, record: &Record) -> Vec<Attached> {
        let (Some(cgroups), Ok(enforcer)) = (&self.cgroups, self.lock_enforcer()) else {
            return Vec::new();
        };
        let abs = cgroups.abs(&record.pod.path);
        enforcer
            .attachments(&abs, record.pod.cgroup_id)
            .unwrap_or_default()
    }

    /// Files a refused attempt reported by the kernel under its isolation.
    pub fn record_refusal(&self, pod_cgroup_id: u64, refusal: v1::Refusal) {
        let mut records = self.lock_records();
        if let Some(record) = records.get_mut(&pod_cgroup_id) {
            if record.refusals.len() == RECENT_REFUSALS {
                record.refusals.pop_front();
            }
            record.refusals.push_back(refusal);
        }
    }

    /// Re-reads the node's own addresses into the kernel (node-probe mode).
    pub fn refresh_node_addrs(&self) {
        let Some(enforcer) = &self.enforcer else {
            return;
        };
        let addrs = match node_addrs() {
            Ok(a) => a,
            Err(e) => return warn!(error = %e, "cannot list the node's addresses"),
        };
        if let Ok(mut enforcer) = enforcer.lock() {
            if let Err(e) = enforcer.set_node_addrs(&addrs) {
                warn!(error = %error_chain(&e), "cannot store the node's addresses");
            }
        }
    }

    fn require(&self, order: &str) -> Result<(), AgentError> {
        match features::missing_for(&self.features, order) {
            Some(msg) => Err(AgentError::MissingFeature(msg)),
            None if self.enforcer.is_none() => Err(AgentError::MissingFeature(format!(
                "{order} needs the isolation programs, which did not load: see `stockade doctor`"
            ))),
            None => Ok(()),
        }
    }

    pub(crate) fn cgroups(&self) -> Result<&Cgroup2, AgentError> {
        self.cgroups
            .as_ref()
            .ok_or_else(|| AgentError::MissingFeature("no cgroup2 hierarchy is mounted".into()))
    }

    fn lock_records(&self) -> MutexGuard<'_, BTreeMap<u64, Record>> {
        // A panic while holding the lock leaves the map consistent (every
        // update is a single insert or remove), so a poisoned lock is usable.
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_enforcer(&self) -> Result<MutexGuard<'_, Enforcer>, AgentError> {
        let enforcer = self.enforcer.as_ref().ok_or_else(|| {
            AgentError::MissingFeature("the isolation programs did not load".into())
        })?;
        Ok(enforcer.lock().unwrap_or_else(|p| p.into_inner()))
    }

    async fn runtime_pods(&self) -> Vec<CriPod> {
        let Some(cri) = &self.cri else {
            return Vec::new();
        };
        match cri.list_pods().await {
            Ok(pods) => pods,
            Err(e) => {
                warn!(error = %error_chain(&e), "the runtime did not list its pods");
                Vec::new()
            }
        }
    }

    /// The target pod's cgroup on this node, and the runtime's view of it.
    pub(crate) async fn resolve(
        &self,
        target: &PodTarget,
    ) -> Result<(PodCgroup, Option<CriPod>), AgentError> {
        let cgroups = self.cgroups()?;
        match target {
            PodTarget::Uid(uid) => {
                let pod = cgroups.find_pod(uid)?;
                let named = self
                    .runtime_pods()
                    .await
                    .into_iter()
                    .find(|p| p.uid == uid.as_str());
                Ok((pod, named))
            }
            PodTarget::Name { namespace, name } => {
                let indexed = self
                    .pod_index
                    .get()
                    .and_then(|i| i.by_name(namespace, name));
                let runtime_named = match self.cri.is_some() {
                    true => self
                        .runtime_pods()
                        .await
                        .into_iter()
                        .any(|p| &p.namespace == namespace && &p.name == name),
                    false => false,
                };
                if let (Some(info), false) = (indexed, runtime_named) {
                    let uid: PodUid = info.uid.parse().map_err(|_| {
                        AgentError::Refused(format!(
                            "the API server reports a malformed UID for {namespace}/{name}"
                        ))
                    })?;
                    return Ok((cgroups.find_pod(&uid)?, None));
                }
                if self.cri.is_none() && self.pod_index.get().is_some() {
                    return Err(AgentError::NotFound(format!(
                        "pod {namespace}/{name} is not on node {} (the API server's pod index \
                         has no such pod here)",
                        self.settings.node_name
                    )));
                }
                if self.cri.is_none() {
                    return Err(AgentError::NotFound(format!(
                        "pod {namespace}/{name}: no container runtime socket is configured, so \
                         pods can only be named by UID here (stockade isolate --uid ...)"
                    )));
                }
                let named = self
                    .runtime_pods()
                    .await
                    .into_iter()
                    .find(|p| &p.namespace == namespace && &p.name == name)
                    .ok_or_else(|| {
                        AgentError::NotFound(format!(
                            "pod {namespace}/{name} is not on node {}",
                            self.settings.node_name
                        ))
                    })?;
                let uid: PodUid = named.uid.parse().map_err(|_| {
                    AgentError::Refused(format!(
                        "the runtime reports a malformed UID for {namespace}/{name}"
                    ))
                })?;
                Ok((cgroups.find_pod(&uid)?, Some(named)))
            }
        }
    }

    /// The cgroup id of an isolated target, also when its pod is gone.
    async fn resolve_isolated(&self, target: &PodTarget) -> Resolved {
        match self.resolve(target).await {
            Ok((pod, cri)) => {
                let id = pod.cgroup_id;
                let isolated = self.lock_records().contains_key(&id)
                    || self.lock_enforcer()?.policy(id)?.is_some();
                if !isolated {
                    return Err(AgentError::NotFound(format!(
                        "pod {} is not isolated",
                        pod.uid
                    )));
                }
                let abs = self.cgroups()?.abs(&pod.path);
                Ok((id, Some((pod, cri)), Some(abs)))
            }
            Err(AgentError::NotFound(msg)) => {
                // The pod may be gone while its isolation is still pinned.
                let records = self.lock_records();
                let gone = records.iter().find(|(_, r)| match target {
                    PodTarget::Uid(uid) => r.pod.uid == *uid,
                    PodTarget::Name { namespace, name } => {
                        &r.namespace == namespace && &r.name == name
                    }
                });
                match gone {
                    Some((id, _)) => Ok((*id, None, None)),
                    None => Err(AgentError::NotFound(msg)),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Every hook holds one of our programs and the policy reads back.
    fn verify_isolated(
        &self,
        attached: &[Attached],
        id: u64,
        policy: &StkPolicy,
    ) -> Result<(), AgentError> {
        let missing: Vec<&str> = enforce::HOOKS
            .iter()
            .filter(|h| !attached.iter().any(|a| a.hook == h.name))
            .map(|h| h.name)
            .collect();
        let stored = self.lock_enforcer()?.policy(id)?;
        if missing.is_empty() && stored.as_ref() == Some(policy) {
            return Ok(());
        }
        let mut enforcer = self.lock_enforcer()?;
        if let Err(e) = enforcer.release(id) {
            warn!(error = %error_chain(&e), "could not undo an unverified isolation");
        }
        Err(AgentError::NotVerified(format!(
            "hooks not attached after isolate: {missing:?}; policy read back: {}",
            if stored.as_ref() == Some(policy) {
                "ok"
            } else {
                "differs"
            }
        )))
    }

    /// Reconciles the ledger with the pins and the cgroup tree at start:
    /// settles the orders a crash left unfinished, re-attaches what the
    /// ledger says is in force (also when its pins were removed), lifts
    /// isolations whose pod is gone, and adopts pins with no order.
    fn reconcile(&self) {
        let (Some(cgroups), Some(_)) = (&self.cgroups, &self.enforcer) else {
            return warn!("no cgroup2 or no programs: the ledger's isolations are not enforced");
        };
        // Without the pod list every pod would look gone: touch nothing.
        let pods = match cgroups.scan_pods() {
            Ok(pods) => pods,
            Err(e) => {
                return warn!(error = %error_chain(&e), "cannot scan the pods: not reconciled")
            }
        };
        let ledger = self.orders.ledger();
        match ledger.unfinished() {
            Ok(recs) => recs.iter().for_each(|r| self.settle(cgroups, &pods, r)),
            Err(e) => warn!(error = %error_chain(&e), "cannot list unfinished orders"),
        }
        match ledger.in_force() {
            Ok(recs) => recs.iter().for_each(|r| self.restore(cgroups, &pods, r)),
            Err(e) => warn!(error = %error_chain(&e), "cannot list the orders in force"),
        }
        self.adopt(cgroups, &pods);
    }

    /// Settles an order a crash left `Accepted`: an isolation is carried
    /// out from its stored request, a release too; anything else failed.
    fn settle(&self, cgroups: &Cgroup2, pods: &[PodCgroup], rec: &OrderRecord) {
        let span = tracing::info_span!("settle", order.id = %rec.id, cgroup.id = rec.cgroup_id);
        let _enter = span.enter();
        let outcome = match rec.action.as_str() {
            action::ISOLATE => self
                .apply_stored(cgroups, pods, rec)
                .map(|i| i.encode_to_vec()),
            action::RELEASE if rec.cgroup_id != 0 => self.settle_release(rec),
            _ => Err(AgentError::Unsettled(
                "the agent stopped before this order's outcome was recorded; it may or may not \
                 have been carried out: look, then send it again with a new order id"
                    .into(),
            )),
        };
        let ledger = self.orders.ledger();
        let finished = match outcome {
            Ok(reply) => ledger.finish(&rec.id, OrderState::Enforced, Some(reply), None),
            Err(e) => {
                if rec.action == action::ISOLATE && rec.cgroup_id != 0 {
                    self.undo_partial(rec.cgroup_id);
                }
                let failure = orders::failure_of(&e);
                ledger.finish(&rec.id, OrderState::Failed, None, Some(failure))
            }
        };
        match finished {
            Ok(r) => info!(order.state = %r.state, "settled an order left unfinished by a crash"),
            Err(e) => warn!(error = %error_chain(&e), "cannot record a settled order"),
        }
    }

    /// Completes a release a crash interrupted; the encoded reply.
    fn settle_release(&self, rec: &OrderRecord) -> Result<Vec<u8>, AgentError> {
        self.lock_enforcer()?.release(rec.cgroup_id)?;
        self.lock_records().remove(&rec.cgroup_id);
        mark_lifted(self.orders.ledger(), rec.cgroup_id, OrderState::Released)
            .map_err(orders::ledger_error)?;
        let now = SystemTime::now();
        let reply = v1::ReleaseResponse {
            received_at: Some(rec.received_at.into()),
            verified_at: Some(now.into()),
            ..Default::default()
        };
        Ok(reply.encode_to_vec())
    }

    fn undo_partial(&self, cgroup_id: u64) {
        let undone = self
            .lock_enforcer()
            .and_then(|mut e| Ok(e.release(cgroup_id)?));
        if let Err(e) = undone {
            warn!(cgroup.id = cgroup_id, error = %e, "cannot remove a half-done isolation");
        }
        self.lock_records().remove(&cgroup_id);
    }

    /// Keeps an enforced isolation in force after a restart: re-attaches
    /// what is missing, or lifts it when its pod is gone.
    fn restore(&self, cgroups: &Cgroup2, pods: &[PodCgroup], rec: &OrderRecord) {
        let gone = !pods.iter().any(|p| p.cgroup_id == rec.cgroup_id);
        let undone_with_pod = [action::FREEZE, action::CONTAIN].contains(&rec.action.as_str());
        if undone_with_pod && rec.state == OrderState::Enforced && gone {
            return self.end_undone_gone(rec);
        }
        let restorable = rec.action == action::ISOLATE && rec.state == OrderState::Enforced;
        if !restorable || self.lock_records().contains_key(&rec.cgroup_id) {
            return;
        }
        let span = tracing::info_span!("restore", order.id = %rec.id, cgroup.id = rec.cgroup_id);
        let _enter = span.enter();
        if !pods.iter().any(|p| p.cgroup_id == rec.cgroup_id) {
            return self.end_gone(rec);
        }
        match self.apply_stored(cgroups, pods, rec) {
            Ok(_) => info!(pod.uid = %rec.pod_uid, "isolation restored from the ledger"),
            // Known shortcoming: the order stays enforced in the ledger
            // while the kernel refuses; only the log says so until the
            // next restart tries again.
            Err(e) => warn!(error = %e, "cannot re-attach an isolation the ledger holds"),
        }
    }

    /// Closes a freeze or containment whose pod is gone. One whose pod is
    /// still there needs nothing: the kernel keeps `cgroup.freeze` and the
    /// pinned containment map across our restart.
    ///
    /// Known shortcoming: a pod thawed by someone else (a write to its
    /// `cgroup.freeze`) while the agent was down stays `enforced` in the
    /// ledger; `cgroup.events` is not read back here.
    fn end_undone_gone(&self, rec: &OrderRecord) {
        let why = Failure {
            code: tonic::Code::NotFound as i32,
            message: format!("the pod is gone, and its {} with it", rec.action),
        };
        match self.orders.ledger().end(&rec.id, OrderState::Released, why) {
            Ok(_) => info!(order.id = %rec.id, "pod of a freeze or containment is gone: released"),
            Err(e) => warn!(error = %error_chain(&e), "cannot record a gone pod"),
        }
    }

    /// Lifts the pins of an isolation whose pod is gone, and says so in
    /// the ledger.
    fn end_gone(&self, rec: &OrderRecord) {
        self.undo_partial(rec.cgroup_id);
        let why = Failure {
            code: tonic::Code::NotFound as i32,
            message: "the pod is gone; its isolation's pins were removed".into(),
        };
        match self.orders.ledger().end(&rec.id, OrderState::Released, why) {
            Ok(_) => info!(pod.uid = %rec.pod_uid, "pod of an isolation is gone: released"),
            Err(e) => warn!(error = %error_chain(&e), "cannot record a gone pod"),
        }
    }

    /// Enforces an isolation order from its stored request, and records it
    /// in memory with the reason, reference and names it was given.
    fn apply_stored(
        &self,
        cgroups: &Cgroup2,
        pods: &[PodCgroup],
        rec: &OrderRecord,
    ) -> Result<v1::Isolation, AgentError> {
        let req = v1::IsolateRequest::decode(rec.request.as_slice())
            .map_err(|e| AgentError::Ledger(format!("order {}: stored request: {e}", rec.id)))?;
        let order = validate::isolate(&req)?;
        let pod = pods
            .iter()
            .find(|p| p.cgroup_id == rec.cgroup_id)
            .cloned()
            .ok_or_else(|| AgentError::NotFound(format!("pod {} is gone", rec.pod_uid)))?;

        let policy = policy_for(&order);
        let abs = cgroups.abs(&pod.path);
        let attached = self
            .lock_enforcer()?
            .isolate(&abs, pod.cgroup_id, &policy)?;
        self.verify_isolated(&attached, pod.cgroup_id, &policy)?;

        let first = rec
            .reply
            .as_deref()
            .and_then(|r| v1::Isolation::decode(r).ok());
        let stamps = Stamps {
            order_id: rec.id.clone(),
            received_at: rec.received_at,
            expires_at: rec.expires_at,
        };
        let enforced_at = first
            .as_ref()
            .and_then(|i| i.enforced_at)
            .and_then(|t| SystemTime::try_from(t).ok())
            .unwrap_or_else(SystemTime::now);
        let names = stored_names(first.as_ref(), &order.target);
        let record = new_record(pod, names, order, &stamps, enforced_at);
        let reply = self.isolation_to_proto(&record, attached);
        self.lock_records().insert(record.pod.cgroup_id, record);
        Ok(reply)
    }

    /// Adopts isolations pinned by an earlier agent that the ledger has no
    /// order for (pins from before the ledger, or a ledger moved away);
    /// removes those whose pod is gone. Their policy (mode and allow-list)
    /// is read back from the kernel; their reason is not known.
    fn adopt(&self, cgroups: &Cgroup2, pods: &[PodCgroup]) {
        let Ok(mut ids) = self
            .lock_enforcer()
            .and_then(|e| Ok((e.pinned_cgroups()?, e.policy_cgroups()?)))
        else {
            return warn!("cannot list pinned isolations");
        };
        ids.0.append(&mut ids.1);
        ids.0.sort_unstable();
        ids.0.dedup();
        let known: Vec<u64> = self.lock_records().keys().copied().collect();
        for id in ids.0.into_iter().filter(|id| !known.contains(id)) {
            self.adopt_one(cgroups, pods, id);
        }
    }

    fn adopt_one(&self, cgroups: &Cgroup2, pods: &[PodCgroup], id: u64) {
        let Ok(mut enforcer) = self.lock_enforcer() else {
            return;
        };
        let Some(pod) = pods.iter().find(|p| p.cgroup_id == id) else {
            info!(
                cgroup.id = id,
                "pod of a pinned isolation is gone: removing its pins"
            );
            if let Err(e) = enforcer.release(id) {
                warn!(cgroup.id = id, error = %error_chain(&e), "cannot remove stale pins");
            }
            return;
        };
        let Ok(Some(policy)) = enforcer.policy(id) else {
            // Known shortcoming: the links hold programs whose maps were
            // unpinned (the maps folder was removed), so they still enforce
            // a policy this agent cannot read. Keep them rather than lift
            // an isolation silently; `stockade release` removes them.
            return warn!(
                pod.uid = %pod.uid,
                cgroup.id = id,
                "pinned links with no readable policy (maps folder removed?): kept in force"
            );
        };
        // Re-attaches whatever hook lost its link while we were away.
        if let Err(e) = enforcer.isolate(&cgroups.abs(&pod.path), id, &policy) {
            return warn!(cgroup.id = id, error = %error_chain(&e), "cannot re-attach an adopted isolation");
        }
        let now = SystemTime::now();
        let record = Record {
            pod: pod.clone(),
            namespace: String::new(),
            name: String::new(),
            mode: if policy.flags & STK_F_ALLOW_NODE_PROBES != 0 {
                Mode::AllowNodeProbes
            } else {
                Mode::Strict
            },
            allow: validate::entries_from_policy(&policy),
            reason: "adopted from the kernel after an agent restart".into(),
            reference: String::new(),
            received_at: now,
            enforced_at: now,
            refusals: VecDeque::new(),
            order_id: String::new(),
            expires_at: None,
        };
        info!(pod.uid = %pod.uid, cgroup.id = id, "adopted a pinned isolation with no order in the ledger");
        drop(enforcer);
        self.lock_records().insert(id, record);
    }

    fn isolation_to_proto(&self, r: &Record, attached: Vec<Attached>) -> v1::Isolation {
        let counters = self
            .lock_enforcer()
            .ok()
            .and_then(|e| e.counters(r.pod.cgroup_id).ok())
            .unwrap_or_default();
        let mut pod = pod_to_proto(&r.pod, None, true);
        pod.namespace = r.namespace.clone();
        pod.name = r.name.clone();
        v1::Isolation {
            pod: Some(pod),
            mode: mode_to_proto(r.mode) as i32,
            allow: r.allow.iter().map(AllowEntry::to_proto).collect(),
            reason: r.reason.clone(),
            reference: r.reference.clone(),
            received_at: Some(r.received_at.into()),
            enforced_at: Some(r.enforced_at.into()),
            verified_at: Some(SystemTime::now().into()),
            attachments: attached
                .into_iter()
                .map(|a| v1::Attachment {
                    hook: a.hook.into(),
                    program_id: a.program_id,
                    pin: a.pin.display().to_string(),
                })
                .collect(),
            counters: Some(v1::Counters {
                ingress_dropped: counters.ingress_dropped,
                egress_dropped: counters.egress_dropped,
                connects_refused: counters.connects_refused,
                sends_refused: counters.sends_refused,
            }),
            recent_refusals: r.refusals.iter().cloned().collect(),
            order_id: r.order_id.clone(),
            expires_at: r.expires_at.map(Into::into),
        }
    }
}

/// An isolated target: its cgroup id, its pod and runtime view unless
/// the pod is gone, and its cgroup's absolute path.
type Resolved = Result<(u64, Option<(PodCgroup, Option<CriPod>)>, Option<PathBuf>), AgentError>;

/// What the ledger says of an isolation besides its policy.
#[derive(Debug, Clone)]
struct Stamps {
    order_id: String,
    received_at: SystemTime,
    expires_at: Option<SystemTime>,
}

fn new_record(
    pod: PodCgroup,
    (namespace, name): (String, String),
    order: IsolateOrder,
    stamps: &Stamps,
    enforced_at: SystemTime,
) -> Record {
    Record {
        pod,
        namespace,
        name,
        mode: order.mode,
        allow: order.allow,
        reason: order.reason,
        reference: order.reference,
        received_at: stamps.received_at,
        enforced_at,
        refusals: VecDeque::new(),
        order_id: stamps.order_id.clone(),
        expires_at: stamps.expires_at,
    }
}

/// A ledger entry for an order; the pod is filled in once resolved.
pub(crate) fn new_order(
    id: &str,
    action: &str,
    fingerprint: [u8; 32],
    request: Vec<u8>,
    received_at: SystemTime,
) -> NewOrder {
    NewOrder {
        id: id.to_owned(),
        action: action.to_owned(),
        fingerprint,
        request,
        pod_uid: String::new(),
        cgroup_id: 0,
        received_at,
        expires_at: None,
    }
}

/// The fingerprint of a request whose order id was cleared, so that the
/// same order sent twice under one id has one fingerprint.
pub(crate) fn content_fingerprint(action: &str, cleared: impl Message) -> [u8; 32] {
    fingerprint(action, &cleared.encode_to_vec())
}

/// Marks the in-force isolation orders of `cgroup_id` as `state`.
fn mark_lifted(ledger: &Ledger, cgroup_id: u64, state: OrderState) -> Result<(), LedgerError> {
    mark_ended(ledger, action::ISOLATE, cgroup_id, state)
}

/// Marks the in-force orders of `what` on `cgroup_id` as `state`.
fn mark_ended(
    ledger: &Ledger,
    what: &str,
    cgroup_id: u64,
    state: OrderState,
) -> Result<(), LedgerError> {
    let lifted = ledger.in_force()?.into_iter().filter(|r| {
        r.action == what && r.cgroup_id == cgroup_id && r.state == OrderState::Enforced
    });
    for rec in lifted {
        ledger.set_state(&rec.id, state)?;
    }
    Ok(())
}

/// The pod's namespace and name: from the first reply, else from the
/// request when it named the pod.
fn stored_names(first: Option<&v1::Isolation>, target: &PodTarget) -> (String, String) {
    if let Some(pod) = first.and_then(|i| i.pod.as_ref()) {
        return (pod.namespace.clone(), pod.name.clone());
    }
    match target {
        PodTarget::Name { namespace, name } => (namespace.clone(), name.clone()),
        PodTarget::Uid(_) => Default::default(),
    }
}

fn load_enforcer(settings: &Settings, features: &mut Vec<Feature>) -> Option<Enforcer> {
    if features::missing_for(features, features::ISOLATE).is_some() {
        return None;
    }
    match Enforcer::load(&settings.pin_root) {
        Ok(e) => Some(e),
        Err(e) => {
            let detail = error_chain(&e);
            warn!(error = %detail, "the isolation programs did not load");
            features.push(Feature {
                name: "isolation_programs",
                available: false,
                detail,
                needed_by: &[features::ISOLATE],
            });
            None
        }
    }
}

/// After release: none of ours on any hook. Returns the foreign programs left.
fn verify_released(abs: &std::path::Path) -> Result<u32, AgentError> {
    let state = enforce::inspect(abs)?;
    let ours: Vec<&str> = state
        .iter()
        .filter(|(_, s)| !s.ours.is_empty())
        .map(|(h, _)| *h)
        .collect();
    if !ours.is_empty() {
        return Err(AgentError::NotVerified(format!(
            "our programs are still attached at {ours:?}"
        )));
    }
    Ok(state.values().map(|s| s.foreign.len() as u32).sum())
}

/// The kernel policy for an order.
fn policy_for(order: &IsolateOrder) -> StkPolicy {
    let mut policy = StkPolicy {
        flags: STK_F_ISOLATED,
        ..Default::default()
    };
    if order.mode == Mode::AllowNodeProbes {
        policy.flags |= STK_F_ALLOW_NODE_PROBES;
    }
    for (slot, entry) in policy.rules.iter_mut().zip(&order.allow) {
        *slot = entry.to_rule();
    }
    policy.n_rules = order.allow.len().min(policy.rules.len()) as u32;
    policy
}

/// Every address of every interface in the agent's network namespace
/// (the node's, since the agent runs with hostNetwork).
fn node_addrs() -> Result<Vec<IpAddr>, nix::Error> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs()? {
        let Some(addr) = ifa.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            out.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            out.push(IpAddr::V6(v6.ip()));
        }
    }
    out.retain(|a| !a.is_loopback());
    out.sort();
    out.dedup();
    Ok(out)
}

pub fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::AllowNodeProbes => "node-probes",
        Mode::Strict => "strict",
    }
}

fn mode_to_proto(mode: Mode) -> v1::IsolationMode {
    match mode {
        Mode::AllowNodeProbes => v1::IsolationMode::AllowNodeProbes,
        Mode::Strict => v1::IsolationMode::Strict,
    }
}

fn humantime_utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!("unix time {secs}")
}

fn feature_to_proto(f: &Feature) -> v1::KernelFeature {
    v1::KernelFeature {
        name: f.name.into(),
        available: f.available,
        detail: f.detail.clone(),
        needed_by: f.needed_by.iter().map(|s| s.to_string()).collect(),
    }
}

pub(crate) fn pod_to_proto(p: &PodCgroup, named: Option<&CriPod>, isolated: bool) -> v1::Pod {
    v1::Pod {
        uid: p.uid.to_string(),
        namespace: named.map(|n| n.namespace.clone()).unwrap_or_default(),
        name: named.map(|n| n.name.clone()).unwrap_or_default(),
        qos_class: match p.qos {
            cgroup::QosClass::Guaranteed => v1::QosClass::Guaranteed,
            cgroup::QosClass::Burstable => v1::QosClass::Burstable,
            cgroup::QosClass::BestEffort => v1::QosClass::BestEffort,
        } as i32,
        cgroup_path: p.path.clone(),
        cgroup_id: p.cgroup_id,
        containers: p
            .containers
            .iter()
            .map(|c| {
                let cri = named.and_then(|n| n.containers.iter().find(|x| x.id == c.id.as_str()));
                v1::Container {
                    id: c.id.to_string(),
                    name: match cri {
                        Some(x) => x.name.clone(),
                        // The runtime's own sandbox (pause) container.
                        None if named.is_some_and(|n| n.sandbox_id == c.id.as_str()) => {
                            SANDBOX_NAME.into()
                        }
                        None => String::new(),
                    },
                    runtime: c.runtime.as_str().into(),
                    cgroup_path: c.path.clone(),
                    cgroup_id: c.cgroup_id,
                    state: cri.map(|x| x.state.clone()).unwrap_or_default(),
                }
            })
            .collect(),
        cgroup_driver: match p.driver {
            cgroup::CgroupDriver::Systemd => "systemd",
            cgroup::CgroupDriver::Cgroupfs => "cgroupfs",
        }
        .into(),
        isolated,
        // Read where the kernel's state is needed (`Agent::pods`).
        frozen: false,
        contained: false,
    }
}
