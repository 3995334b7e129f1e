//! The daemon's table of streams and the application end of each stream:
//! the data [`super::engine::Engine`] holds, without the behaviour.
//!
//! The behaviour (segments in, SYN admission, delivery to applications,
//! transmission) is `impl Engine` in [`super::streams`]; it needs both the
//! engine and this table, while the engine only needs the table's types, so
//! the table lives below both and the module graph has no cycle.
//!
//! An IPC client's stream socket is read and written by the event loop
//! itself ([`super::appsock`], [`AppLink::Sock`]). In-process services and
//! exposed TCP ports exchange chunks with the loop through two bounded
//! queues instead ([`ChanLink`]): chunks to the application (`to_app`; when
//! it is full the loop stops reading the stream, so the receive window
//! closes and the peer slows down), and chunks from it (credits from a
//! semaphore bound what the application may have queued; the loop returns
//! credits as the stream engine takes the bytes).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Semaphore};

pub use super::appsock::SockLink;
use crate::ipc::proto::{DatagramData, ListenEvent};
use crate::ipc::Response;
use crate::stream::{self, Config, Connection, State};
use crate::wire::address::{Addr, SockAddr};

/// Largest chunk handed to an application at once.
pub const APP_CHUNK: usize = 256 * 1024;
/// Chunks queued towards an application before the loop stops reading.
pub const TO_APP_CHUNKS: usize = 8;
/// Bytes an application may have queued towards the loop.
pub const FROM_APP_CREDITS: usize = 2 << 20;
/// Window and buffer caps of the first streams (buffers grow on demand):
/// large enough that a queue-inflated loopback RTT of several milliseconds
/// does not cap throughput at window / RTT.
pub(super) const BULK_WINDOW: usize = 8 << 20;
/// Streams beyond which new ones get the compact buffer profile.
pub(super) const COMPACT_AFTER: usize = 64;
/// How long an accepted stream waits for its application to attach.
pub(super) const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);
/// Echo service port (spec §2.5, §8.3).
pub const ECHO_PORT: u16 = 7;
/// Datagrams queued per receiving application.
pub(super) const DGRAM_QUEUE: usize = 256;

/// SYN admission limits (spec §7.2 steps 5-7; daemon flags).
#[derive(Debug, Clone)]
pub struct Admission {
    /// Global SYN rate per second (token bucket of the same size).
    pub syn_rate: f64,
    /// SYN rate per source node per second (bucket of the same size).
    pub syn_rate_per_source: f64,
    /// Live connections per local port.
    pub max_per_port: usize,
    /// Live connections in total.
    pub max_total: usize,
    /// Bytes all streams' buffers may hold together (`--stream-memory`).
    pub memory_budget: usize,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            syn_rate: 100.0,
            syn_rate_per_source: 10.0,
            max_per_port: 1024,
            max_total: 65_536,
            memory_budget: DEFAULT_MEMORY_BUDGET,
        }
    }
}

/// Default budget for all streams' buffers together: 64 bulk streams at
/// full 8 MiB windows both ways (1 GiB) would exceed it, so a node pushed
/// that far degrades (smaller windows) instead of growing without bound;
/// 512 MiB leaves room on the small machines agents run on.
pub const DEFAULT_MEMORY_BUDGET: usize = 512 << 20;
/// How often the streams' memory is summed (an O(streams) walk).
pub(super) const MEMORY_CHECK_EVERY: Duration = Duration::from_millis(100);
/// Buffers of new streams and the receive cap of existing ones while the
/// streams hold more than half the budget: 32 KiB (about 24 segments).
pub(super) const PRESSURE_BUFFER: usize = 32 << 10;

/// How hard the streams press on the memory budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pressure {
    /// Under half the budget: normal profiles.
    None,
    /// Over half: new streams get small buffers, receive windows shrink,
    /// unused buffer memory is given back.
    High,
    /// Over the budget: new streams are refused as well.
    Full,
}

impl Pressure {
    /// The level for `used` bytes of `budget`.
    pub fn of(used: usize, budget: usize) -> Pressure {
        if used >= budget {
            Pressure::Full
        } else if used >= budget / 2 {
            Pressure::High
        } else {
            Pressure::None
        }
    }
}

/// Sources tracked by the per-source SYN limiter (spec §7.2: 4096).
pub(super) const MAX_TRACKED_SOURCES: usize = 4096;

pub(super) struct Bucket {
    pub(super) tokens: f64,
    pub(super) at: Instant,
}

impl Bucket {
    pub(super) fn take(&mut self, rate: f64, now: Instant) -> bool {
        let dt = now.duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * rate).min(rate.max(1.0));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How many times an RST of ours is sent again after the first, and how
/// far apart. An RST is never retransmitted by the stream engine (nothing
/// acknowledges it), so one lost datagram (a loaded host drops loopback
/// packets too, when the backlog queue overflows) left a far application
/// whose request was already acknowledged waiting for its keepalive (CI
/// caught a 20 s hang behind a gateway). A repeat is harmless: an RST for a
/// connection that is already gone is ignored and never answered (§7.10).
pub(super) const RST_REPEATS: u8 = 2;
/// Delay before each repeat: two housekeeping ticks, several loopback or
/// LAN round trips, well under an application's patience.
pub(super) const RST_REPEAT_EVERY: Duration = Duration::from_millis(200);
/// Repeats waiting at once; beyond it the oldest is dropped (an abort storm
/// costs at most this much memory and these many extra datagrams).
pub(super) const MAX_RST_REPEATS: usize = 1024;

/// An RST to send again.
#[derive(Debug, Clone)]
pub(super) struct RstRepeat {
    pub(super) due: Instant,
    pub(super) left: u8,
    pub(super) peer: u32,
    pub(super) repr: crate::wire::header::Repr,
}

/// The application end of a stream, held by the event loop.
pub enum AppLink {
    /// Chunks through queues (in-process services, exposed TCP ports).
    Chan(ChanLink),
    /// An IPC client's socket, which the loop reads and writes itself.
    Sock(SockLink),
}

impl AppLink {
    /// Remembers that the stream ended by a reset or timeout, for
    /// `Request::StreamEnded` (asked by IPC clients only).
    pub(super) fn mark_reset(&mut self) {
        if let AppLink::Sock(l) = self {
            l.reset = true;
        }
    }
}

/// The application end of a stream that exchanges chunks through queues.
pub struct ChanLink {
    /// Chunks for the application; dropped at end of stream.
    pub to_app: Option<mpsc::Sender<Vec<u8>>>,
    /// Set when `to_app` was full; the application's writer then reports
    /// [`super::engine::Cmd::Drained`].
    pub blocked: Arc<AtomicBool>,
    /// Credits for bytes from the application.
    pub credits: Arc<Semaphore>,
}

/// The application end of a stream, held by the IPC task.
pub struct AppEnd {
    /// Chunks from the loop.
    pub rx: mpsc::Receiver<Vec<u8>>,
    /// See [`ChanLink::blocked`].
    pub blocked: Arc<AtomicBool>,
    /// See [`ChanLink::credits`].
    pub credits: Arc<Semaphore>,
}

/// A connected pair of queued stream ends.
pub fn app_pair() -> (AppLink, AppEnd) {
    let (tx, rx) = mpsc::channel(TO_APP_CHUNKS);
    let blocked = Arc::new(AtomicBool::new(false));
    let credits = Arc::new(Semaphore::new(FROM_APP_CREDITS));
    (
        AppLink::Chan(ChanLink {
            to_app: Some(tx),
            blocked: blocked.clone(),
            credits: credits.clone(),
        }),
        AppEnd {
            rx,
            blocked,
            credits,
        },
    )
}

pub(super) enum App {
    /// Accepted, waiting for `attach` until the deadline.
    Pending(Instant),
    /// An IPC client owns the stream.
    Attached(AppLink),
    /// The built-in echo service.
    Echo,
    /// The application went away; incoming data is discarded.
    Gone,
}

pub(super) struct StreamConn {
    pub(super) conn: Connection,
    pub(super) peer: u32,
    pub(super) local: Addr,
    pub(super) local_port: u16,
    pub(super) remote: Addr,
    pub(super) remote_port: u16,
    pub(super) app: App,
    /// Chunks from the application not yet taken by the engine.
    pub(super) pending: VecDeque<Vec<u8>>,
    pub(super) pending_off: usize,
    pub(super) app_eof: bool,
    pub(super) close_requested: bool,
    pub(super) dial: Option<(oneshot::Sender<Response>, Instant)>,
    pub(super) timer: Option<Instant>,
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
    pub(super) listener_port: Option<u16>,
    /// Queued in [`StreamTable::dirty`].
    pub(super) dirty: bool,
}

impl StreamConn {
    /// A stream with no application data, dial or timer yet.
    pub(super) fn new(
        conn: Connection,
        peer: u32,
        local: SockAddr,
        remote: SockAddr,
        app: App,
    ) -> StreamConn {
        StreamConn {
            conn,
            peer,
            local: local.addr,
            local_port: local.port,
            remote: remote.addr,
            remote_port: remote.port,
            app,
            pending: VecDeque::new(),
            pending_off: 0,
            app_eof: false,
            close_requested: false,
            dial: None,
            timer: None,
            bytes_in: 0,
            bytes_out: 0,
            listener_port: None,
            dirty: false,
        }
    }
}

pub(super) struct Listener {
    pub(super) events: mpsc::Sender<ListenEvent>,
    pub(super) live: usize,
}

/// All streams of the node.
pub struct StreamTable {
    pub(super) conns: HashMap<u64, StreamConn>,
    pub(super) by_tuple: HashMap<(u16, Addr, u16), u64>,
    pub(super) listeners: HashMap<u16, Listener>,
    pub(super) dgram_listeners: HashMap<u16, mpsc::Sender<DatagramData>>,
    pub(super) timers: BinaryHeap<Reverse<(Instant, u64)>>,
    pub(super) dirty: Vec<u64>,
    pub(super) ports_in_use: HashMap<u16, usize>,
    pub(super) next_id: u64,
    pub(super) admission: Admission,
    pub(super) global_bucket: Bucket,
    /// Bounds the RSTs sent for segments of unknown connections.
    pub(super) stray_bucket: Bucket,
    /// Data segments retransmitted by streams that are gone (metrics).
    pub(super) closed_retransmissions: u64,
    /// RSTs of our own aborts, sent again (see [`RstRepeat`]).
    pub(super) rst_repeats: VecDeque<RstRepeat>,
    pub(super) source_buckets: HashMap<u32, Bucket>,
    pub(super) echo: bool,
    /// Bytes the streams' buffers held at the last check.
    pub(super) memory: usize,
    pub(super) memory_checked: Instant,
    /// Payload bytes received since the last check: a sixteenth of the
    /// budget triggers one early, so a fast flood cannot outrun the timer.
    pub(super) unchecked_bytes: usize,
    /// The most `memory` has been at a check.
    pub(super) memory_peak: usize,
    pub(super) pressure: Pressure,
    /// Streams refused because the memory budget was spent.
    pub(super) refused_memory: u64,
}

impl StreamTable {
    /// An empty table.
    pub fn new(admission: Admission, echo: bool, now: Instant) -> StreamTable {
        StreamTable {
            conns: HashMap::new(),
            by_tuple: HashMap::new(),
            listeners: HashMap::new(),
            dgram_listeners: HashMap::new(),
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            ports_in_use: HashMap::new(),
            next_id: 1,
            global_bucket: Bucket {
                tokens: admission.syn_rate,
                at: now,
            },
            stray_bucket: Bucket {
                tokens: 1.0,
                at: now,
            },
            closed_retransmissions: 0,
            rst_repeats: VecDeque::new(),
            admission,
            source_buckets: HashMap::new(),
            echo,
            memory: 0,
            memory_checked: now,
            unchecked_bytes: 0,
            memory_peak: 0,
            pressure: Pressure::None,
            refused_memory: 0,
        }
    }

    /// Sums the streams' buffer memory (every [`MEMORY_CHECK_EVERY`], or
    /// sooner after a sixteenth of the budget arrived) and applies the pressure level: receive caps
    /// shrink (or are restored) on every stream when the level changes, and
    /// unused buffer capacity is given back while under pressure.
    pub(super) fn check_memory(&mut self, now: Instant) -> Pressure {
        if now.duration_since(self.memory_checked) < MEMORY_CHECK_EVERY
            && self.unchecked_bytes < self.admission.memory_budget / 16
        {
            return self.pressure;
        }
        self.memory_checked = now;
        self.unchecked_bytes = 0;
        self.memory = self.conns.values().map(|s| s.conn.memory()).sum();
        self.memory_peak = self.memory_peak.max(self.memory);
        let level = Pressure::of(self.memory, self.admission.memory_budget);
        if level != self.pressure {
            let cap = (level >= Pressure::High).then_some(PRESSURE_BUFFER);
            for s in self.conns.values_mut() {
                s.conn.limit_recv_buffer(cap);
                s.conn.limit_send_buffer(cap);
            }
            if level > self.pressure {
                tracing::warn!(
                    "streams hold {} MiB of the {} MiB budget: windows reduced{}",
                    self.memory >> 20,
                    self.admission.memory_budget >> 20,
                    if level == Pressure::Full {
                        ", new streams refused"
                    } else {
                        ""
                    }
                );
            } else {
                tracing::info!(
                    "stream memory back to {} MiB: pressure {level:?}",
                    self.memory >> 20
                );
            }
            self.pressure = level;
        }
        if level >= Pressure::High {
            for s in self.conns.values_mut() {
                s.conn.shrink_buffers();
            }
        }
        level
    }

    /// The earliest stream timer.
    pub fn next_timer(&self) -> Option<Instant> {
        self.timers.peek().map(|r| r.0 .0)
    }

    /// Remembers an RST a connection of ours just sent, to send it
    /// again [`RST_REPEATS`] times (other segments are ignored).
    pub(super) fn note_rst(&mut self, peer: u32, repr: &crate::wire::header::Repr, now: Instant) {
        if !repr.flags.contains(crate::wire::header::Flags::RST) {
            return;
        }
        if self.rst_repeats.len() >= MAX_RST_REPEATS {
            self.rst_repeats.pop_front();
        }
        // Due times only grow, so the queue stays in due order.
        self.rst_repeats.push_back(RstRepeat {
            due: now + RST_REPEAT_EVERY,
            left: RST_REPEATS,
            peer,
            repr: *repr,
        });
    }

    /// Number of live streams.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// True when there are no streams.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub(super) fn config(&self) -> Config {
        if self.pressure >= Pressure::High {
            Config {
                send_buffer_bytes: PRESSURE_BUFFER,
                recv_buffer_bytes: PRESSURE_BUFFER,
                max_cwnd: PRESSURE_BUFFER,
                ..Config::compact()
            }
        } else if self.conns.len() >= COMPACT_AFTER {
            Config::compact()
        } else {
            Config {
                max_cwnd: BULK_WINDOW,
                send_buffer_bytes: BULK_WINDOW,
                recv_buffer_bytes: BULK_WINDOW,
                recv_window_segments: (BULK_WINDOW / stream::DEFAULT_MSS) as u16,
                ..Config::default()
            }
        }
    }

    pub(super) fn port_busy(&self, port: u16) -> bool {
        self.ports_in_use.contains_key(&port) || self.listeners.contains_key(&port)
    }
}

pub(super) fn state_name(s: State) -> &'static str {
    match s {
        State::SynSent => "SynSent",
        State::Established => "Established",
        State::FinWait => "FinWait",
        State::TimeWait => "TimeWait",
        State::Closed => "Closed",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pressure_levels() {
        assert_eq!(Pressure::of(0, 100), Pressure::None);
        assert_eq!(Pressure::of(49, 100), Pressure::None);
        assert_eq!(Pressure::of(50, 100), Pressure::High);
        assert_eq!(Pressure::of(100, 100), Pressure::Full);
        assert!(Pressure::Full > Pressure::High);
    }

    use super::*;

    #[test]
    fn syn_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket {
            tokens: 10.0,
            at: t0,
        };
        for _ in 0..10 {
            assert!(b.take(10.0, t0));
        }
        assert!(
            !b.take(10.0, t0),
            "the 11th SYN in the same instant is over the limit"
        );
        assert!(!b.take(10.0, t0 + Duration::from_millis(50)));
        assert!(
            b.take(10.0, t0 + Duration::from_millis(150)),
            "refilled at 10/s"
        );
        // The bucket never holds more than one second's worth.
        let later = t0 + Duration::from_secs(60);
        let taken = (0..100).filter(|_| b.take(10.0, later)).count();
        assert_eq!(taken, 10);
    }

    #[test]
    fn new_streams_get_the_compact_profile_past_the_threshold() {
        let mut t = StreamTable::new(Admission::default(), true, Instant::now());
        assert_eq!(t.config().max_cwnd, BULK_WINDOW);
        for i in 0..COMPACT_AFTER as u64 {
            let conn = Connection::connect(Config::default(), 0, Instant::now());
            let ends = (
                SockAddr::new(Addr::backbone(2), 49152),
                SockAddr::new(Addr::backbone(1), 7),
            );
            t.conns
                .insert(i, StreamConn::new(conn, 1, ends.0, ends.1, App::Gone));
        }
        assert_eq!(t.config().max_cwnd, Config::compact().max_cwnd);
    }
}
