//! Messages, files and events end to end (spec §10, issue 7 part 2-3):
//! real rendezvous, real private daemons, pilotctl as a user runs it, and
//! raw frames through `pilotctl connect` where a hostile peer is needed.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{wait_until, Node, Rendezvous};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Private alpha and beta, trusted both ways through the handshake
/// (beta auto-approves), plus extra daemon flags for beta.
fn pair(rdv: &Rendezvous, beta_extra: &[&str]) -> (Node, Node, String) {
    let a = Node::new("alpha");
    let b = Node::new("beta");
    a.start(rdv, &["--hostname", "alpha"]);
    let mut extra = vec!["--hostname", "beta", "--trust-auto-approve"];
    extra.extend_from_slice(beta_extra);
    b.start(rdv, &extra);
    let b_addr = b.address();
    a.json(&["handshake", &b_addr, "tests"]);
    assert!(
        wait_until(Duration::from_secs(5), || {
            !a.json(&["trust"])["trusted"].as_array().unwrap().is_empty()
        }),
        "no trust"
    );
    (a, b, b_addr)
}

fn inbox(n: &Node) -> Vec<Value> {
    n.json(&["inbox"])["inbox"].as_array().unwrap().clone()
}

fn received(n: &Node) -> Vec<Value> {
    n.json(&["received"])["received"]
        .as_array()
        .unwrap()
        .clone()
}

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs `pilotctl connect TARGET PORT` with `input` on stdin; returns stdout.
fn raw(n: &Node, target: &str, port: u16, input: &[u8], linger: &str) -> Vec<u8> {
    let mut child = n
        .command()
        .arg("--socket")
        .arg(&n.socket)
        .args(["connect", target, &port.to_string(), "--linger", linger])
        .env("HOME", n.home.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let w = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    w.join().unwrap();
    out.stdout
}

fn frame(t: u32, body: &[u8]) -> Vec<u8> {
    let mut v = t.to_be_bytes().to_vec();
    v.extend_from_slice(&(body.len() as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn file_frame(name: &[u8], content: &[u8]) -> Vec<u8> {
    let mut body = (name.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(name);
    body.extend_from_slice(content);
    frame(4, &body)
}

fn no_tmp_left(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .all(|e| !e.file_name().to_string_lossy().starts_with(".tmp-"))
        })
        .unwrap_or(true)
}

#[test]
fn messages_of_each_type_a_burst_and_a_100_mib_file() {
    let rdv = Rendezvous::start();
    let (a, b, b_addr) = pair(&rdv, &[]);
    let a_addr = a.address();

    // Each type, with sender and type in the inbox.
    let out = a.ctl(&["send-message", "beta", "--data", "hello beta"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("ACK TEXT 10 bytes"), "{out:?}");
    a.json(&[
        "send-message",
        &b_addr,
        "--type",
        "json",
        "--data",
        r#"{"n":1}"#,
    ]);
    a.json(&[
        "send-message",
        &b_addr,
        "--type",
        "binary",
        "--data",
        "\u{1}\u{2}",
    ]);
    let bad = a.ctl(&[
        "--json",
        "send-message",
        &b_addr,
        "--type",
        "json",
        "--data",
        "{x",
    ]);
    assert_eq!(bad.json()["code"], "invalid_argument", "{bad:?}");
    let msgs = inbox(&b);
    let kinds: Vec<&str> = msgs.iter().map(|m| m["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["TEXT", "JSON", "BINARY"], "{msgs:?}");
    assert!(msgs.iter().all(|m| m["from"] == a_addr.as_str()));
    assert_eq!(msgs[0]["data"], "hello beta");
    assert_eq!(msgs[1]["data"], r#"{"n":1}"#);
    // --from filters; --clear empties.
    assert_eq!(
        b.json(&["inbox", "--from", "99"])["inbox"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(b.json(&["inbox", "--clear"])["cleared"], 3);
    assert!(inbox(&b).is_empty());

    // 1,000 messages in a burst over one stream: none lost or overwritten.
    let lines: String = (0..1000).map(|i| format!("burst-{i}\n")).collect();
    let f = a.home.path().join("lines.txt");
    std::fs::write(&f, &lines).unwrap();
    let d = a.json(&[
        "send-message",
        "beta",
        "--each-line",
        "--file",
        f.to_str().unwrap(),
    ]);
    assert_eq!(d["messages"], 1000);
    let msgs = inbox(&b);
    assert_eq!(msgs.len(), 1000);
    let mut got: Vec<String> = msgs
        .iter()
        .map(|m| m["data"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 1000, "duplicates or overwrites");
    // And 50 sent one by one in a loop (a new stream each).
    for i in 0..50 {
        let out = a.ctl(&["send-message", "beta", "--data", &format!("loop-{i}")]);
        assert_eq!(out.code, 0, "{out:?}");
    }
    assert_eq!(inbox(&b).len(), 1050);
    let page = b.json(&["inbox", "--limit", "10"]);
    assert_eq!(
        (page["count"].as_u64(), page["total"].as_u64()),
        (Some(10), Some(1050))
    );
    assert_eq!(page["more"], true);

    // A 100 MiB file arrives byte-exact.
    let mut content = vec![0u8; 100 << 20];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for c in content.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    let path = a.home.path().join("big.bin");
    std::fs::write(&path, &content).unwrap();
    let d = a.json(&["send-file", "beta", path.to_str().unwrap()]);
    assert_eq!(d["sha256"], sha(&content));
    let files = received(&b);
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0]["name"].as_str().unwrap();
    assert!(name.starts_with("big-") && name.ends_with(".bin"), "{name}");
    let stored = std::fs::read(files[0]["path"].as_str().unwrap()).unwrap();
    assert_eq!(sha(&stored), sha(&content));
    assert!(no_tmp_left(&b.pilot_dir().join("received")));
    // A small one too, in the reference's single FILE frame.
    let small = a.home.path().join("notes.txt");
    std::fs::write(&small, "twelve bytes").unwrap();
    let out = a.ctl(&["send-file", &b_addr, small.to_str().unwrap()]);
    assert!(out.stdout.contains("ACK FILE 12 bytes"), "{out:?}");
    assert_eq!(received(&b).len(), 2);
}

#[test]
fn hostile_names_oversize_quota_and_untrusted_senders() {
    let rdv = Rendezvous::start();
    let (a, b, b_addr) = pair(&rdv, &["--quota", "300K"]);

    // Hostile file names, as raw FILE frames: each lands inside received/
    // under a safe name, and nothing is written anywhere else.
    let long = "n".repeat(10_000);
    let names: Vec<&[u8]> = vec![
        b"../../etc/passwd",
        b"/etc/shadow",
        b"..\\..\\boot.ini",
        b"a\0b.txt",
        b"\x1b[31mred\x07.txt",
        b".hidden",
        long.as_bytes(),
    ];
    let mut input = Vec::new();
    for n in &names {
        input.extend_from_slice(&file_frame(n, b"x"));
    }
    let replies = raw(&a, &b_addr, 1001, &input, "2s");
    let text = String::from_utf8_lossy(&replies);
    assert_eq!(
        text.matches("ACK FILE 1 bytes").count(),
        names.len(),
        "{text}"
    );
    let files = received(&b);
    assert_eq!(files.len(), names.len(), "{files:?}");
    let dir = b.pilot_dir().join("received");
    for f in &files {
        let name = f["name"].as_str().unwrap();
        assert!(!name.starts_with('.'), "{name}");
        assert!(
            !name.contains(['/', '\\', '\0', '\x1b', '\x07']),
            "{name:?}"
        );
        assert!(name.len() < 200, "{}", name.len());
        assert_eq!(Path::new(f["path"].as_str().unwrap()).parent(), Some(&*dir));
    }
    assert!(files
        .iter()
        .any(|f| f["name"].as_str().unwrap().starts_with("passwd-")));
    assert!(!b.home.path().join("etc").exists());
    b.json(&["received", "--clear"]);

    // Over 16 MiB: refused by the sender before sending, and by the
    // receiver (a raw header that claims 17 MiB) with its reason.
    let big = a.home.path().join("17m");
    std::fs::write(&big, vec![b'a'; 17 << 20]).unwrap();
    let out = a.ctl(&[
        "--json",
        "send-message",
        "beta",
        "--file",
        big.to_str().unwrap(),
    ]);
    assert_eq!(out.json()["code"], "too_large", "{out:?}");
    let mut head = frame(1, b"");
    head[4..8].copy_from_slice(&(17u32 << 20).to_be_bytes());
    let replies = raw(&a, &b_addr, 1001, &head, "2s");
    let text = String::from_utf8_lossy(&replies);
    assert!(text.contains("ERR TEXT save failed: too large"), "{text:?}");

    // Over the receiver's 300K budget: ERR ... quota on the sender, and
    // nothing stored.
    let f = a.home.path().join("400k.bin");
    std::fs::write(&f, vec![7u8; 400 << 10]).unwrap();
    let out = a.ctl(&["--json", "send-file", "beta", f.to_str().unwrap()]);
    assert_ne!(out.code, 0);
    let e = out.json();
    assert_eq!(e["code"], "too_large", "{out:?}");
    assert!(e["message"].as_str().unwrap().contains("quota"), "{out:?}");
    assert!(e["hint"].as_str().is_some());
    assert!(received(&b).is_empty());
    // Under it, still fine.
    let out = a.ctl(&["send-message", "beta", "--data", "small"]);
    assert_eq!(out.code, 0, "{out:?}");

    // A node beta does not trust is refused at once with not_trusted.
    let m = Node::new("mallory");
    m.start(&rdv, &["--hostname", "mallory"]);
    let t = Instant::now();
    let out = m.ctl(&["--json", "send-message", &b_addr, "--data", "spam"]);
    assert_eq!(out.json()["code"], "not_trusted", "{out:?}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(
        out.json()["hint"],
        format!("pilotctl handshake {b_addr}"),
        "{out:?}"
    );
    assert_eq!(inbox(&b).len(), 1);
}

#[test]
fn a_daemon_killed_while_receiving_leaves_no_partial_file() {
    let rdv = Rendezvous::start();
    let (a, b, _) = pair(&rdv, &[]);
    let path = a.home.path().join("huge.bin");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(512 << 20).unwrap(); // sparse: cheap to make, 512 MiB to send
    drop(f);
    let mut send = a
        .command()
        .arg("--socket")
        .arg(&a.socket)
        .args(["send-file", "beta", path.to_str().unwrap()])
        .env("HOME", a.home.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let dir = b.pilot_dir().join("received");
    let partial = wait_until(Duration::from_secs(30), || {
        std::fs::read_dir(&dir).is_ok_and(|rd| {
            rd.flatten().any(|e| {
                e.file_name().to_string_lossy().starts_with(".tmp-")
                    && e.metadata().is_ok_and(|m| m.len() > 0)
            })
        })
    });
    b.kill9();
    let _ = send.kill();
    let _ = send.wait();
    assert!(partial, "the transfer never started");
    // What a user sees: no file listed, and after a restart no leftovers.
    b.start(&rdv, &["--hostname", "beta", "--trust-auto-approve"]);
    assert!(received(&b).is_empty());
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(no_tmp_left(&b.pilot_dir().join("inbox")));
}

#[test]
fn publish_subscribe_delivers_once_and_never_back_to_the_publisher() {
    let rdv = Rendezvous::start();
    let (a, b, b_addr) = pair(&rdv, &[]);
    let sub = |topic: &str| {
        a.command()
            .arg("--socket")
            .arg(&a.socket)
            .args(["--json", "subscribe", &b_addr, topic, "--timeout", "4s"])
            .env("HOME", a.home.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let news = sub("news");
    let all = sub("*");
    // Both subscriptions are open at the broker (then give it a moment to
    // read their first frames).
    assert!(wait_until(Duration::from_secs(10), || {
        b.json(&["connections"])["connections"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["local"].as_str().unwrap().ends_with(":1002"))
            .count()
            >= 2
    }));
    std::thread::sleep(Duration::from_millis(300));
    // A raw connection that subscribes to news and then publishes on it
    // must not get its own event back.
    let mut input = Vec::new();
    for (t, p) in [("news", ""), ("news", "from-raw")] {
        input.extend_from_slice(&(t.len() as u16).to_be_bytes());
        input.extend_from_slice(t.as_bytes());
        input.extend_from_slice(&(p.len() as u32).to_be_bytes());
        input.extend_from_slice(p.as_bytes());
    }
    let own = raw(&a, &b_addr, 1002, &input, "1s");
    assert!(own.is_empty(), "the publisher got {own:?}");
    for (topic, data) in [("news", "one"), ("sport", "two"), ("news", "three")] {
        let out = a.ctl(&["publish", &b_addr, topic, "--data", data]);
        assert_eq!(out.code, 0, "{out:?}");
    }
    let events = |c: std::process::Child| -> Vec<(String, String)> {
        let out = c.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (
                    v["data"]["topic"].as_str().unwrap().to_string(),
                    v["data"]["data"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let n = events(news);
    let w = events(all);
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        n,
        pairs(&[("news", "from-raw"), ("news", "one"), ("news", "three")])
    );
    assert_eq!(
        w,
        pairs(&[
            ("news", "from-raw"),
            ("news", "one"),
            ("sport", "two"),
            ("news", "three")
        ])
    );
}

/// A subscriber that asks for more events than come exits with `timeout`.
#[test]
fn subscribe_count_times_out_with_an_error() {
    let rdv = Rendezvous::start();
    let (a, _b, b_addr) = pair(&rdv, &[]);
    let out = a.ctl(&[
        "--json",
        "subscribe",
        &b_addr,
        "quiet",
        "--count",
        "1",
        "--timeout",
        "1s",
    ]);
    assert_eq!(out.json()["code"], "timeout", "{out:?}");
}
