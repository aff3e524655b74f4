//! What a peer keeps across restarts, in one embedded redb database (`DATA_DIR/store.redb`)
//! and the journal in front of it (`DATA_DIR/store.redb.journal.N`, see [`Store::append`]).
//!
//! - **blobs**: modules, inputs and results by BLAKE3 id. A blob is stored only if its bytes hash
//!   to its id, so a corrupt transfer can never be served on.
//! - **manifests**: every job this peer knows, by job id (the manifest's canonical encoding).
//! - **commits**: signed commits this peer holds, keyed by (unit, signer), as the opaque
//!   bytes the scheduler produced; replayed into a fresh scheduler on restart. Units are keyed
//!   in ring order (see `unit_key`), so a group commit's inserts land in few B-tree leaves.
//! - **jobs**: the submitter's own jobs and their state, so a restarted submitter resumes them.
//! - **announces**: each job's announcement as received (the scheduler's wire bytes: manifest,
//!   submitter, holders), replayed into a fresh scheduler on restart.
//! - **verified**: units this peer saw reach quorum, with the agreed result id (keyed in ring
//!   order too).
//! - **totals**: running counts kept in the same transactions as the tables they count (the
//!   blobs and their bytes), so reporting them does not read every blob.
//!
//! Every write is durable once its method returns: a SIGKILL loses nothing. Writes that
//! belong together go through [`Store::write`] as one redb transaction. The hot writes of a
//! busy peer (result records, commits, verified units, fetched blobs) go through
//! [`Store::append`] instead: journalled with one file write, readable from memory at once,
//! and moved into redb in large batches by a background thread (see `store_journal` for why
//! and how a restart recovers them). How far
//! "durable" reaches is the store's [`Durability`]: by default a commit is handed to the
//! operating system (it survives the process being killed, not a power cut); with
//! [`Durability::Disk`] every durable commit is also flushed to the disk (fsync).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use ova_jobs::{BlobId, JobId, Manifest, UnitId};
use ova_scheduler::placement::unit_point;
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle,
};

pub use crate::store_file::Durability;
use crate::store_file::StoreFile;
use crate::store_journal::{Entry, JournalFile, Segment};

const BLOBS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("blobs");
const MANIFESTS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("manifests");
const COMMITS: TableDefinition<&[u8; 64], &[u8]> = TableDefinition::new("commits_by_point");
const JOBS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("jobs");
const ANNOUNCES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("announces");
const VERIFIED: TableDefinition<&[u8; 32], &[u8; 32]> = TableDefinition::new("verified_by_point");
/// Running totals kept beside the tables they count, updated in the same transaction as the
/// tables: [`BLOB_TOTALS`] is (blobs, bytes) in [`BLOBS`], so reporting them (a metric the
/// runtime refreshes whenever blobs arrive) reads one row instead of every blob.
const TOTALS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("totals");
/// The [`TOTALS`] row for [`BLOBS`].
const BLOB_TOTALS: &str = "blobs";
/// The tables of commits and verified units before their keys were put in ring order
/// ([`unit_key`]): moved into the new ones when a store is opened.
const OLD_COMMITS: TableDefinition<&[u8; 64], &[u8]> = TableDefinition::new("commits");
const OLD_VERIFIED: TableDefinition<&[u8; 32], &[u8; 32]> = TableDefinition::new("verified");

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error (IO, corruption, …).
    #[error("store: {0}")]
    Db(String),
    /// Bytes offered under an id they do not hash to.
    #[error("blob {declared} rejected: its bytes hash to {actual}")]
    HashMismatch {
        /// Id claimed.
        declared: BlobId,
        /// Hash of the bytes.
        actual: BlobId,
    },
    /// A stored record no longer decodes (written by an incompatible version?).
    #[error("store record {what} is unreadable: {why}")]
    Corrupt {
        /// Which record.
        what: String,
        /// Why.
        why: String,
    },
}

fn dberr<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Db(e.to_string())
}

/// A unit's key in the commits and verified tables: its id with the first 8 bytes replaced by
/// its ring point ([`unit_point`]) in big-endian order, so keys sort as the ring does.
///
/// A peer walks its arc of the ring in order ([`ova_scheduler::Peer`]'s region scan), so the
/// units one group commit records lie close together on the ring. Keyed by the plain id (in
/// effect a random order) every insert copied and rewrote a B-tree leaf of its own; in ring
/// order neighbouring inserts share leaves. Measured with redb alone, 100 commit-sized
/// inserts per durable transaction took 4.3 µs each at random and 1.2 µs in order. (The id's
/// first 8 bytes are the point's little-endian bytes, so the key is still a bijection of
/// the id: nothing else changes.)
fn unit_key(unit: &UnitId) -> [u8; 32] {
    let mut k = unit.0;
    k[..8].copy_from_slice(&unit_point(unit).to_be_bytes());
    k
}

fn commit_key(unit: &UnitId, signer: &[u8; 32]) -> [u8; 64] {
    crate::store_journal::commit_key(&unit_key(unit), signer)
}

/// Moves the entries of the tables keyed by plain unit ids (stores written before the keys
/// were put in ring order) into the new tables, and drops the old ones.
fn move_to_ring_order(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    let has = |name: &str| -> Result<bool, StoreError> {
        Ok(tx.list_tables().map_err(dberr)?.any(|t| t.name() == name))
    };
    if has(OLD_COMMITS.name())? {
        let mut new = tx.open_table(COMMITS).map_err(dberr)?;
        let old = tx.open_table(OLD_COMMITS).map_err(dberr)?;
        for e in old.iter().map_err(dberr)? {
            let (k, v) = e.map_err(dberr)?;
            let (unit, signer) = k.value().split_at(32);
            let (mut id, mut by) = ([0u8; 32], [0u8; 32]);
            id.copy_from_slice(unit);
            by.copy_from_slice(signer);
            new.insert(&commit_key(&UnitId(id), &by), v.value()).map_err(dberr)?;
        }
        drop(old);
        tx.delete_table(OLD_COMMITS).map_err(dberr)?;
    }
    if has(OLD_VERIFIED.name())? {
        let mut new = tx.open_table(VERIFIED).map_err(dberr)?;
        let old = tx.open_table(OLD_VERIFIED).map_err(dberr)?;
        for e in old.iter().map_err(dberr)? {
            let (k, v) = e.map_err(dberr)?;
            new.insert(&unit_key(&UnitId(*k.value())), v.value()).map_err(dberr)?;
        }
        drop(old);
        tx.delete_table(OLD_VERIFIED).map_err(dberr)?;
    }
    Ok(())
}

/// A signer's public key and the opaque bytes of its commit.
pub type CommitEntry = ([u8; 32], Vec<u8>);

/// The peer's persistent store.
#[derive(Debug)]
pub struct Store {
    db: Arc<Database>,
    /// Deferred (not yet durable) writes happened since the last sync.
    dirty: std::sync::atomic::AtomicBool,
    /// The journal and the writes not yet checkpointed into `db`.
    hot: Arc<Hot>,
}

/// A journal segment's size (bytes of records, or entries) at which it is checkpointed.
/// Larger checkpoints share more B-tree leaves, but hold more memory and leave more work to
/// after a burst: at 16,384 entries, a quarter of the P4 bench's checkpoint work came after
/// its job was verified.
const CHECKPOINT_BYTES: usize = 4 << 20;
/// See [`CHECKPOINT_BYTES`].
const CHECKPOINT_ENTRIES: usize = 4_096;

/// The journalled writes of a store ([`Store::append`]) and their checkpoints.
#[derive(Debug)]
struct Hot {
    state: Mutex<HotState>,
    /// Signalled when a checkpoint ends.
    checkpointed: Condvar,
    /// The store's file (journal files are named after it).
    path: PathBuf,
    durability: Durability,
    /// Checkpoint when a segment holds this many bytes or entries.
    limit: (usize, usize),
    /// The read snapshot that reads of blobs and verified units share (see [`Hot::reader`]),
    /// and how many database commits have made one stale so far.
    reads: Mutex<(u64, Option<Arc<Snapshot>>)>,
}

/// A read transaction's hot tables, opened once and shared by reads until the next database
/// commit. A redb read (a transaction begun, a table opened, a lookup) cost about three times
/// the lookup alone, and a busy worker reads a unit's input, and looks up whether a unit is
/// already verified, for every unit it runs.
struct Snapshot {
    blobs: redb::ReadOnlyTable<&'static [u8; 32], &'static [u8]>,
    verified: redb::ReadOnlyTable<&'static [u8; 32], &'static [u8; 32]>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Snapshot")
    }
}

#[derive(Debug)]
struct HotState {
    /// Writes since the last checkpoint began; in `journal`.
    active: Segment,
    /// Writes a checkpoint is moving into the database; in an earlier journal file.
    frozen: Option<Arc<Segment>>,
    journal: JournalFile,
    /// `journal` has records not yet flushed to the disk (only tracked with
    /// [`Durability::Disk`]).
    unsynced: bool,
    /// The running (or last) checkpoint thread.
    checkpointer: Option<JoinHandle<()>>,
    /// Why the last checkpoint failed: appends are refused until the store is reopened
    /// (which replays the journals).
    failed: Option<String>,
}

/// Why appends are refused: an earlier checkpoint failed.
fn refused(st: &HotState) -> Option<StoreError> {
    st.failed.as_ref().map(|why| StoreError::Db(format!("store checkpoint failed: {why}")))
}

impl Hot {
    fn lock(&self) -> MutexGuard<'_, HotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A snapshot of `db` that holds every commit made before the last
    /// [`Hot::invalidate_reads`] (the shared one, or a new one). Callers look in the journal's
    /// memory first and come here for what is not there: a segment leaves memory only after
    /// its checkpoint committed and invalidated the snapshot, so the snapshot then has it.
    fn reader(&self, db: &Database) -> Result<Arc<Snapshot>, StoreError> {
        let reads = || self.reads.lock().unwrap_or_else(|e| e.into_inner());
        let seen = {
            let r = reads();
            if let Some(s) = &r.1 {
                return Ok(s.clone());
            }
            r.0
        };
        let tx = db.begin_read().map_err(dberr)?;
        let snap = Arc::new(Snapshot {
            blobs: tx.open_table(BLOBS).map_err(dberr)?,
            verified: tx.open_table(VERIFIED).map_err(dberr)?,
        });
        // Shared only if no commit came in between (else it may predate that commit).
        let mut r = reads();
        if r.0 == seen && r.1.is_none() {
            r.1 = Some(snap.clone());
        }
        Ok(snap)
    }

    /// A database commit happened: later reads take a new snapshot. (Dropping the old one
    /// also lets redb reuse the pages only it still saw.)
    fn invalidate_reads(&self) {
        let mut r = self.reads.lock().unwrap_or_else(|e| e.into_inner());
        r.0 += 1;
        r.1 = None;
    }

    /// A blob held in memory.
    fn blob(&self, id: &[u8; 32]) -> Option<Vec<u8>> {
        let st = self.lock();
        st.active.blobs.get(id).or_else(|| st.frozen.as_ref()?.blobs.get(id)).cloned()
    }

    /// Starts the next journal file and makes it the one appends go to; returns the path of
    /// the file it replaces.
    fn rotate(&self, st: &mut HotState) -> Result<PathBuf, StoreError> {
        let next =
            JournalFile::create(&self.path, st.journal.n + 1, self.durability == Durability::Disk)
                .map_err(dberr)?;
        let done = std::mem::replace(&mut st.journal, next);
        Ok(crate::store_journal::path(&self.path, done.n))
    }

    /// `seg` has reached the checkpoint limit.
    fn full(&self, seg: &Segment) -> bool {
        seg.bytes >= self.limit.0 || seg.entries >= self.limit.1
    }

    fn has_blob(&self, st: &HotState, id: &[u8; 32]) -> bool {
        st.active.blobs.contains_key(id)
            || st.frozen.as_ref().is_some_and(|f| f.blobs.contains_key(id))
    }
}

/// Refuses bytes offered as blob `id` that do not hash to it.
fn check_blob(id: BlobId, bytes: &[u8]) -> Result<(), StoreError> {
    let actual = BlobId::of(bytes);
    if actual == id { Ok(()) } else { Err(StoreError::HashMismatch { declared: id, actual }) }
}

/// Hot writes that go together ([`Store::append`]).
#[derive(Debug, Default)]
pub struct Batch {
    entries: Vec<Entry>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds blob `id`, refusing bytes that do not hash to `id`.
    pub fn blob_checked(&mut self, id: BlobId, bytes: Vec<u8>) -> Result<(), StoreError> {
        check_blob(id, &bytes)?;
        self.entries.push(Entry::Blob { id: id.0, bytes });
        Ok(())
    }

    /// Adds a signed commit (opaque bytes) for `unit` by `signer`.
    pub fn commit(&mut self, unit: &UnitId, signer: &[u8; 32], bytes: Vec<u8>) {
        self.entries.push(Entry::Commit { unit: unit_key(unit), signer: *signer, bytes });
    }

    /// Adds that `unit` was verified with result `result`.
    pub fn verified(&mut self, unit: &UnitId, result: &BlobId) {
        self.entries.push(Entry::Verified { unit: unit_key(unit), result: result.0 });
    }

    /// Nothing added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Moves a journal segment's writes into the database in one durable transaction, in key
/// order.
fn checkpoint(db: &Database, seg: &Segment) -> Result<(), StoreError> {
    let tx = db.begin_write().map_err(dberr)?;
    {
        let w = Write::new(&tx);
        let mut ids: Vec<&[u8; 32]> = seg.blobs.keys().collect();
        ids.sort_unstable();
        for id in ids {
            w.put_hashed(BlobId(*id), &seg.blobs[id])?;
        }
        for (k, v) in &seg.commits {
            w.commits.with(&tx, |t| t.insert(k, v.as_slice()).map(drop))?;
        }
        let mut units: Vec<(&[u8; 32], &[u8; 32])> = seg.verified.iter().collect();
        units.sort_unstable();
        for (k, v) in units {
            w.verified.with(&tx, |t| t.insert(k, v).map(drop))?;
        }
        w.finish()?;
    }
    tx.commit().map_err(dberr)
}

/// Gives a store its blob totals if it has none (new, or written before they were kept):
/// counted once, here, by reading every blob.
fn count_blobs_once(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut totals = tx.open_table(TOTALS).map_err(dberr)?;
    if totals.get(BLOB_TOTALS).map_err(dberr)?.is_some() {
        return Ok(());
    }
    let blobs = tx.open_table(BLOBS).map_err(dberr)?;
    let mut bytes = 0;
    for e in blobs.iter().map_err(dberr)? {
        bytes += e.map_err(dberr)?.1.value().len() as u64;
    }
    let count = blobs.len().map_err(dberr)?;
    totals.insert(BLOB_TOTALS, (count, bytes)).map_err(dberr)?;
    Ok(())
}

/// Applies journalled batches to the database (replay on open), in one durable transaction.
fn replay(db: &Database, batches: Vec<Vec<Entry>>) -> Result<(), StoreError> {
    let mut seg = Segment::default();
    for e in batches.into_iter().flatten() {
        seg.apply(e);
    }
    if seg.is_empty() { Ok(()) } else { checkpoint(db, &seg) }
}

/// One write transaction: everything in it lands together or not at all.
///
/// Each table is opened once per transaction, on its first write, and kept open until the
/// transaction ends: a group commit writes hundreds of records, and opening (and closing) a
/// table for each cost about a quarter as much as the inserts themselves (P4 profile).
pub struct Write<'a> {
    tx: &'a redb::WriteTransaction,
    blobs: OpenTable<'a, &'static [u8; 32], &'static [u8]>,
    commits: OpenTable<'a, &'static [u8; 64], &'static [u8]>,
    verified: OpenTable<'a, &'static [u8; 32], &'static [u8; 32]>,
    /// Blobs (count, bytes) this transaction added, for [`BLOB_TOTALS`] ([`Write::finish`]).
    added: std::cell::Cell<(u64, u64)>,
}

/// A table of a write transaction, opened on first use.
struct OpenTable<'a, K: redb::Key + 'static, V: redb::Value + 'static> {
    def: TableDefinition<'static, K, V>,
    table: std::cell::RefCell<Option<redb::Table<'a, K, V>>>,
}

impl<'a, K: redb::Key + 'static, V: redb::Value + 'static> OpenTable<'a, K, V> {
    fn new(def: TableDefinition<'static, K, V>) -> Self {
        Self { def, table: std::cell::RefCell::new(None) }
    }

    /// Runs `f` on the table, opening it in `tx` first if this is its first use.
    fn with<T>(
        &self,
        tx: &'a redb::WriteTransaction,
        f: impl FnOnce(&mut redb::Table<'a, K, V>) -> Result<T, redb::StorageError>,
    ) -> Result<T, StoreError> {
        let mut slot = self.table.borrow_mut();
        let table = match &mut *slot {
            Some(t) => t,
            None => slot.insert(tx.open_table(self.def).map_err(dberr)?),
        };
        f(table).map_err(dberr)
    }
}

impl<'a> Write<'a> {
    fn new(tx: &'a redb::WriteTransaction) -> Self {
        Self {
            tx,
            blobs: OpenTable::new(BLOBS),
            commits: OpenTable::new(COMMITS),
            verified: OpenTable::new(VERIFIED),
            added: std::cell::Cell::new((0, 0)),
        }
    }

    /// Adds what this transaction stored to the running totals; the last step of every
    /// transaction that may have written blobs.
    fn finish(self) -> Result<(), StoreError> {
        let (count, bytes) = self.added.get();
        if count == 0 {
            return Ok(());
        }
        let mut t = self.tx.open_table(TOTALS).map_err(dberr)?;
        let (c, b) = t.get(BLOB_TOTALS).map_err(dberr)?.map_or((0, 0), |v| v.value());
        t.insert(BLOB_TOTALS, (c + count, b + bytes)).map_err(dberr)?;
        Ok(())
    }

    /// Stores `bytes` under its hash; returns the id.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<BlobId, StoreError> {
        let id = BlobId::of(bytes);
        self.put_hashed(id, bytes)?;
        Ok(id)
    }

    /// Stores `bytes` as blob `id`, refusing bytes that do not hash to `id`.
    pub fn put_blob_checked(&self, id: BlobId, bytes: &[u8]) -> Result<(), StoreError> {
        check_blob(id, bytes)?;
        self.put_hashed(id, bytes)
    }

    /// Stores `bytes` under `id`, their hash (computed by the caller: once per blob). A blob
    /// already held is left as it is (same id, same bytes), so its pages are not rewritten.
    fn put_hashed(&self, id: BlobId, bytes: &[u8]) -> Result<(), StoreError> {
        self.blobs.with(self.tx, |t| {
            if t.get(&id.0)?.is_none() {
                t.insert(&id.0, bytes)?;
                let (c, b) = self.added.get();
                self.added.set((c + 1, b + bytes.len() as u64));
            }
            Ok(())
        })
    }

    /// Stores a manifest; returns its job id.
    pub fn put_manifest(&self, m: &Manifest) -> Result<JobId, StoreError> {
        let bytes = m.encode();
        let id = JobId::of_manifest_bytes(&bytes);
        self.tx
            .open_table(MANIFESTS)
            .map_err(dberr)?
            .insert(&id.0, bytes.as_slice())
            .map_err(dberr)?;
        Ok(id)
    }

    /// Stores a signed commit (opaque bytes) for `unit` by `signer`.
    pub fn put_commit(
        &self,
        unit: &UnitId,
        signer: &[u8; 32],
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        self.commits.with(self.tx, |t| t.insert(&commit_key(unit, signer), bytes).map(drop))
    }

    /// Records a submitted job's state (opaque bytes owned by the caller).
    pub fn put_job(&self, job: &JobId, state: &[u8]) -> Result<(), StoreError> {
        self.tx.open_table(JOBS).map_err(dberr)?.insert(&job.0, state).map_err(dberr)?;
        Ok(())
    }

    /// Stores a job's announcement (opaque wire bytes).
    pub fn put_announce(&self, job: &JobId, bytes: &[u8]) -> Result<(), StoreError> {
        self.tx.open_table(ANNOUNCES).map_err(dberr)?.insert(&job.0, bytes).map_err(dberr)?;
        Ok(())
    }

    /// Records that `unit` was verified with result `result`.
    pub fn put_verified(&self, unit: &UnitId, result: &BlobId) -> Result<(), StoreError> {
        self.verified.with(self.tx, |t| t.insert(&unit_key(unit), &result.0).map(drop))
    }
}

impl Store {
    /// Opens (or creates) the store at `path`, with the default [`Durability`] (a commit
    /// survives the process being killed).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, Durability::default())
    }

    /// Opens (or creates) the store at `path`; `durability` says what a durable commit
    /// survives.
    pub fn open_with(path: impl AsRef<Path>, durability: Durability) -> Result<Self, StoreError> {
        Self::open_limited(path, durability, (CHECKPOINT_BYTES, CHECKPOINT_ENTRIES))
    }

    /// [`Store::open_with`], checkpointing the journal at `limit` (bytes, entries).
    fn open_limited(
        path: impl AsRef<Path>,
        durability: Durability,
        limit: (usize, usize),
    ) -> Result<Self, StoreError> {
        let file = StoreFile::open(path.as_ref(), durability).map_err(dberr)?;
        let db = redb::Builder::new().create_with_backend(file).map_err(dberr)?;
        // Create every table up front so readers never meet a missing one.
        let tx = db.begin_write().map_err(dberr)?;
        tx.open_table(BLOBS).map_err(dberr)?;
        tx.open_table(MANIFESTS).map_err(dberr)?;
        tx.open_table(COMMITS).map_err(dberr)?;
        tx.open_table(JOBS).map_err(dberr)?;
        tx.open_table(VERIFIED).map_err(dberr)?;
        tx.open_table(ANNOUNCES).map_err(dberr)?;
        move_to_ring_order(&tx)?;
        count_blobs_once(&tx)?;
        tx.commit().map_err(dberr)?;
        let db = Arc::new(db);
        // Journals a process left behind (killed, or its last checkpoint failed): replayed
        // oldest first, then deleted.
        let path = path.as_ref().to_path_buf();
        let old = crate::store_journal::existing(&path).map_err(dberr)?;
        let mut batches = Vec::new();
        for (_, file) in &old {
            let bytes = std::fs::read(file).map_err(dberr)?;
            let (found, cut) = crate::store_journal::decode_all(&bytes);
            if cut {
                tracing::warn!(
                    journal = %file.display(),
                    records = found.len(),
                    "store journal ends in a cut or damaged record; replayed up to it"
                );
            }
            batches.extend(found);
        }
        replay(&db, batches)?;
        for (_, file) in &old {
            std::fs::remove_file(file).map_err(dberr)?;
        }
        let next = old.last().map_or(0, |(n, _)| n + 1);
        let journal =
            JournalFile::create(&path, next, durability == Durability::Disk).map_err(dberr)?;
        let hot = Hot {
            state: Mutex::new(HotState {
                active: Segment::default(),
                frozen: None,
                journal,
                unsynced: false,
                checkpointer: None,
                failed: None,
            }),
            checkpointed: Condvar::new(),
            path,
            durability,
            limit,
            reads: Mutex::new((0, None)),
        };
        Ok(Self { db, dirty: std::sync::atomic::AtomicBool::new(false), hot: Arc::new(hot) })
    }

    /// Journals `batch`: once this returns its writes survive the process being killed (with
    /// [`Durability::Disk`], a power cut too once [`Store::sync`] followed, or at once with
    /// `sync`), and every read sees them. Cheap: one file write; the writes reach the
    /// database with a later checkpoint. Waits only if the journal's memory is full while a
    /// checkpoint still runs.
    pub fn append(&self, batch: Batch, sync: bool) -> Result<(), StoreError> {
        if batch.is_empty() {
            return if sync { self.sync_journal() } else { Ok(()) };
        }
        let Some(record) = crate::store_journal::encode(&batch.entries) else {
            return Err(StoreError::Db(
                "a batch of over 4 GiB does not fit a journal record".into(),
            ));
        };
        let hot = &self.hot;
        let mut st = hot.lock();
        // Bounded memory: a second full segment waits for the first one's checkpoint.
        while st.frozen.is_some() && st.failed.is_none() && hot.full(&st.active) {
            st = hot.checkpointed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if let Some(e) = refused(&st) {
            return Err(e);
        }
        st.journal.append(&record).map_err(dberr)?;
        if hot.durability == Durability::Disk {
            if sync {
                st.journal.sync().map_err(dberr)?;
                st.unsynced = false;
            } else {
                st.unsynced = true;
            }
        }
        for e in batch.entries {
            st.active.apply(e);
        }
        if st.frozen.is_none() && hot.full(&st.active) {
            self.start_checkpoint(&mut st)?;
        }
        Ok(())
    }

    /// Freezes the active segment, starts a new journal file and checkpoints the frozen
    /// segment on a thread of its own.
    fn start_checkpoint(&self, st: &mut HotState) -> Result<(), StoreError> {
        let hot = &self.hot;
        if hot.durability == Durability::Disk && st.unsynced {
            st.journal.sync().map_err(dberr)?;
            st.unsynced = false;
        }
        let sealed = hot.rotate(st)?;
        let frozen = Arc::new(std::mem::take(&mut st.active));
        st.frozen = Some(frozen.clone());
        if let Some(last) = st.checkpointer.take() {
            // It ended (it clears `frozen` as its last step); this only reaps the thread.
            let _ = last.join();
        }
        let (db, hot) = (self.db.clone(), self.hot.clone());
        let spawned =
            std::thread::Builder::new().name("ova-store-checkpoint".into()).spawn(move || {
                let done = checkpoint(&db, &frozen);
                hot.invalidate_reads();
                let done = done.and_then(|()| std::fs::remove_file(&sealed).map_err(dberr));
                let mut st = hot.lock();
                match done {
                    Ok(()) => st.frozen = None,
                    Err(e) => {
                        tracing::error!("store checkpoint: {e}");
                        st.failed = Some(e.to_string());
                    }
                }
                hot.checkpointed.notify_all();
            });
        match spawned {
            Ok(thread) => {
                st.checkpointer = Some(thread);
                Ok(())
            }
            Err(e) => {
                // Nothing will clear `frozen`: refuse further appends rather than let them
                // wait for it (the journals hold everything; a reopen replays them).
                st.failed = Some(format!("cannot start a checkpoint thread: {e}"));
                Err(dberr(e))
            }
        }
    }

    /// Flushes the journal to the disk if [`Durability::Disk`] asks for it.
    fn sync_journal(&self) -> Result<(), StoreError> {
        if self.hot.durability == Durability::Disk {
            let mut st = self.hot.lock();
            if st.unsynced {
                st.journal.sync().map_err(dberr)?;
                st.unsynced = false;
            }
        }
        Ok(())
    }

    /// Moves every journalled write into the database now (waiting for a running
    /// checkpoint first) and deletes the journal files; used on close.
    pub fn checkpoint_now(&self) -> Result<(), StoreError> {
        let hot = &self.hot;
        let mut st = hot.lock();
        while st.frozen.is_some() && st.failed.is_none() {
            st = hot.checkpointed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if let Some(e) = refused(&st) {
            return Err(e);
        }
        if st.active.is_empty() {
            return Ok(());
        }
        let done = checkpoint(&self.db, &st.active);
        hot.invalidate_reads();
        done?;
        let done = hot.rotate(&mut st)?;
        std::fs::remove_file(done).map_err(dberr)?;
        st.active = Segment::default();
        st.unsynced = false;
        Ok(())
    }

    /// Runs `f` in one write transaction that is not yet durable: it survives a crash only
    /// once [`Store::sync`] (or any durable write) has followed. Cheap (redb keeps it from the
    /// file until then), so hot paths batch many of these behind one `sync` (group commit).
    pub fn write_deferred<T>(
        &self,
        f: impl FnOnce(&Write<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut tx = self.db.begin_write().map_err(dberr)?;
        tx.set_durability(redb::Durability::None).map_err(dberr)?;
        let w = Write::new(&tx);
        let out = f(&w)?;
        w.finish()?;
        tx.commit().map_err(dberr)?;
        self.hot.invalidate_reads();
        self.dirty.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(out)
    }

    /// Makes every earlier [`Store::write_deferred`] durable (one commit, written to the file;
    /// flushed to the disk with [`Durability::Disk`], as the journal is); a no-op when there
    /// is nothing to persist.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.sync_journal()?;
        if self.dirty.swap(false, std::sync::atomic::Ordering::SeqCst) {
            let tx = self.db.begin_write().map_err(dberr)?;
            tx.commit().map_err(dberr)?;
        }
        Ok(())
    }

    /// Runs `f` in one durable write transaction.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&Write<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let tx = self.db.begin_write().map_err(dberr)?;
        let w = Write::new(&tx);
        let out = f(&w)?;
        w.finish()?;
        // A durable commit also makes every earlier deferred one durable. (Cleared while
        // this transaction holds the write lock, so no deferred write slips in between.)
        let was_dirty = self.dirty.swap(false, std::sync::atomic::Ordering::SeqCst);
        if let Err(e) = tx.commit() {
            self.dirty.fetch_or(was_dirty, std::sync::atomic::Ordering::SeqCst);
            return Err(dberr(e));
        }
        self.hot.invalidate_reads();
        Ok(out)
    }

    /// Stores one blob (its own transaction).
    pub fn put_blob(&self, bytes: &[u8]) -> Result<BlobId, StoreError> {
        self.write(|w| w.put_blob(bytes))
    }

    /// Stores one blob checked against `id` (its own transaction).
    pub fn put_blob_checked(&self, id: BlobId, bytes: &[u8]) -> Result<(), StoreError> {
        self.write(|w| w.put_blob_checked(id, bytes))
    }

    /// A blob's bytes.
    pub fn blob(&self, id: &BlobId) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(bytes) = self.hot.blob(&id.0) {
            return Ok(Some(bytes));
        }
        let t = &self.hot.reader(&self.db)?.blobs;
        Ok(t.get(&id.0).map_err(dberr)?.map(|v| v.value().to_vec()))
    }

    /// Several blobs' bytes, in the order asked, read in one transaction.
    pub fn blobs(&self, ids: &[BlobId]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let mut out: Vec<Option<Vec<u8>>> = ids.iter().map(|id| self.hot.blob(&id.0)).collect();
        if out.iter().all(Option::is_some) {
            return Ok(out);
        }
        let t = &self.hot.reader(&self.db)?.blobs;
        for (slot, id) in out.iter_mut().zip(ids) {
            if slot.is_none() {
                *slot = t.get(&id.0).map_err(dberr)?.map(|v| v.value().to_vec());
            }
        }
        Ok(out)
    }

    /// Whether a blob is here.
    pub fn has_blob(&self, id: &BlobId) -> Result<bool, StoreError> {
        Ok(self.missing_blobs(std::slice::from_ref(id))?.is_empty())
    }

    /// Those of `ids` not here, in the order given (one read transaction).
    pub fn missing_blobs(&self, ids: &[BlobId]) -> Result<Vec<BlobId>, StoreError> {
        let not_hot: Vec<BlobId> = {
            let st = self.hot.lock();
            ids.iter().filter(|id| !self.hot.has_blob(&st, &id.0)).copied().collect()
        };
        if not_hot.is_empty() {
            return Ok(not_hot);
        }
        let t = &self.hot.reader(&self.db)?.blobs;
        let mut missing = Vec::new();
        for id in not_hot {
            if t.get(&id.0).map_err(dberr)?.is_none() {
                missing.push(id);
            }
        }
        Ok(missing)
    }

    /// Number of blobs and their total size: the database's running totals, and the journalled
    /// blobs it does not hold yet (the cost grows with the journal, not with the store).
    pub fn blob_stats(&self) -> Result<(u64, u64), StoreError> {
        // Journalled blobs, each once; taken before the database is read (see `commits_in`).
        let hot: Vec<([u8; 32], u64)> = {
            let st = self.hot.lock();
            let mut seen = HashSet::new();
            let frozen = st.frozen.iter().flat_map(|f| f.blobs.iter());
            st.active
                .blobs
                .iter()
                .chain(frozen)
                .filter(|(id, _)| seen.insert(**id))
                .map(|(id, b)| (*id, b.len() as u64))
                .collect()
        };
        let tx = self.db.begin_read().map_err(dberr)?;
        let t = tx.open_table(BLOBS).map_err(dberr)?;
        let totals = tx.open_table(TOTALS).map_err(dberr)?;
        let (mut count, mut bytes) =
            totals.get(BLOB_TOTALS).map_err(dberr)?.map_or((0, 0), |v| v.value());
        for (id, len) in hot {
            if t.get(&id).map_err(dberr)?.is_none() {
                count += 1;
                bytes += len;
            }
        }
        Ok((count, bytes))
    }

    /// A manifest by job id.
    pub fn manifest(&self, job: &JobId) -> Result<Option<Manifest>, StoreError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let t = tx.open_table(MANIFESTS).map_err(dberr)?;
        let Some(v) = t.get(&job.0).map_err(dberr)? else { return Ok(None) };
        Manifest::decode(v.value()).map(Some).map_err(|e| StoreError::Corrupt {
            what: format!("manifest {job}"),
            why: e.to_string(),
        })
    }

    /// Every manifest held.
    pub fn manifests(&self) -> Result<Vec<(JobId, Manifest)>, StoreError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let t = tx.open_table(MANIFESTS).map_err(dberr)?;
        let mut out = Vec::new();
        for e in t.iter().map_err(dberr)? {
            let (k, v) = e.map_err(dberr)?;
            let id = JobId(*k.value());
            let m = Manifest::decode(v.value()).map_err(|e| StoreError::Corrupt {
                what: format!("manifest {id}"),
                why: e.to_string(),
            })?;
            out.push((id, m));
        }
        Ok(out)
    }

    /// Every commit held for `unit`: (signer, bytes).
    pub fn commits_for(&self, unit: &UnitId) -> Result<Vec<CommitEntry>, StoreError> {
        let lo = commit_key(unit, &[0; 32]);
        let hi = commit_key(unit, &[0xff; 32]);
        let found = self.commits_in(&lo, &hi)?;
        Ok(found
            .into_iter()
            .map(|(k, v)| {
                let mut signer = [0u8; 32];
                signer.copy_from_slice(&k[32..]);
                (signer, v)
            })
            .collect())
    }

    /// Every commit held, as opaque bytes, in key order.
    pub fn all_commits(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        Ok(self.commits_in(&[0; 64], &[0xff; 64])?.into_values().collect())
    }

    /// The commits with keys in `lo..=hi`, from the database and the journal (which is newer).
    fn commits_in(
        &self,
        lo: &[u8; 64],
        hi: &[u8; 64],
    ) -> Result<BTreeMap<[u8; 64], Vec<u8>>, StoreError> {
        // The journal first: a checkpoint drops its writes from memory only once they are
        // in the database, so what is not in memory now is in the database read next.
        let mut hot = Vec::new();
        {
            let st = self.hot.lock();
            for seg in st.frozen.as_deref().into_iter().chain([&st.active]) {
                hot.extend(seg.commits.range(*lo..=*hi).map(|(k, v)| (*k, v.clone())));
            }
        }
        let tx = self.db.begin_read().map_err(dberr)?;
        let t = tx.open_table(COMMITS).map_err(dberr)?;
        let mut out = BTreeMap::new();
        for e in t.range::<&[u8; 64]>(lo..=hi).map_err(dberr)? {
            let (k, v) = e.map_err(dberr)?;
            out.insert(*k.value(), v.value().to_vec());
        }
        out.extend(hot);
        Ok(out)
    }

    /// A submitted job's state.
    pub fn job(&self, job: &JobId) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let t = tx.open_table(JOBS).map_err(dberr)?;
        Ok(t.get(&job.0).map_err(dberr)?.map(|v| v.value().to_vec()))
    }

    /// Every submitted job and its state.
    pub fn jobs(&self) -> Result<Vec<(JobId, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let t = tx.open_table(JOBS).map_err(dberr)?;
        t.iter()
            .map_err(dberr)?
            .map(|e| e.map(|(k, v)| (JobId(*k.value()), v.value().to_vec())).map_err(dberr))
            .collect()
    }

    /// Every stored announcement: (job, wire bytes).
    pub fn announces(&self) -> Result<Vec<(JobId, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let t = tx.open_table(ANNOUNCES).map_err(dberr)?;
        t.iter()
            .map_err(dberr)?
            .map(|e| e.map(|(k, v)| (JobId(*k.value()), v.value().to_vec())).map_err(dberr))
            .collect()
    }

    /// [`Store::verified`] for each of `units`, in order (one read transaction).
    pub fn verified_many(&self, units: &[UnitId]) -> Result<Vec<Option<BlobId>>, StoreError> {
        let keys: Vec<[u8; 32]> = units.iter().map(unit_key).collect();
        let mut out: Vec<Option<BlobId>> = {
            let st = self.hot.lock();
            keys.iter()
                .map(|k| {
                    st.active
                        .verified
                        .get(k)
                        .or_else(|| st.frozen.as_ref()?.verified.get(k))
                        .map(|r| BlobId(*r))
                })
                .collect()
        };
        if out.iter().all(Option::is_some) {
            return Ok(out);
        }
        let t = &self.hot.reader(&self.db)?.verified;
        for (slot, k) in out.iter_mut().zip(&keys) {
            if slot.is_none() {
                *slot = t.get(k).map_err(dberr)?.map(|v| BlobId(*v.value()));
            }
        }
        Ok(out)
    }

    /// The verified result of `unit`, if this peer saw it reach quorum.
    pub fn verified(&self, unit: &UnitId) -> Result<Option<BlobId>, StoreError> {
        Ok(self.verified_many(std::slice::from_ref(unit))?.pop().flatten())
    }
}

impl Drop for Store {
    /// Checkpoints what the journal holds, so a store closed cleanly leaves no journal
    /// behind (one that is not — killed, or a failed checkpoint — is replayed on open).
    fn drop(&mut self) {
        if let Err(e) = self.checkpoint_now() {
            tracing::warn!("store close: {e}; the journal is replayed on the next open");
        }
        // No read snapshot outlives the store.
        self.hot.invalidate_reads();
        let thread = self.hot.lock().checkpointer.take();
        if let Some(t) = thread {
            let _ = t.join();
        }
        let st = self.hot.lock();
        if st.active.is_empty() && st.frozen.is_none() && st.journal.is_empty() {
            let _ = std::fs::remove_file(crate::store_journal::path(&self.hot.path, st.journal.n));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ova_jobs::{Determinism, Limits, MANIFEST_VERSION, Replication, UnitSpec};

    fn manifest() -> Manifest {
        Manifest {
            version: MANIFEST_VERSION,
            name: "m".into(),
            module: BlobId::of(b"mod"),
            units: vec![UnitSpec { input: BlobId::of(b"in"), args: vec![] }],
            replication: Replication::default(),
            limits: Limits::default(),
            determinism: Determinism::SameArch,
            priority: 0,
        }
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let m = manifest();
        let unit = m.unit_id(0);
        let (blob, job) = {
            let s = Store::open(&path).unwrap();
            let blob = s.put_blob(b"hello").unwrap();
            let job = s
                .write(|w| {
                    w.put_commit(&unit, &[2; 32], b"c2")?;
                    w.put_commit(&unit, &[1; 32], b"c1")?;
                    w.put_verified(&unit, &blob)?;
                    let job = w.put_manifest(&m)?;
                    w.put_job(&job, b"state")?;
                    w.put_announce(&job, b"announce")?;
                    Ok(job)
                })
                .unwrap();
            (blob, job)
        };
        let s = Store::open(&path).unwrap();
        assert_eq!(s.blob(&blob).unwrap().as_deref(), Some(&b"hello"[..]));
        assert!(s.has_blob(&blob).unwrap());
        assert!(!s.has_blob(&BlobId::of(b"other")).unwrap());
        let (other, another) = (BlobId::of(b"other"), BlobId::of(b"another"));
        assert_eq!(s.missing_blobs(&[another, blob, other]).unwrap(), vec![another, other]);
        assert_eq!(s.blob_stats().unwrap(), (1, 5));
        assert_eq!(s.manifest(&job).unwrap(), Some(m.clone()));
        assert_eq!(s.manifests().unwrap(), vec![(job, m)]);
        let c = s.commits_for(&unit).unwrap();
        assert_eq!(c, vec![([1; 32], b"c1".to_vec()), ([2; 32], b"c2".to_vec())]);
        assert_eq!(s.all_commits().unwrap().len(), 2);
        assert!(s.commits_for(&UnitId([9; 32])).unwrap().is_empty());
        assert_eq!(s.job(&job).unwrap().as_deref(), Some(&b"state"[..]));
        assert_eq!(s.jobs().unwrap().len(), 1);
        assert_eq!(s.verified(&unit).unwrap(), Some(blob));
        let other = UnitId([9; 32]);
        assert_eq!(s.verified_many(&[other, unit]).unwrap(), vec![None, Some(blob)]);
        assert_eq!(s.announces().unwrap(), vec![(job, b"announce".to_vec())]);
    }

    #[test]
    fn commits_and_verified_units_keyed_by_plain_id_are_moved_into_ring_order_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let units: Vec<UnitId> =
            (0..40u8).map(|i| UnitId(*blake3::hash(&[i]).as_bytes())).collect();
        {
            // A store as written before: the old tables, keyed by the plain unit id.
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut c = tx.open_table(OLD_COMMITS).unwrap();
                let mut v = tx.open_table(OLD_VERIFIED).unwrap();
                for (i, u) in units.iter().enumerate() {
                    let mut key = [0u8; 64];
                    key[..32].copy_from_slice(&u.0);
                    key[32..].copy_from_slice(&[i as u8; 32]);
                    c.insert(&key, &[i as u8][..]).unwrap();
                    v.insert(&u.0, &[i as u8; 32]).unwrap();
                }
            }
            tx.commit().unwrap();
        }
        let s = Store::open(&path).unwrap();
        for (i, u) in units.iter().enumerate() {
            assert_eq!(s.commits_for(u).unwrap(), vec![([i as u8; 32], vec![i as u8])]);
            assert_eq!(s.verified(u).unwrap(), Some(BlobId([i as u8; 32])));
        }
        assert_eq!(s.all_commits().unwrap().len(), units.len());
        drop(s);
        // The old tables are gone, and the new ones sort by ring point.
        let db = Database::open(&path).unwrap();
        let tx = db.begin_read().unwrap();
        let names: Vec<String> = tx.list_tables().unwrap().map(|t| t.name().to_string()).collect();
        assert!(!names.iter().any(|n| n == "commits" || n == "verified"), "{names:?}");
        let points: Vec<u64> = tx
            .open_table(VERIFIED)
            .unwrap()
            .iter()
            .unwrap()
            .map(|e| unit_point(&UnitId(unit_key_inverse(e.unwrap().0.value()))))
            .collect();
        assert_eq!(points.len(), units.len());
        assert!(points.is_sorted(), "verified units are not in ring order");
    }

    /// The unit id behind a [`unit_key`].
    fn unit_key_inverse(key: &[u8; 32]) -> [u8; 32] {
        let mut id = *key;
        let point = u64::from_be_bytes(key[..8].try_into().unwrap());
        id[..8].copy_from_slice(&point.to_le_bytes());
        id
    }

    #[test]
    fn unit_keys_sort_as_ring_points_do() {
        let mut units: Vec<UnitId> =
            (0..200u16).map(|i| UnitId(*blake3::hash(&i.to_le_bytes()).as_bytes())).collect();
        units.sort_by_key(unit_key);
        let points: Vec<u64> = units.iter().map(unit_point).collect();
        assert!(points.is_sorted());
        for u in &units {
            assert_eq!(unit_key_inverse(&unit_key(u)), u.0);
        }
    }

    #[test]
    fn both_durabilities_keep_what_was_written_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        for d in [Durability::Disk, Durability::Process] {
            let blob = Store::open_with(&path, d).unwrap().put_blob(format!("{d:?}").as_bytes());
            let blob = blob.unwrap();
            // Reopened the other way: the file format does not depend on the durability.
            let other = if d == Durability::Disk { Durability::Process } else { Durability::Disk };
            let s = Store::open_with(&path, other).unwrap();
            assert_eq!(s.blob(&blob).unwrap().as_deref(), Some(format!("{d:?}").as_bytes()));
        }
        assert_eq!("disk".parse::<Durability>(), Ok(Durability::Disk));
        assert_eq!("process".parse::<Durability>(), Ok(Durability::Process));
        assert!("fsync".parse::<Durability>().unwrap_err().contains("process or disk"));
    }

    /// The child side of [`a_sigkilled_process_loses_no_commit_that_returned`]: writes blobs
    /// one durable commit each, says so after each, then waits to be killed.
    #[test]
    #[ignore = "run by a_sigkilled_process_loses_no_commit_that_returned"]
    fn sigkill_child() {
        use std::io::{BufRead, Write as _};
        let Some(path) = std::env::var_os("OVA_STORE_KILL_PATH") else { return };
        let s = Store::open(path).unwrap();
        let mut out = std::io::stdout().lock();
        for i in 0..200u32 {
            s.put_blob(&i.to_le_bytes()).unwrap();
            writeln!(out, "committed {i}").unwrap();
            out.flush().unwrap();
        }
        // Blocks until the parent kills us (or closes our stdin if it fails first).
        let _ = std::io::stdin().lock().read_line(&mut String::new());
    }

    #[test]
    fn a_sigkilled_process_loses_no_commit_that_returned() {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "store::tests::sigkill_child", "--ignored", "--nocapture"])
            .env("OVA_STORE_KILL_PATH", &path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut last = None;
        for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if let Some(i) = line.strip_prefix("committed ") {
                last = Some(i.parse::<u32>().unwrap());
                if last == Some(199) {
                    break;
                }
            }
        }
        assert_eq!(last, Some(199), "the child committed every blob");
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let s = Store::open(&path).unwrap();
        for i in 0..200u32 {
            assert!(s.has_blob(&BlobId::of(&i.to_le_bytes())).unwrap(), "blob {i} survived");
        }
    }

    /// A batch of a blob, two commits and a verified unit, all derived from `i`.
    fn hot_batch(i: u32) -> (Batch, BlobId, UnitId) {
        let bytes = format!("result {i}").into_bytes();
        let blob = BlobId::of(&bytes);
        let unit = UnitId(*blake3::hash(&i.to_le_bytes()).as_bytes());
        let mut b = Batch::new();
        b.blob_checked(blob, bytes).unwrap();
        b.commit(&unit, &[1; 32], format!("commit {i} by 1").into_bytes());
        b.commit(&unit, &[2; 32], format!("commit {i} by 2").into_bytes());
        b.verified(&unit, &blob);
        (b, blob, unit)
    }

    /// Every read sees the writes of `hot_batch(i)` for `i` in `range`.
    fn assert_hot_batches_held(s: &Store, range: std::ops::Range<u32>) {
        let mut blobs = Vec::new();
        let mut units = Vec::new();
        for i in range.clone() {
            let (_, blob, unit) = hot_batch(i);
            assert!(s.has_blob(&blob).unwrap(), "blob {i}");
            assert_eq!(s.blob(&blob).unwrap().unwrap(), format!("result {i}").into_bytes());
            let commits = s.commits_for(&unit).unwrap();
            assert_eq!(
                commits,
                vec![
                    ([1; 32], format!("commit {i} by 1").into_bytes()),
                    ([2; 32], format!("commit {i} by 2").into_bytes())
                ],
                "commits of unit {i}"
            );
            blobs.push(blob);
            units.push(unit);
        }
        assert!(s.missing_blobs(&blobs).unwrap().is_empty());
        assert!(s.blobs(&blobs).unwrap().iter().all(Option::is_some));
        assert_eq!(
            s.verified_many(&units).unwrap(),
            blobs.iter().copied().map(Some).collect::<Vec<_>>()
        );
        assert_eq!(s.all_commits().unwrap().len(), 2 * range.len());
        let (count, _) = s.blob_stats().unwrap();
        assert_eq!(count, range.len() as u64, "each blob counted once");
    }

    #[test]
    fn reads_sharing_a_snapshot_see_every_write_that_returned() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_limited(dir.path().join("s.redb"), Durability::Process, (1 << 20, 4))
            .unwrap();
        let a = s.put_blob(b"a").unwrap();
        assert_eq!(s.blob(&a).unwrap().as_deref(), Some(&b"a"[..]));
        // Each write below commits after the last read took its snapshot.
        let b = s.write_deferred(|w| w.put_blob(b"b")).unwrap();
        assert_eq!(s.blob(&b).unwrap().as_deref(), Some(&b"b"[..]));
        let unit = UnitId([7; 32]);
        assert_eq!(s.verified(&unit).unwrap(), None);
        s.write(|w| w.put_verified(&unit, &a)).unwrap();
        assert_eq!(s.verified(&unit).unwrap(), Some(a));
        // Journalled writes leave memory only once in the database: by a background
        // checkpoint (every 4 entries here) and by a closing one.
        for i in 0..20 {
            let (batch, blob, unit) = hot_batch(i);
            assert!(!s.has_blob(&blob).unwrap());
            s.append(batch, false).unwrap();
            assert!(s.missing_blobs(&[a, b, blob]).unwrap().is_empty(), "batch {i}");
            assert_eq!(s.verified(&unit).unwrap(), Some(blob));
        }
        s.checkpoint_now().unwrap();
        for i in 0..20 {
            let (_, blob, unit) = hot_batch(i);
            assert_eq!(s.blob(&blob).unwrap(), Some(format!("result {i}").into_bytes()));
            assert_eq!(s.verified(&unit).unwrap(), Some(blob));
        }
        assert_eq!(s.blobs(&[a, b]).unwrap(), vec![Some(b"a".to_vec()), Some(b"b".to_vec())]);
        assert_eq!(s.blob_stats().unwrap().0, 22);
    }

    #[test]
    fn blob_totals_count_each_blob_once_and_are_rebuilt_for_a_store_without_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let s = Store::open(&path).unwrap();
            assert_eq!(s.blob_stats().unwrap(), (0, 0));
            s.put_blob(b"abc").unwrap();
            s.write(|w| {
                w.put_blob(b"abc")?;
                w.put_blob(b"de")?;
                w.put_blob(b"de")
            })
            .unwrap();
            s.write_deferred(|w| w.put_blob(b"fghij")).unwrap();
            assert_eq!(s.blob_stats().unwrap(), (3, 10));
            // A store written before the totals were kept has no row: take it away.
            let tx = s.db.begin_write().unwrap();
            assert!(tx.open_table(TOTALS).unwrap().remove(BLOB_TOTALS).unwrap().is_some());
            tx.commit().unwrap();
            assert_eq!(s.blob_stats().unwrap(), (0, 0), "the totals are what is read");
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.blob_stats().unwrap(), (3, 10), "counted again on open");
        s.put_blob(b"klmnopq").unwrap();
        assert_eq!(s.blob_stats().unwrap(), (4, 17));
    }

    #[test]
    fn appended_writes_are_read_back_before_and_after_checkpoints_and_reopening() {
        let dir = tempfile::tempdir().unwrap();
        for d in [Durability::Process, Durability::Disk] {
            let path = dir.path().join(format!("{d:?}.redb"));
            {
                // Checkpoints every ~10 batches, on their thread, while appends go on.
                let s = Store::open_limited(&path, d, (usize::MAX, 40)).unwrap();
                for i in 0..100 {
                    s.append(hot_batch(i).0, i % 3 == 0).unwrap();
                    // Read-your-writes, whether the batch is in memory or checkpointed.
                    assert_hot_batches_held(&s, 0..i + 1);
                }
                assert_eq!(s.missing_blobs(&[BlobId::of(b"never stored")]).unwrap().len(), 1);
            }
            // Closed cleanly: everything is in the database and no journal is left.
            assert!(crate::store_journal::existing(&path).unwrap().is_empty());
            let s = Store::open_with(&path, d).unwrap();
            assert_hot_batches_held(&s, 0..100);
            // A blob journalled again (it is already in the database) is counted once.
            s.append(hot_batch(5).0, true).unwrap();
            assert_eq!(s.blob_stats().unwrap().0, 100);
        }
    }

    #[test]
    fn a_journal_left_behind_is_replayed_up_to_a_cut_record() {
        use crate::store_journal::{Entry, encode};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        drop(Store::open(&path).unwrap());
        // What a killed process leaves: two journals, the newer one ending inside a record.
        let entries = |i: u32| -> Vec<Entry> { hot_batch(i).0.entries };
        let mut first = Vec::new();
        for i in 0..3 {
            first.extend(encode(&entries(i)).unwrap());
        }
        let mut second = encode(&entries(3)).unwrap();
        let cut = encode(&entries(4)).unwrap();
        second.extend(&cut[..cut.len() / 2]);
        std::fs::write(crate::store_journal::path(&path, 7), first).unwrap();
        std::fs::write(crate::store_journal::path(&path, 8), second).unwrap();
        let s = Store::open(&path).unwrap();
        assert_hot_batches_held(&s, 0..4);
        let (_, lost, _) = hot_batch(4);
        assert!(!s.has_blob(&lost).unwrap(), "the cut record was never acknowledged");
        // Replayed journals are gone; the new one continues the numbering.
        let left: Vec<u64> =
            crate::store_journal::existing(&path).unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(left, vec![9]);
        s.append(hot_batch(4).0, true).unwrap();
        assert_hot_batches_held(&s, 0..5);
    }

    /// The child side of [`a_sigkilled_process_loses_no_append_that_returned`]: appends
    /// batches (checkpointing every few), says so after each, then waits to be killed.
    #[test]
    #[ignore = "run by a_sigkilled_process_loses_no_append_that_returned"]
    fn sigkill_append_child() {
        use std::io::{BufRead, Write as _};
        let Some(path) = std::env::var_os("OVA_STORE_KILL_PATH") else { return };
        let s = Store::open_limited(path, Durability::Process, (usize::MAX, 28)).unwrap();
        let mut out = std::io::stdout().lock();
        for i in 0..200u32 {
            s.append(hot_batch(i).0, true).unwrap();
            writeln!(out, "appended {i}").unwrap();
            out.flush().unwrap();
        }
        let _ = std::io::stdin().lock().read_line(&mut String::new());
    }

    #[test]
    fn a_sigkilled_process_loses_no_append_that_returned() {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "store::tests::sigkill_append_child", "--ignored", "--nocapture"])
            .env("OVA_STORE_KILL_PATH", &path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut last = None;
        for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if let Some(i) = line.strip_prefix("appended ") {
                last = Some(i.parse::<u32>().unwrap());
                if last == Some(199) {
                    break;
                }
            }
        }
        assert_eq!(last, Some(199), "the child appended every batch");
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(
            !crate::store_journal::existing(&path).unwrap().is_empty(),
            "the killed child left its journal (the last batches were not checkpointed)"
        );
        let s = Store::open(&path).unwrap();
        assert_hot_batches_held(&s, 0..200);
    }

    #[test]
    fn refuses_mislabelled_blobs_and_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("s.redb")).unwrap();
        let e = s.put_blob_checked(BlobId::of(b"a"), b"b").unwrap_err();
        assert!(matches!(e, StoreError::HashMismatch { .. }));
        // A failing transaction stores nothing of what it wrote before failing.
        let r = s.write(|w| {
            w.put_blob(b"first")?;
            w.put_blob_checked(BlobId::of(b"x"), b"y")
        });
        assert!(r.is_err());
        assert!(!s.has_blob(&BlobId::of(b"first")).unwrap());
    }
}
