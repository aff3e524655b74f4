//! Bundle format: round trips, and a typed error for every kind of bad input.

use ova_jobs::bundle::{BUNDLE_VERSION, MAGIC};
use ova_jobs::{
    BlobId, Bundle, BundleError, Determinism, JobId, Limits, MANIFEST_VERSION, Manifest,
    ManifestError, Replication, UnitSpec,
};
use proptest::prelude::*;

const MODULE: &[u8] = b"\0asm\x01\0\0\0";

fn manifest(inputs: &[Vec<u8>], args: &[Vec<String>]) -> Manifest {
    Manifest {
        version: MANIFEST_VERSION,
        name: "test job".into(),
        module: BlobId::of(MODULE),
        units: inputs
            .iter()
            .zip(args)
            .map(|(i, a)| UnitSpec { input: BlobId::of(i), args: a.clone() })
            .collect(),
        replication: Replication { quorum: 2, max_replicas: 3, result_copies: 1 },
        limits: Limits::default(),
        determinism: Determinism::SameArch,
        priority: 3,
    }
}

fn sample() -> Bundle {
    let inputs = vec![b"one".to_vec(), b"two".to_vec(), vec![0u8; 300]];
    let args = vec![vec![], vec!["-x".into()], vec!["a b".into(), "c".into()]];
    let m = manifest(&inputs, &args);
    Bundle::new(m, inputs.into_iter().chain([MODULE.to_vec()])).unwrap()
}

/// The same layout as the bundle body, to forge bundles a correct writer never makes.
#[derive(serde::Serialize)]
struct RawBody {
    job_id: JobId,
    manifest: Vec<u8>,
    blobs: Vec<(BlobId, Vec<u8>)>,
}

fn raw(body: &RawBody) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.push(BUNDLE_VERSION);
    out.extend(postcard::to_stdvec(body).unwrap());
    out
}

fn raw_from(b: &Bundle) -> RawBody {
    RawBody {
        job_id: b.job_id(),
        manifest: b.manifest().encode(),
        blobs: b.blobs().map(|(k, v)| (*k, v.to_vec())).collect(),
    }
}

#[test]
fn round_trip_in_memory_and_on_disk() {
    let b = sample();
    let bytes = b.encode();
    let d = Bundle::decode(&bytes).unwrap();
    assert_eq!(d, b);
    assert_eq!(d.job_id(), b.manifest().job_id());
    assert_eq!(d.input(2), &[0u8; 300][..]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.ova");
    b.write_file(&path).unwrap();
    assert_eq!(Bundle::read_file(&path).unwrap(), b);
    // Deterministic: same content, same bytes; and the same bytes as writing the body's
    // byte fields as sequences (bundles written before they were byte strings).
    assert_eq!(sample().encode(), bytes);
    assert_eq!(raw(&raw_from(&b)), bytes);
}

#[test]
fn truncated_at_every_length() {
    let bytes = sample().encode();
    for n in 0..bytes.len() {
        match Bundle::decode(&bytes[..n]) {
            Err(BundleError::Truncated) => {}
            other => panic!("prefix of {n}/{} bytes gave {other:?}", bytes.len()),
        }
    }
}

#[test]
fn oversized_is_refused_before_decoding() {
    let bytes = sample().encode();
    let max = bytes.len() as u64 - 1;
    assert!(matches!(
        Bundle::decode_limited(&bytes, max),
        Err(BundleError::TooLarge { size, max: m }) if size == bytes.len() as u64 && m == max
    ));
}

#[test]
fn wrong_magic_version_and_trailing_bytes() {
    let bytes = sample().encode();
    let mut b = bytes.clone();
    b[1] = b'X';
    assert!(matches!(Bundle::decode(&b), Err(BundleError::NotABundle)));
    assert!(matches!(Bundle::decode(b"hello world, not a bundle"), Err(BundleError::NotABundle)));
    let mut b = bytes.clone();
    b[MAGIC.len()] = 7;
    let e = Bundle::decode(&b).unwrap_err();
    assert!(matches!(e, BundleError::UnsupportedVersion { found: 7, supported: 1 }));
    assert!(e.to_string().contains("version 7"));
    let mut b = bytes.clone();
    b.extend_from_slice(b"junk");
    assert!(matches!(Bundle::decode(&b), Err(BundleError::TrailingBytes(4))));
}

#[test]
fn corrupted_blob_is_named() {
    let good = sample();
    let mut body = raw_from(&good);
    let (id, data) = body.blobs.iter_mut().find(|(_, d)| d.len() == 300).unwrap();
    data[17] ^= 1;
    let declared = *id;
    match Bundle::decode(&raw(&body)) {
        Err(BundleError::BlobHashMismatch { declared: d, actual }) => {
            assert_eq!(d, declared);
            assert_ne!(actual, declared);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn manifest_not_matching_job_id() {
    let mut body = raw_from(&sample());
    body.job_id = JobId([7; 32]);
    assert!(matches!(
        Bundle::decode(&raw(&body)),
        Err(BundleError::ManifestHashMismatch { declared: JobId([7, ..]), .. })
    ));
}

#[test]
fn invalid_manifest_is_reported() {
    let good = sample();
    let mut m = good.manifest().clone();
    m.replication.quorum = 0;
    let mut body = raw_from(&good);
    body.manifest = m.encode();
    body.job_id = m.job_id();
    let e = Bundle::decode(&raw(&body)).unwrap_err();
    assert!(matches!(e, BundleError::Manifest(ManifestError::Invalid(_))), "{e:?}");
    assert!(e.to_string().contains("quorum"));
}

#[test]
fn missing_extra_and_duplicate_blobs() {
    let good = sample();
    let module = BlobId::of(MODULE);

    let mut body = raw_from(&good);
    body.blobs.retain(|(id, _)| *id != module);
    assert!(matches!(
        Bundle::decode(&raw(&body)),
        Err(BundleError::MissingBlob { id, ref role }) if id == module && role == "module"
    ));

    let mut body = raw_from(&good);
    let extra = b"nobody uses me".to_vec();
    body.blobs.push((BlobId::of(&extra), extra.clone()));
    assert!(matches!(
        Bundle::decode(&raw(&body)),
        Err(BundleError::UnreferencedBlob(id)) if id == BlobId::of(&extra)
    ));

    let mut body = raw_from(&good);
    let first = body.blobs[0].clone();
    body.blobs.push(first.clone());
    assert!(matches!(
        Bundle::decode(&raw(&body)),
        Err(BundleError::DuplicateBlob(id)) if id == first.0
    ));

    // Building one in code checks the same rules.
    let m = good.manifest().clone();
    assert!(matches!(
        Bundle::new(m, [MODULE.to_vec()]),
        Err(BundleError::MissingBlob { ref role, .. }) if role == "input of unit 0"
    ));
}

#[test]
fn lying_length_prefix_is_an_error_not_an_allocation() {
    // A blob claiming to be 2^62 bytes long in a tiny file.
    let mut b = MAGIC.to_vec();
    b.push(BUNDLE_VERSION);
    b.extend([0u8; 32]); // job id
    b.extend([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f]);
    assert!(matches!(Bundle::decode(&b), Err(BundleError::Truncated | BundleError::Corrupt(_))));
}

#[test]
fn missing_file_is_an_io_error_with_the_path() {
    let e = Bundle::read_file("/nonexistent/dir/job.ova").unwrap_err();
    assert!(matches!(e, BundleError::Io { .. }));
    assert!(e.to_string().contains("/nonexistent/dir/job.ova"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_bundle_round_trips(
        inputs in proptest::collection::btree_set(proptest::collection::vec(any::<u8>(), 0..200), 1..8),
        arg in "[a-z ]{0,12}",
        quorum in 1u8..4,
        extra in 0u8..3,
        fuel in proptest::option::of(1u64..u64::MAX),
    ) {
        let inputs: Vec<Vec<u8>> = inputs.into_iter().collect();
        let args: Vec<Vec<String>> = inputs.iter().map(|_| vec![arg.clone()]).collect();
        let mut m = manifest(&inputs, &args);
        m.replication = Replication { quorum, max_replicas: quorum + extra, result_copies: extra };
        m.limits.fuel = fuel;
        let b = Bundle::new(m, inputs.into_iter().chain([MODULE.to_vec()])).unwrap();
        let d = Bundle::decode(&b.encode()).unwrap();
        prop_assert_eq!(d.job_id(), b.job_id());
        prop_assert_eq!(d, b);
    }

    #[test]
    fn any_single_byte_flip_is_detected(pos in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let bytes = sample().encode();
        let mut b = bytes.clone();
        let i = pos.index(b.len());
        b[i] ^= flip;
        prop_assert!(Bundle::decode(&b).is_err(), "flip at {} accepted", i);
    }

    #[test]
    fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut b = MAGIC.to_vec();
        b.push(BUNDLE_VERSION);
        b.extend(data);
        let _ = Bundle::decode(&b);
    }
}
