//! The store's file: redb's own file backend, with a choice of how far a commit goes.
//!
//! redb makes a commit durable by writing its pages and header to the file and then flushing
//! the file to the disk (`sync_data`, an fsync). The writes alone already put the commit in
//! the operating system's page cache, which outlives the process: a peer that is killed
//! (SIGKILL, a crash, the OOM killer) finds every commit that returned when it restarts. Only
//! a power cut or a kernel crash can lose what was not yet flushed.
//!
//! Ova stores nothing that exists only here once it has been acknowledged: results are
//! replicated to other peers and the submitter, and a lost commit is recomputed (execution is
//! deterministic). So by default ([`Durability::Process`]) a peer does not flush on every
//! group commit; the flush costs a few milliseconds of disk latency per commit and, under
//! load, a large share of a worker's CPU in the kernel. Operators who want every
//! acknowledged write on the disk choose [`Durability::Disk`].
//!
//! Everything else (reads, writes, length, locks) is redb's `FileBackend` unchanged.

use std::fs::OpenOptions;
use std::ops::Bound;
use std::path::Path;

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// What a durable store commit survives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Written through to the operating system: survives the process being killed, not a
    /// power cut or kernel crash (other peers hold copies of what matters).
    #[default]
    Process,
    /// Flushed to the disk (fsync) as well: survives a power cut too.
    Disk,
}

impl std::str::FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "process" => Ok(Self::Process),
            "disk" => Ok(Self::Disk),
            other => Err(format!("unknown durability {other:?} (expected process or disk)")),
        }
    }
}

/// redb's file backend; `sync_data` flushes only with [`Durability::Disk`].
#[derive(Debug)]
pub(crate) struct StoreFile {
    file: FileBackend,
    durability: Durability,
}

impl StoreFile {
    /// Opens (or creates) the file at `path` the way redb's own `Database::create` does.
    pub(crate) fn open(path: &Path, durability: Durability) -> Result<Self, redb::DatabaseError> {
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        Ok(Self { file: FileBackend::new(file)?, durability })
    }
}

impl StorageBackend for StoreFile {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.file.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        match self.durability {
            Durability::Disk => self.file.sync_data(),
            // The pages and header were written with `write` before redb asks for this, so
            // the commit is already in the OS page cache (see the module docs).
            Durability::Process => Ok(()),
        }
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.file.write(offset, data)
    }

    fn close(&self) -> Result<(), std::io::Error> {
        self.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}
