//! Packing a job directory: the happy path and a clear error for each mistake.

use std::fs;
use std::path::Path;

use ova_jobs::{Bundle, PackError, pack_dir};

const MODULE: &[u8] = b"\0asm\x01\0\0\0";

fn job_dir(toml: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("m.wasm"), MODULE).unwrap();
    fs::create_dir(d.path().join("inputs")).unwrap();
    fs::write(d.path().join("inputs/b.txt"), "bee").unwrap();
    fs::write(d.path().join("inputs/a.txt"), "ay").unwrap();
    fs::write(d.path().join("ova.toml"), toml).unwrap();
    d
}

fn err(dir: &Path) -> String {
    pack_dir(dir).unwrap_err().to_string()
}

#[test]
fn packs_all_three_unit_sources() {
    let d = job_dir(
        r#"
name = "demo"
module = "m.wasm"
priority = 5
determinism = "strict"
[replication]
quorum = 3
[limits]
memory_mib = 32
deadline_secs = 2.5
fuel = 1000
[[units]]
input_text = "hello"
args = ["x"]
[[units]]
input = "inputs/a.txt"
[units_range]
count = 3
input_text = "{i}-in"
args = ["--n", "{i}"]
[units_dir]
dir = "inputs"
args = ["dir"]
"#,
    );
    let b = pack_dir(d.path()).unwrap();
    let m = b.manifest();
    assert_eq!(m.name, "demo");
    assert_eq!(m.priority, 5);
    assert_eq!(m.determinism, ova_jobs::Determinism::Strict);
    assert_eq!(m.replication.quorum, 3);
    assert!(m.replication.max_replicas >= 3);
    assert_eq!(m.limits.memory_bytes, 32 << 20);
    assert_eq!(m.limits.deadline_ms, 2500);
    assert_eq!(m.limits.fuel, Some(1000));
    assert_eq!(m.units.len(), 1 + 1 + 3 + 2);
    assert_eq!(b.input(0), b"hello");
    assert_eq!(b.input(1), b"ay");
    assert_eq!(b.input(3), b"1-in");
    assert_eq!(m.units[3].args, ["--n", "1"]);
    assert_eq!(b.input(5), b"ay"); // units_dir is sorted by name
    assert_eq!(b.input(6), b"bee");
    // The same blob is stored once.
    assert_eq!(b.blobs().count(), 1 + 1 + 1 + 3 + 1);
    // Packing is deterministic.
    assert_eq!(pack_dir(d.path()).unwrap().job_id(), b.job_id());
    assert_eq!(Bundle::decode(&b.encode()).unwrap(), b);
}

#[test]
fn clear_errors() {
    let d = job_dir("name = \"x\"\nmodule = \"m.wasm\"\n");
    assert!(err(d.path()).contains("no units"));

    let d = job_dir("name = \"x\"\nmodule = \"nope.wasm\"\n[[units]]\n");
    let e = pack_dir(d.path()).unwrap_err();
    assert!(matches!(e, PackError::Io { .. }));
    assert!(e.to_string().contains("nope.wasm"));

    let d = job_dir("name = \"x\"\nmodule = \"inputs/a.txt\"\n[[units]]\n");
    assert!(err(d.path()).contains("not a WebAssembly binary"));

    let d = job_dir("name = \"x\"\nmodule = \"m.wasm\"\nqourum = 2\n[[units]]\n");
    let e = err(d.path());
    assert!(e.contains("qourum") && e.contains("ova.toml"), "{e}");

    let d = job_dir(
        "name = \"x\"\nmodule = \"m.wasm\"\n[[units]]\ninput = \"inputs/a.txt\"\ninput_text = \"t\"\n",
    );
    assert!(err(d.path()).contains("not both"));

    let d = job_dir("name = \"x\"\nmodule = \"m.wasm\"\n[replication]\nquorum = 0\n[[units]]\n");
    assert!(err(d.path()).contains("quorum"));

    let d = job_dir("name = \"x\"\nmodule = \"m.wasm\"\n[units_range]\ncount = 2\n");
    assert!(err(d.path()).contains("same unit"), "{}", err(d.path()));

    let d = tempfile::tempdir().unwrap();
    assert!(err(d.path()).contains("ova.toml"));
}
