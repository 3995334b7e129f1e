//! Shared harness for end-to-end tests: real `pilot-rendezvous`,
//! `pilot-daemon` and `pilotctl` processes on loopback, each node with its own
//! temporary HOME and IPC socket. Everything is killed on drop, even when a
//! test panics.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Spawns `cmd` with stderr piped and returns once its first stderr line
/// contains `ready` (a listener or receiver that says it is registered
/// with the daemon); panics with that line otherwise. The stderr reader
/// goes back with the child: long-running commands keep reporting there.
pub fn spawn_ready(
    cmd: &mut Command,
    ready: &str,
) -> (Child, std::io::BufReader<std::process::ChildStderr>) {
    use std::io::BufRead;
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains(ready), "expected {ready:?}, got: {line}");
    (child, err)
}

pub const PILOTCTL: &str = env!("CARGO_BIN_EXE_pilotctl");
pub const RENDEZVOUS: &str = env!("CARGO_BIN_EXE_pilot-rendezvous");

/// A loopback port that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback UDP port that was free a moment ago.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 50 ms until it returns true or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// A running `pilot-rendezvous` with a durable store in a temp dir.
pub struct Rendezvous {
    child: Option<Child>,
    pub registry: String,
    pub beacon: String,
    pub dir: tempfile::TempDir,
}

impl Rendezvous {
    pub fn start() -> Rendezvous {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Rendezvous {
            child: None,
            registry: format!("127.0.0.1:{}", free_tcp_port()),
            beacon: format!("127.0.0.1:{}", free_udp_port()),
            dir,
        };
        r.spawn();
        r
    }

    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store.json")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("rendezvous.log"))
            .unwrap();
        let child = Command::new(RENDEZVOUS)
            .args([
                "--registry-addr",
                &self.registry,
                "--beacon-addr",
                &self.beacon,
            ])
            .arg("--store")
            .arg(self.store())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn pilot-rendezvous");
        self.child = Some(child);
        let addr = self.registry.clone();
        assert!(
            wait_until(Duration::from_secs(10), || TcpStream::connect(&addr)
                .is_ok()),
            "rendezvous did not start; log:\n{}",
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("rendezvous.log")).unwrap_or_default()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Rendezvous {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The result of one pilotctl run.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// The JSON document printed (stdout on success, stderr on error).
    pub fn json(&self) -> Value {
        let text = if self.code == 0 {
            &self.stdout
        } else {
            &self.stderr
        };
        let last = text
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap_or("");
        serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// `data` of a successful `--json` run.
    pub fn data(&self) -> Value {
        assert_eq!(self.code, 0, "command failed: {self:?}");
        let v = self.json();
        assert_eq!(v["status"], "ok", "{self:?}");
        v["data"].clone()
    }
}

/// One node: a temp HOME, its own socket, and the daemon pilotctl starts.
pub struct Node {
    pub home: tempfile::TempDir,
    pub socket: PathBuf,
    pub name: String,
    /// Network namespace the node's commands run in (the network lab).
    pub netns: Option<String>,
}

impl Node {
    pub fn new(name: &str) -> Node {
        let home = tempfile::tempdir().unwrap();
        let socket = home.path().join("pilot.sock");
        Node {
            home,
            socket,
            name: name.to_string(),
            netns: None,
        }
    }

    /// `pilotctl`, inside the node's network namespace if it has one.
    pub fn command(&self) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, PILOTCTL]);
                c
            }
            None => Command::new(PILOTCTL),
        }
    }

    pub fn pilot_dir(&self) -> PathBuf {
        self.home.path().join(".pilot")
    }

    /// Runs pilotctl with this node's HOME and socket.
    pub fn ctl(&self, args: &[&str]) -> Out {
        let out = self
            .command()
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env("HOME", self.home.path())
            .env_remove("PILOT_SOCKET")
            .env_remove("PILOT_REGISTRY")
            .stdin(Stdio::null())
            .output()
            .expect("run pilotctl");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `pilotctl --json ARGS`, which must succeed; returns `data`.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        self.ctl(&a).data()
    }

    /// Starts the daemon (public, hostname = name, 1 s heartbeats).
    pub fn start(&self, rdv: &Rendezvous, extra: &[&str]) -> Value {
        let out = self.try_start(rdv, extra);
        if out.code != 0 {
            panic!("daemon start failed: {out:?}\nlog:\n{}", self.log());
        }
        out.data()
    }

    /// `pilotctl --json daemon start` against `rdv`, whatever comes of it.
    pub fn try_start(&self, rdv: &Rendezvous, extra: &[&str]) -> Out {
        let mut args = vec![
            "--json",
            "daemon",
            "start",
            "--registry",
            &rdv.registry,
            "--beacon",
            &rdv.beacon,
            "--heartbeat",
            "1s",
            "--email",
            "test@example.invalid",
        ];
        args.extend_from_slice(extra);
        self.ctl(&args)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.pilot_dir().join("pilot.log")).unwrap_or_default()
    }

    pub fn address(&self) -> String {
        self.json(&["info"])["address"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.pilot_dir().join("pilot.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// SIGKILL the daemon, as a crash would.
    pub fn kill9(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            wait_until(Duration::from_secs(5), || {
                !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid)
            });
        }
    }

    pub fn stop(&self) {
        let _ = self.ctl(&["daemon", "stop"]);
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.socket.exists() {
            self.stop();
        }
        self.kill9();
    }
}

/// A `pilot-rendezvous` process on ephemeral loopback ports: its addresses
/// come from its `listening` log line, its stderr is kept in `log`, and it
/// is killed on drop.
pub struct RendezvousProc {
    pub child: Child,
    pub registry: std::net::SocketAddr,
    pub beacon: std::net::SocketAddr,
    /// Set when it was started with `--metrics`.
    pub metrics: Option<std::net::SocketAddr>,
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl RendezvousProc {
    /// Starts the binary on `127.0.0.1:0` for both ports; `configure` adds
    /// arguments and environment. Waits (up to 60 s) for `listening`.
    pub fn spawn(configure: impl FnOnce(&mut Command)) -> RendezvousProc {
        use std::io::{BufRead, BufReader};
        let mut cmd = Command::new(RENDEZVOUS);
        cmd.args([
            "--registry-addr",
            "127.0.0.1:0",
            "--beacon-addr",
            "127.0.0.1:0",
        ]);
        configure(&mut cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pilot-rendezvous");
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let field = |line: &str, name: &str| -> Option<std::net::SocketAddr> {
                let i = line.find(name)? + name.len();
                line[i..].split_whitespace().next()?.parse().ok()
            };
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening") {
                    if let (Some(r), Some(b)) = (field(&line, "registry="), field(&line, "beacon="))
                    {
                        let _ = tx.send((r, b, field(&line, "metrics=")));
                    }
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok((registry, beacon, metrics)) => RendezvousProc {
                child,
                registry,
                beacon,
                metrics,
                log,
            },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("pilot-rendezvous did not start: {}", log.lock().unwrap());
            }
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// The process has not exited.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for RendezvousProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
