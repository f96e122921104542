//! The durable order ledger: the truth of what was ordered.
//!
//! Every mutating order is recorded before the agent acts ([`Ledger::begin`])
//! and its outcome after ([`Ledger::finish`]). Each call is one ACID
//! transaction of redb, committed to disk before it returns, so a SIGKILL
//! or power loss at any point leaves every order either absent or whole:
//!
//! - an order whose `begin` returned is there after any crash;
//! - an order id seen before is never acted on again: `begin` answers
//!   [`Begin::Duplicate`] with the first outcome, or [`Begin::Conflict`]
//!   when the same id came with other content;
//! - an order left `Accepted` by a crash (acted on or not, unknown) is
//!   listed by [`Ledger::unfinished`] for the restarted agent to settle
//!   against the kernel's pins.
//!
//! Files, under the configured folder (`/var/lib/stockade` by default):
//!
//! ```text
//! ledger.redb    tables: meta (schema version), orders (id -> JSON record),
//!                orders_by_received (time ++ id), open_orders (ids in force
//!                or unfinished, so that restart and TTL scans stay small)
//! ledger.redb.new  a new ledger while it is built; removed on open
//! ```
//!
//! Every call blocks on the disk (one or two fsyncs per write): from async
//! code, run it with `tokio::task::spawn_blocking` on a clone of the ledger.

mod clock;
mod inflight;
mod record;
#[cfg(test)]
mod tests;

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use redb::{
    Database, DatabaseError, ReadTransaction, ReadableTable, Table, TableDefinition,
    WriteTransaction,
};

pub use clock::{Clock, ManualClock, SystemClock};
pub use inflight::{InFlight, InFlightGuard};
pub use record::{action, fingerprint, Failure, NewOrder, OrderRecord, OrderState};

/// Where the agent keeps its ledger unless told otherwise.
pub const DEFAULT_DIR: &str = "/var/lib/stockade";

/// The database file inside the ledger folder.
pub const FILE_NAME: &str = "ledger.redb";

/// Where a new database file is built before it takes its real name.
const SPARE_NAME: &str = "ledger.redb.new";

/// Version of the tables and of the record encoding. Raise it when a
/// change needs more than new `#[serde(default)]` fields, and migrate the
/// older versions in `prepare`.
pub const SCHEMA_VERSION: u64 = 1;

// Only `&str`, `&[u8]`, `u64` and `()` appear in the tables: their encoding
// is the same in every redb release since 2.x (tuples and `Option` changed),
// so a move to a newer redb needs no migration of the data.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const ORDERS: TableDefinition<&str, &[u8]> = TableDefinition::new("orders");
const BY_RECEIVED: TableDefinition<&[u8], ()> = TableDefinition::new("orders_by_received");
const OPEN: TableDefinition<&str, ()> = TableDefinition::new("open_orders");
const SCHEMA_KEY: &str = "schema_version";

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("cannot create the ledger folder {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the ledger {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the ledger {path} is open in another process (is another agent running?)")]
    Locked { path: PathBuf },
    #[error("cannot open the ledger {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
    },
    #[error(
        "the ledger {path} has schema version {found}, newer than the {supported} this agent \
         reads: run the newer agent again, or move the file away to start an empty ledger"
    )]
    NewerSchema {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    #[error("the ledger could not {op}")]
    Storage {
        op: &'static str,
        #[source]
        source: Box<redb::Error>,
    },
    #[error("order {id}: the stored record cannot be read")]
    Decode {
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("order {id}: the record cannot be encoded")]
    Encode {
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("order {id} is not in the ledger")]
    NotFound { id: String },
    #[error("order {id} is {from}; it cannot become {to}")]
    Transition {
        id: String,
        from: OrderState,
        to: OrderState,
    },
}

type Result<T, E = LedgerError> = std::result::Result<T, E>;

/// What `begin` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// The id is new: it is now recorded as `Accepted`, and the caller acts.
    New,
    /// The id was seen with the same content: answer with this record's
    /// outcome, do not act.
    Duplicate(OrderRecord),
    /// The id was seen with other content: refuse, do not act.
    Conflict(OrderRecord),
}

/// Which records `list` returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub state: Option<OrderState>,
    pub action: Option<String>,
    pub pod_uid: Option<String>,
    /// At most this many, newest first.
    pub limit: Option<usize>,
}

impl ListFilter {
    fn matches(&self, rec: &OrderRecord) -> bool {
        self.state.is_none_or(|s| s == rec.state)
            && self.action.as_ref().is_none_or(|a| *a == rec.action)
            && self.pod_uid.as_ref().is_none_or(|p| *p == rec.pod_uid)
    }
}

/// The ledger; cheap to clone, clones share the open database.
#[derive(Clone)]
pub struct Ledger {
    db: Arc<Database>,
    path: PathBuf,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("path", &self.path).finish()
    }
}

impl Ledger {
    /// Opens the ledger in `dir`, creating both if needed. After a crash
    /// this recovers the last committed state, which may take a moment.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with_clock(dir, Arc::new(SystemClock))
    }

    /// Like [`Ledger::open`], stamping `updated_at` from `clock`.
    pub fn open_with_clock(dir: &Path, clock: Arc<dyn Clock>) -> Result<Self> {
        create_private_dir(dir)?;
        let path = dir.join(FILE_NAME);
        let spare = dir.join(SPARE_NAME);
        remove_if_present(&spare)?;
        if !exists(&path)? {
            Self::create(&spare, &path, clock.clone())?;
        }

        // Orders carry reasons and references: root only, also where the
        // folder existed already with a wider mode.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(|source| {
            LedgerError::Create {
                path: path.clone(),
                source,
            }
        })?;
        // `open`, never `create`: the file is not initialized in place.
        let db = builder().open(&path).map_err(|e| open_error(&path, e))?;
        let ledger = Self {
            db: Arc::new(db),
            path,
            clock,
        };
        ledger.prepare()?;
        Ok(ledger)
    }

    /// Builds an empty ledger at `spare` and links it to `path`.
    ///
    /// redb refuses for good a file whose creation a crash interrupted (it
    /// is sized before its header is written), so the file only appears
    /// under its real name once it is complete.
    fn create(spare: &Path, path: &Path, clock: Arc<dyn Clock>) -> Result<()> {
        let db = builder().create(spare).map_err(|e| open_error(spare, e))?;
        let empty = Self {
            db: Arc::new(db),
            path: spare.to_owned(),
            clock,
        };
        empty.prepare()?;
        drop(empty);

        let linked = match fs::hard_link(spare, path) {
            // Another agent got there first: its file is complete too.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        };
        linked
            .and_then(|()| fs::remove_file(spare))
            .and_then(|()| sync_parent(path))
            .map_err(|source| LedgerError::Create {
                path: path.to_owned(),
                source,
            })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records `order` as `Accepted`, unless its id is already known.
    /// Atomic: of many concurrent calls with one id, exactly one gets `New`.
    pub fn begin(&self, order: NewOrder) -> Result<Begin> {
        let txn = self.write("begin an order")?;
        let first = load(&open_orders(&txn)?, &order.id)?;
        if let Some(first) = first {
            return Ok(match first.same_content(&order) {
                true => Begin::Duplicate(first),
                false => Begin::Conflict(first),
            });
        }

        let rec = OrderRecord::accepted(order, self.clock.now());
        store(&txn, &rec)?;
        commit(txn, "begin an order")?;
        Ok(Begin::New)
    }

    /// Records the outcome of an order that `begin` accepted: `reply` when
    /// it was carried out, `failure` when it was not. Refused for an order
    /// that already has an outcome, so the first one is never replaced.
    pub fn finish(
        &self,
        id: &str,
        state: OrderState,
        reply: Option<Vec<u8>>,
        failure: Option<Failure>,
    ) -> Result<OrderRecord> {
        self.update(id, "record an outcome", |rec| {
            if rec.state != OrderState::Accepted || state == OrderState::Accepted {
                return Err(transition(rec, state));
            }
            rec.state = state;
            rec.reply = reply;
            rec.failure = failure;
            Ok(())
        })
    }

    /// Moves an order to `state`: an isolation `Released` by a later order
    /// or `Expired` by its TTL. Setting the state it already has succeeds,
    /// so that a step repeated after a crash does not fail.
    pub fn set_state(&self, id: &str, state: OrderState) -> Result<OrderRecord> {
        self.update(id, "change an order's state", |rec| {
            if rec.state != state && !rec.state.may_become(state) {
                return Err(transition(rec, state));
            }
            rec.state = state;
            Ok(())
        })
    }

    /// Like [`Ledger::set_state`], also noting why: a lasting order lifted
    /// because its pod is gone, or an unfinished one settled after a crash.
    pub fn end(&self, id: &str, state: OrderState, why: Failure) -> Result<OrderRecord> {
        self.update(id, "end an order", |rec| {
            if rec.state != state && !rec.state.may_become(state) {
                return Err(transition(rec, state));
            }
            rec.state = state;
            rec.failure = Some(why);
            Ok(())
        })
    }

    /// Sets or clears when a lasting order ends by itself.
    pub fn set_expiry(&self, id: &str, expires_at: Option<SystemTime>) -> Result<OrderRecord> {
        self.update(id, "change an order's expiry", |rec| {
            rec.expires_at = expires_at;
            Ok(())
        })
    }

    pub fn get(&self, id: &str) -> Result<Option<OrderRecord>> {
        let txn = self.read("read an order")?;
        let orders = txn.open_table(ORDERS).map_err(storage("read an order"))?;
        load(&orders, id)
    }

    /// Orders matching `filter`, newest first.
    pub fn list(&self, filter: &ListFilter) -> Result<Vec<OrderRecord>> {
        let op = "list orders";
        let txn = self.read(op)?;
        let orders = txn.open_table(ORDERS).map_err(storage(op))?;
        let by_received = txn.open_table(BY_RECEIVED).map_err(storage(op))?;

        let limit = filter.limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        for entry in by_received.iter().map_err(storage(op))?.rev() {
            if out.len() >= limit {
                break;
            }
            let (key, _) = entry.map_err(storage(op))?;
            let id = id_of_received_key(key.value());
            match load(&orders, &id)? {
                Some(rec) if filter.matches(&rec) => out.push(rec),
                _ => {}
            }
        }
        Ok(out)
    }

    /// Lasting orders (isolations, freezes) that are `Accepted` or
    /// `Enforced`, oldest first: what a restarted agent must find pinned in
    /// the kernel, or apply again from `request`.
    pub fn in_force(&self) -> Result<Vec<OrderRecord>> {
        self.open_where(OrderRecord::in_force)
    }

    /// Orders of any action left `Accepted` by a crash, oldest first: the
    /// agent may or may not have acted on them.
    pub fn unfinished(&self) -> Result<Vec<OrderRecord>> {
        self.open_where(|rec| rec.state == OrderState::Accepted)
    }

    /// Enforced lasting orders whose expiry is at or before `now`.
    pub fn due(&self, now: SystemTime) -> Result<Vec<OrderRecord>> {
        self.open_where(|rec| {
            rec.state == OrderState::Enforced
                && rec.in_force()
                && rec.expires_at.is_some_and(|at| at <= now)
        })
    }

    /// Deletes orders that ended before `before`; returns how many. Orders
    /// in force or unfinished are kept, however old.
    pub fn prune(&self, before: SystemTime) -> Result<usize> {
        let op = "prune old orders";
        let txn = self.write(op)?;
        let ended = ended_before(&txn, before)?;
        {
            let mut orders = open_orders(&txn)?;
            let mut by_received = txn.open_table(BY_RECEIVED).map_err(storage(op))?;
            for (key, id) in &ended {
                orders.remove(id.as_str()).map_err(storage(op))?;
                by_received.remove(key.as_slice()).map_err(storage(op))?;
            }
        }
        commit(txn, op)?;
        Ok(ended.len())
    }

    /// Creates the tables and checks the schema version.
    fn prepare(&self) -> Result<()> {
        let op = "prepare its tables";
        let txn = self.write(op)?;
        self.check_schema(&txn)?;

        txn.open_table(ORDERS).map_err(storage(op))?;
        txn.open_table(BY_RECEIVED).map_err(storage(op))?;
        txn.open_table(OPEN).map_err(storage(op))?;
        commit(txn, op)
    }

    /// Stamps a new ledger with [`SCHEMA_VERSION`]; refuses a newer one.
    fn check_schema(&self, txn: &WriteTransaction) -> Result<()> {
        let op = "read its schema version";
        let mut meta = txn.open_table(META).map_err(storage(op))?;
        let found = meta
            .get(SCHEMA_KEY)
            .map_err(storage(op))?
            .map(|v| v.value());
        match found {
            None => meta
                .insert(SCHEMA_KEY, SCHEMA_VERSION)
                .map(drop)
                .map_err(storage(op)),
            Some(found) if found > SCHEMA_VERSION => Err(LedgerError::NewerSchema {
                path: self.path.clone(),
                found,
                supported: SCHEMA_VERSION,
            }),
            // Version 1 is the first: nothing older to migrate yet.
            Some(_) => Ok(()),
        }
    }

    /// Reads, changes and stores one record in one transaction.
    fn update(
        &self,
        id: &str,
        op: &'static str,
        change: impl FnOnce(&mut OrderRecord) -> Result<()>,
    ) -> Result<OrderRecord> {
        let txn = self.write(op)?;
        let mut rec = load(&open_orders(&txn)?, id)?
            .ok_or_else(|| LedgerError::NotFound { id: id.to_owned() })?;
        change(&mut rec)?;
        rec.updated_at = self.clock.now();

        store(&txn, &rec)?;
        commit(txn, op)?;
        Ok(rec)
    }

    /// The open orders (in force or unfinished) that `keep` selects,
    /// oldest first.
    fn open_where(&self, keep: impl Fn(&OrderRecord) -> bool) -> Result<Vec<OrderRecord>> {
        let op = "list open orders";
        let txn = self.read(op)?;
        let orders = txn.open_table(ORDERS).map_err(storage(op))?;
        let open = txn.open_table(OPEN).map_err(storage(op))?;

        let mut out = Vec::new();
        for entry in open.iter().map_err(storage(op))? {
            let (id, _) = entry.map_err(storage(op))?;
            if let Some(rec) = load(&orders, id.value())?.filter(|r| keep(r)) {
                out.push(rec);
            }
        }
        out.sort_by(|a, b| (a.received_at, &a.id).cmp(&(b.received_at, &b.id)));
        Ok(out)
    }

    fn write(&self, op: &'static str) -> Result<WriteTransaction> {
        let mut txn = self.db.begin_write().map_err(storage(op))?;
        // Two fsyncs per commit instead of one: the commit cannot be torn
        // even by a crafted order whose bytes collide with redb's checksum.
        txn.set_two_phase_commit(true);
        Ok(txn)
    }

    fn read(&self, op: &'static str) -> Result<ReadTransaction> {
        self.db.begin_read().map_err(storage(op))
    }
}

/// Writes `rec` and keeps the two indexes in step with it.
fn store(txn: &WriteTransaction, rec: &OrderRecord) -> Result<()> {
    let op = "store an order";
    let json = serde_json::to_vec(rec).map_err(|source| LedgerError::Encode {
        id: rec.id.clone(),
        source,
    })?;
    open_orders(txn)?
        .insert(rec.id.as_str(), json.as_slice())
        .map_err(storage(op))?;

    let key = received_key(rec.received_at, &rec.id);
    let mut by_received = txn.open_table(BY_RECEIVED).map_err(storage(op))?;
    by_received
        .insert(key.as_slice(), ())
        .map_err(storage(op))?;

    let mut open = txn.open_table(OPEN).map_err(storage(op))?;
    match rec.is_open() {
        true => open.insert(rec.id.as_str(), ()).map(drop),
        false => open.remove(rec.id.as_str()).map(drop),
    }
    .map_err(storage(op))
}

fn load(
    orders: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<OrderRecord>> {
    let Some(json) = orders.get(id).map_err(storage("read an order"))? else {
        return Ok(None);
    };
    serde_json::from_slice(json.value())
        .map(Some)
        .map_err(|source| LedgerError::Decode {
            id: id.to_owned(),
            source,
        })
}

/// The index keys and ids of the orders that ended before `before`.
fn ended_before(txn: &WriteTransaction, before: SystemTime) -> Result<Vec<(Vec<u8>, String)>> {
    let op = "prune old orders";
    let orders = open_orders(txn)?;
    let by_received = txn.open_table(BY_RECEIVED).map_err(storage(op))?;
    // Received after `before` means updated after it too: not looked at.
    let end = unix_nanos(before).to_be_bytes();

    let mut out = Vec::new();
    for entry in by_received.range(..end.as_slice()).map_err(storage(op))? {
        let (key, _) = entry.map_err(storage(op))?;
        let id = id_of_received_key(key.value());
        let ended =
            load(&orders, &id)?.is_some_and(|r| r.state.is_final() && r.updated_at < before);
        if ended {
            out.push((key.value().to_vec(), id));
        }
    }
    Ok(out)
}

fn open_orders<'txn>(
    txn: &'txn WriteTransaction,
) -> Result<Table<'txn, &'static str, &'static [u8]>> {
    txn.open_table(ORDERS)
        .map_err(storage("open the orders table"))
}

fn commit(txn: WriteTransaction, op: &'static str) -> Result<()> {
    txn.commit().map_err(storage(op))
}

/// Index key that sorts by reception time: big-endian nanoseconds, then id.
fn received_key(at: SystemTime, id: &str) -> Vec<u8> {
    let mut key = unix_nanos(at).to_be_bytes().to_vec();
    key.extend_from_slice(id.as_bytes());
    key
}

fn id_of_received_key(key: &[u8]) -> String {
    String::from_utf8_lossy(key.get(8..).unwrap_or_default()).into_owned()
}

/// Nanoseconds since 1970, saturating: u64 lasts until the year 2554.
fn unix_nanos(at: SystemTime) -> u64 {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
}

fn create_private_dir(dir: &Path) -> Result<()> {
    // Orders carry reasons and references from incident tooling: root only.
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| LedgerError::CreateDir {
            path: dir.to_owned(),
            source,
        })
}

fn builder() -> redb::Builder {
    let mut builder = redb::Builder::new();
    // The format every redb from 3.0 on reads; 2.x writes it when asked.
    builder.create_with_file_format_v3(true);
    builder
}

fn exists(path: &Path) -> Result<bool> {
    path.try_exists().map_err(|source| LedgerError::Create {
        path: path.to_owned(),
        source,
    })
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(LedgerError::Create {
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Makes a new name in the folder durable, not only the file's contents.
fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

fn open_error(path: &Path, err: DatabaseError) -> LedgerError {
    match err {
        DatabaseError::DatabaseAlreadyOpen => LedgerError::Locked {
            path: path.to_owned(),
        },
        other => LedgerError::Open {
            path: path.to_owned(),
            source: Box::new(other.into()),
        },
    }
}

fn storage<E: Into<redb::Error>>(op: &'static str) -> impl FnOnce(E) -> LedgerError {
    move |err| LedgerError::Storage {
        op,
        source: Box::new(err.into()),
    }
}

fn transition(rec: &OrderRecord, to: OrderState) -> LedgerError {
    LedgerError::Transition {
        id: rec.id.clone(),
        from: rec.state,
        to,
    }
}
