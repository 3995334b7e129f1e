//! Prometheus metrics of the rendezvous (issue 13), served on an opt-in
//! `--metrics ADDR` at `/metrics`.
//!
//! The metrics are `prometheus-client` types (atomics): counting costs a
//! relaxed atomic add on the request path, so they are always kept, and the
//! HTTP responder only encodes them. Gauges that describe the registry
//! (nodes online, known ids, handshake queue depth, beacon entries) are read
//! at scrape time from counters the registry keeps, never by walking a
//! million nodes under its lock.
//!
//! The text is OpenMetrics 1.0 (what `prometheus-client` writes; Prometheus
//! scrapes it natively, and it is the Prometheus text format plus a final
//! `# EOF` line), served by [`crate::metrics_http`], which the daemon shares.
//!
//! | metric | type | what |
//! |---|---|---|
//! | `pilot_rendezvous_requests_total{request,result}` | counter | registry requests by type (`register`, `lookup`, `resolve`, …) and `ok`/`error` |
//! | `pilot_rendezvous_rejected_total{reason}` | counter | connections or requests refused: `malformed`, `frame_too_long`, `buffer_budget`, `binary_version`, `connection_limit`, `evicted` |
//! | `pilot_rendezvous_rate_limited_total{reason}` | counter | `delayed` and `closed` (the §6.1 per-connection rule), `new_id_quota` (new ids per source) |
//! | `pilot_rendezvous_nodes_online` | gauge | live nodes |
//! | `pilot_rendezvous_nodes_known` | gauge | known ids, live or not |
//! | `pilot_rendezvous_handshake_queue_depth` | gauge | handshake requests and answers waiting in inboxes |
//! | `pilot_rendezvous_connections` | gauge | open registry connections |
//! | `pilot_rendezvous_beacon_entries` | gauge | endpoints in the beacon table |
//! | `pilot_rendezvous_relay_frames_total`, `_relay_bytes_total` | counter | frames and payload bytes the beacon relayed |
//! | `pilot_rendezvous_relay_dropped_total{reason}` | counter | `spoofed_source`, `unknown_destination`, `too_large` |
//! | `pilot_rendezvous_store_batch_seconds` | histogram | time to commit one store batch |
//! | `pilot_rendezvous_store_batch_rows` | histogram | rows written per batch |
//! | `pilot_rendezvous_store_errors_total` | counter | batches that failed to commit |

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry as PromRegistry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    request: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The rendezvous metrics. Shared behind an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: PromRegistry,
    requests: Family<RequestLabels, Counter>,
    rejected: Family<ReasonLabels, Counter>,
    rate_limited: Family<ReasonLabels, Counter>,
    relay_dropped: Family<ReasonLabels, Counter>,
    /// Frames relayed by the beacon.
    pub relay_frames: Counter,
    /// Payload bytes relayed by the beacon.
    pub relay_bytes: Counter,
    /// Store batches that failed to commit.
    pub store_errors: Counter,
    store_batch_seconds: Histogram,
    store_batch_rows: Histogram,
    nodes_online: Gauge,
    nodes_known: Gauge,
    handshake_queue: Gauge,
    /// Open registry connections.
    pub connections: Gauge,
    beacon_entries: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Gauges read at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Levels {
    /// Live nodes.
    pub nodes_online: usize,
    /// Known ids.
    pub nodes_known: usize,
    /// Waiting handshake entries.
    pub handshake_queue: usize,
    /// Beacon table entries.
    pub beacon_entries: usize,
}

fn as_gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Metrics {
    /// All metrics at zero, registered under `pilot_rendezvous_`.
    pub fn new() -> Metrics {
        let mut registry = PromRegistry::with_prefix("pilot_rendezvous");
        let requests = Family::<RequestLabels, Counter>::default();
        let rejected = Family::<ReasonLabels, Counter>::default();
        let rate_limited = Family::<ReasonLabels, Counter>::default();
        let relay_dropped = Family::<ReasonLabels, Counter>::default();
        let relay_frames = Counter::default();
        let relay_bytes = Counter::default();
        let store_errors = Counter::default();
        // 0.25 ms .. ~4 s: an fsync on SSD is ~0.1-2 ms, on a busy disk tens.
        let store_batch_seconds = Histogram::new(exponential_buckets(0.000_25, 2.0, 15));
        // 1 .. 65,536 rows.
        let store_batch_rows = Histogram::new(exponential_buckets(1.0, 4.0, 9));
        let nodes_online = Gauge::default();
        let nodes_known = Gauge::default();
        let handshake_queue = Gauge::default();
        let connections = Gauge::default();
        let beacon_entries = Gauge::default();
        registry.register(
            "requests",
            "Registry requests by type and result",
            requests.clone(),
        );
        registry.register(
            "rejected",
            "Connections or requests refused, by reason",
            rejected.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests slowed or refused by a rate rule, by reason",
            rate_limited.clone(),
        );
        registry.register(
            "relay_frames",
            "Frames relayed by the beacon",
            relay_frames.clone(),
        );
        registry.register_with_unit(
            "relay",
            "Payload bytes relayed by the beacon",
            Unit::Bytes,
            relay_bytes.clone(),
        );
        registry.register(
            "relay_dropped",
            "Relay frames dropped, by reason",
            relay_dropped.clone(),
        );
        registry.register_with_unit(
            "store_batch",
            "Time to commit one store batch",
            Unit::Seconds,
            store_batch_seconds.clone(),
        );
        registry.register(
            "store_batch_rows",
            "Rows written per store batch",
            store_batch_rows.clone(),
        );
        registry.register(
            "store_errors",
            "Store batches that failed to commit",
            store_errors.clone(),
        );
        registry.register("nodes_online", "Live nodes", nodes_online.clone());
        registry.register(
            "nodes_known",
            "Known node ids, live or not",
            nodes_known.clone(),
        );
        registry.register(
            "handshake_queue_depth",
            "Handshake requests and answers waiting in inboxes",
            handshake_queue.clone(),
        );
        registry.register(
            "connections",
            "Open registry connections",
            connections.clone(),
        );
        registry.register(
            "beacon_entries",
            "Endpoints in the beacon table",
            beacon_entries.clone(),
        );
        Metrics {
            registry,
            requests,
            rejected,
            rate_limited,
            relay_dropped,
            relay_frames,
            relay_bytes,
            store_errors,
            store_batch_seconds,
            store_batch_rows,
            nodes_online,
            nodes_known,
            handshake_queue,
            connections,
            beacon_entries,
        }
    }

    /// Counts one registry request.
    pub fn request(&self, request: &'static str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.requests
            .get_or_create(&RequestLabels { request, result })
            .inc();
    }

    /// Counts one refusal (see the module table for reasons).
    pub fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Counts one rate-limit action.
    pub fn rate_limited(&self, reason: &'static str) {
        self.rate_limited
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts one dropped relay frame.
    pub fn relay_dropped(&self, reason: &'static str) {
        self.relay_dropped
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Records one committed store batch.
    pub fn store_batch(&self, took: Duration, rows: usize) {
        self.store_batch_seconds.observe(took.as_secs_f64());
        self.store_batch_rows.observe(rows as f64);
    }

    /// Encodes every metric, with the gauges set to `levels`.
    pub fn render(&self, levels: Levels) -> String {
        self.nodes_online.set(as_gauge(levels.nodes_online));
        self.nodes_known.set(as_gauge(levels.nodes_known));
        self.handshake_queue.set(as_gauge(levels.handshake_queue));
        self.beacon_entries.set(as_gauge(levels.beacon_entries));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

pub use crate::metrics_http::{bind, serve, Render};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_has_the_metrics_and_ends_with_eof() {
        let m = Metrics::new();
        m.request("lookup", true);
        m.request("lookup", true);
        m.rate_limited("closed");
        m.relay_frames.inc();
        m.relay_bytes.inc_by(100);
        m.store_batch(Duration::from_millis(2), 10);
        let text = m.render(Levels {
            nodes_online: 3,
            ..Levels::default()
        });
        for want in [
            "pilot_rendezvous_requests_total{request=\"lookup\",result=\"ok\"} 2",
            "pilot_rendezvous_rate_limited_total{reason=\"closed\"} 1",
            "pilot_rendezvous_relay_bytes_total 100",
            "pilot_rendezvous_relay_frames_total 1",
            "pilot_rendezvous_nodes_online 3",
            "pilot_rendezvous_store_batch_seconds_count 1",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
