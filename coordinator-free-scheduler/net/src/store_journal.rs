//! The store's journal: the hot writes of a busy peer — result records, signed commits,
//! verified units, fetched blobs — appended to a log file and kept in memory, then moved into
//! redb in large batches (a checkpoint) by a background thread.
//!
//! # Why a journal in front of redb
//!
//! redb has no write-ahead log: every commit that must survive copies each B-tree leaf it
//! touches, writes those pages and the header, and frees the old pages. A peer commits after
//! almost every unit (the commit message it sends must not name a result it could lose), so
//! with units of a few milliseconds the store's transactions were the largest part of a
//! worker's own CPU: about 37 % of it in the P3 benchmark and 46 % in P4 (profiles of the
//! timed runs), at 60–80 µs per one-record transaction (a 100-byte or 8 KiB record with two
//! commits, redb alone on this machine) — and blob ids are random, so each insert copied a
//! leaf of its own. Here the same group commit is one `write` of its records to the journal;
//! a checkpoint inserts thousands of records in one transaction, sorted by key, so records
//! share leaves, and reads of recent records (the next unit's input, a result the submitter
//! asks for) come from memory.
//!
//! # Format and recovery
//!
//! Files `<store file>.journal.<n>`, one record per append:
//!
//! ```text
//! record: length of payload (u32, little-endian) ‖ first 16 bytes of BLAKE3(payload) ‖ payload
//! payload: postcard encoding of the batch (Vec<Entry>)
//! ```
//!
//! An append that returned has its record in the file: in the operating system's page cache,
//! which outlives the process (like the store's redb commits; with `Durability::Disk` a
//! journal is flushed to the disk when the store syncs). When the in-memory segment passes
//! its limit it is frozen, a new journal file is started, and a thread checkpoints the frozen
//! segment into redb (one durable transaction) and then deletes its journal. Opening a store
//! replays every journal left behind, oldest first, into redb (re-applying a record that a
//! checkpoint already stored writes the same bytes again), then deletes them. A record that
//! is cut short (the process died inside the `write`) or does not hash to its checksum ends
//! its file's replay: it was never acknowledged, and nothing is written after it.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One hot write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Entry {
    /// A blob (its bytes hash to `id`; checked before it is journalled).
    Blob {
        /// Blob id.
        id: [u8; 32],
        /// Bytes.
        #[serde(with = "ova_jobs::wire::byte_string")]
        bytes: Vec<u8>,
    },
    /// A signed commit (opaque bytes) under its key in the commits table.
    Commit {
        /// The unit's key (`unit_key`).
        unit: [u8; 32],
        /// The signer.
        signer: [u8; 32],
        /// The commit's bytes.
        #[serde(with = "ova_jobs::wire::byte_string")]
        bytes: Vec<u8>,
    },
    /// A verified unit under its key in the verified table.
    Verified {
        /// The unit's key (`unit_key`).
        unit: [u8; 32],
        /// The agreed result id.
        result: [u8; 32],
    },
}

/// Writes journalled but not yet checkpointed into redb, readable from memory.
#[derive(Debug, Default)]
pub(crate) struct Segment {
    /// Blobs by id.
    pub(crate) blobs: HashMap<[u8; 32], Vec<u8>>,
    /// Commits by (unit key ‖ signer), in key order.
    pub(crate) commits: BTreeMap<[u8; 64], Vec<u8>>,
    /// Verified results by unit key.
    pub(crate) verified: HashMap<[u8; 32], [u8; 32]>,
    /// Bytes held (payloads and keys), to decide when to checkpoint.
    pub(crate) bytes: usize,
    /// Entries applied.
    pub(crate) entries: usize,
}

impl Segment {
    /// Takes in one entry (a later write of the same key replaces the earlier one).
    pub(crate) fn apply(&mut self, e: Entry) {
        self.entries += 1;
        match e {
            Entry::Blob { id, bytes } => {
                self.bytes += 32 + bytes.len();
                self.blobs.entry(id).or_insert(bytes);
            }
            Entry::Commit { unit, signer, bytes } => {
                self.bytes += 64 + bytes.len();
                self.commits.insert(commit_key(&unit, &signer), bytes);
            }
            Entry::Verified { unit, result } => {
                self.bytes += 64;
                self.verified.insert(unit, result);
            }
        }
    }

    /// Nothing held.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries == 0
    }
}

/// A commit's key: the unit's key, then the signer.
pub(crate) fn commit_key(unit: &[u8; 32], signer: &[u8; 32]) -> [u8; 64] {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(unit);
    k[32..].copy_from_slice(signer);
    k
}

/// Bytes before a record's payload: length and checksum.
const HEADER: usize = 4 + 16;

/// Most bytes of a postcard length prefix (a varint of up to 64 bits).
const LEN_PREFIX_MAX: usize = 10;

/// Largest payload of one record (its length is a `u32`).
const MAX_RECORD: usize = u32::MAX as usize;

/// Encodes a batch as one record; `None` if it is over [`MAX_RECORD`] bytes.
///
/// The payload is written in place after room for the header, which is filled in last, into
/// a vector sized from the entries up front: a group commit's record often holds several
/// results and runs past what the shared encoding buffer of [`ova_jobs::wire::to_vec`] keeps,
/// which then grew from nothing for every record and was copied out once more.
pub(crate) fn encode(batch: &[Entry]) -> Option<Vec<u8>> {
    let room: usize = batch.iter().map(Entry::encoded_size_bound).sum();
    let mut record = Vec::with_capacity(HEADER + LEN_PREFIX_MAX + room);
    record.resize(HEADER, 0);
    let mut record = postcard::to_io(batch, record).ok()?;
    let len = record.len() - HEADER;
    if len > MAX_RECORD {
        return None;
    }
    let sum = blake3::hash(&record[HEADER..]);
    record[..4].copy_from_slice(&(len as u32).to_le_bytes());
    record[4..HEADER].copy_from_slice(&sum.as_bytes()[..16]);
    Some(record)
}

impl Entry {
    /// At least the length of this entry's encoding (its variant, keys, byte string and the
    /// length before it).
    fn encoded_size_bound(&self) -> usize {
        match self {
            Entry::Blob { bytes, .. } => 1 + 32 + LEN_PREFIX_MAX + bytes.len(),
            Entry::Commit { bytes, .. } => 1 + 64 + LEN_PREFIX_MAX + bytes.len(),
            Entry::Verified { .. } => 1 + 64,
        }
    }
}

/// The batches of a journal file's bytes, in order, up to the first record that is cut short
/// or damaged; and whether such a record ended the replay early.
pub(crate) fn decode_all(mut bytes: &[u8]) -> (Vec<Vec<Entry>>, bool) {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let Some(header) = bytes.get(..HEADER) else { return (out, true) };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let Some(payload) = bytes.get(HEADER..HEADER.saturating_add(len)) else {
            return (out, true);
        };
        if blake3::hash(payload).as_bytes()[..16] != header[4..] {
            return (out, true);
        }
        match postcard::from_bytes::<Vec<Entry>>(payload) {
            Ok(batch) => out.push(batch),
            Err(_) => return (out, true),
        }
        bytes = &bytes[HEADER + len..];
    }
    (out, false)
}

/// Journal file `n` of the store at `store`.
pub(crate) fn path(store: &Path, n: u64) -> PathBuf {
    let mut name = store.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".journal.{n}"));
    store.with_file_name(name)
}

/// The journal files of the store at `store`, oldest first: (number, path).
pub(crate) fn existing(store: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let dir = match store.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut prefix = store.file_name().unwrap_or_default().to_os_string();
    prefix.push(".journal.");
    let prefix = prefix.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for e in std::fs::read_dir(&dir)? {
        let e = e?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name.strip_prefix(&prefix).and_then(|n| n.parse::<u64>().ok()) {
            found.push((n, e.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// An open journal file being appended to.
#[derive(Debug)]
pub(crate) struct JournalFile {
    file: File,
    /// Its number.
    pub(crate) n: u64,
    /// Bytes of whole records written.
    len: u64,
}

impl JournalFile {
    /// Creates journal file `n` (empty) for the store at `store`; with `sync_dir` the new
    /// name is flushed to the disk too (its directory is), so a power cut cannot lose the
    /// file once its records are flushed.
    pub(crate) fn create(store: &Path, n: u64, sync_dir: bool) -> std::io::Result<Self> {
        let path = path(store, n);
        let file =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&path)?;
        if sync_dir && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(Self { file, n, len: 0 })
    }

    /// Appends one record. A write that fails part-way is cut off again, so the file never
    /// holds a partial record before a later whole one.
    pub(crate) fn append(&mut self, record: &[u8]) -> std::io::Result<()> {
        use std::io::{Seek, SeekFrom};
        if let Err(e) = self.file.write_all(record) {
            self.file.set_len(self.len)?;
            self.file.seek(SeekFrom::Start(self.len))?;
            return Err(e);
        }
        self.len += record.len() as u64;
        Ok(())
    }

    /// No record written yet.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Flushes the file to the disk.
    pub(crate) fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(i: u8) -> Vec<Entry> {
        vec![
            Entry::Blob { id: [i; 32], bytes: vec![i; i as usize] },
            Entry::Commit { unit: [i; 32], signer: [1; 32], bytes: vec![i, 2, 3] },
            Entry::Verified { unit: [i; 32], result: [9; 32] },
        ]
    }

    #[test]
    fn a_record_is_its_header_and_the_batch_encoded_in_one_allocation() {
        let big = Entry::Blob { id: [7; 32], bytes: (0..=255).cycle().take(200_000).collect() };
        for b in [batch(3), vec![big.clone()], vec![big, batch(1).remove(0)], vec![]] {
            let record = encode(&b).unwrap();
            let payload = postcard::to_stdvec(&b).unwrap();
            assert_eq!(record[..4], (payload.len() as u32).to_le_bytes());
            assert_eq!(record[4..HEADER], blake3::hash(&payload).as_bytes()[..16]);
            assert_eq!(record[HEADER..], payload[..]);
            let bound: usize = b.iter().map(Entry::encoded_size_bound).sum();
            let sized = HEADER + LEN_PREFIX_MAX + bound;
            assert_eq!(record.capacity(), sized, "sized once, never regrown");
        }
    }

    #[test]
    fn records_round_trip_in_order() {
        let mut bytes = Vec::new();
        for i in 0..5 {
            bytes.extend(encode(&batch(i)).unwrap());
        }
        let (batches, cut) = decode_all(&bytes);
        assert!(!cut);
        assert_eq!(batches.len(), 5);
        for (i, b) in batches.iter().enumerate() {
            assert_eq!(format!("{b:?}"), format!("{:?}", batch(i as u8)));
        }
    }

    #[test]
    fn a_cut_or_damaged_record_ends_the_replay() {
        let mut bytes = Vec::new();
        for i in 0..3 {
            bytes.extend(encode(&batch(i)).unwrap());
        }
        let whole = bytes.len();
        // Cut inside the last record (a write the process died in): the first two remain.
        for cut_at in [whole - 1, whole - 10, whole - 30] {
            let (batches, cut) = decode_all(&bytes[..cut_at]);
            assert!(cut);
            assert_eq!(batches.len(), 2, "cut at {cut_at}");
        }
        // A flipped byte in the second record's payload: only the first remains.
        let second = encode(&batch(0)).unwrap().len() + HEADER + 2;
        bytes[second] ^= 0x40;
        let (batches, cut) = decode_all(&bytes);
        assert!(cut);
        assert_eq!(batches.len(), 1);
        // Garbage, an absurd length, and nothing at all never panic.
        assert_eq!(decode_all(&[0xff; 7]).0.len(), 0);
        assert_eq!(decode_all(&[0xff; 64]).0.len(), 0);
        assert_eq!(decode_all(&[]), (Vec::<Vec<Entry>>::new(), false));
    }

    #[test]
    fn journal_files_are_found_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store.redb");
        for n in [10, 2, 7] {
            JournalFile::create(&store, n, true).unwrap();
        }
        std::fs::write(dir.path().join("store.redb.journal.x"), b"").unwrap();
        std::fs::write(dir.path().join("other.redb.journal.1"), b"").unwrap();
        let found: Vec<u64> = existing(&store).unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(found, vec![2, 7, 10]);
    }
}
