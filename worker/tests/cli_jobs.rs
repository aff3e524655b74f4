//! The whole product through the command line, as processes on 127.0.0.1: three `ova worker`s,
//! `ova job submit --wait` of a 60-unit job, one worker SIGKILLed mid-job, the job completing
//! with every unit verified and equal to `ova run` on this machine, the killed worker restarted
//! keeping what it stored, and `ova job status|verify|list|results` afterwards.
//!
//! Every wait has a deadline; conditions are polled.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

#[path = "support/process.rs"]
mod process;
use process::{Proc, ok, ova, poll, poll_until};

const UNITS: usize = 60;

/// A job directory: the primes example module, `UNITS` units.
fn job_dir(root: &Path) -> PathBuf {
    let dir = root.join("job");
    std::fs::create_dir_all(&dir).unwrap();
    let wasm = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/wasm/primes.wasm");
    assert!(wasm.exists(), "build the examples first: scripts/build-examples.sh");
    let toml = format!(
        "name = \"primes-cli\"\nmodule = \"{}\"\n[replication]\nquorum = 2\nmax_replicas = 4\n\
         result_copies = 1\n[limits]\nmemory_mib = 64\ndeadline_secs = 20\n[units_range]\n\
         count = {UNITS}\ninput_text = \"{{i}}\"\nargs = [\"--span\", \"150000\"]\n",
        wasm.display()
    );
    std::fs::write(dir.join("ova.toml"), toml).unwrap();
    dir
}

/// Starts `ova worker` and returns it with its metrics address (read from its stdout).
fn worker(dir: &Path, boot: Option<&str>) -> (Proc, SocketAddr) {
    let mut c = ova(&[]);
    // `--nice 0`: these units must not starve behind other tests running at the same time.
    c.args(["worker", "--net", "loopback", "--dedicated", "--cores", "1", "--nice", "0"])
        .arg("--data-dir")
        .arg(dir)
        .args(["--advert-interval", "0.5", "--advert-ttl", "3", "--metrics", "127.0.0.1:0"]);
    if let Some(t) = boot {
        c.args(["--bootstrap", t]);
    }
    let mut child =
        c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut metrics = None;
    for line in lines.by_ref() {
        let line = line.expect("worker stdout");
        if let Some(rest) = line.strip_prefix("metrics: http://") {
            metrics = rest.split('/').next().and_then(|a| a.parse().ok());
        }
        if line.starts_with("cores:") {
            break;
        }
    }
    // Keep draining stdout so the worker never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (Proc(child), metrics.expect("the worker prints its metrics address"))
}

/// `GET /metrics` and the value of the first sample named `name` (summed over labels).
/// (A plain HTTP/1.0 request over a TcpStream: the test needs nothing more.)
fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let mut total = None;
    for line in body.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        if rest.starts_with(' ') || rest.starts_with('{') {
            let v: f64 = rest.rsplit(' ').next()?.parse().ok()?;
            total = Some(total.unwrap_or(0.0) + v);
        }
    }
    total
}

fn ticket(dir: &Path) -> String {
    poll("a worker's ticket", || {
        let out = ova(&[]).args(["node", "ticket", "--data-dir"]).arg(dir).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    })
}

fn outputs(dir: &Path) -> Vec<Vec<u8>> {
    (0..UNITS)
        .map(|i| std::fs::read(dir.join(format!("unit-{i:05}.out"))).unwrap_or_default())
        .collect()
}

#[test]
fn a_job_survives_a_sigkilled_worker_and_the_cli_reports_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let bundle = root.join("primes.ova");
    ok(
        ova(&[]).args(["job", "pack"]).arg(job_dir(root)).arg("-o").arg(&bundle).output().unwrap(),
        "ova job pack",
    );
    // The reference: every unit run on this machine.
    ok(
        ova(&[])
            .args(["run", "-q", "--cores", "1"])
            .arg(&bundle)
            .arg("-o")
            .arg(root.join("local"))
            .output()
            .unwrap(),
        "ova run",
    );
    let expected = outputs(&root.join("local"));
    assert!(expected.iter().all(|o| !o.is_empty()));

    let dirs: Vec<PathBuf> = (0..3).map(|i| root.join(format!("w{i}"))).collect();
    let (w0, m0) = worker(&dirs[0], None);
    let t0 = ticket(&dirs[0]);
    let (w1, m1) = worker(&dirs[1], Some(&t0));
    let (mut w2, m2) = worker(&dirs[2], Some(&t0));

    let sub = root.join("submitter");
    let results = root.join("results");
    // The submitter's log goes to a file, so that a failure below can show it.
    let submit_log = root.join("submit.log");
    let submit = ova(&[])
        .args(["job", "submit", "-q", "--wait", "--timeout", "300", "--net", "loopback"])
        .arg(&bundle)
        .arg("-o")
        .arg(&results)
        .arg("--data-dir")
        .arg(&sub)
        .args(["--bootstrap", &t0])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&submit_log).unwrap())
        .spawn()
        .unwrap();
    let mut submit = Proc(submit);

    // Kill worker 2 once it has published commits (each left only after the result it
    // acknowledges was durable in its store), before the job is done.
    poll("worker 2 publishes commits", || {
        metric(m2, "ova_commits_published_total").filter(|n| *n >= 3.0)
    });
    w2.0.kill().unwrap();
    w2.0.wait().unwrap();
    let finished = poll_until(Duration::from_secs(300), || submit.0.try_wait().ok().flatten());
    let Some(out) = finished else {
        submit.0.kill().ok();
        let log = std::fs::read_to_string(&submit_log).unwrap_or_default();
        panic!("the submitter did not finish within 300 s; its log:\n{log}");
    };
    let mut stdout = String::new();
    submit.0.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    let stderr = std::fs::read_to_string(&submit_log).unwrap_or_default();
    assert!(out.success(), "submit failed: {out}\n{stdout}\n{stderr}");
    assert!(stdout.contains(&format!("outcomes: success: {UNITS}")), "{stdout}");
    assert_eq!(outputs(&results), expected, "network results equal the local run");
    let job_id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("job id: "))
        .and_then(|l| l.split_whitespace().next())
        .expect("submit prints the job id")
        .to_string();

    // The survivors did the rest; the killed worker restarts with what it had stored.
    assert!(metric(m0, "ova_units_finished_total").unwrap() > 0.0);
    assert!(metric(m1, "ova_units_finished_total").unwrap() > 0.0);
    let (_w2, m2) = worker(&dirs[2], Some(&t0));
    let held = poll("the restarted worker reports its store", || {
        metric(m2, "ova_blobs_stored").filter(|n| *n > 0.0)
    });
    assert!(held >= 2.0, "it kept the module and the results it published: {held}");

    // The CLI on the submitter's data directory.
    let data = ["--data-dir", sub.to_str().unwrap()];
    // The 12-digit short id `submit` and `list` print names the job too.
    let short = &job_id[..12];
    let verify = ova(&[]).args(["job", "verify", short]).args(data).output().unwrap();
    let text = ok(verify, "ova job verify");
    assert!(text.contains(&format!("{UNITS} of {UNITS} units verified")), "{text}");
    let list = ok(ova(&[]).args(["job", "list"]).args(data).output().unwrap(), "ova job list");
    assert!(list.contains(&job_id) && list.contains("done"), "{list}");
    let status = ova(&[])
        .args(["job", "status", short, "--net", "loopback", "--sync", "1"])
        .args(data)
        .output()
        .unwrap();
    let text = ok(status, "ova job status");
    assert!(text.contains(&format!("verified: {UNITS}")) && text.contains("state: done"), "{text}");
    let again = root.join("again");
    let fetch = ova(&[])
        .args(["job", "results", &job_id, "--net", "loopback", "--timeout", "30", "-o"])
        .arg(&again)
        .args(data)
        .output()
        .unwrap();
    ok(fetch, "ova job results");
    assert_eq!(outputs(&again), expected);

    // A job id nobody submitted here is a clear error, not a hang.
    let bogus = "00".repeat(32);
    let out = ova(&[]).args(["job", "verify", &bogus]).args(data).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("not known here"));
    let out = ova(&[]).args(["job", "verify", "000000"]).args(data).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no job known here starts with 000000"));
    drop((w0, w1));
}
