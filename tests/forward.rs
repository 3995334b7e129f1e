//! End to end: `pilotctl forward` (a local TCP port forwarded to a remote
//! virtual port, no privileges) and `pilotctl expose` (kept by the daemon),
//! with real curl and Python's urllib. The forwarding node runs entirely as
//! user `nobody` to show that no root is involved; setting that user up
//! needs root, so the tests print why they skip otherwise.

mod common;
mod gateway_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use gateway_support::{
    as_nobody, curl, have, make_file, nobody_pilotctl, root_or_skip, sha256_file, Lab,
};

fn ready(what: &str) -> bool {
    root_or_skip(what) && have("curl") && have("python3") && have("setpriv")
}

/// `pilotctl forward 127.0.0.1:0 TARGET` as nobody, its reports to
/// `stderr`; returns the child and the local address it listens on.
fn spawn_forward(lab: &Lab, target: &str, stderr: Stdio) -> (KillOnDrop, String) {
    let mut child = nobody_pilotctl(&lab.a)
        .args(["--json", "forward", "127.0.0.1:0", target])
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| {
        panic!("forward printed {line:?} ({e})");
    });
    let listen = v["data"]["listen"].as_str().unwrap().to_string();
    (KillOnDrop(child), listen)
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn forward_without_root_gets_uploads_and_fails_fast() {
    if !ready("forward") {
        return;
    }
    let mut lab = Lab::start_with(true);
    // The daemon of alpha really runs as nobody.
    let pid = lab.a.pid().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains("65534")),
        "{status}"
    );
    let (_fwd, listen) = spawn_forward(&lab, "beta:80", Stdio::null());
    let base = format!("http://{listen}");

    let r = curl(&["-m", "20"], &format!("{base}/"));
    assert_eq!((r.code, r.http.as_str()), (0, "200"), "{r:?}");
    assert_eq!(r.body, "hello from beta\n");

    let want = make_file(&lab.path("big.bin"), 100 << 20, 3);
    let out = lab.path("big.out");
    let r = curl(
        &["-m", "180", "-o", out.to_str().unwrap()],
        &format!("{base}/file/big.bin"),
    );
    assert_eq!((r.code, r.http.as_str()), (0, "200"), "{r:?}");
    assert_eq!(sha256_file(&out), want);
    eprintln!(
        "forward: 100 MiB down in {:.2}s ({:.0} MB/s, debug build)",
        r.secs,
        (100 << 20) as f64 / r.secs / 1e6
    );

    let up = lab.path("up.bin");
    let want_up = make_file(&up, 50 << 20, 11);
    let r = curl(
        &[
            "-m",
            "180",
            "-H",
            "Expect:",
            "--data-binary",
            &format!("@{}", up.display()),
        ],
        &format!("{base}/upload"),
    );
    assert_eq!(r.body.trim(), format!("{want_up} {}", 50u64 << 20), "{r:?}");

    let py = format!(
        "import urllib.request; print(urllib.request.urlopen('{base}/', timeout=20).read().decode(), end='')"
    );
    let out = Command::new("python3").args(["-c", &py]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from beta\n");

    // The far service down: curl fails at once instead of hanging.
    lab.stop_http();
    let r = curl(&["-m", "20"], &format!("{base}/"));
    assert_ne!(r.code, 0, "{r:?}");
    assert_ne!(r.code, 28, "curl hung: {r:?}");
    assert!(r.secs < 5.0, "{r:?}");

    // A virtual port nobody serves: reset at once, and forward says why
    // (once for a burst of attempts).
    let log = lab.path("forward2.err");
    let (_fwd2, listen2) = spawn_forward(
        &lab,
        "beta:8080",
        Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    for _ in 0..3 {
        let r = curl(&["-m", "20"], &format!("http://{listen2}/"));
        assert_ne!(r.code, 0, "{r:?}");
        assert!(r.secs < 5.0, "{r:?}");
    }
    let said = std::fs::read_to_string(&log).unwrap();
    assert_eq!(said.matches("refused").count(), 1, "{said}");
}

#[test]
fn expose_survives_pilotctl_and_unexpose_ends_it() {
    if !ready("expose") {
        return;
    }
    let lab = Lab::start_with(true);
    // Lab::start exposed port 80 with a pilotctl process that has exited.
    let l = lab.b.json(&["expose", "--list"]);
    let to = format!("127.0.0.1:{}", lab.http_port);
    assert_eq!(l["exposed"][0]["port"], 80);
    assert_eq!(l["exposed"][0]["to"], to.as_str());
    let (_fwd, listen) = spawn_forward(&lab, &format!("{}:80", lab.b_addr), Stdio::null());
    for _ in 0..3 {
        assert_eq!(
            curl(&["-m", "20"], &format!("http://{listen}/")).body,
            "hello from beta\n"
        );
    }
    let l = lab.b.json(&["expose", "--list"]);
    assert!(l["exposed"][0]["streams"].as_u64().unwrap() >= 3, "{l}");

    // Exposing a port twice, or to a nonsense target, is one clear error.
    let e = lab.b.ctl(&["--json", "expose", "80", "--to", &to]);
    assert_eq!(e.code, 1);
    assert_eq!(e.json()["code"], "already_running");
    let e = lab.b.ctl(&["--json", "expose", "81", "--to", "nowhere"]);
    assert_eq!(e.code, 1);
    assert_eq!(e.json()["code"], "invalid_argument");
    // Without root, expose works too (on the nobody node).
    let port = common::free_tcp_port().to_string();
    let o = as_nobody(
        &lab.a,
        &[
            "--json",
            "expose",
            "9000",
            "--to",
            &format!("127.0.0.1:{port}"),
        ],
    );
    assert_eq!(o.code, 0, "{o:?}");

    let u = lab.b.json(&["unexpose", "80"]);
    assert_eq!(u["port"], 80);
    let r = curl(&["-m", "20"], &format!("http://{listen}/"));
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.secs < 5.0, "{r:?}");
    let l = lab.b.json(&["expose", "--list"]);
    assert_eq!(l["exposed"], serde_json::json!([]));
    let e = lab.b.ctl(&["--json", "unexpose", "80"]);
    assert_eq!(e.json()["code"], "not_found");
}
