//! `pilot-rendezvous --metrics ADDR` (issue 13): `GET /metrics` returns
//! valid OpenMetrics/Prometheus text (checked line by line by a strict
//! parser below), and its counters move as the test registers, looks up,
//! resolves, relays and trips the new-id quota.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signer, SigningKey};
use pilot::rendezvous::client::RegistryClient;
use pilot::wire::beacon;
use pilot::wire::registry::{self as wire, Register};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

mod common;

use common::RendezvousProc as Server;

fn start(store: &std::path::Path) -> Server {
    Server::spawn(|c| {
        c.args(["--metrics", "127.0.0.1:0", "--store"]).arg(store);
    })
}

/// One HTTP GET; returns (status line, headers, body).
async fn get(addr: SocketAddr, target: &str) -> (String, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_string(), body.to_string())
}

fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

/// A strict parser of the OpenMetrics text exposition (the subset a
/// scraper must accept): `# HELP`/`# TYPE`/`# UNIT` lines, samples
/// `name{label="value",...} value`, every sample under a declared family,
/// and `# EOF` as the last line. Returns sample key (name plus label text
/// as written) to value; panics with the offending line otherwise.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    assert!(text.ends_with("# EOF\n"), "no final # EOF: {text}");
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if *line == "# EOF" {
            assert_eq!(i, lines.len() - 1, "# EOF before the end");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut p = rest.splitn(3, ' ');
            let (kind, name, arg) = (p.next().unwrap(), p.next(), p.next());
            let name = name.unwrap_or_else(|| panic!("bad comment line {line:?}"));
            assert!(valid_name(name), "bad name in {line:?}");
            match kind {
                "TYPE" => {
                    let t = arg.unwrap_or_default();
                    assert!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "summary",
                            "info",
                            "unknown"
                        ]
                        .contains(&t),
                        "bad type in {line:?}"
                    );
                    assert!(
                        types.insert(name.to_string(), t.to_string()).is_none(),
                        "family declared twice: {line:?}"
                    );
                }
                "HELP" | "UNIT" => {}
                _ => panic!("unknown comment {line:?}"),
            }
            continue;
        }
        // A sample.
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample {line:?}"));
        let (name, labels) = match key.find('{') {
            Some(b) => {
                assert!(key.ends_with('}'), "bad labels in {line:?}");
                (&key[..b], &key[b + 1..key.len() - 1])
            }
            None => (key, ""),
        };
        assert!(valid_name(name), "bad sample name in {line:?}");
        if !labels.is_empty() {
            for pair in labels.split(',') {
                let (k, v) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("bad label in {line:?}"));
                assert!(valid_name(k), "bad label name in {line:?}");
                assert!(
                    v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                    "unquoted label value in {line:?}"
                );
            }
        }
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let family = ["_total", "_bucket", "_count", "_sum", "_created", ""]
            .iter()
            .find_map(|s| {
                let base = name.strip_suffix(s)?;
                types.get(base).map(|t| (base, t.as_str(), *s))
            })
            .unwrap_or_else(|| panic!("sample of an undeclared family: {line:?}"));
        match family.1 {
            "counter" => assert!(
                matches!(family.2, "_total" | "_created"),
                "counter sample without _total: {line:?}"
            ),
            "histogram" => assert!(
                matches!(family.2, "_bucket" | "_count" | "_sum" | "_created"),
                "bad histogram sample: {line:?}"
            ),
            _ => {}
        }
        assert!(
            samples.insert(key.to_string(), v).is_none(),
            "sample twice: {line:?}"
        );
    }
    samples
}

async fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let (status, headers, body) = get(addr, "/metrics").await;
    assert!(status.contains(" 200 "), "{status}");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{headers}"
    );
    parse_metrics(&body)
}

fn at(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

fn key(i: u32) -> SigningKey {
    let mut seed = [9u8; 32];
    seed[..4].copy_from_slice(&i.to_le_bytes());
    SigningKey::from_bytes(&seed)
}

fn signed_register(k: &SigningKey) -> Register {
    let mut r = Register::new(k.verifying_key().as_bytes(), "0.0.0.0:4000");
    r.timestamp = Some(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
    );
    let sig = k.sign(r.signed_text().as_bytes());
    r.signature = Some(wire::b64_encode(&sig.to_bytes()));
    r
}

const REG_OK: &str = r#"pilot_rendezvous_requests_total{request="register",result="ok"}"#;
const LOOKUP_OK: &str = r#"pilot_rendezvous_requests_total{request="lookup",result="ok"}"#;
const LOOKUP_ERR: &str = r#"pilot_rendezvous_requests_total{request="lookup",result="error"}"#;
const RESOLVE_OK: &str = r#"pilot_rendezvous_requests_total{request="resolve",result="ok"}"#;

#[tokio::test]
async fn metrics_are_valid_text_and_move_with_the_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&dir.path().join("r.db"));

    let m0 = scrape(s.metrics.unwrap()).await;
    assert_eq!(at(&m0, "pilot_rendezvous_nodes_online"), 0.0);
    assert_eq!(at(&m0, REG_OK), 0.0);

    // Five registrations, lookups (two found, one not), two resolves.
    let mut c = RegistryClient::connect(s.registry).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(c.register(signed_register(&key(i))).await.unwrap().node_id);
    }
    c.set_visibility(&key(1), ids[1], true).await.unwrap();
    c.lookup(ids[0]).await.unwrap();
    c.lookup(ids[1]).await.unwrap();
    assert!(c.lookup(999).await.is_err());
    c.resolve(&key(0), ids[0], ids[1]).await.unwrap();
    c.resolve(&key(0), ids[0], ids[0]).await.unwrap();
    // A malformed request.
    let mut raw = TcpStream::connect(s.registry).await.unwrap();
    raw.write_all(&wire::encode_frame(b"{not json").unwrap())
        .await
        .unwrap();
    let mut len = [0u8; 4];
    raw.read_exact(&mut len).await.unwrap();

    let m1 = scrape(s.metrics.unwrap()).await;
    assert_eq!(at(&m1, REG_OK), 5.0);
    assert_eq!(at(&m1, LOOKUP_OK), 2.0);
    assert_eq!(at(&m1, LOOKUP_ERR), 1.0);
    assert_eq!(at(&m1, RESOLVE_OK), 2.0);
    assert_eq!(at(&m1, "pilot_rendezvous_nodes_online"), 5.0);
    assert_eq!(at(&m1, "pilot_rendezvous_nodes_known"), 5.0);
    assert_eq!(
        at(
            &m1,
            r#"pilot_rendezvous_rejected_total{reason="malformed"}"#
        ),
        1.0
    );
    assert!(at(&m1, "pilot_rendezvous_store_batch_seconds_count") >= 1.0);
    assert!(at(&m1, "pilot_rendezvous_store_batch_rows_sum") >= 5.0);
    assert!(at(&m1, "pilot_rendezvous_connections") >= 1.0);

    // A relayed frame through the beacon (both "nodes" are on 127.0.0.1,
    // the address the registry saw).
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = [0u8; 256];
    for (sock, id) in [(&a, ids[0]), (&b, ids[1])] {
        sock.send_to(&beacon::encode_discover(id), s.beacon)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
    }
    a.send_to(&beacon::encode_relay(ids[0], ids[1], b"hello"), s.beacon)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(2), b.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    a.send_to(&beacon::encode_relay(ids[0], 4242, b"lost"), s.beacon)
        .await
        .unwrap();

    // The new-id quota: one source gets a burst of new ids, then refusals.
    let mut refused = 0;
    for i in 100..400 {
        let r = c
            .register(Register::new(
                key(i).verifying_key().as_bytes(),
                "0.0.0.0:1",
            ))
            .await;
        if r.is_err() {
            refused += 1;
            break;
        }
    }
    assert_eq!(refused, 1, "the quota must refuse a burst of new ids");

    let mut m2 = HashMap::new();
    for _ in 0..50 {
        m2 = scrape(s.metrics.unwrap()).await;
        if at(
            &m2,
            r#"pilot_rendezvous_relay_dropped_total{reason="unknown_destination"}"#,
        ) >= 1.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(at(&m2, "pilot_rendezvous_relay_frames_total"), 1.0);
    assert_eq!(at(&m2, "pilot_rendezvous_relay_bytes_total"), 5.0);
    assert_eq!(
        at(
            &m2,
            r#"pilot_rendezvous_relay_dropped_total{reason="unknown_destination"}"#
        ),
        1.0
    );
    assert_eq!(
        at(
            &m2,
            r#"pilot_rendezvous_rate_limited_total{reason="new_id_quota"}"#
        ),
        1.0
    );
    assert!(at(&m2, "pilot_rendezvous_beacon_entries") >= 2.0);
    assert!(at(&m2, "pilot_rendezvous_nodes_online") > 5.0);

    // Anything but GET /metrics is refused politely.
    let (status, _, _) = get(s.metrics.unwrap(), "/").await;
    assert!(status.contains(" 404 "), "{status}");
}

/// The address `pilotctl info` names for a daemon's `/metrics`.
fn daemon_metrics_addr(node: &common::Node) -> SocketAddr {
    let url = node.json(&["info"])["metrics"]
        .as_str()
        .expect("info names the metrics address")
        .to_string();
    url.trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .parse()
        .unwrap()
}

const MALFORMED: &str = r#"pilot_daemon_dropped_total{reason="malformed"}"#;
const DIRECT: &str = r#"pilot_daemon_peers{path="direct"}"#;
const DGRAMS_IN: &str = r#"pilot_daemon_datagrams_total{direction="in"}"#;
const DGRAMS_OUT: &str = r#"pilot_daemon_datagrams_total{direction="out"}"#;
const BYTES_OUT: &str = r#"pilot_daemon_bytes_total{direction="out"}"#;

#[tokio::test]
async fn daemon_metrics_are_valid_text_and_move_with_the_traffic() {
    let rdv = common::Rendezvous::start();
    let a = common::Node::new("alpha");
    let b = common::Node::new("bravo");
    a.start(&rdv, &["--public", "--metrics", "127.0.0.1:0"]);
    let vb = b.start(&rdv, &["--public"]);
    let b_addr = vb["address"].as_str().unwrap().to_string();
    // Off unless asked for.
    assert!(b.json(&["info"]).get("metrics").is_none());
    let addr = daemon_metrics_addr(&a);

    let m0 = scrape(addr).await;
    assert_eq!(at(&m0, DIRECT), 0.0);
    assert_eq!(at(&m0, "pilot_daemon_rtt_seconds_count"), 0.0);
    assert_eq!(at(&m0, MALFORMED), 0.0);

    // Control pings (RTT samples), an echo over a stream, and one
    // datagram that is no tunnel frame at all.
    let p = a.ctl(&[
        "ping",
        &b_addr,
        "--control",
        "--count",
        "5",
        "--interval",
        "10ms",
    ]);
    assert_eq!(p.code, 0, "{p:?}");
    let e = a.ctl(&["ping", &b_addr, "--count", "3", "--interval", "10ms"]);
    assert_eq!(e.code, 0, "{e:?}");
    let listen: SocketAddr = a.json(&["info"])["listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let junk = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    junk.send_to(b"not a pilot frame", ("127.0.0.1", listen.port()))
        .unwrap();

    // The loop publishes every 100 ms.
    let mut m1 = HashMap::new();
    for _ in 0..50 {
        m1 = scrape(addr).await;
        if at(&m1, MALFORMED) >= 1.0 && at(&m1, "pilot_daemon_rtt_seconds_count") >= 5.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(at(&m1, DIRECT), 1.0, "{m1:?}");
    assert_eq!(at(&m1, r#"pilot_daemon_peers{path="relay"}"#), 0.0);
    assert_eq!(at(&m1, MALFORMED), 1.0);
    assert!(at(&m1, "pilot_daemon_rtt_seconds_count") >= 5.0, "{m1:?}");
    assert!(at(&m1, "pilot_daemon_rtt_seconds_sum") > 0.0);
    assert!(at(&m1, DGRAMS_IN) > at(&m0, DGRAMS_IN) + 8.0);
    assert!(at(&m1, DGRAMS_OUT) > at(&m0, DGRAMS_OUT) + 8.0);
    assert!(at(&m1, BYTES_OUT) > at(&m0, BYTES_OUT));
    for present in [
        "pilot_daemon_streams",
        "pilot_daemon_stream_memory_bytes",
        "pilot_daemon_retransmissions_total",
        "pilot_daemon_stray_resets_total",
        r#"pilot_daemon_streams_refused_total{reason="memory"}"#,
        r#"pilot_daemon_dropped_total{reason="crypto"}"#,
    ] {
        assert!(m1.contains_key(present), "{present} missing: {m1:?}");
    }

    // A second start on a taken metrics address fails with one clear line.
    let c = common::Node::new("charlie");
    let out = c.try_start(&rdv, &["--metrics", &addr.to_string()]);
    assert_ne!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["code"], "start_failed", "{out:?}");
    let msg = out.json()["message"].as_str().unwrap().to_string();
    assert!(msg.contains("metrics address"), "{out:?}");
}
