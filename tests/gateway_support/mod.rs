//! Shared by tests/gateway.rs and tests/forward.rs: two daemons on loopback,
//! a real HTTP server (Python's http.server, threaded) behind `pilotctl
//! expose` on the serving node, and a `pilot-gateway` on the other node
//! with its own TUN device name and subnet per test.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::common::{free_tcp_port, wait_until, Node, Out, Rendezvous};

pub const GATEWAY: &str = env!("CARGO_BIN_EXE_pilot-gateway");

/// The test HTTP server: `/` (small page), `/file/NAME` (a file of the
/// test's directory), `/slow/SECS` (answers after SECS), `/sse/N` (N
/// server-sent events, 20 ms apart), POST/PUT (answers the body's SHA-256
/// and length).
const SERVER_PY: &str = r#"
import sys, os, time, hashlib, shutil, http.server, socketserver
root = sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def reply(self, code, body, ctype="text/plain"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        p = self.path.split("?")[0]
        if p == "/":
            return self.reply(200, b"hello from beta\n")
        if p.startswith("/file/"):
            path = os.path.join(root, os.path.basename(p[6:]))
            size = os.path.getsize(path)
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            with open(path, "rb") as f:
                shutil.copyfileobj(f, self.wfile, 1 << 20)
            return
        if p.startswith("/slow/"):
            time.sleep(float(p[6:]))
            return self.reply(200, b"finally\n")
        if p.startswith("/sse/"):
            n = int(p[5:])
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            for i in range(n):
                self.wfile.write(b"data: event-%d\n\n" % i)
                self.wfile.flush()
                time.sleep(0.02)
            self.close_connection = True
            return
        self.reply(404, b"not found\n")
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        h = hashlib.sha256()
        left = n
        while left > 0:
            b = self.rfile.read(min(left, 1 << 20))
            if not b:
                break
            h.update(b)
            left -= len(b)
        self.reply(200, ("%s %d\n" % (h.hexdigest(), n - left)).encode())
    do_PUT = do_POST
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 4096
S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

/// True when we may create TUN devices; prints why a test skips otherwise.
pub fn root_or_skip(what: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping {what}: needs root (creates a TUN device and routes)");
        return false;
    }
    true
}

/// A tool the test needs, or a printed reason to skip.
pub fn have(tool: &str) -> bool {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("skipping: {tool} is not installed (scripts/test.sh installs it)");
    }
    ok
}

/// Deterministic pseudo-random bytes (xorshift64).
pub fn fill(buf: &mut [u8], state: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let b = state.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// Writes `size` pseudo-random bytes to `path`; returns their SHA-256 hex.
pub fn make_file(path: &Path, size: u64, seed: u64) -> String {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut state = seed | 1;
    let mut left = size;
    while left > 0 {
        let n = (left as usize).min(buf.len());
        fill(&mut buf[..n], &mut state);
        h.update(&buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
    hex(&h.finalize())
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// SHA-256 hex of a file.
pub fn sha256_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    hex(&h.finalize())
}

/// Hands `dir` to user nobody (uid/gid 65534).
pub fn chown_nobody(dir: &Path) {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
}

/// `pilotctl ARGS` on `node`, run as user nobody (no privileges at all).
pub fn nobody_pilotctl(node: &Node) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(crate::common::PILOTCTL)
        .arg("--socket")
        .arg(&node.socket)
        .env("HOME", node.home.path())
        .env_remove("PILOT_SOCKET")
        .env_remove("PILOT_REGISTRY")
        .stdin(Stdio::null());
    c
}

/// Runs `pilotctl ARGS` as nobody.
pub fn as_nobody(node: &Node, args: &[&str]) -> Out {
    let out = nobody_pilotctl(node).args(args).output().expect("setpriv");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The serving side: a node with an HTTP server exposed on virtual port 80.
pub struct Lab {
    pub rdv: Rendezvous,
    /// The node that runs the gateway / forward.
    pub a: Node,
    /// The node that serves HTTP.
    pub b: Node,
    pub b_addr: String,
    pub http: Option<Child>,
    pub http_port: u16,
    pub dir: tempfile::TempDir,
}

impl Lab {
    /// Two public daemons; beta serves HTTP on virtual port 80. Beta takes
    /// SYNs at the rate a gateway's many connections need.
    pub fn start() -> Lab {
        Lab::start_with(false)
    }

    /// As [`Lab::start`]; with `a_unprivileged`, node alpha's daemon runs
    /// as user `nobody` (uid 65534) in a HOME it owns.
    pub fn start_with(a_unprivileged: bool) -> Lab {
        let rdv = Rendezvous::start();
        let a = Node::new("alpha");
        let b = Node::new("beta");
        if a_unprivileged {
            chown_nobody(a.home.path());
            let out = as_nobody(
                &a,
                &[
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
                    "--public",
                    "--hostname",
                    "alpha",
                ],
            );
            assert_eq!(
                out.code,
                0,
                "unprivileged daemon start: {out:?}\n{}",
                a.log()
            );
        } else {
            a.start(&rdv, &["--public", "--hostname", "alpha"]);
        }
        let v = b.start(
            &rdv,
            &[
                "--public",
                "--hostname",
                "beta",
                "--daemon-arg=--syn-rate-limit=5000",
                "--daemon-arg=--syn-rate-per-source=5000",
                "--daemon-arg=--max-conns-per-port=8192",
            ],
        );
        let b_addr = v["address"].as_str().unwrap().to_string();
        let dir = tempfile::tempdir().unwrap();
        let mut lab = Lab {
            rdv,
            a,
            b,
            b_addr,
            http: None,
            http_port: free_tcp_port(),
            dir,
        };
        lab.start_http();
        let to = format!("127.0.0.1:{}", lab.http_port);
        let d = lab.b.json(&["expose", "80", "--to", &to]);
        assert_eq!(d["port"], 80);
        lab
    }

    pub fn start_http(&mut self) {
        let script = self.dir.path().join("server.py");
        std::fs::write(&script, SERVER_PY).unwrap();
        let child = Command::new("python3")
            .arg(&script)
            .arg(self.http_port.to_string())
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        self.http = Some(child);
        let port = self.http_port;
        assert!(
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "http server did not start"
        );
    }

    pub fn stop_http(&mut self) {
        if let Some(mut c) = self.http.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_http();
    }
}

/// A running pilot-gateway on node `a`.
pub struct Gateway {
    pub device: String,
    pub subnet: String,
    pub control: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub home: PathBuf,
    pub pid: Option<i32>,
    /// `10.N.0.1` etc.
    pub prefix: String,
}

impl Gateway {
    /// Names for a gateway on subnet 10.`n`.0.0/16 (unique per test).
    pub fn new(node: &Node, n: u8) -> Gateway {
        let home = node.home.path().to_path_buf();
        Gateway {
            device: format!("pg{n}x{}", std::process::id() % 1_000_000),
            subnet: format!("10.{n}.0.0/16"),
            control: home.join("gw.sock"),
            state: home.join("gw-state.json"),
            socket: node.socket.clone(),
            home,
            pid: None,
            prefix: format!("10.{n}"),
        }
    }

    pub fn ip(&self, last: u8) -> String {
        format!("{}.0.{last}", self.prefix)
    }

    pub fn gateway_ip(&self) -> String {
        format!("{}.255.254", self.prefix)
    }

    /// Runs `pilot-gateway --json ARGS` with this gateway's sockets.
    pub fn ctl(&self, args: &[&str]) -> Out {
        let out = Command::new(GATEWAY)
            .arg("--json")
            .arg("--socket")
            .arg(&self.socket)
            .arg("--control")
            .arg(&self.control)
            .args(args)
            .env("HOME", &self.home)
            .env_remove("PILOT_SOCKET")
            .env_remove("SUDO_USER")
            .stdin(Stdio::null())
            .output()
            .expect("run pilot-gateway");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `start` with `extra` options; must succeed.
    pub fn start(&mut self, extra: &[&str]) -> serde_json::Value {
        let mut args = vec![
            "start",
            "--device",
            &self.device,
            "--subnet",
            &self.subnet,
            "--state",
        ];
        let state = self.state.display().to_string();
        args.push(&state);
        args.extend_from_slice(extra);
        let out = self.ctl(&args);
        if out.code != 0 {
            panic!("gateway start failed: {out:?}\nlog:\n{}", self.log());
        }
        let d = out.data();
        self.pid = d["pid"].as_i64().map(|p| p as i32);
        d
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.join(".pilot/gateway.log")).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            wait_until(Duration::from_secs(5), || {
                !Path::new(&format!("/proc/{pid}")).exists()
            });
        }
    }

    pub fn device_exists(&self) -> bool {
        Path::new("/sys/class/net").join(&self.device).exists()
    }

    pub fn route_exists(&self) -> bool {
        let out = Command::new("ip")
            .args(["-4", "route", "show", &self.subnet])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        !out.trim().is_empty()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.pid.is_some() {
            let _ = self.ctl(&["stop"]);
            self.kill9();
        }
    }
}

/// The result of one curl run.
#[derive(Debug)]
pub struct Curl {
    pub code: i32,
    pub http: String,
    pub body: String,
    pub stderr: String,
    pub secs: f64,
}

/// `curl -sS ARGS URL`, body to a string (or to `-o` if given in ARGS).
pub fn curl(args: &[&str], url: &str) -> Curl {
    let start = Instant::now();
    let out = Command::new("curl")
        .args(["-sS", "--noproxy", "*", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, http) = text.rsplit_once('\n').unwrap_or(("", &text));
    Curl {
        code: out.status.code().unwrap_or(-1),
        http: http.to_string(),
        body: body.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        secs: start.elapsed().as_secs_f64(),
    }
}
