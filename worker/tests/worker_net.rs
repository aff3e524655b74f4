//! `ova worker`, `ova peers` and `ova node` as processes: two workers joining over loopback
//! with a ticket, clean shutdown on SIGTERM, and local discovery (mDNS) between two workers in
//! network namespaces this test creates (so multicast never touches the machine's real
//! interfaces). Every wait has a deadline; nothing sleeps to synchronise — conditions are
//! polled with a deadline.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[path = "support/process.rs"]
mod process;
use process::{Proc, ok, ova, poll};

fn spawn_worker(prefix: &[&str], dir: &Path, extra: &[&str]) -> Proc {
    let mut c = ova(prefix);
    c.args(["worker", "--data-dir"])
        .arg(dir)
        .args(["--advert-interval", "0.2", "--advert-ttl", "2"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    Proc(c.spawn().expect("spawn ova worker"))
}

/// The ids `ova peers --json` lists for the worker of `dir`, once it answers.
fn peer_ids(prefix: &[&str], dir: &Path) -> Option<Vec<String>> {
    let out = ova(prefix).args(["peers", "--json", "--data-dir"]).arg(dir).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        v.as_array()?
            .iter()
            .filter_map(|p| p.get("id").and_then(|i| i.as_str()).map(str::to_string))
            .collect(),
    )
}

fn node_id(prefix: &[&str], dir: &Path) -> String {
    ok(ova(prefix).args(["node", "id", "--data-dir"]).arg(dir).output().unwrap(), "ova node id")
        .trim()
        .to_string()
}

fn sigterm(p: &mut Proc) -> std::process::ExitStatus {
    let pid = p.0.id().to_string();
    let st = Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    assert!(st.success());
    poll("worker exit", || p.0.try_wait().ok().flatten())
}

#[test]
fn two_workers_join_by_ticket_and_leave_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    let a_id = node_id(&[], &a_dir);
    assert_eq!(node_id(&[], &a_dir), a_id, "the key is kept in the data dir");
    assert_eq!(a_id.len(), 64);

    let mut a = spawn_worker(&[], &a_dir, &["--net", "loopback", "--cores", "1"]);
    let ticket = poll("a's ticket", || {
        let out = ova(&[]).args(["node", "ticket", "--data-dir"]).arg(&a_dir).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    assert!(ticket.starts_with("ova"), "{ticket}");
    let b_id = node_id(&[], &b_dir);
    let mut b = spawn_worker(&[], &b_dir, &["--net", "loopback", "--bootstrap", &ticket]);

    poll("b lists a", || peer_ids(&[], &b_dir).filter(|p| p.contains(&a_id)));
    poll("a lists b", || peer_ids(&[], &a_dir).filter(|p| p.contains(&b_id)));
    // The table shows a's configured cap (it never offers more than --cores 1).
    let table = ok(ova(&[]).args(["peers", "--data-dir"]).arg(&b_dir).output().unwrap(), "peers");
    assert!(table.contains("SPARE") && table.contains("1 peer(s)"), "{table}");
    let json = ova(&[]).args(["peers", "--json", "--data-dir"]).arg(&b_dir).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(v[0]["capacity"]["spare_cores"].as_u64().unwrap() <= 1);
    assert!(v[0]["addrs"][0].as_str().unwrap().starts_with("127.0.0.1:"));

    // SIGTERM: a exits cleanly, removes its control address, and b forgets it.
    assert!(sigterm(&mut a).success());
    assert!(!a_dir.join("control.addr").exists());
    poll("b forgets a", || peer_ids(&[], &b_dir).filter(|p| !p.contains(&a_id)));
    assert!(sigterm(&mut b).success());
    let out = ova(&[]).args(["peers", "--data-dir"]).arg(&b_dir).output().unwrap();
    assert!(!out.status.success(), "peers without a worker must fail");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no running worker"));
}

/// Network namespaces `ova-test-PID-{a,b}` joined by a veth pair on 10.213.77.0/30; deleted
/// on drop, even when the test fails.
struct Namespaces {
    names: [String; 2],
}

impl Namespaces {
    fn create() -> Result<Self, String> {
        let pid = std::process::id();
        let names = [format!("ova-test-{pid}-a"), format!("ova-test-{pid}-b")];
        let ns = Namespaces { names: names.clone() };
        let veth = (format!("ovt{pid}a"), format!("ovt{pid}b"));
        let (va, vb) = (&veth.0[..veth.0.len().min(15)], &veth.1[..veth.1.len().min(15)]);
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", &names[0]],
            vec!["netns", "add", &names[1]],
            vec![
                "link", "add", va, "netns", &names[0], "type", "veth", "peer", "name", vb, "netns",
                &names[1],
            ],
            vec!["-n", &names[0], "addr", "add", "10.213.77.1/30", "dev", va],
            vec!["-n", &names[1], "addr", "add", "10.213.77.2/30", "dev", vb],
            vec!["-n", &names[0], "link", "set", "lo", "up"],
            vec!["-n", &names[1], "link", "set", "lo", "up"],
            vec!["-n", &names[0], "link", "set", va, "up"],
            vec!["-n", &names[1], "link", "set", vb, "up"],
            // Multicast needs a route; the only one is the veth.
            vec!["-n", &names[0], "route", "add", "224.0.0.0/4", "dev", va],
            vec!["-n", &names[1], "route", "add", "224.0.0.0/4", "dev", vb],
        ];
        for s in steps {
            let out = Command::new("ip").args(&s).output().map_err(|e| format!("ip: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "`ip {}` failed: {}",
                    s.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(ns)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.names {
            // Deleting a namespace also deletes its end of the veth pair.
            Command::new("ip").args(["netns", "del", n]).output().ok();
        }
    }
}

#[test]
fn two_workers_find_each_other_by_mdns_in_network_namespaces() {
    let ns = match Namespaces::create() {
        Ok(ns) => ns,
        Err(why) => {
            // The discovery hook itself is covered by ova-net's
            // `discovery_hook_joins_nodes_without_bootstrap` on loopback.
            eprintln!("SKIPPED: cannot create network namespaces ({why}); needs root and iproute2");
            return;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = vec![tmp.path().join("a"), tmp.path().join("b")];
    let prefixes: Vec<Vec<&str>> =
        ns.names.iter().map(|n| vec!["ip", "netns", "exec", n.as_str()]).collect();
    let ids: Vec<String> = (0..2).map(|i| node_id(&prefixes[i], &dirs[i])).collect();
    // No --bootstrap: only local discovery can bring them together.
    let _workers: Vec<Proc> =
        (0..2).map(|i| spawn_worker(&prefixes[i], &dirs[i], &["--net", "local"])).collect();
    poll("a discovers b", || peer_ids(&prefixes[0], &dirs[0]).filter(|p| p.contains(&ids[1])));
    poll("b discovers a", || peer_ids(&prefixes[1], &dirs[1]).filter(|p| p.contains(&ids[0])));
    let json =
        ova(&prefixes[0]).args(["peers", "--json", "--data-dir"]).arg(&dirs[0]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let addrs = v[0]["addrs"].to_string();
    assert!(addrs.contains("10.213.77.2"), "b's advertised addresses: {addrs}");
}
