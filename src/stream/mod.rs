//! The reliable-stream engine (protocol 1, spec §7), sans-IO.
//!
//! A [`Connection`] is one stream's state machine. It never reads a clock,
//! touches a socket or draws randomness: the caller feeds it received
//! segments ([`Connection::handle_segment`]) and timer expiries
//! ([`Connection::handle_timeout`]) together with `now`, and pulls out
//! segments to send ([`Connection::poll_transmit`]), the next deadline
//! ([`Connection::poll_timeout`]) and application events
//! ([`Connection::poll_event`]) — the quinn-proto / smoltcp shape. ISNs come
//! from the caller. Addresses, ports, the 34-byte header, checksums and
//! encryption belong to the daemon: the engine deals in [`Segment`]s (flags,
//! seq, ack, window, payload) only.
//!
//! Wire compatibility with the reference follows the interop-safe profile of
//! §7.11 and the fixes of §12 (FIN|ACK never answered, bare FIN answered
//! once per copy, window counted in segments and never 0, SACK only with the
//! exact length, data never shaped like SACK, keepalive probes answered).
//!
//! # Driving a connection (daemon side)
//!
//! 1. Open with [`Connection::connect`] (initiator; a random ISN is
//!    recommended) or, for a SYN that passed the listener, trust and rate
//!    checks of §7.2, [`Connection::accept`]. A SYN for an existing 4-tuple is
//!    a retransmission: pass it to that connection's `handle_segment` (it
//!    re-answers SYN|ACK). A segment for no connection gets [`rst_for`] (or is
//!    dropped for untrusted sources, §12.20). The daemon answers only those
//!    that carry data, a FIN or a SYN|ACK, at a bounded rate, and leaves
//!    stale pure ACKs alone (`node/streams.rs`, `on_stray`).
//! 2. After **every** input — `handle_segment` for each received stream
//!    packet, `handle_timeout` when the deadline from `poll_timeout` passes,
//!    and the application's `send` / `recv` / `close` — call `poll_transmit`
//!    until it returns `None`, encoding each [`Transmit`] into a header (the
//!    daemon adds addresses and ports) with its payload taken from the front
//!    of the buffer passed in. That buffer is normally the part of the
//!    datagram buffer after the 34-byte header and must hold at least
//!    [`Config::mss`] bytes. Then re-arm the timer from `poll_timeout`, and
//!    drain `poll_event`.
//! 3. Events: [`Event::Connected`], [`Event::Readable`] / [`Event::Writable`]
//!    (edge hints), [`Event::PeerClosed`] (end of stream once the readable
//!    bytes are consumed; `truncated` reports data lost before a reference
//!    peer's close), [`Event::SynRetransmit`] (the SYN timer expired; at
//!    `expiry == 3` mark the peer as relay and resend PILA through the relay,
//!    §5.5 and §4.8 item 4; [`Connection::syn_expiries`] gives the same
//!    count), and one terminal event — [`Event::Closed`], [`Event::Reset`],
//!    [`Event::Refused`] (dial: connection refused) or [`Event::TimedOut`]
//!    (dial timeout after the 7th SYN expiry, ≈ 29 s; or the peer went
//!    silent). After a terminal event the state is [`State::Closed`]; flush
//!    `poll_transmit` once more (an RST may be pending), then drop the
//!    connection. Unread data stays readable until then.
//! 4. Daemon shutdown: [`Connection::abort`] sends RST; a graceful shutdown
//!    calls [`Connection::close`] and keeps polling until `Closed`.
//!
//! # Memory
//! Buffers grow on demand and are freed after 2 s without data movement, in
//! TIME_WAIT and when closed; the caps in [`Config`] bound a connection at
//! full window: about `send_buffer_bytes + recv_buffer_bytes` plus ≈ 50 bytes
//! per segment in flight. [`Config::default`] (2 MiB + 2 MiB, max cwnd 2 MiB)
//! reaches ≈ 2 MiB per RTT per direction, i.e. hundreds of MB/s when the RTT
//! is a few milliseconds; [`Config::compact`] (128 KiB + 128 KiB, ≈ 260 KB
//! at full window) suits daemons with 10,000 streams. Rings round their
//! allocation up to a power of two, so caps that are powers of two waste
//! nothing.
//!
//! Submodules: [`seq`] (serial arithmetic), [`rtt`] (RFC 6298 estimator),
//! [`ring`] (byte ring), [`rangeset`] (merged ranges for SACK bookkeeping),
//! [`recv`] (receive buffer and reassembly), [`cc`] (congestion control),
//! `conn` (the state machine, the send scoreboard and loss recovery).

use std::time::Duration;

use crate::wire::header::Flags;

pub mod cc;
mod conn;
pub mod rangeset;
pub mod recv;
pub mod ring;
pub mod rtt;
pub mod seq;

pub use cc::Controller;
pub use conn::{Connection, Stats};

/// Default payload bytes per segment: a whole encrypted datagram fits a
/// 1,500-byte path without fragmentation even through the relay: 1500 − 40
/// (IPv6) − 8 (UDP) − 70 (PILS: 4 magic + 4 id + 12 nonce + 34 header + 16
/// tag) − 9 (relay header) = 1373 (§12.4 discusses the same budget).
pub const DEFAULT_MSS: usize = 1373;
/// The reference MSS (§7.7); used for the reference's congestion constants.
pub const REFERENCE_MSS: usize = 4096;
/// Delayed ACK timer (§7.8).
pub const DELAYED_ACK: Duration = Duration::from_millis(40);
/// Nagle hold time for a sub-MSS remainder (§7.9).
pub const NAGLE_DELAY: Duration = Duration::from_millis(40);
/// ACK after this many unacknowledged in-order segments (§7.8).
pub const ACK_EVERY_SEGMENTS: u32 = 2;
/// Duplicate-ACK threshold for fast retransmit (§7.7).
pub const DUP_ACK_THRESHOLD: u32 = 3;
/// Initial congestion window in segments (§7.7: 10 × MSS).
pub const INITIAL_CWND_SEGMENTS: usize = 10;
/// First SYN retransmission interval (§5.5).
pub const SYN_INITIAL_RTO: Duration = Duration::from_secs(1);
/// Cap of the SYN retransmission interval (§5.5).
pub const SYN_MAX_RTO: Duration = Duration::from_secs(8);
/// The SYN timer expiry that gives up: the 7th, ≈ 29 s after the first SYN (§5.5).
pub const SYN_MAX_EXPIRIES: u8 = 7;
/// The SYN timer expiry at which the daemon switches to relay and the backoff
/// restarts from 1 s (§5.5).
pub const SYN_RELAY_EXPIRY: u8 = 3;
/// Most FIN|ACK answers queued at once (each received bare FIN earns one, §12.1).
const MAX_FINACK_QUEUE: usize = 4;

/// Per-connection parameters. [`Config::default`] aims at throughput
/// (hundreds of MB/s on short paths); [`Config::compact`] at many streams per
/// daemon. Buffers are allocated on demand, so an idle connection costs far
/// less than the caps; the caps bound a connection at full window.
#[derive(Debug, Clone)]
pub struct Config {
    /// Payload bytes per segment we send ([`DEFAULT_MSS`]; §12.4 suggests
    /// 1150 where paths may only carry the IPv6 minimum MTU). Larger received
    /// segments are accepted (reference MSS 4096).
    pub mss: usize,
    /// Receive window in segments (§7.5); also the cap on buffered segments.
    pub recv_window_segments: u16,
    /// Send buffer cap in bytes (unacknowledged + unsent data).
    pub send_buffer_bytes: usize,
    /// Receive buffer cap in bytes (unread in-order + out-of-order data).
    pub recv_buffer_bytes: usize,
    /// Upper bound of the congestion window in bytes. The reference uses 1 MiB
    /// (§7.7); larger is interoperable.
    pub max_cwnd: usize,
    /// Congestion controller ([`Controller::Cubic`] by default; the
    /// reference's AIMD is [`Controller::Reno`]). Sender-side only.
    pub congestion: Controller,
    /// Pace data at a multiple of cwnd/SRTT instead of sending whole windows
    /// back to back (default on; sender-side only).
    pub pacing: bool,
    /// The pacer may release at least this much time's worth of data at
    /// once: the granularity of the caller's timers (tokio's are 1 ms). A
    /// pacer finer than its timers only adds stalls (measured in the daemon:
    /// 225 MB/s with 16-segment quanta, 440-580 MB/s unpaced).
    pub pacing_quantum: Duration,
    /// Initial slow-start threshold in bytes. The reference uses 512 KiB;
    /// `usize::MAX` (the default) lets slow start find the path.
    pub initial_ssthresh: usize,
    /// Send a sub-MSS remainder at once instead of waiting for outstanding data
    /// to be acknowledged (disables Nagle, §7.9).
    pub nodelay: bool,
    /// Abort when a segment has been sent this many times and the next
    /// retransmission timer expires after two timeouts without any packet
    /// from the peer (§7.7: 8; the silence condition keeps a live peer that
    /// refuses data for lack of buffer space from being reset).
    pub max_transmissions: u8,
    /// Keepalive: probe after this much silence (§7.10: 60 s); `None` disables.
    pub keepalive_idle: Option<Duration>,
    /// Interval between keepalive probes (§7.10: 15 s sweep).
    pub keepalive_interval: Duration,
    /// Unanswered probes before RST (§7.10: 3). Applies only once the peer
    /// has answered a probe: a reference peer never answers (§12.13), and
    /// for it the idle timeout closes gracefully instead.
    pub keepalive_probes: u8,
    /// Close gracefully after this long without receiving anything (§7.10:
    /// 120 s); `None` disables.
    pub idle_timeout: Option<Duration>,
    /// TIME_WAIT duration, counted from entering it and never extended
    /// (§7.10, §12.1: 10 s).
    pub time_wait: Duration,
    /// How long `close` waits without progress for outstanding data to be
    /// acknowledged before sending FIN anyway (§7.11 item 4, §12.2).
    pub close_linger: Duration,
    /// Hard cap on that wait, counted from `close()`, while retransmissions
    /// are still being attempted.
    pub close_timeout: Duration,
    /// Restart the SYN backoff at this expiry (the daemon switches to relay
    /// there, §5.5); `None` for a plain doubling timeline.
    pub syn_relay_expiry: Option<u8>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mss: DEFAULT_MSS,
            recv_window_segments: 2048,
            send_buffer_bytes: 2 << 20,
            recv_buffer_bytes: 2 << 20,
            max_cwnd: 2 << 20,
            congestion: Controller::Cubic,
            pacing: true,
            pacing_quantum: Duration::from_millis(1),
            initial_ssthresh: usize::MAX,
            nodelay: false,
            max_transmissions: 8,
            keepalive_idle: Some(Duration::from_secs(60)),
            keepalive_interval: Duration::from_secs(15),
            keepalive_probes: 3,
            idle_timeout: Some(Duration::from_secs(120)),
            time_wait: Duration::from_secs(10),
            close_linger: Duration::from_secs(5),
            close_timeout: Duration::from_secs(60),
            syn_relay_expiry: Some(SYN_RELAY_EXPIRY),
        }
    }
}

impl Config {
    /// Small caps for daemons with many streams: 128 KiB each way and a
    /// 96-segment window, ≈ 260 KB per stream at full window.
    pub fn compact() -> Config {
        Config {
            recv_window_segments: 96,
            send_buffer_bytes: 128 << 10,
            recv_buffer_bytes: 128 << 10,
            max_cwnd: 128 << 10,
            ..Config::default()
        }
    }
}

/// A received stream segment: the stream fields of the header plus payload.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    /// Header flags (§2.1).
    pub flags: Flags,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// Window in segments (§7.5).
    pub window: u16,
    /// Payload (data or SACK).
    pub payload: &'a [u8],
}

/// A segment to send; its payload is the first `payload_len` bytes of the
/// buffer given to [`Connection::poll_transmit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Header flags.
    pub flags: Flags,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// Window in segments.
    pub window: u16,
    /// Payload bytes written to the caller's buffer.
    pub payload_len: usize,
}

/// Connection states (§7.1). `FinWait` starts at `close()` (FIN pending until
/// our data is acknowledged, then sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// SYN sent, waiting for SYN|ACK.
    SynSent,
    /// Data flows both ways.
    Established,
    /// We are closing: FIN pending or sent, waiting for FIN|ACK.
    FinWait,
    /// Closed both ways; answering retransmitted bare FINs only.
    TimeWait,
    /// Finished; the daemon may drop the connection once `poll_transmit`
    /// returns `None`.
    Closed,
}

/// Something the application or daemon should know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// The handshake completed (initiator), or the connection was accepted.
    Connected,
    /// In-order data can be read with [`Connection::recv`].
    Readable,
    /// Send buffer space freed after `send` accepted less than offered.
    Writable,
    /// The peer closed (FIN). Data already delivered in order stays readable;
    /// `truncated` when the FIN's seq was not our rcv_nxt (data lost before
    /// the close, §12.2).
    PeerClosed {
        /// Bytes before the FIN are missing.
        truncated: bool,
    },
    /// The SYN timer expired for the `expiry`-th time and the SYN is being
    /// resent (§5.5). At expiry 3 the daemon marks the peer as relay and
    /// resends PILA (§4.8 item 4).
    SynRetransmit {
        /// Expiry count, 1-based.
        expiry: u8,
    },
    /// Terminal: closed cleanly (TIME_WAIT over, or `abort`).
    Closed,
    /// Terminal: the peer reset an established connection.
    Reset,
    /// Terminal: the peer refused the connection (RST in SYN_SENT).
    Refused,
    /// Terminal: the peer stopped answering (SYN timeline, retransmission
    /// limit, keepalive, FIN retransmissions).
    TimedOut,
}

impl Event {
    /// True for the events after which the connection is [`State::Closed`].
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Event::Closed | Event::Reset | Event::Refused | Event::TimedOut
        )
    }
}

/// The reply to a segment that matches no connection: RST with seq = ack = 0
/// and window 0 (§7.10, §2.2), or `None` for an RST (never answer an RST).
/// The daemon swaps addresses and ports.
pub fn rst_for(seg: &Segment) -> Option<Transmit> {
    if seg.flags.contains(Flags::RST) {
        return None;
    }
    Some(Transmit {
        flags: Flags::RST,
        seq: 0,
        ack: 0,
        window: 0,
        payload_len: 0,
    })
}
