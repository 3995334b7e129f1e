//! Prometheus metrics of the daemon (issue 13), served on an opt-in
//! `--metrics ADDR` at `/metrics` by [`crate::metrics_http`] (the same
//! responder as the rendezvous: OpenMetrics text, `prometheus-client`).
//!
//! The event loop already owns every counter (plain integers in [`Stats`]
//! and the stream table, the same ones `pilotctl info --json` shows), so
//! counting costs the data path nothing more. While metrics are on, the loop
//! publishes a copy every housekeeping tick (100 ms, `engine::TICK`) and a
//! scrape encodes the latest copy: a scrape never waits for the loop and
//! sees figures at most one tick old. Only the RTT histogram is fed from the
//! loop directly, a `prometheus-client` histogram (atomics) observed at each
//! path RTT sample.
//!
//! | metric | type | what |
//! |---|---|---|
//! | `pilot_daemon_peers{path}` | gauge | peers with a tunnel, by path: `direct`, `lan`, `relay` |
//! | `pilot_daemon_datagrams_total{direction}` | counter | UDP datagrams `in` and `out` |
//! | `pilot_daemon_bytes_total{direction}` | counter | their bytes, as on the wire |
//! | `pilot_daemon_retransmissions_total` | counter | stream data segments retransmitted |
//! | `pilot_daemon_rtt_seconds` | histogram | path RTT samples (pings, path probes) |
//! | `pilot_daemon_streams` | gauge | open streams |
//! | `pilot_daemon_stream_memory_bytes` | gauge | bytes held in stream buffers |
//! | `pilot_daemon_dropped_total{reason}` | counter | frames dropped: `malformed`, `crypto`, `spoofed`, `plaintext`, `beacon_source`, `auth`, `rate_limited`, `superseded_key`, `endpoint_refused` |
//! | `pilot_daemon_streams_refused_total{reason}` | counter | streams refused: `memory` |
//! | `pilot_daemon_stray_resets_total` | counter | RSTs sent for segments of streams we no longer have |

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::ipc::proto::Stats;

/// The path names a peer can have (`path::path_kind`), each always exported
/// so that a dashboard sees a 0 rather than a missing series.
pub const PATHS: [&str; 3] = ["direct", "lan", "relay"];

/// RTT histogram buckets: 100 us doubling to 3.3 s (loopback to a slow
/// relay across continents).
const RTT_BUCKETS: (f64, f64, u16) = (0.000_1, 2.0, 16);

/// What the event loop publishes each tick.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The data-path counters.
    pub stats: Stats,
    /// Peers with a tunnel, by path (same order as [`PATHS`]).
    pub peers: [usize; 3],
    /// Open streams.
    pub streams: usize,
    /// Bytes in stream buffers.
    pub stream_memory: usize,
    /// Streams refused for memory.
    pub refused_memory: u64,
    /// Data segments retransmitted, open and closed streams together.
    pub retransmissions: u64,
}

/// The daemon's metrics, in [`super::Shared`].
#[derive(Debug)]
pub struct DaemonMetrics {
    latest: Mutex<Snapshot>,
    /// Path RTT samples, in seconds.
    pub rtt: Histogram,
}

impl Default for DaemonMetrics {
    fn default() -> Self {
        let (start, factor, n) = RTT_BUCKETS;
        DaemonMetrics {
            latest: Mutex::new(Snapshot::default()),
            rtt: Histogram::new(exponential_buckets(start, factor, n)),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabel {
    path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// A counter family with one series per `(direction, value)`.
fn by_direction(pairs: [(&'static str, u64); 2]) -> Family<DirectionLabel, Counter> {
    let f = Family::<DirectionLabel, Counter>::default();
    for (direction, n) in pairs {
        f.get_or_create(&DirectionLabel { direction }).inc_by(n);
    }
    f
}

/// A counter family with one series per `(reason, value)`.
fn by_reason(pairs: &[(&'static str, u64)]) -> Family<ReasonLabel, Counter> {
    let f = Family::<ReasonLabel, Counter>::default();
    for &(reason, n) in pairs {
        f.get_or_create(&ReasonLabel { reason }).inc_by(n);
    }
    f
}

fn gauge(n: usize) -> Gauge {
    let g = Gauge::default();
    g.set(i64::try_from(n).unwrap_or(i64::MAX));
    g
}

fn counter(n: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(n);
    c
}

impl DaemonMetrics {
    /// Replaces the published copy.
    pub fn publish(&self, s: Snapshot) {
        if let Ok(mut l) = self.latest.lock() {
            *l = s;
        }
    }

    /// The OpenMetrics text of the latest copy.
    pub fn render(&self) -> String {
        let s = self.latest.lock().map(|l| l.clone()).unwrap_or_default();
        let st = &s.stats;
        let mut r = Registry::with_prefix("pilot_daemon");

        let peers = Family::<PathLabel, Gauge>::default();
        for (&path, n) in PATHS.iter().zip(s.peers) {
            peers
                .get_or_create(&PathLabel { path })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        r.register("peers", "Peers with a tunnel, by path", peers);
        r.register(
            "datagrams",
            "UDP datagrams",
            by_direction([("in", st.datagrams_in), ("out", st.datagrams_out)]),
        );
        r.register(
            "bytes",
            "UDP bytes, as on the wire",
            by_direction([("in", st.bytes_in), ("out", st.bytes_out)]),
        );
        r.register(
            "retransmissions",
            "Stream data segments retransmitted",
            counter(s.retransmissions),
        );
        r.register_with_unit(
            "rtt",
            "Path round-trip time samples",
            Unit::Seconds,
            self.rtt.clone(),
        );
        r.register("streams", "Open streams", gauge(s.streams));
        r.register_with_unit(
            "stream_memory",
            "Bytes held in stream buffers",
            Unit::Bytes,
            gauge(s.stream_memory),
        );

        let dropped = by_reason(&[
            ("malformed", st.dropped_malformed),
            ("crypto", st.dropped_crypto),
            ("spoofed", st.dropped_spoofed),
            ("plaintext", st.dropped_plaintext),
            ("beacon_source", st.dropped_beacon_source),
            ("auth", st.dropped_auth),
            ("rate_limited", st.dropped_rate_limited),
            ("superseded_key", st.dropped_superseded_key),
            ("endpoint_refused", st.endpoint_refused),
        ]);
        r.register("dropped", "Frames dropped, by reason", dropped);
        r.register(
            "streams_refused",
            "Streams refused, by reason",
            by_reason(&[("memory", s.refused_memory)]),
        );
        r.register(
            "stray_resets",
            "RSTs sent for segments of streams we no longer have",
            counter(st.stray_resets),
        );

        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_carries_the_published_figures() {
        let m = DaemonMetrics::default();
        m.rtt.observe(0.000_3);
        let mut s = Snapshot {
            peers: [2, 0, 1],
            streams: 3,
            retransmissions: 7,
            ..Snapshot::default()
        };
        s.stats.datagrams_in = 10;
        s.stats.bytes_out = 1234;
        s.stats.dropped_crypto = 4;
        s.stats.stray_resets = 2;
        m.publish(s);
        let text = m.render();
        for want in [
            "pilot_daemon_peers{path=\"direct\"} 2",
            "pilot_daemon_peers{path=\"lan\"} 0",
            "pilot_daemon_peers{path=\"relay\"} 1",
            "pilot_daemon_datagrams_total{direction=\"in\"} 10",
            "pilot_daemon_bytes_total{direction=\"out\"} 1234",
            "pilot_daemon_retransmissions_total 7",
            "pilot_daemon_rtt_seconds_count 1",
            "pilot_daemon_rtt_seconds_bucket{le=\"0.0004\"} 1",
            "pilot_daemon_streams 3",
            "pilot_daemon_dropped_total{reason=\"crypto\"} 4",
            "pilot_daemon_dropped_total{reason=\"malformed\"} 0",
            "pilot_daemon_streams_refused_total{reason=\"memory\"} 0",
            "pilot_daemon_stray_resets_total 2",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
