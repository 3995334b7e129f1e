//! The network lab (../shared/design/NETLAB.md): real NATs on one machine
//! with network namespaces, veth pairs and nftables.
//!
//! ```text
//!            ns <p>-pub: bridge br0 198.51.100.1/24, pilot-rendezvous
//!              |                         |
//!   ns <p>-r<i> wan0 198.51.100.(10+i)   (one router per host, NAT type
//!   ns <p>-r<i> lan0 10.<i>.0.1/24        chosen per host; "none" puts the
//!              |                          host straight on the public bridge)
//!   ns <p>-h<i> eth0 10.<i>.0.2/24 (+ more hosts on the same LAN on request)
//! ```
//!
//! Every namespace name starts with `pnl<pid>x<n>-`, so parallel tests and
//! leftovers never collide; veths are created directly inside their
//! namespaces (no names in the root namespace at all). [`Lab`]'s `Drop`
//! kills every process inside its namespaces and deletes them, also during
//! a panic's unwinding; [`Lab::new`] first sweeps namespaces of dead test
//! processes. Lab traffic never leaves the lab's namespaces, and nftables
//! rules exist only inside them.
//!
//! NAT types (RFC 4787 terms):
//! * `None`: public address on the host;
//! * `FullCone` (EIM/EIF): port-preserving SNAT that records
//!   `external port -> host addr . port` in a dynamic map; inbound UDP is
//!   DNATed through the map;
//! * `Home` (EIM/APDF): the same, plus a forward filter that admits from
//!   the WAN only conntrack-established flows;
//! * `Symmetric` (EDM/APDF): `masquerade random` and the same filter.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::common::{wait_until, Node, Out, PILOTCTL, RENDEZVOUS};

/// Public address of the rendezvous in every lab.
pub const RDV_IP: &str = "198.51.100.1";
/// Registry and beacon addresses inside the lab.
pub const REGISTRY: &str = "198.51.100.1:9000";
/// See [`REGISTRY`].
pub const BEACON: &str = "198.51.100.1:9001";
/// The address of the lab's bridges (locally administered, fixed so that
/// it never follows the ports; see `Lab::new`).
pub const BRIDGE_MAC: &str = "02:00:5e:10:00:01";

static LABS: AtomicU32 = AtomicU32::new(0);

/// A NAT behaviour of a home router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// No NAT: the host has a public address.
    None,
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    Home,
    /// Endpoint-dependent mapping (random ports), APD filtering.
    Symmetric,
}

impl Nat {
    /// All four, in the matrix's order.
    pub const ALL: [Nat; 4] = [Nat::None, Nat::FullCone, Nat::Home, Nat::Symmetric];

    /// Short name for grids.
    pub fn name(self) -> &'static str {
        match self {
            Nat::None => "none",
            Nat::FullCone => "fullcone",
            Nat::Home => "home",
            Nat::Symmetric => "symmetric",
        }
    }

    /// Endpoint-independent mapping (the port seen by one peer is the port
    /// seen by all).
    pub fn eim(self) -> bool {
        self != Nat::Symmetric
    }

    /// Endpoint-independent filtering (anyone may send to a mapping).
    pub fn eif(self) -> bool {
        matches!(self, Nat::None | Nat::FullCone)
    }
}

/// Whether this process may build labs; prints why not otherwise.
pub fn available() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: the network lab needs root (network namespaces, nftables)");
        return false;
    }
    for tool in ["ip", "nft", "conntrack", "tc"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            eprintln!(
                "SKIP: the network lab needs `{tool}` (Debian: iproute2, nftables, conntrack)"
            );
            return false;
        }
    }
    true
}

fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) -> String {
    run(args).unwrap_or_else(|e| panic!("lab command failed: {e}"))
}

fn nft(ns: &str, rules: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nft");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft in {ns} failed: {}\n{rules}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Kills every process in `ns` and deletes it.
fn destroy_ns(ns: &str) {
    if let Ok(pids) = run(&["ip", "netns", "pids", ns]) {
        for pid in pids.split_whitespace() {
            let _ = run(&["kill", "-9", pid]);
        }
    }
    let _ = run(&["ip", "netns", "del", ns]);
}

/// Deletes lab namespaces left by test processes that no longer exist.
fn sweep_stale() {
    let Ok(list) = run(&["ip", "netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("pnl") else {
            continue;
        };
        let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if pid.is_empty() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        destroy_ns(name);
    }
}

/// One host of the lab (a namespace) and its router, if any.
#[derive(Debug, Clone)]
pub struct Host {
    /// The host's namespace.
    pub ns: String,
    /// Its router's namespace (None for `Nat::None`).
    pub router: Option<String>,
    /// The NAT type in front of it.
    pub nat: Nat,
    /// Its own address.
    pub ip: String,
    /// Its router's current public address (or its own for `None`).
    pub public_ip: String,
    /// Index used in the address plan.
    pub index: u32,
}

/// A lab: public segment with the rendezvous, plus routers and hosts.
pub struct Lab {
    /// Name prefix of every namespace.
    pub prefix: String,
    /// The public namespace.
    pub public: String,
    namespaces: std::sync::Mutex<Vec<String>>,
    rendezvous: std::sync::Mutex<Option<Child>>,
    /// Temp dir for the rendezvous store and log.
    pub dir: tempfile::TempDir,
    next_index: AtomicU32,
}

impl Lab {
    /// Builds the public segment and starts the rendezvous. `None` (after
    /// printing why) when the lab cannot run here.
    pub fn new() -> Option<Lab> {
        if !available() {
            return None;
        }
        sweep_stale();
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("pnl{}x{n}", std::process::id());
        let public = format!("{prefix}-pub");
        let lab = Lab {
            prefix,
            public: public.clone(),
            namespaces: std::sync::Mutex::new(Vec::new()),
            rendezvous: std::sync::Mutex::new(None),
            dir: tempfile::tempdir().unwrap(),
            next_index: AtomicU32::new(0),
        };
        lab.add_ns(&public);
        // A bridge whose address is not set takes the lowest address of its
        // ports, so it would change whenever a host plugged in later has a
        // lower one; hosts that cached the old one in ARP then cannot reach
        // the rendezvous for up to a reachable-time (the cause of a flaky
        // "cannot reach the registry: timed out" in the matrix). A fixed
        // address never changes.
        must(&[
            "ip", "-n", &public, "link", "add", "br0", "address", BRIDGE_MAC, "type", "bridge",
        ]);
        must(&[
            "ip",
            "-n",
            &public,
            "addr",
            "add",
            &format!("{RDV_IP}/24"),
            "dev",
            "br0",
        ]);
        must(&["ip", "-n", &public, "link", "set", "br0", "up"]);
        lab.start_rendezvous();
        Some(lab)
    }

    /// The link-layer address of the public bridge now (it must stay
    /// [`BRIDGE_MAC`] however many hosts were plugged in).
    pub fn public_bridge_address(&self) -> String {
        let out = must(&["ip", "-n", &self.public, "-j", "link", "show", "br0"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j link show");
        v[0]["address"].as_str().unwrap_or_default().to_string()
    }

    fn add_ns(&self, ns: &str) {
        must(&["ip", "netns", "add", ns]);
        self.namespaces.lock().unwrap().push(ns.to_string());
        must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }

    /// (Re)starts the rendezvous in the public namespace.
    pub fn start_rendezvous(&self) {
        self.kill_rendezvous();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("rendezvous.log"))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.public, RENDEZVOUS])
            .args(["--registry-addr", REGISTRY, "--beacon-addr", BEACON])
            .arg("--store")
            .arg(self.dir.path().join("store.json"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn pilot-rendezvous");
        *self.rendezvous.lock().unwrap() = Some(child);
        let public = self.public.clone();
        assert!(
            wait_until(Duration::from_secs(10), || {
                run(&[
                    "ip",
                    "netns",
                    "exec",
                    &public,
                    "ss",
                    "-ltnH",
                    "sport = :9000",
                ])
                .is_ok_and(|o| o.contains("9000"))
            }),
            "the lab's rendezvous did not start:\n{}",
            self.rendezvous_log()
        );
    }

    /// SIGKILLs the rendezvous.
    pub fn kill_rendezvous(&self) {
        if let Some(mut c) = self.rendezvous.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The rendezvous log.
    pub fn rendezvous_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("rendezvous.log")).unwrap_or_default()
    }

    /// Connects `ns`'s new veth `inner` to the public bridge.
    fn plug_public(&self, ns: &str, inner: &str, index: u32) {
        let outer = format!("p{index}");
        must(&[
            "ip",
            "-n",
            &self.public,
            "link",
            "add",
            &outer,
            "type",
            "veth",
            "peer",
            "name",
            inner,
            "netns",
            ns,
        ]);
        must(&[
            "ip",
            "-n",
            &self.public,
            "link",
            "set",
            &outer,
            "master",
            "br0",
        ]);
        must(&["ip", "-n", &self.public, "link", "set", &outer, "up"]);
        must(&["ip", "-n", ns, "link", "set", inner, "up"]);
    }

    /// Adds a host behind a router of type `nat`.
    pub fn host(&self, nat: Nat) -> Host {
        let i = self.next_index.fetch_add(1, Ordering::Relaxed);
        assert!(i < 200, "lab address plan exhausted");
        let public_ip = format!("198.51.100.{}", 10 + i);
        let ns = format!("{}-h{i}", self.prefix);
        self.add_ns(&ns);
        if nat == Nat::None {
            self.plug_public(&ns, "eth0", i);
            must(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{public_ip}/24"),
                "dev",
                "eth0",
            ]);
            return Host {
                ip: public_ip.clone(),
                ns,
                router: None,
                nat,
                public_ip,
                index: i,
            };
        }
        let router = format!("{}-r{i}", self.prefix);
        self.add_ns(&router);
        self.plug_public(&router, "wan0", i);
        must(&[
            "ip",
            "-n",
            &router,
            "addr",
            "add",
            &format!("{public_ip}/24"),
            "dev",
            "wan0",
        ]);
        must(&[
            "ip", "-n", &router, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ]);
        let lan_gw = format!("10.{i}.0.1");
        let ip = format!("10.{i}.0.2");
        must(&[
            "ip",
            "-n",
            &router,
            "addr",
            "add",
            &format!("{lan_gw}/24"),
            "dev",
            "lan0",
        ]);
        must(&["ip", "-n", &router, "link", "set", "lan0", "up"]);
        must(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ]);
        must(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        must(&["ip", "-n", &ns, "route", "add", "default", "via", &lan_gw]);
        must(&[
            "ip",
            "netns",
            "exec",
            &router,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        let host = Host {
            ns,
            router: Some(router),
            nat,
            ip,
            public_ip,
            index: i,
        };
        self.set_nat(&host, nat);
        host
    }

    /// Adds another host on `host`'s LAN (same router), for the LAN shortcut.
    pub fn lan_neighbour(&self, host: &Host, n: u32) -> Host {
        let router = host.router.clone().expect("a host behind a router");
        let ns = format!("{}-h{}n{n}", self.prefix, host.index);
        self.add_ns(&ns);
        let port = format!("lan{n}");
        must(&[
            "ip", "-n", &router, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ]);
        // The router's LAN becomes a bridge of lan0 and the new port.
        if run(&["ip", "-n", &router, "link", "show", "brl"]).is_err() {
            // Fixed address, as for the public bridge (see `Lab::new`).
            must(&[
                "ip", "-n", &router, "link", "add", "brl", "address", BRIDGE_MAC, "type", "bridge",
            ]);
            must(&["ip", "-n", &router, "addr", "flush", "dev", "lan0"]);
            must(&["ip", "-n", &router, "link", "set", "lan0", "master", "brl"]);
            let gw = format!("10.{}.0.1/24", host.index);
            must(&["ip", "-n", &router, "addr", "add", &gw, "dev", "brl"]);
            must(&["ip", "-n", &router, "link", "set", "brl", "up"]);
        }
        must(&["ip", "-n", &router, "link", "set", &port, "master", "brl"]);
        must(&["ip", "-n", &router, "link", "set", &port, "up"]);
        let ip = format!("10.{}.0.{}", host.index, 10 + n);
        must(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ]);
        must(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        must(&[
            "ip",
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &format!("10.{}.0.1", host.index),
        ]);
        // The NAT rules name the LAN interface: reinstall them for the bridge.
        let h = Host {
            ns,
            ip,
            ..host.clone()
        };
        self.set_nat(host, host.nat);
        h
    }

    /// (Re)installs `nat` on `host`'s router and flushes its conntrack.
    pub fn set_nat(&self, host: &Host, nat: Nat) {
        let router = host.router.as_deref().expect("a host behind a router");
        let wan_ip = &host.public_ip;
        let _ = run(&["ip", "netns", "exec", router, "nft", "flush", "ruleset"]);
        let filter = if nat.eif() {
            String::new()
        } else {
            r#"table ip filter {
  chain forward { type filter hook forward priority filter; policy accept;
    iifname "wan0" ct state established,related accept
    iifname "wan0" drop
  }
}"#
            .to_string()
        };
        let nat_rules = if nat.eim() {
            format!(
                r#"table ip nat {{
  map eim {{ type inet_service : ipv4_addr . inet_service; flags dynamic,timeout; timeout 10m; size 65535; }}
  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept;
    iifname "wan0" meta l4proto udp dnat ip to udp dport map @eim
  }}
  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;
    oifname "wan0" meta l4proto udp update @eim {{ udp sport timeout 10m : ip saddr . udp sport }}
    oifname "wan0" snat ip to {wan_ip}
  }}
}}"#
            )
        } else {
            r#"table ip nat {
  chain prerouting { type nat hook prerouting priority dstnat; policy accept; }
  chain postrouting { type nat hook postrouting priority srcnat; policy accept;
    oifname "wan0" masquerade random
  }
}"#
            .to_string()
        };
        nft(router, &format!("{nat_rules}\n{filter}\n"));
        let _ = run(&["ip", "netns", "exec", router, "conntrack", "-F"]);
    }

    /// Gives `host`'s router a new public address (a replaced router):
    /// new WAN address, fresh NAT state.
    pub fn replace_router(&self, host: &mut Host) {
        let router = host.router.clone().expect("a host behind a router");
        let new_ip = format!("198.51.100.{}", 210 + host.index % 40);
        must(&["ip", "-n", &router, "addr", "flush", "dev", "wan0"]);
        must(&[
            "ip",
            "-n",
            &router,
            "addr",
            "add",
            &format!("{new_ip}/24"),
            "dev",
            "wan0",
        ]);
        host.public_ip = new_ip;
        self.set_nat(host, host.nat);
    }

    /// Impairs `host`'s uplink in both directions: `tc netem` with `spec`
    /// when the kernel has netem, else (the VMs this suite runs on have no
    /// sch_netem) an nftables rule on the router dropping `loss_pct` % of
    /// forwarded UDP, with neither delay nor reordering. Returns what was
    /// applied, for the test's output.
    pub fn impair(&self, host: &Host, spec: &str, loss_pct: u32) -> String {
        if self.try_netem(host, spec) {
            return format!("netem {spec}");
        }
        let router = host.router.as_deref().expect("a host behind a router");
        nft(
            router,
            &format!(
                "table inet impair {{\n  chain lossy {{\n    type filter hook forward priority -10; policy accept;\n    \
                 meta l4proto udp numgen random mod 100 < {loss_pct} drop\n  }}\n}}\n"
            ),
        );
        format!("nftables loss {loss_pct}% (no sch_netem in this kernel: no delay, no reordering)")
    }

    fn try_netem(&self, host: &Host, spec: &str) -> bool {
        let (ns, dev) = match &host.router {
            Some(r) => (r.as_str(), "wan0"),
            None => (host.ns.as_str(), "eth0"),
        };
        let mut args = vec![
            "ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "netem",
        ];
        args.extend(spec.split_whitespace());
        if run(&args).is_err() {
            return false;
        }
        self.netem(host, spec);
        true
    }

    /// `tc netem` on `host`'s uplink in both directions (its router's WAN
    /// egress and the public bridge port's), e.g.
    /// `"delay 40ms 10ms loss 5% reorder 5%"`.
    pub fn netem(&self, host: &Host, spec: &str) {
        let (ns, dev) = match &host.router {
            Some(r) => (r.as_str(), "wan0"),
            None => (host.ns.as_str(), "eth0"),
        };
        let _ = run(&[
            "ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root",
        ]);
        let mut args = vec![
            "ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "netem",
        ];
        args.extend(spec.split_whitespace());
        must(&args);
    }

    /// A node (temp HOME, socket) running in `host`'s namespace.
    pub fn node(&self, host: &Host, name: &str) -> Node {
        let mut n = Node::new(name);
        n.netns = Some(host.ns.clone());
        n
    }

    /// Starts `node`'s daemon against the lab's rendezvous.
    pub fn start(&self, node: &Node, extra: &[&str]) -> serde_json::Value {
        let mut args = vec![
            "--json",
            "daemon",
            "start",
            "--registry",
            REGISTRY,
            "--beacon",
            BEACON,
            "--heartbeat",
            "1s",
            "--email",
            "lab@example.invalid",
            "--public",
        ];
        args.extend_from_slice(extra);
        let out = node.ctl(&args);
        if out.code != 0 {
            panic!(
                "daemon start failed in the lab: {out:?}\nlog:\n{}",
                node.log()
            );
        }
        out.data()
    }

    /// Runs a command inside `ns` (for checks), returning its output.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Out {
        let out = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("ip netns exec");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.kill_rendezvous();
        let list = self
            .namespaces
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default();
        for ns in list.iter().rev() {
            destroy_ns(ns);
        }
    }
}

/// `pilotctl` path for commands the harness builds itself.
pub fn pilotctl() -> &'static str {
    PILOTCTL
}

pub fn peer(node: &Node, addr: &str) -> serde_json::Value {
    let v = node.json(&["peers"]);
    v["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["address"] == addr)
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// Deterministic test bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// An echo stream (`pilotctl connect ADDR 7`) fed at a steady pace from a
/// thread; `finish` returns what came back, once all of it has (or the
/// stream ended). The connect lingers 30 s for reply bytes after its input
/// ends, so an outage late in the feed (a fault under test) does not end
/// the stream before the tunnel has recovered; the reader stops as soon as
/// every byte is back, so a healthy run does not wait for the linger.
pub struct EchoFeed {
    child: std::process::Child,
    writer: Option<std::thread::JoinHandle<()>>,
    reader: Option<std::thread::JoinHandle<Vec<u8>>>,
    errors: Option<std::thread::JoinHandle<String>>,
    sent: Vec<u8>,
}

impl EchoFeed {
    pub fn start(
        node: &Node,
        addr: &str,
        data: Vec<u8>,
        chunk: usize,
        every: Duration,
    ) -> EchoFeed {
        let mut child = node
            .command()
            .arg("--socket")
            .arg(&node.socket)
            .args(["connect", addr, "7", "--linger", "30s", "--timeout", "30s"])
            .env("HOME", node.home.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let errors = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let to_send = data.clone();
        let expected = data.len();
        let writer = std::thread::spawn(move || {
            for c in to_send.chunks(chunk) {
                if stdin.write_all(c).is_err() {
                    return;
                }
                std::thread::sleep(every);
            }
        });
        let reader = std::thread::spawn(move || {
            let mut got = Vec::with_capacity(expected);
            let mut buf = vec![0u8; 64 * 1024];
            while got.len() < expected {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            got
        });
        EchoFeed {
            child,
            writer: Some(writer),
            reader: Some(reader),
            errors: Some(errors),
            sent: data,
        }
    }

    pub fn finish(self) -> (Vec<u8>, Vec<u8>) {
        let (sent, got, _) = self.finish_with_errors();
        (sent, got)
    }

    /// [`EchoFeed::finish`], with what `pilotctl connect` wrote on stderr
    /// (why it ended, when it ended early).
    pub fn finish_with_errors(mut self) -> (Vec<u8>, Vec<u8>, String) {
        let _ = self.writer.take().unwrap().join();
        let got = self.reader.take().unwrap().join().unwrap();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let errors = self.errors.take().unwrap().join().unwrap_or_default();
        (std::mem::take(&mut self.sent), got, errors)
    }
}

impl Drop for EchoFeed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
