//! Observability as an operator sees it (issue #7, "Throughput you can watch"), on 127.0.0.1:
//!
//! - a real Prometheus (Debian's `prometheus`, started by the test, listening on 127.0.0.1
//!   only) scrapes three in-process workers and the submitting client while a job runs, and
//!   every query of the shipped Grafana dashboard (`examples/monitoring/grafana-dashboard.json`)
//!   returns data; the shipped `prometheus.yml` passes `promtool check config`;
//! - the status page renders in headless Chromium with the node id, a chart with data and no
//!   script error; its screenshot is kept under `target/test-artifacts/`.
//!
//! Needs `prometheus` and `chromium` (`scripts/ci-deps.sh` installs them). Every wait has a
//! deadline (conditions are polled); every child process is killed on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ova_jobs::{
    BlobId, Bundle, Determinism, Limits, MANIFEST_VERSION, Manifest, Replication, UnitSpec,
};
use ova_net::endpoint::EndpointConfig;
use ova_net::ticket::NodeTicket;
use ova_sdk::{Client, ClientConfig, Job, JobSummary};
use ova_worker::http::HttpServer;
use ova_worker::metrics::Metrics;
use ova_worker::peer::{ExecutorChoice, WorkerOptions, WorkerPeer};
use ova_worker::{PoolExecutor, Sandbox, SandboxConfig};
use serde_json::Value;

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";
const CHROMIUM: &str = "/usr/bin/chromium";

// ---------------------------------------------------------------------------------------------
// Processes, polling, HTTP

/// A child process killed (SIGKILL, with its whole process group when it has its own) and
/// reaped on drop.
struct Killed {
    child: Child,
    own_group: bool,
}

impl Killed {
    fn spawn(cmd: &mut Command, own_group: bool) -> Self {
        if own_group {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        Self { child, own_group }
    }

    /// Waits at most `limit` for the process to exit; `None` if it is still running.
    fn wait_for(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        if self.own_group {
            // Chromium leaves helper processes (zygote, renderer) in the group we gave it.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.child.id())])
                .stderr(Stdio::null())
                .status();
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            self.child.kill().ok();
        }
        self.child.wait().ok();
    }
}

/// Polls `cond` every 100 ms until it returns `Some`, or panics after `limit` with `what` and
/// the last thing `cond` reported.
fn poll_for<T>(what: &str, limit: Duration, mut cond: impl FnMut() -> Result<T, String>) -> T {
    let end = Instant::now() + limit;
    loop {
        match cond() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= end => {
                panic!("timed out after {} s waiting for {what}: {last}", limit.as_secs())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A free port on 127.0.0.1 (bound then released: another process could take it in between,
/// which would make the child fail to start and the test fail loudly, not hang).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET target` (path and query) over HTTP/1.0: status and body.
///
/// No HTTP client crate is a dependency with a blocking interface (reqwest is in the tree only
/// async, without a TLS provider), and these loopback GETs need nothing more than this.
fn http_get(addr: SocketAddr, target: &str) -> Result<(u16, String), String> {
    let io = |e: std::io::Error| format!("GET http://{addr}{target}: {e}");
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(io)?;
    write!(s, "GET {target} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").map_err(io)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no end of headers")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// Percent-encodes `s` for a query string.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// `target/test-artifacts/`: next to the build's `tmp` directory, so it follows
/// `CARGO_TARGET_DIR` when that is set.
fn artifacts_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.parent().unwrap_or(tmp).join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn require(program: &str) {
    assert!(
        Path::new(program).exists(),
        "{program} is missing: run scripts/ci-deps.sh (installs Debian's prometheus and chromium)"
    );
}

// ---------------------------------------------------------------------------------------------
// The network: in-process workers and a submitting client, all serving /metrics

fn runtime() -> tokio::runtime::Runtime {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A worker on 127.0.0.1 offering 2 cores whatever the machine's load, with `/metrics`, the
/// status page and its JSON on a free port of 127.0.0.1.
async fn worker(dir: &Path, boot: Vec<NodeTicket>) -> WorkerPeer {
    let sandbox = Sandbox::new(SandboxConfig { slots: 8, ..SandboxConfig::default() }).unwrap();
    let mut o = WorkerOptions::loopback(dir, 2).unwrap();
    o.node.bootstrap = boot;
    o.executor = ExecutorChoice::Given(Arc::new(PoolExecutor::new(2, Arc::new(sandbox)).unwrap()));
    o.http = Some("127.0.0.1:0".parse().unwrap());
    WorkerPeer::start(o).await.unwrap()
}

/// A submitter whose metrics are served too: `ova_results_verified_total` and the job
/// counters are counted at the peer whose job it is (as `ova job submit --metrics` does).
struct Submitter {
    client: Client,
    http: HttpServer,
}

async fn submitter(dir: &Path, boot: &WorkerPeer) -> Submitter {
    let metrics = Arc::new(Metrics::new());
    metrics.init_label_values();
    let config = ClientConfig {
        endpoint: EndpointConfig::loopback(),
        observer: metrics.clone(),
        ..ClientConfig::new(dir, vec![boot.runtime().node().ticket()])
    };
    let client = Client::connect(config).await.unwrap();
    metrics.set_node_id(client.runtime().node().id().to_string());
    let http = HttpServer::start_client("127.0.0.1:0".parse().unwrap(), client.runtime(), metrics)
        .await
        .unwrap();
    Submitter { client, http }
}

/// Starts `n` workers joined through the first, and a submitter that sees them all.
async fn network(dirs: &[tempfile::TempDir], n: usize) -> (Vec<WorkerPeer>, Submitter) {
    let mut ws: Vec<WorkerPeer> = Vec::new();
    for d in &dirs[..n] {
        let boot = ws.first().map(|w| vec![w.runtime().node().ticket()]).unwrap_or_default();
        ws.push(worker(d.path(), boot).await);
    }
    let sub = submitter(dirs[n].path(), &ws[0]).await;
    if let Err(e) = sub.client.wait_for_workers(n, Duration::from_secs(30)).await {
        panic!("the submitter sees {n} workers within 30 s: {e}");
    }
    (ws, sub)
}

async fn stop(ws: Vec<WorkerPeer>, sub: Submitter) {
    sub.http.shutdown().await;
    sub.client.shutdown().await;
    for w in ws {
        w.shutdown().await;
    }
}

/// `units` units of the primes example (`--span span`), at quorum 2.
fn primes_job(name: &str, units: usize, span: u32) -> Bundle {
    let path = workspace_root().join("examples/wasm/primes.wasm");
    let module = std::fs::read(&path).unwrap_or_else(|e| {
        panic!("{}: {e} — run scripts/build-examples.sh first", path.display())
    });
    let inputs: Vec<Vec<u8>> = (0..units).map(|i| i.to_string().into_bytes()).collect();
    let args = vec!["--span".to_string(), span.to_string()];
    let m = Manifest {
        version: MANIFEST_VERSION,
        name: name.into(),
        module: BlobId::of(&module),
        units: inputs
            .iter()
            .map(|i| UnitSpec { input: BlobId::of(i), args: args.clone() })
            .collect(),
        replication: Replication { quorum: 2, max_replicas: 4, result_copies: 1 },
        limits: Limits { memory_bytes: 64 << 20, deadline_ms: 60_000, ..Limits::default() },
        determinism: Determinism::SameArch,
        priority: 0,
    };
    Bundle::new(m, inputs.into_iter().chain([module])).unwrap()
}

async fn wait_all(job: &mut Job, secs: u64) -> JobSummary {
    match job.wait(Duration::from_secs(secs)).await {
        Ok(s) => s,
        Err(e) => panic!("{e}: progress {:?}", job.progress().await),
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus

/// Prometheus scraping `targets` every second, listening on 127.0.0.1 only, with its data in a
/// temporary directory.
struct Prometheus {
    addr: SocketAddr,
    log: PathBuf,
    _proc: Killed,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(targets: &[SocketAddr]) -> Self {
        require(PROMETHEUS);
        let dir = tempfile::tempdir().unwrap();
        let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: ova\n    metrics_path: /metrics\n    \
                 static_configs:\n      - targets: [{}]\n",
                list.join(", ")
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = dir.path().join("prometheus.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(PROMETHEUS);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let mut proc = Killed::spawn(&mut cmd, false);
        poll_for("Prometheus to be ready", Duration::from_secs(60), || {
            if let Some(s) = proc.child.try_wait().unwrap() {
                panic!("prometheus exited ({s}):\n{}", read_log(&log));
            }
            match http_get(addr, "/-/ready")? {
                (200, _) => Ok(()),
                (code, body) => Err(format!("{code} {body}")),
            }
        });
        Self { addr, log, _proc: proc, _dir: dir }
    }

    fn log_text(&self) -> String {
        read_log(&self.log)
    }

    /// `GET path`, parsed; `Err` unless Prometheus answers 200 with `"status": "success"`.
    fn api(&self, path: &str) -> Result<Value, String> {
        let (code, body) = http_get(self.addr, path)?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if code != 200 || v["status"] != "success" {
            return Err(format!("HTTP {code}: {body}"));
        }
        Ok(v["data"].clone())
    }

    /// The instant vector of `expr` now.
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let data = self.api(&format!("/api/v1/query?query={}", urlencode(expr)))?;
        match data["resultType"].as_str() {
            Some("vector") => Ok(data["result"].as_array().cloned().unwrap_or_default()),
            other => Err(format!("{expr}: result type {other:?}, not a vector")),
        }
    }

    /// The value of a single-series `expr` now.
    fn scalar(&self, expr: &str) -> Result<f64, String> {
        let r = self.query(expr)?;
        match r.as_slice() {
            [one] => sample_value(one),
            _ => Err(format!("{expr}: {} series, want 1: {r:?}", r.len())),
        }
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn sample_value(sample: &Value) -> Result<f64, String> {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no value in {sample}"))
}

// ---------------------------------------------------------------------------------------------
// The Grafana dashboard

/// Every panel (rows' panels included) of the dashboard.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// `expr` with the dashboard's template variables set to "All" (each variable's `allValue`)
/// and Grafana's interval macros set for a 1 s scrape interval.
fn substitute(expr: &str, vars: &[(String, String)]) -> String {
    let mut e = expr
        .replace("$__rate_interval", "1m")
        .replace("${__rate_interval}", "1m")
        .replace("$__interval_ms", "15000")
        .replace("$__interval", "15s")
        .replace("$__range", "5m");
    for (name, all) in vars {
        e = e.replace(&format!("${{{name}}}"), all).replace(&format!("${name}"), all);
    }
    assert!(!e.contains('$'), "unknown template variable left in {e:?} (from {expr:?})");
    e
}

#[test]
fn prometheus_scrapes_a_running_network_and_every_dashboard_query_returns_data() {
    const UNITS: usize = 120;
    let monitoring = workspace_root().join("examples/monitoring");

    // The shipped Prometheus configuration is valid.
    if Path::new(PROMTOOL).exists() {
        let out = Command::new(PROMTOOL)
            .args(["check", "config"])
            .arg(monitoring.join("prometheus.yml"))
            .current_dir(&monitoring)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool check config examples/monitoring/prometheus.yml:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("{PROMTOOL} not installed: not checking examples/monitoring/prometheus.yml");
    }

    // The dashboard is importable: a Prometheus datasource input that every panel and
    // variable uses, and "All"-able job and instance variables.
    let path = monitoring.join("grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let inputs = dashboard["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "{inputs:?}"
    );
    let mut vars = Vec::new();
    for v in dashboard["templating"]["list"].as_array().expect("templating.list") {
        let name = v["name"].as_str().expect("variable name").to_string();
        assert_eq!(v["datasource"]["uid"], "${DS_PROMETHEUS}", "variable {name}");
        assert_eq!(v["includeAll"], true, "variable {name}");
        let all = v["allValue"].as_str().unwrap_or_else(|| panic!("{name} has no allValue"));
        vars.push((name, all.to_string()));
    }
    let names: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"job") && names.contains(&"instance"), "{names:?}");
    let mut exprs = Vec::new(); // (panel title, raw expr)
    for p in panels(&dashboard) {
        let title = p["title"].as_str().unwrap_or("?").to_string();
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "panel {title}");
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_else(|| panic!("{title}: target without expr"));
            for (name, _) in &vars {
                // Multi-value variables expand to a regex: only `=~` matches them.
                assert!(
                    !expr.contains(&format!("=\"${name}\"")),
                    "{title}: {expr} matches ${name} with = instead of =~"
                );
            }
            exprs.push((title.clone(), expr.to_string()));
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");

    let rt = runtime();
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let (ws, sub) = rt.block_on(network(&dirs, 3));
    let mut targets: Vec<SocketAddr> = ws.iter().map(|w| w.http_addr().unwrap()).collect();
    targets.push(sub.http.addr());
    let prom = Prometheus::start(&targets);
    let fail = |what: &str, e: String| -> ! {
        panic!("{what}: {e}\n--- prometheus log ---\n{}", prom.log_text())
    };

    // Every peer is scraped (so every counter has a sample at zero before the job).
    poll_for("Prometheus to scrape all 4 peers", Duration::from_secs(60), || {
        let up = prom.scalar("count(up{job=\"ova\"} == 1)")?;
        if up == 4.0 { Ok(()) } else { Err(format!("{up} targets up")) }
    });

    let summary = rt.block_on(async {
        let mut job =
            sub.client.submit(primes_job("primes-observed", UNITS, 20_000)).await.unwrap();
        wait_all(&mut job, 180).await
    });
    assert_eq!(
        (summary.units as usize, summary.verified as usize, summary.failed),
        (UNITS, UNITS, 0)
    );

    // The network's verified units, summed over peers, reach the job's unit count.
    poll_for(
        "sum(ova_results_verified_total) to reach the unit count",
        Duration::from_secs(60),
        || {
            let v = prom.scalar("sum(ova_results_verified_total)")?;
            if v == UNITS as f64 { Ok(()) } else { Err(format!("{v}")) }
        },
    );
    // Each unit ran on at least 2 workers (the workers' last runs may reach Prometheus a
    // scrape after the submitter's verified count).
    poll_for("every run to be scraped", Duration::from_secs(60), || {
        let runs = prom.scalar("sum(ova_units_finished_total{kind=\"success\"})")?;
        if runs >= 2.0 * UNITS as f64 { Ok(()) } else { Err(format!("{runs} runs")) }
    });

    // The dashboard's variables find the peers (Grafana's label_values(selector, label)).
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        let def = v["definition"].as_str().unwrap_or_default();
        let Some(inner) = def.strip_prefix("label_values(").and_then(|d| d.strip_suffix(')'))
        else {
            continue;
        };
        let (selector, label) = inner.rsplit_once(',').expect("label_values(selector, label)");
        let selector = substitute(selector.trim(), &vars);
        let values = prom
            .api(&format!("/api/v1/label/{}/values?match[]={}", label.trim(), urlencode(&selector)))
            .unwrap_or_else(|e| fail(def, e));
        let n = values.as_array().map_or(0, Vec::len);
        let want = if label.trim() == "instance" { 4 } else { 1 };
        assert_eq!(n, want, "variable {}: {def} gives {values}", v["name"]);
    }

    // Every query of every panel returns data.
    let mut empty = Vec::new();
    for (title, raw) in &exprs {
        let expr = substitute(raw, &vars);
        let result = prom.query(&expr).unwrap_or_else(|e| fail(&format!("{title}: {expr}"), e));
        println!("{title}: {expr} -> {} series", result.len());
        if result.is_empty() {
            empty.push(format!("{title}: {expr}"));
        }
    }
    assert!(empty.is_empty(), "dashboard queries without data:\n{}", empty.join("\n"));

    // The headline panel shows the network working.
    let headline = panels(&dashboard)
        .into_iter()
        .find(|p| p["title"] == "Verified units/s")
        .expect("a \"Verified units/s\" panel");
    let expr = substitute(headline["targets"][0]["expr"].as_str().unwrap(), &vars);
    let rate = prom.scalar(&expr).unwrap_or_else(|e| fail(&expr, e));
    assert!(rate > 0.0, "{expr} = {rate}");
    println!("verified units/s over the last minute: {rate:.2}");

    drop(prom);
    rt.block_on(stop(ws, sub));
}

// ---------------------------------------------------------------------------------------------
// The status page in a browser

/// Runs headless Chromium on `url` with `extra` arguments (a fresh profile each time) and
/// returns its stdout and stderr.
fn chromium(url: &str, extra: &[String]) -> (String, String) {
    require(CHROMIUM);
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut cmd = Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        // Console messages go to stderr as `…:CONSOLE(…)] "message"` lines.
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=5000",
        "--window-size=1200,900",
    ])
    .arg(format!("--user-data-dir={}", dir.path().join("profile").display()))
    .args(extra)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(std::fs::File::create(&out).unwrap())
    .stderr(std::fs::File::create(&err).unwrap());
    let mut p = Killed::spawn(&mut cmd, true);
    let status = p.wait_for(Duration::from_secs(90));
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let (stdout, stderr) = (read(&out), read(&err));
    match status {
        Some(s) if s.success() => (stdout, stderr),
        Some(s) => panic!("chromium {extra:?} failed ({s}):\n{stderr}"),
        None => panic!("chromium {extra:?} still running after 90 s:\n{stderr}"),
    }
}

/// The text inside the element with `id` in `dom` (which must have no child elements).
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in\n{dom}"));
    let open_end = at + dom[at..].find('>').unwrap() + 1;
    let close = open_end + dom[open_end..].find('<').unwrap();
    &dom[open_end..close]
}

/// The value of `attr` on the start tag of the element with `id`.
fn attr_of<'a>(dom: &'a str, id: &str, attr: &str) -> Option<&'a str> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let start = dom[..at].rfind('<')?;
    let tag = &dom[start..at + dom[at..].find('>')?];
    let v = tag.find(&format!(" {attr}=\""))? + attr.len() + 3;
    Some(&tag[v..v + tag[v..].find('"')?])
}

#[test]
fn status_page_renders_in_headless_chromium() {
    let rt = runtime();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (ws, sub) = rt.block_on(network(&dirs, 2));
    let node_id = ws[0].runtime().node().id().to_string();
    let addr = ws[0].http_addr().unwrap();

    // A job running, and the first worker having finished some of it: the chart has data.
    let mut job = rt.block_on(sub.client.submit(primes_job("primes-watched", 80, 60_000))).unwrap();
    let ran = poll_for("the worker to finish units", Duration::from_secs(60), || {
        let (code, body) = http_get(addr, "/api/status")?;
        let s: Value = serde_json::from_str(&body).map_err(|e| format!("{code} {e}: {body}"))?;
        match s["units_total"].as_u64() {
            Some(n) if n >= 5 => Ok(n),
            other => Err(format!("units_total {other:?}")),
        }
    });
    println!("the worker had run {ran} units when the browser loaded the page");
    let url = format!("http://{addr}/");

    let shot = artifacts_dir().join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    chromium(&url, &[format!("--screenshot={}", shot.display())]);
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("{}: {e}", shot.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "{} bytes", png.len());
    println!("status page screenshot: {}", shot.display());

    let (dom, log) = chromium(&url, &["--dump-dom".to_string()]);
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "the page wrote to the console:\n{}", console.join("\n"));
    assert_eq!(text_of(&dom, "js-errors"), "", "script errors on the page");
    assert_eq!(text_of(&dom, "node-id"), node_id, "the page shows the node id");
    let conn = text_of(&dom, "conn");
    assert!(conn.starts_with("updated "), "the page loaded its data: {conn:?}");
    let points: usize =
        attr_of(&dom, "chart", "data-points").expect("chart data-points").parse().unwrap();
    let nonzero: usize =
        attr_of(&dom, "chart", "data-nonzero").expect("chart data-nonzero").parse().unwrap();
    let max: f64 = attr_of(&dom, "chart", "data-max").expect("chart data-max").parse().unwrap();
    assert!(
        points >= 1 && nonzero >= 1 && max > 0.0,
        "chart: {points} points, {nonzero} non-zero, max {max}"
    );
    assert!(dom.contains("id=\"chart-series\""), "the chart draws a series");
    let total: u64 = text_of(&dom, "total").parse().expect("units run here");
    assert!(total >= ran, "total {total} < {ran}");
    assert!(dom.contains("primes-watched"), "recent units list the job");
    assert!(dom.contains("<td class=\"ok\">success</td>"), "recent units show successes");

    let summary = rt.block_on(wait_all(&mut job, 180));
    assert_eq!((summary.verified, summary.failed), (80, 0));
    rt.block_on(stop(ws, sub));
}
