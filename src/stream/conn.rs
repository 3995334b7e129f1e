//! The per-stream state machine: handshake, send scoreboard, loss recovery,
//! congestion and flow control, ACK generation, close, keepalive (spec §7).
//!
//! # Send side
//! Written bytes live once in a [`ByteRing`]; a sent segment is a small
//! record (`SentSeg`: start offset, length, state, transmission count, send
//! time) in a `VecDeque` in sequence order, so retransmissions reuse the
//! original boundaries (§7.3) and copy straight from the ring into the
//! caller's buffer. Segments get consecutive ids, so an id maps to its index
//! in O(1); SACK blocks find their segments by binary search and a
//! [`RangeSet`] of already-SACKed ranges makes a block that is repeated on
//! every ACK cost nothing after the first time.
//!
//! # Loss recovery
//! * RACK-style detection (RFC 8985, simplified): every transmission is logged
//!   in send order; once a segment sent *later* is delivered (cumulatively
//!   ACKed or SACKed), an earlier one still outstanding after one RTT plus a
//!   reordering window (min RTT / 4) is lost. The log is consumed from the
//!   front, so detection is O(1) amortized and also catches lost
//!   retransmissions. A reorder timer covers the window.
//! * Duplicate ACKs (also ones carrying SACK, §12.19): the third marks the
//!   first outstanding segment lost (fast retransmit, §7.7) for peers that do
//!   not SACK.
//! * RTO (RFC 6298 with the spec's constants, [`super::rtt`]): everything
//!   outstanding and not SACKed is marked lost and resent in order; SACK marks
//!   are kept (neither our receiver nor the reference reneges).
//! * `pipe` (bytes believed in the network: sent, not SACKed, not lost, RFC
//!   6675) is maintained incrementally; sending is allowed while
//!   `pipe < cwnd` and while fewer segments than the peer's window are
//!   outstanding (§7.5, counting segments).
//!
//! # Congestion control
//! The window itself is [`super::cc`] (CUBIC by default, the reference's AIMD
//! on request). This module decides *when* it reacts: one multiplicative
//! decrease per loss episode (an episode ends when the cumulative ACK passes
//! the highest sequence sent when it began), no growth during an episode, the
//! first retransmission of an episode sent regardless of the window, Reno
//! inflation for duplicate ACKs without SACK, 10·MSS after an RTO, and a
//! restart window after idle. Caps are configurable (the reference's 1 MiB is
//! too small for fast paths).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::cc::Congestion;
use super::rangeset::RangeSet;
use super::recv::{Accepted, RecvBuffer};
use super::ring::ByteRing;
use super::rtt::RttEstimator;
use super::seq::{to_wire, unwrap_near};
use super::{
    Config, Event, Segment, State, Transmit, ACK_EVERY_SEGMENTS, DEFAULT_MSS, DELAYED_ACK,
    DUP_ACK_THRESHOLD, MAX_FINACK_QUEUE, NAGLE_DELAY, SYN_INITIAL_RTO, SYN_MAX_EXPIRIES,
    SYN_MAX_RTO,
};
use crate::wire::header::Flags;
use crate::wire::sack;

/// Pacing bucket depth in segments (our choice: enough to keep ACK-clocked
/// transfers unpaced, small enough for default socket buffers).
const PACING_BURST_SEGMENTS: usize = 16;

/// Give buffer memory back after this long without data moving.
const SHRINK_IDLE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SegState {
    /// Sent and counted in `pipe`.
    InFlight,
    /// Deemed lost, waiting in the retransmission queue (not in `pipe`).
    Lost,
    /// Reported held by the receiver (not in `pipe`).
    Sacked,
}

#[derive(Debug, Clone)]
struct SentSeg {
    start: u64,
    len: u32,
    state: SegState,
    tx_count: u8,
    sent_at: Instant,
    xmit_id: u64,
}

impl SentSeg {
    fn end(&self) -> u64 {
        self.start + self.len as u64
    }
}

/// One transmission, in send order (RACK log).
#[derive(Debug, Clone, Copy)]
struct LogEntry {
    seg_id: u64,
    xmit_id: u64,
}

/// The most recently sent segment known to be delivered (RACK state).
#[derive(Debug, Clone, Copy)]
struct Rack {
    xmit_id: u64,
    rtt: Duration,
}

/// Counters for diagnostics (`Connection::stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Data segments sent for the first time.
    pub segments_sent: u64,
    /// Data segments retransmitted.
    pub retransmissions: u64,
    /// Retransmission timer expiries.
    pub rtos: u64,
    /// Loss episodes entered through fast retransmit / RACK.
    pub fast_recoveries: u64,
    /// Data segments received (including duplicates).
    pub segments_received: u64,
}

/// One reliable stream (see the module docs of [`crate::stream`]).
#[derive(Debug)]
pub struct Connection {
    cfg: Config,
    /// Memory-pressure cap on the send buffer (below `cfg`'s), if any.
    send_limit: Option<usize>,
    state: State,
    responder: bool,
    iss: u32,
    irs: u32,
    /// Wire number of our data offset 0 (ISS + 1).
    snd_base: u32,
    /// Wire number of the peer's data offset 0 (IRS + 1).
    rcv_base: u32,

    // --- send side ---
    sbuf: ByteRing,
    sbuf_off: u64,
    snd_una: u64,
    snd_nxt: u64,
    /// The highest `snd_nxt` before a [`Connection::set_mss`] went back to
    /// `snd_una`: ACKs up to it are valid (the peer got that data).
    snd_high: u64,
    segs: VecDeque<SentSeg>,
    seg_id_front: u64,
    log: VecDeque<LogEntry>,
    retx: VecDeque<u64>,
    sacked: RangeSet,
    scratch: Vec<(u64, u64)>,
    pipe: usize,
    cc: Congestion,
    recovery_point: Option<u64>,
    dupacks: u32,
    /// Bytes `pipe` may exceed `cwnd` by: one MSS per duplicate ACK without
    /// SACK in recovery (RFC 5681 inflation; with SACK, `pipe` already
    /// shrinks).
    extra_credit: usize,
    /// Retransmissions allowed regardless of `cwnd` (the first one of a loss
    /// episode goes out at once, RFC 6675).
    retx_credit: u8,
    rtt: RttEstimator,
    rack: Option<Rack>,
    next_xmit_id: u64,
    rto_deadline: Option<Instant>,
    reorder_deadline: Option<Instant>,
    peer_window: u16,
    nagle_deadline: Option<Instant>,
    pacing_tokens: f64,
    pacing_last: Instant,
    pacing_deadline: Option<Instant>,
    nagle_expired: bool,
    heard_since_rto: bool,
    silent_rtos: u32,
    /// Transmissions that do not count towards the §7.7 limit: those made
    /// before the last path change (see [`Connection::path_changed`]);
    /// cleared when the peer acknowledges new data.
    tx_floor: u8,

    // --- receive side ---
    rcv: RecvBuffer,
    unacked_segs: u32,
    adv_window: u16,
    ack_now: bool,
    delack_deadline: Option<Instant>,

    // --- handshake ---
    syn_pending: bool,
    syn_deadline: Option<Instant>,
    syn_interval: Duration,
    syn_expiries: u8,
    synack_pending: bool,

    // --- close ---
    close_requested: bool,
    linger_deadline: Option<Instant>,
    close_started: Instant,
    fin_off: Option<u64>,
    fin_pending: bool,
    fin_deadline: Option<Instant>,
    fin_tx: u8,
    finack_queue: VecDeque<u32>,
    time_wait_deadline: Option<Instant>,
    peer_closed: bool,
    rst_pending: bool,

    // --- liveness ---
    last_recv: Instant,
    last_send_data: Instant,
    ka_probes: u8,
    /// The peer answered one of our keepalive probes at least once (a
    /// reference peer never does, §12.13).
    peer_answers_probes: bool,
    ka_last_probe: Instant,
    probe_pending: bool,
    shrink_deadline: Option<Instant>,

    // --- events ---
    events: VecDeque<Event>,
    stats: Stats,
    readable_signalled: bool,
    want_writable: bool,
}

impl Connection {
    fn new(cfg: Config, iss: u32, now: Instant) -> Connection {
        let mut cfg = cfg;
        cfg.mss = cfg.mss.clamp(1, u16::MAX as usize);
        cfg.max_cwnd = cfg.max_cwnd.max(2 * cfg.mss);
        cfg.max_transmissions = cfg.max_transmissions.max(1);
        let rcv = RecvBuffer::new(cfg.recv_window_segments, cfg.recv_buffer_bytes, cfg.mss);
        let cc = Congestion::new(cfg.congestion, cfg.mss, cfg.max_cwnd, cfg.initial_ssthresh);
        Connection {
            send_limit: None,
            state: State::SynSent,
            responder: false,
            iss,
            irs: 0,
            snd_base: iss.wrapping_add(1),
            rcv_base: 0,
            sbuf: ByteRing::default(),
            sbuf_off: 0,
            snd_una: 0,
            snd_nxt: 0,
            snd_high: 0,
            segs: VecDeque::new(),
            seg_id_front: 0,
            log: VecDeque::new(),
            retx: VecDeque::new(),
            sacked: RangeSet::default(),
            scratch: Vec::new(),
            pipe: 0,
            cc,
            recovery_point: None,
            dupacks: 0,
            extra_credit: 0,
            retx_credit: 0,
            rtt: RttEstimator::default(),
            rack: None,
            next_xmit_id: 0,
            rto_deadline: None,
            reorder_deadline: None,
            peer_window: 1,
            nagle_deadline: None,
            pacing_tokens: (PACING_BURST_SEGMENTS * cfg.mss) as f64,
            pacing_last: now,
            pacing_deadline: None,
            nagle_expired: false,
            heard_since_rto: true,
            silent_rtos: 0,
            tx_floor: 0,
            rcv,
            unacked_segs: 0,
            adv_window: 0,
            ack_now: false,
            delack_deadline: None,
            syn_pending: false,
            syn_deadline: None,
            syn_interval: SYN_INITIAL_RTO,
            syn_expiries: 0,
            synack_pending: false,
            close_requested: false,
            linger_deadline: None,
            close_started: now,
            fin_off: None,
            fin_pending: false,
            fin_deadline: None,
            fin_tx: 0,
            finack_queue: VecDeque::new(),
            time_wait_deadline: None,
            peer_closed: false,
            rst_pending: false,
            last_recv: now,
            last_send_data: now,
            ka_probes: 0,
            peer_answers_probes: false,
            ka_last_probe: now,
            probe_pending: false,
            shrink_deadline: None,
            events: VecDeque::new(),
            stats: Stats::default(),
            readable_signalled: false,
            want_writable: false,
            cfg,
        }
    }

    /// Open a stream: state SYN_SENT; the first `poll_transmit` emits the SYN
    /// (seq = `isn`, ack = 0). The SYN is retransmitted on the §5.5 timeline;
    /// each expiry raises [`Event::SynRetransmit`].
    pub fn connect(cfg: Config, isn: u32, now: Instant) -> Connection {
        let mut c = Connection::new(cfg, isn, now);
        c.syn_pending = true;
        c.syn_deadline = Some(now + SYN_INITIAL_RTO);
        c
    }

    /// Accept a received SYN (§7.2 responder, after the daemon's listener,
    /// trust and rate checks): ESTABLISHED immediately, the first
    /// `poll_transmit` emits SYN|ACK (seq = `isn`, ack = SYN.seq + 1), and
    /// [`Event::Connected`] is queued. Any ISN of the initiator is accepted.
    pub fn accept(cfg: Config, syn: &Segment, isn: u32, now: Instant) -> Connection {
        let mut c = Connection::new(cfg, isn, now);
        c.responder = true;
        c.irs = syn.seq;
        c.rcv_base = syn.seq.wrapping_add(1);
        if syn.window != 0 {
            c.peer_window = syn.window;
        }
        c.state = State::Established;
        c.synack_pending = true;
        c.events.push_back(Event::Connected);
        c
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// How many times the SYN timer has expired (§5.5; the daemon switches to
    /// relay at 3).
    pub fn syn_expiries(&self) -> u8 {
        self.syn_expiries
    }

    /// The next application/daemon event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// True once the peer has closed and every in-order byte has been read
    /// (end of stream).
    pub fn is_read_closed(&self) -> bool {
        self.peer_closed && self.rcv.readable() == 0
    }

    /// Bytes ready to [`recv`](Self::recv).
    pub fn readable(&self) -> usize {
        self.rcv.readable()
    }

    /// Bytes `send` would accept now.
    pub fn send_capacity(&self) -> usize {
        if !self.can_send_app() {
            return 0;
        }
        let cap = self.send_limit.map_or(self.cfg.send_buffer_bytes, |l| {
            l.min(self.cfg.send_buffer_bytes)
        });
        cap.saturating_sub(self.sbuf.len())
    }

    /// Bytes written but not yet acknowledged (unsent included).
    pub fn send_pending(&self) -> usize {
        self.sbuf.len()
    }

    /// Approximate heap bytes held by this connection's buffers.
    pub fn memory(&self) -> usize {
        self.sbuf.capacity()
            + self.rcv.memory()
            + self.segs.capacity() * std::mem::size_of::<SentSeg>()
            + self.log.capacity() * std::mem::size_of::<LogEntry>()
            + self.retx.capacity() * 8
    }

    /// Caps the receive buffer (and so the advertised window) at `bytes`,
    /// or back at the configured size with `None`: the daemon's answer to
    /// memory pressure across all streams.
    pub fn limit_recv_buffer(&mut self, bytes: Option<usize>) {
        let full = self.cfg.recv_buffer_bytes;
        self.rcv.set_cap(bytes.map_or(full, |b| b.min(full)));
    }

    /// Caps what the application may queue for sending at `bytes` (data
    /// already queued stays), or lifts the cap with `None`.
    pub fn limit_send_buffer(&mut self, bytes: Option<usize>) {
        self.send_limit = bytes;
    }

    /// Give back buffer memory not in use (call when idle or under memory
    /// pressure; buffers regrow on demand).
    pub fn shrink_buffers(&mut self) {
        self.sbuf.shrink();
        self.rcv.shrink();
        self.segs.shrink_to_fit();
        self.log.shrink_to_fit();
        self.retx.shrink_to_fit();
        self.scratch = Vec::new();
    }

    /// Counters (diagnostics).
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Current congestion window in bytes (diagnostics).
    pub fn cwnd(&self) -> usize {
        self.cc.cwnd()
    }

    /// Current retransmission timeout (diagnostics).
    pub fn rto(&self) -> Duration {
        self.rtt.rto()
    }

    fn all_data_acked(&self) -> bool {
        self.snd_una == self.sbuf_off + self.sbuf.len() as u64 && self.snd_una == self.snd_nxt
    }

    fn can_send_app(&self) -> bool {
        matches!(self.state, State::SynSent | State::Established)
            && !self.close_requested
            && !self.peer_closed
    }

    /// Queue bytes for sending; returns how many were accepted (0 when the
    /// buffer is full or the stream is closing). [`Event::Writable`] follows
    /// when space frees up after a short write.
    pub fn send(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.send_capacity());
        self.sbuf.push(&data[..n]);
        if n < data.len() {
            self.want_writable = true;
        }
        n
    }

    /// [`Self::send`] for a caller that writes the bytes in place, straight
    /// from a socket (one copy less than reading into a buffer and sending
    /// that): `fill` gets up to `max` bytes of send buffer (fewer when the
    /// buffer has less room) as two slices, writes a prefix of the first
    /// and then of the second, and returns how many bytes it wrote. `fill`
    /// is not called when there is no room; returns the bytes taken.
    pub fn send_with(
        &mut self,
        max: usize,
        fill: impl FnOnce(&mut [u8], &mut [u8]) -> usize,
    ) -> usize {
        let room = max.min(self.send_capacity());
        if room == 0 {
            if max > 0 {
                self.want_writable = true;
            }
            return 0;
        }
        let (a, b) = self.sbuf.spare(room);
        let n = fill(a, b).min(room);
        self.sbuf.commit(n);
        n
    }

    /// Read in-order bytes; returns how many (0 when none are ready; see
    /// [`is_read_closed`](Self::is_read_closed) for end of stream).
    pub fn recv(&mut self, buf: &mut [u8]) -> usize {
        let n = self.rcv.read(buf);
        self.after_recv(n);
        n
    }

    /// [`Self::recv`] of up to `max` bytes into a new vector: one copy out
    /// of the receive buffer for a caller that passes the bytes on as a
    /// vector (the daemon's channel to the application), where reading
    /// into a scratch buffer and copying that cost a second one.
    pub fn recv_vec(&mut self, max: usize) -> Vec<u8> {
        let v = self.rcv.read_vec(max);
        self.after_recv(v.len());
        v
    }

    /// [`Self::recv`] for a caller that passes the bytes on in place,
    /// straight into a socket (no copy here): `take` sees up to `max`
    /// in-order bytes as two slices (the second is empty unless they wrap)
    /// and returns how many it consumed. `take` is not called when nothing
    /// is ready; returns the bytes consumed.
    pub fn recv_with(&mut self, max: usize, take: impl FnOnce(&[u8], &[u8]) -> usize) -> usize {
        let n = self.rcv.read_with(max, take);
        self.after_recv(n);
        n
    }

    fn after_recv(&mut self, n: usize) {
        self.readable_signalled = false;
        if n > 0 && matches!(self.state, State::Established | State::FinWait) && !self.peer_closed {
            // Window update when the window opened substantially compared
            // with what the peer last heard (it may be blocked on it).
            let w = self.rcv.window();
            let adv = self.adv_window;
            let quarter = (self.cfg.recv_window_segments / 4).max(2);
            if w > adv && (w >= adv.saturating_mul(2) || w - adv >= quarter) {
                self.ack_now = true;
            }
        }
    }

    /// Graceful close: FIN once everything written is acknowledged, or after
    /// `close_linger` without progress (§7.11 item 4, §12.2). Reads stay
    /// possible until the peer's FIN.
    pub fn close(&mut self, now: Instant) {
        match self.state {
            State::SynSent => self.finish(Event::Closed),
            State::Established => {
                self.close_requested = true;
                self.state = State::FinWait;
                self.close_started = now;
                self.linger_deadline = Some(now + self.cfg.close_linger);
            }
            _ => {}
        }
    }

    /// Abort: send RST and close at once.
    pub fn abort(&mut self) {
        if self.state == State::Closed {
            return;
        }
        if self.state != State::SynSent || self.syn_expiries > 0 || !self.syn_pending {
            self.rst_pending = true;
        }
        self.finish(Event::Closed);
    }

    /// Enter CLOSED with a terminal event; drop everything but unread data.
    fn finish(&mut self, ev: Event) {
        self.state = State::Closed;
        self.events.push_back(ev);
        self.drop_send_state();
        self.syn_pending = false;
        self.synack_pending = false;
        self.fin_pending = false;
        self.finack_queue.clear();
        self.probe_pending = false;
        self.ack_now = false;
        self.syn_deadline = None;
        self.delack_deadline = None;
        self.linger_deadline = None;
        self.fin_deadline = None;
        self.time_wait_deadline = None;
        self.shrink_deadline = None;
        self.sbuf = ByteRing::default();
        self.rcv.shrink();
    }

    fn drop_send_state(&mut self) {
        self.segs.clear();
        self.log.clear();
        self.retx.clear();
        self.sacked.clear();
        self.pipe = 0;
        self.rto_deadline = None;
        self.reorder_deadline = None;
        self.nagle_deadline = None;
        self.nagle_expired = false;
        self.pacing_deadline = None;
    }

    fn enter_time_wait(&mut self, now: Instant) {
        self.state = State::TimeWait;
        self.drop_send_state();
        self.sbuf = ByteRing::default();
        self.fin_pending = false;
        self.fin_deadline = None;
        self.linger_deadline = None;
        self.probe_pending = false;
        self.time_wait_deadline = Some(now + self.cfg.time_wait);
        self.shrink_deadline = None;
        self.rcv.shrink();
    }

    // ------------------------------------------------------------------
    // Input
    // ------------------------------------------------------------------

    /// Process a segment addressed to this connection.
    pub fn handle_segment(&mut self, seg: &Segment, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        let f = seg.flags;
        if f.contains(Flags::RST) {
            // No sequence check possible: the reference sends seq 0 (§12.20).
            let ev = match self.state {
                State::SynSent => Event::Refused,
                State::TimeWait => Event::Closed,
                // Our FIN is out and all data was acknowledged: the peer has
                // already dropped the connection (RST for an unknown
                // connection); nothing was lost.
                State::FinWait if self.fin_off.is_some() && self.all_data_acked() => Event::Closed,
                _ => Event::Reset,
            };
            self.finish(ev);
            return;
        }
        self.last_recv = now;
        if self.ka_probes > 0 {
            self.peer_answers_probes = true;
        }
        self.ka_probes = 0;
        self.heard_since_rto = true;

        if f.contains(Flags::SYN) {
            self.handle_syn(seg, now);
            return;
        }
        if f.contains(Flags::FIN) {
            self.handle_fin(seg, now);
            return;
        }
        if !f.contains(Flags::ACK) {
            return;
        }
        match self.state {
            State::Established | State::FinWait => {}
            // Data before the handshake completes is dropped (§7.3); nothing
            // is answered in TIME_WAIT except bare FINs (§12.1).
            _ => return,
        }
        if seg.window != 0 {
            self.peer_window = seg.window;
        }
        let sack = sack::parse_payload(seg.payload);
        let is_data = sack.is_none() && !seg.payload.is_empty();
        // Keepalive probe (§7.10, §12.13): empty, window 0, seq == rcv_nxt.
        if seg.payload.is_empty()
            && seg.window == 0
            && seg.seq == to_wire(self.rcv_base, self.rcv.rcv_nxt())
        {
            self.ack_now = true;
        }
        self.handle_ack(seg, is_data, now);
        if let Some(s) = sack {
            self.handle_sack(&s, now);
        }
        if !self.segs.is_empty() && self.rack.is_some() {
            self.detect_losses(now);
        }
        if is_data && !self.peer_closed {
            self.handle_data(seg, now);
        }
    }

    fn handle_syn(&mut self, seg: &Segment, now: Instant) {
        let f = seg.flags;
        if f.contains(Flags::ACK) {
            // SYN|ACK: only meaningful in SYN_SENT; ignored on ESTABLISHED
            // (§12.20). Must acknowledge our SYN.
            if self.state != State::SynSent || seg.ack != self.iss.wrapping_add(1) {
                return;
            }
            self.irs = seg.seq;
            self.rcv_base = seg.seq.wrapping_add(1);
            if seg.window != 0 {
                self.peer_window = seg.window;
            }
            self.state = State::Established;
            self.syn_pending = false;
            self.syn_deadline = None;
            self.ack_now = true;
            self.last_send_data = now;
            self.events.push_back(Event::Connected);
        } else if self.responder
            && matches!(self.state, State::Established | State::FinWait)
            && seg.seq == self.irs
        {
            // Retransmitted SYN: resend our SYN|ACK (with our real ISN, not
            // the reference's snd_nxt − 1).
            self.synack_pending = true;
        }
    }

    fn handle_fin(&mut self, seg: &Segment, now: Instant) {
        if !matches!(
            self.state,
            State::Established | State::FinWait | State::TimeWait
        ) {
            return;
        }
        let bare = !seg.flags.contains(Flags::ACK);
        if bare && self.finack_queue.len() < MAX_FINACK_QUEUE {
            // Each bare FIN (retransmissions included) gets one FIN|ACK; a
            // FIN|ACK is never answered (§12.1).
            self.finack_queue.push_back(seg.seq.wrapping_add(1));
        }
        if self.state == State::TimeWait {
            return;
        }
        // A bare FIN carries our rcv_nxt if nothing was lost; a FIN|ACK may
        // also count the peer's own FIN (simultaneous close).
        let nxt = to_wire(self.rcv_base, self.rcv.rcv_nxt());
        let truncated = seg.seq != nxt && (bare || seg.seq != nxt.wrapping_add(1));
        if !self.peer_closed {
            self.peer_closed = true;
            self.events.push_back(Event::PeerClosed { truncated });
        }
        self.enter_time_wait(now);
    }

    fn handle_ack(&mut self, seg: &Segment, is_data: bool, now: Instant) {
        let snd_max = self.snd_nxt.max(self.snd_high) + self.fin_off.is_some() as u64;
        let Some(ack) = unwrap_near(self.snd_base, self.snd_una, seg.ack) else {
            return;
        };
        if ack > snd_max {
            return;
        }
        if ack > self.snd_nxt && self.fin_off.is_none() {
            // Data sent before a re-cut (set_mss) arrived after all.
            self.snd_nxt = ack;
        }
        if ack > self.snd_una {
            self.on_new_ack(ack.min(self.snd_nxt), now);
            if self.fin_off.is_some_and(|f| ack > f) {
                // Our FIN acknowledged by a plain ACK: no half-close exists
                // in this protocol, so this ends the stream too.
                self.enter_time_wait(now);
            }
        } else if ack == self.snd_una
            && !is_data
            && seg.window != 0
            && !self.segs.is_empty()
            && self.fin_off.is_none()
        {
            self.dupacks += 1;
            if seg.payload.is_empty() && self.dupacks >= DUP_ACK_THRESHOLD {
                self.extra_credit += self.cfg.mss;
            }
            if self.dupacks == DUP_ACK_THRESHOLD {
                let id = self.seg_id_front;
                // Only a segment not yet retransmitted: a lost
                // retransmission is RACK's or the RTO's to find.
                if self.segs[0].state == SegState::InFlight && self.segs[0].tx_count == 1 {
                    self.mark_lost(id);
                }
            }
        }
    }

    fn on_new_ack(&mut self, ack: u64, now: Instant) {
        let acked = (ack - self.snd_una) as usize;
        let mut sample: Option<Instant> = None;
        let mut rack_cand: Option<(u64, Instant)> = None;
        while let Some(s) = self.segs.front() {
            if s.end() > ack {
                break;
            }
            let s = self.segs.pop_front().unwrap();
            self.seg_id_front += 1;
            if s.state == SegState::InFlight {
                self.pipe = self.pipe.saturating_sub(s.len as usize);
                if s.tx_count == 1 {
                    sample = Some(s.sent_at);
                }
            }
            if s.state != SegState::Sacked {
                rack_cand = Some((s.xmit_id, s.sent_at));
            }
        }
        if let Some((x, t)) = rack_cand {
            self.rack_update(x, t, now);
        }
        self.snd_una = ack;
        self.tx_floor = 0;
        let keep_from = self.segs.front().map_or(ack, |s| s.start);
        self.sbuf.consume((keep_from - self.sbuf_off) as usize);
        self.sbuf_off = keep_from;
        self.sacked.remove_below(ack);
        if let Some(t) = sample {
            self.rtt.sample(now.saturating_duration_since(t));
        } else {
            self.rtt.reset_backoff();
        }
        // Congestion window growth (§7.7), not during recovery.
        if let Some(rp) = self.recovery_point {
            if ack >= rp {
                self.recovery_point = None;
            }
        } else {
            self.cc.on_ack(acked, now, self.rtt.srtt());
        }
        self.dupacks = 0;
        self.extra_credit = 0;
        self.rto_deadline = if self.segs.is_empty() {
            // Every logged transmission is settled.
            self.log.clear();
            None
        } else {
            Some(now + self.rtt.rto())
        };
        if self.close_requested && self.fin_off.is_none() {
            self.linger_deadline = Some(now + self.cfg.close_linger);
        }
        if self.want_writable && self.send_capacity() > 0 {
            self.want_writable = false;
            self.events.push_back(Event::Writable);
        }
    }

    /// Recompute the incremental bookkeeping from scratch (tests only).
    #[cfg(test)]
    fn check_invariants(&self) {
        let pipe: usize = self
            .segs
            .iter()
            .filter(|s| s.state == SegState::InFlight)
            .map(|s| s.len as usize)
            .sum();
        assert_eq!(pipe, self.pipe, "pipe");
        let mut prev = self.sbuf_off;
        for s in &self.segs {
            assert_eq!(s.start, prev, "segments contiguous");
            prev = s.end();
        }
        if self.fin_off.is_none() && matches!(self.state, State::Established | State::FinWait) {
            assert_eq!(prev, self.snd_nxt, "segments end at snd_nxt");
            assert!(self.snd_una <= self.snd_nxt);
            assert!(self.sbuf_off <= self.snd_una);
            assert!(self.snd_nxt <= self.sbuf_off + self.sbuf.len() as u64);
        }
    }

    fn seg_index(&self, id: u64) -> Option<usize> {
        let idx = id.checked_sub(self.seg_id_front)? as usize;
        (idx < self.segs.len()).then_some(idx)
    }

    fn rack_update(&mut self, xmit_id: u64, sent_at: Instant, now: Instant) {
        if self.rack.is_none_or(|r| xmit_id > r.xmit_id) {
            self.rack = Some(Rack {
                xmit_id,
                rtt: now.saturating_duration_since(sent_at),
            });
        }
    }

    fn handle_sack(&mut self, s: &sack::Repr, now: Instant) {
        let mut gaps = std::mem::take(&mut self.scratch);
        for b in s.blocks() {
            let (Some(l), Some(r)) = (
                unwrap_near(self.snd_base, self.snd_una, b.left),
                unwrap_near(self.snd_base, self.snd_una, b.right),
            ) else {
                continue;
            };
            // Ignore blocks outside the unacknowledged range (§12.3).
            if l < self.snd_una || r > self.snd_nxt || l >= r {
                continue;
            }
            gaps.clear();
            self.sacked.for_each_gap(l, r, |a, e| gaps.push((a, e)));
            if gaps.is_empty() {
                continue;
            }
            let (ms, me) = self.sacked.insert(l, r);
            for &(a, e) in gaps.iter() {
                let mut idx = self.segs.partition_point(|s| s.end() <= a);
                while idx < self.segs.len() && self.segs[idx].start < e {
                    let sg = &self.segs[idx];
                    if sg.start >= ms && sg.end() <= me && sg.state != SegState::Sacked {
                        let (x, t, len, st) = (sg.xmit_id, sg.sent_at, sg.len, sg.state);
                        if st == SegState::InFlight {
                            self.pipe = self.pipe.saturating_sub(len as usize);
                        }
                        self.segs[idx].state = SegState::Sacked;
                        self.rack_update(x, t, now);
                    }
                    idx += 1;
                }
            }
        }
        self.scratch = gaps;
    }

    /// RACK: mark transmissions lost that were sent before the most recently
    /// delivered one and have been outstanding for its RTT plus a reordering
    /// window.
    fn detect_losses(&mut self, now: Instant) {
        let Some(rack) = self.rack else { return };
        let reo = self.rtt.min_rtt().map_or(Duration::ZERO, |m| m / 4);
        self.reorder_deadline = None;
        while let Some(e) = self.log.front().copied() {
            let valid = self
                .seg_index(e.seg_id)
                .map(|i| &self.segs[i])
                .filter(|s| s.xmit_id == e.xmit_id && s.state == SegState::InFlight);
            let Some(s) = valid else {
                self.log.pop_front();
                continue;
            };
            if e.xmit_id >= rack.xmit_id {
                break;
            }
            let deadline = s.sent_at + rack.rtt + reo;
            if now >= deadline {
                self.log.pop_front();
                self.mark_lost(e.seg_id);
            } else {
                self.reorder_deadline = Some(deadline);
                break;
            }
        }
    }

    fn mark_lost(&mut self, id: u64) {
        let Some(i) = self.seg_index(id) else { return };
        if self.segs[i].state != SegState::InFlight {
            return;
        }
        self.segs[i].state = SegState::Lost;
        self.pipe = self.pipe.saturating_sub(self.segs[i].len as usize);
        self.retx.push_back(id);
        if self.recovery_point.is_none() {
            self.cc.on_congestion_event();
            self.stats.fast_recoveries += 1;
            self.recovery_point = Some(self.snd_nxt);
            self.retx_credit = 1;
        }
    }

    fn handle_data(&mut self, seg: &Segment, now: Instant) {
        let Some(off) = unwrap_near(self.rcv_base, self.rcv.rcv_nxt(), seg.seq) else {
            self.ack_now = true;
            return;
        };
        self.stats.segments_received += 1;
        match self.rcv.accept(off, seg.payload) {
            Accepted::InOrder { filled_gap } => {
                self.shrink_deadline = Some(now + SHRINK_IDLE);
                if !self.readable_signalled {
                    self.readable_signalled = true;
                    self.events.push_back(Event::Readable);
                }
                self.unacked_segs += 1;
                if filled_gap || self.rcv.has_ooo() || self.unacked_segs >= ACK_EVERY_SEGMENTS {
                    self.ack_now = true;
                } else if self.delack_deadline.is_none() {
                    self.delack_deadline = Some(now + DELAYED_ACK);
                }
            }
            Accepted::OutOfOrder | Accepted::Duplicate | Accepted::NoRoom => self.ack_now = true,
        }
    }

    // ------------------------------------------------------------------
    /// Payload bytes per segment we send now.
    pub fn mss(&self) -> usize {
        self.cfg.mss
    }

    /// Sends segments of up to `mss` payload bytes from now on: meant for
    /// larger segments once the daemon has proven the path carries them, and
    /// the default again when the path changes (the daemon's node/pmtu.rs).
    /// Segments in flight that are
    /// larger than a smaller new size are not retransmitted as they are
    /// (they might not fit the new path): sending goes back to the first
    /// unacknowledged byte and cuts the data again. Receivers accept
    /// re-cut data (ours trims what it has; the reference's window counts
    /// segments, not sizes). After our FIN is out the segments stay as they
    /// are (the FIN's sequence number sits behind them).
    ///
    /// Sizes above a sixteenth of the send buffer are lowered to that (but
    /// never below [`DEFAULT_MSS`]): a window of a few huge segments would
    /// lose its ACK clock and its loss recovery on one drop.
    pub fn set_mss(&mut self, mss: usize) {
        let cap = (self.cfg.send_buffer_bytes / 16).max(DEFAULT_MSS);
        let mss = mss.min(cap).clamp(1, u16::MAX as usize);
        if mss == self.cfg.mss {
            return;
        }
        self.cfg.mss = mss;
        self.cfg.max_cwnd = self.cfg.max_cwnd.max(2 * mss);
        self.cc.set_mss(mss, self.cfg.max_cwnd);
        let too_big = self.segs.iter().any(|s| s.len as usize > mss);
        if too_big && self.fin_off.is_none() {
            self.seg_id_front += self.segs.len() as u64;
            self.drop_send_state();
            self.snd_high = self.snd_high.max(self.snd_nxt);
            self.snd_nxt = self.snd_una;
            self.sbuf.consume((self.snd_una - self.sbuf_off) as usize);
            self.sbuf_off = self.snd_una;
            self.recovery_point = None;
            self.dupacks = 0;
            self.extra_credit = 0;
            self.rack = None;
        }
    }

    /// The path to the peer changed (a new address, the relay, or back to
    /// direct): data in flight is retransmitted at the next
    /// [`handle_timeout`](Self::handle_timeout), with the backoff forgotten,
    /// instead of after an RTO that grew while the old path was dead.
    pub fn path_changed(&mut self, now: Instant) {
        if self.rto_deadline.is_some() && !self.segs.is_empty() {
            self.rtt.reset_backoff();
            self.rto_deadline = Some(now);
            // What was lost on the old path says nothing about the new
            // one: the §7.7 limit counts transmissions from here, and the
            // silence before does not count either. (Without this, the
            // retransmission at the very moment a moved peer was found
            // again found the limit reached and reset the stream.)
            self.tx_floor = self.segs.iter().map(|s| s.tx_count).max().unwrap_or(0);
            self.heard_since_rto = true;
            self.silent_rtos = 0;
        }
    }

    // Timers
    // ------------------------------------------------------------------

    /// The earliest instant at which [`handle_timeout`](Self::handle_timeout)
    /// has something to do (`None`: nothing scheduled).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut add = |d: Option<Instant>| {
            if let Some(d) = d {
                t = Some(t.map_or(d, |x| x.min(d)));
            }
        };
        add(self.syn_deadline);
        add(self.rto_deadline);
        add(self.reorder_deadline);
        add(self.delack_deadline);
        add(self.fin_deadline);
        add(self.linger_deadline);
        add(self.time_wait_deadline);
        add(self.nagle_deadline);
        add(self.pacing_deadline);
        add(self.shrink_deadline);
        if self.state == State::Established || self.state == State::FinWait {
            add(self.keepalive_deadline());
            if !self.close_requested {
                add(self.cfg.idle_timeout.map(|d| self.last_recv + d));
            }
        }
        t
    }

    fn keepalive_deadline(&self) -> Option<Instant> {
        if self.fin_off.is_some() {
            // FIN retransmissions are the liveness check now.
            return None;
        }
        let idle = self.cfg.keepalive_idle?;
        if self.ka_probes == 0 {
            Some(self.last_recv.max(self.last_send_data) + idle)
        } else {
            Some(self.ka_last_probe + self.cfg.keepalive_interval)
        }
    }

    /// Run every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due = |d: Option<Instant>| d.is_some_and(|d| d <= now);
        if due(self.syn_deadline) {
            self.syn_expired(now);
        }
        if self.state == State::Closed {
            return;
        }
        if due(self.time_wait_deadline) {
            self.finish(Event::Closed);
            return;
        }
        if due(self.delack_deadline) {
            self.delack_deadline = None;
            self.ack_now = true;
        }
        if due(self.shrink_deadline) {
            // Idle for a while: give buffer memory back (it regrows on demand).
            self.shrink_deadline = None;
            self.shrink_buffers();
        }
        if due(self.pacing_deadline) {
            self.pacing_deadline = None;
        }
        if due(self.nagle_deadline) {
            self.nagle_deadline = None;
            self.nagle_expired = true;
        }
        if due(self.reorder_deadline) {
            self.reorder_deadline = None;
            self.detect_losses(now);
        }
        if due(self.rto_deadline) {
            self.rto_expired(now);
            if self.state == State::Closed {
                return;
            }
        }
        if due(self.fin_deadline) {
            if self.fin_tx >= self.cfg.max_transmissions {
                if self.all_data_acked() {
                    // Every byte was acknowledged before the FIN; only the
                    // close handshake is unconfirmed (the peer's FIN|ACK, or
                    // its answers after its TIME_WAIT ended, were lost).
                    self.finish(Event::Closed);
                } else {
                    self.rst_pending = true;
                    self.finish(Event::TimedOut);
                }
                return;
            }
            self.rtt.back_off();
            self.fin_pending = true;
            self.fin_deadline = Some(now + self.rtt.rto());
        }
        if due(self.linger_deadline) {
            // No progress for `close_linger`. While a retransmission is
            // scheduled, give it one more RTO (up to `close_timeout` after
            // close()); then send FIN even though data is outstanding.
            let hard = self.close_started + self.cfg.close_timeout;
            match self.rto_deadline {
                Some(r) if now < hard => {
                    self.linger_deadline = Some(
                        (r + self.rtt.rto())
                            .min(hard)
                            .max(now + Duration::from_millis(1)),
                    );
                }
                _ => {
                    self.linger_deadline = None;
                    self.fin_pending = self.fin_off.is_none();
                }
            }
        }
        if matches!(self.state, State::Established | State::FinWait) {
            if due(self.cfg.idle_timeout.map(|d| self.last_recv + d)) && !self.close_requested {
                self.close(now);
                return;
            }
            if due(self.keepalive_deadline()) {
                // Unanswered probes mean "dead" only for a peer known to
                // answer them. A reference peer never answers (§12.13) and,
                // since our probes count as activity for it, never probes
                // us either: resetting it would kill every idle connection
                // at ≈ 105 s. For such peers the idle timeout (a graceful
                // FIN) is the backstop, as in the reference.
                if self.ka_probes >= self.cfg.keepalive_probes && self.peer_answers_probes {
                    self.rst_pending = true;
                    self.finish(Event::TimedOut);
                    return;
                }
                self.ka_probes = self.ka_probes.saturating_add(1);
                self.ka_last_probe = now;
                self.probe_pending = true;
            }
        }
    }

    fn syn_expired(&mut self, now: Instant) {
        if self.state != State::SynSent {
            self.syn_deadline = None;
            return;
        }
        self.syn_expiries = self.syn_expiries.saturating_add(1);
        if self.syn_expiries >= SYN_MAX_EXPIRIES {
            self.finish(Event::TimedOut);
            return;
        }
        self.events.push_back(Event::SynRetransmit {
            expiry: self.syn_expiries,
        });
        self.syn_pending = true;
        if self.cfg.syn_relay_expiry == Some(self.syn_expiries) {
            self.syn_interval = SYN_INITIAL_RTO;
        }
        self.syn_interval = (self.syn_interval * 2).min(SYN_MAX_RTO);
        self.syn_deadline = Some(now + self.syn_interval);
    }

    fn rto_expired(&mut self, now: Instant) {
        self.rto_deadline = None;
        let Some(front) = self.segs.front() else {
            return;
        };
        if self.heard_since_rto {
            self.silent_rtos = 0;
        } else {
            self.silent_rtos += 1;
        }
        self.heard_since_rto = false;
        if front.tx_count.saturating_sub(self.tx_floor) >= self.cfg.max_transmissions
            && self.silent_rtos >= 2
        {
            // §7.7: the segment was sent the maximum number of times and the
            // timer expired again with the peer silent (not a single packet
            // during the last two timeouts: a live peer that refuses data
            // for lack of buffer space keeps answering): reset.
            self.rst_pending = true;
            self.finish(Event::TimedOut);
            return;
        }
        self.cc.on_rto(self.recovery_point.is_none());
        self.stats.rtos += 1;
        self.recovery_point = Some(self.snd_nxt);
        self.retx.clear();
        for (i, s) in self.segs.iter_mut().enumerate() {
            match s.state {
                SegState::InFlight => {
                    s.state = SegState::Lost;
                    self.retx.push_back(self.seg_id_front + i as u64);
                }
                SegState::Lost => self.retx.push_back(self.seg_id_front + i as u64),
                // The cumulative ACK point is retransmitted even if it was
                // reported SACKed: a receiver that reneged (or lied) must not
                // stall the stream forever.
                SegState::Sacked if i == 0 => {
                    s.state = SegState::Lost;
                    self.retx.push_back(self.seg_id_front);
                }
                SegState::Sacked => {}
            }
        }
        self.pipe = 0;
        self.extra_credit = 0;
        self.log.clear();
        self.rtt.back_off();
        self.rto_deadline = Some(now + self.rtt.rto());
    }

    // ------------------------------------------------------------------
    // Output
    // ------------------------------------------------------------------

    /// The window for an outgoing segment; remembered as what the peer
    /// last heard.
    fn window(&mut self) -> u16 {
        self.adv_window = self.rcv.window();
        self.adv_window
    }

    fn rcv_nxt_wire(&self) -> u32 {
        to_wire(self.rcv_base, self.rcv.rcv_nxt())
    }

    fn snd_nxt_wire(&self) -> u32 {
        to_wire(self.snd_base, self.snd_nxt + self.fin_off.is_some() as u64)
    }

    fn control(&self, flags: Flags, seq: u32, ack: u32, window: u16) -> Transmit {
        Transmit {
            flags,
            seq,
            ack,
            window,
            payload_len: 0,
        }
    }

    fn acked_now(&mut self) {
        self.ack_now = false;
        self.unacked_segs = 0;
        self.delack_deadline = None;
    }

    /// The next segment to send, if any. Call repeatedly until `None` after
    /// every input and timeout. Payload bytes are written to the front of
    /// `payload_buf`, which should hold at least `mss` bytes (a smaller buffer
    /// makes new segments smaller and defers retransmissions that do not fit).
    pub fn poll_transmit(&mut self, now: Instant, payload_buf: &mut [u8]) -> Option<Transmit> {
        if self.rst_pending {
            self.rst_pending = false;
            return Some(self.control(Flags::RST, 0, 0, 0));
        }
        match self.state {
            State::Closed => return None,
            State::SynSent => {
                if self.syn_pending {
                    self.syn_pending = false;
                    let w = self.window();
                    return Some(self.control(Flags::SYN, self.iss, 0, w));
                }
                return None;
            }
            _ => {}
        }
        if self.synack_pending {
            self.synack_pending = false;
            let w = self.window();
            let t = self.control(
                Flags::SYN | Flags::ACK,
                self.iss,
                self.irs.wrapping_add(1),
                w,
            );
            return Some(t);
        }
        if let Some(ack) = self.finack_queue.pop_front() {
            return Some(self.control(Flags::FIN | Flags::ACK, self.snd_nxt_wire(), ack, 0));
        }
        if self.state == State::TimeWait {
            return None;
        }
        if self.probe_pending {
            self.probe_pending = false;
            return Some(self.control(Flags::ACK, self.snd_nxt_wire(), self.rcv_nxt_wire(), 0));
        }
        // An ACK that must carry SACK goes before data (data cannot carry it).
        if self.ack_now && self.rcv.has_ooo() {
            return Some(self.pure_ack(payload_buf));
        }
        if self.fin_off.is_none() {
            let forced_fin = self.close_requested && self.fin_pending;
            if !forced_fin {
                if let Some(t) = self.transmit_retx(now, payload_buf) {
                    return Some(t);
                }
                // Lost data goes before new data (the queue front is valid
                // here: transmit_retx dropped stale entries).
                if self.retx.is_empty() {
                    if let Some(t) = self.transmit_new(now, payload_buf) {
                        return Some(t);
                    }
                }
            }
            if self.close_requested && (forced_fin || self.all_data_acked()) {
                // Everything acknowledged (or linger over): bare FIN (§7.10).
                let fin = self.snd_nxt;
                self.fin_off = Some(fin);
                self.drop_send_state();
                self.linger_deadline = None;
                self.fin_pending = false;
                self.fin_tx = 1;
                self.fin_deadline = Some(now + self.rtt.rto());
                return Some(self.control(Flags::FIN, to_wire(self.snd_base, fin), 0, 0));
            }
        } else if self.fin_pending {
            self.fin_pending = false;
            self.fin_tx = self.fin_tx.saturating_add(1);
            let fin = self.fin_off.unwrap_or(self.snd_nxt);
            return Some(self.control(Flags::FIN, to_wire(self.snd_base, fin), 0, 0));
        }
        if self.ack_now {
            return Some(self.pure_ack(payload_buf));
        }
        None
    }

    fn pure_ack(&mut self, buf: &mut [u8]) -> Transmit {
        self.acked_now();
        let mut len = 0;
        if self.rcv.has_ooo() {
            let r = self.rcv.sack(self.rcv_base);
            if !r.is_empty() && buf.len() >= r.buffer_len() {
                r.emit(&mut sack::Packet::new_unchecked(&mut buf[..r.buffer_len()]));
                len = r.buffer_len();
            }
        }
        let window = self.window();
        Transmit {
            flags: Flags::ACK,
            seq: self.snd_nxt_wire(),
            ack: self.rcv_nxt_wire(),
            window,
            payload_len: len,
        }
    }

    fn data_segment(&mut self, start: u64, len: usize) -> Transmit {
        self.acked_now();
        let window = self.window();
        Transmit {
            flags: Flags::ACK,
            seq: to_wire(self.snd_base, start),
            ack: self.rcv_nxt_wire(),
            window,
            payload_len: len,
        }
    }

    fn log_transmission(&mut self, id: u64, now: Instant) -> u64 {
        let x = self.next_xmit_id;
        self.next_xmit_id += 1;
        self.log.push_back(LogEntry {
            seg_id: id,
            xmit_id: x,
        });
        if self.rto_deadline.is_none() {
            self.rto_deadline = Some(now + self.rtt.rto());
        }
        self.last_send_data = now;
        self.shrink_deadline = Some(now + SHRINK_IDLE);
        x
    }

    /// Pacing (token bucket): may `len` bytes of data go out now? The rate
    /// is a multiple of cwnd/SRTT (2× in slow start, 1.25× after), bursts up
    /// to [`PACING_BURST_SEGMENTS`] or one `pacing_quantum` of the rate,
    /// whichever is more; spreads a window over the RTT instead of
    /// dumping it into socket buffers and router queues at once.
    fn pace(&mut self, len: usize, now: Instant) -> bool {
        if !self.cfg.pacing {
            return true;
        }
        let Some(srtt) = self.rtt.srtt() else {
            return true;
        };
        let gain = if self.cc.in_slow_start() { 2.0 } else { 1.25 };
        let rate = gain * self.cc.cwnd() as f64 / srtt.as_secs_f64().max(1e-6);
        let burst = ((PACING_BURST_SEGMENTS * self.cfg.mss) as f64)
            .max(rate * self.cfg.pacing_quantum.as_secs_f64());
        let dt = now
            .saturating_duration_since(self.pacing_last)
            .as_secs_f64();
        self.pacing_last = now;
        self.pacing_tokens = (self.pacing_tokens + dt * rate).min(burst);
        if self.pacing_tokens >= len as f64 {
            self.pacing_tokens -= len as f64;
            self.pacing_deadline = None;
            true
        } else {
            let wait = (len as f64 - self.pacing_tokens) / rate;
            self.pacing_deadline = Some(now + Duration::from_secs_f64(wait.max(1e-6)));
            false
        }
    }

    fn transmit_retx(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        while let Some(&id) = self.retx.front() {
            let Some(i) = self.seg_index(id) else {
                self.retx.pop_front();
                continue;
            };
            if self.segs[i].state != SegState::Lost {
                self.retx.pop_front();
                continue;
            }
            let len = self.segs[i].len as usize;
            let cwnd_ok = self.pipe == 0 || self.pipe + len <= self.cc.cwnd() + self.extra_credit;
            if (!cwnd_ok && self.retx_credit == 0) || len > buf.len() || !self.pace(len, now) {
                return None;
            }
            if !cwnd_ok {
                self.retx_credit -= 1;
            }
            self.retx.pop_front();
            let start = self.segs[i].start;
            self.sbuf
                .copy_out((start - self.sbuf_off) as usize, &mut buf[..len]);
            let x = self.log_transmission(id, now);
            let s = &mut self.segs[i];
            s.state = SegState::InFlight;
            s.tx_count = s.tx_count.saturating_add(1);
            self.stats.retransmissions += 1;
            s.sent_at = now;
            s.xmit_id = x;
            self.pipe += len;
            return Some(self.data_segment(start, len));
        }
        None
    }

    fn transmit_new(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let end = self.sbuf_off + self.sbuf.len() as u64;
        let unsent = (end - self.snd_nxt) as usize;
        if unsent == 0 {
            return None;
        }
        if self.segs.is_empty()
            && now.saturating_duration_since(self.last_send_data) > self.rtt.rto()
        {
            // Restart window after idle (RFC 5681 §4.1): no full-cwnd burst
            // into a path whose state is unknown again.
            self.cc.restart_after_idle();
        }
        if self.pipe >= self.cc.cwnd() + self.extra_credit
            || self.segs.len() >= self.peer_window as usize
        {
            return None;
        }
        let mut len = unsent.min(self.cfg.mss).min(buf.len());
        if len == 0 {
            return None;
        }
        let off = (self.snd_nxt - self.sbuf_off) as usize;
        self.sbuf.copy_out(off, &mut buf[..len]);
        len = sack::data_split_len(&buf[..len]);
        // Nagle (§7.9): hold a sub-MSS tail while data is outstanding.
        if len == unsent
            && len < self.cfg.mss
            && !self.segs.is_empty()
            && !self.cfg.nodelay
            && !self.close_requested
            && !self.nagle_expired
        {
            if self.nagle_deadline.is_none() {
                self.nagle_deadline = Some(now + NAGLE_DELAY);
            }
            return None;
        }
        if !self.pace(len, now) {
            return None;
        }
        self.nagle_deadline = None;
        self.nagle_expired = false;
        let start = self.snd_nxt;
        let id = self.seg_id_front + self.segs.len() as u64;
        let x = self.log_transmission(id, now);
        self.segs.push_back(SentSeg {
            start,
            len: len as u32,
            state: SegState::InFlight,
            tx_count: 1,
            sent_at: now,
            xmit_id: x,
        });
        self.snd_nxt += len as u64;
        self.pipe += len;
        self.stats.segments_sent += 1;
        Some(self.data_segment(start, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{rst_for, Config, Event, Segment, State, Transmit, DEFAULT_MSS};

    type Out = (Transmit, Vec<u8>);

    fn drain(c: &mut Connection, now: Instant) -> Vec<Out> {
        let mut v = Vec::new();
        let mut buf = vec![0u8; 65536];
        while let Some(t) = c.poll_transmit(now, &mut buf) {
            v.push((t, buf[..t.payload_len].to_vec()));
            assert!(v.len() < 100_000);
        }
        v
    }

    fn events(c: &mut Connection) -> Vec<Event> {
        std::iter::from_fn(|| c.poll_event()).collect()
    }

    fn seg(o: &Out) -> Segment<'_> {
        Segment {
            flags: o.0.flags,
            seq: o.0.seq,
            ack: o.0.ack,
            window: o.0.window,
            payload: &o.1,
        }
    }

    fn mk(flags: Flags, seq: u32, ack: u32, window: u16, payload: &[u8]) -> Segment<'_> {
        Segment {
            flags,
            seq,
            ack,
            window,
            payload,
        }
    }

    #[test]
    fn a_path_change_retransmits_now_without_the_backoff() {
        let t0 = Instant::now();
        let (mut a, _b) = pair(Config::default(), t0);
        assert_eq!(a.send(b"lost on the old path"), 20);
        assert_eq!(drain(&mut a, t0).len(), 1);
        // Three timeouts on a dead path: the RTO has doubled three times.
        let mut now = t0;
        let mut retx = 0;
        for _ in 0..20 {
            now = a.poll_timeout().unwrap();
            a.handle_timeout(now);
            retx += drain(&mut a, now).len();
            if retx == 3 {
                break;
            }
        }
        assert_eq!(retx, 3, "retransmissions");
        let backed_off = a.poll_timeout().unwrap() - now;
        assert!(
            backed_off >= a.rtt.base_rto() * 2,
            "{backed_off:?} vs {:?}",
            a.rtt.base_rto()
        );
        // The path changes: the data goes again at once.
        let later = now + Duration::from_millis(10);
        a.path_changed(later);
        assert_eq!(a.poll_timeout(), Some(later));
        a.handle_timeout(later);
        let out = drain(&mut a, later);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1, b"lost on the old path");
        // ...and the backoff starts again from the computed RTO.
        assert!(a.poll_timeout().unwrap() - later <= backed_off);
    }

    fn read_all(c: &mut Connection) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let n = c.recv(&mut buf);
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn a_larger_segment_size_applies_to_the_next_segments() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(Config::default(), t0);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 249) as u8).collect();
        assert_eq!(a.send(&data[..50_000]), 50_000);
        let first = drain(&mut a, t0);
        assert!(first.iter().all(|o| o.1.len() <= DEFAULT_MSS));
        for o in &first {
            b.handle_segment(&seg(o), t0);
        }
        a.set_mss(16_000);
        assert_eq!(a.mss(), 16_000);
        assert_eq!(a.send(&data[50_000..]), 150_000);
        let now = pump(&mut a, &mut b, t0, t0 + Duration::from_secs(5));
        let got = read_all(&mut b);
        assert_eq!(got.len(), data.len(), "bytes delivered");
        assert!(got == data, "the data arrived changed");
        assert!(a.stats().segments_sent < 50_000 / DEFAULT_MSS as u64 + 2 + 150_000 / 16_000 + 2);
        assert_eq!(a.stats().retransmissions, 0, "{now:?}");
    }

    #[test]
    fn a_smaller_segment_size_cuts_data_in_flight_again() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(Config::default(), t0);
        a.set_mss(30_000);
        let data: Vec<u8> = (0..120_000u32).map(|i| (i * 7 % 253) as u8).collect();
        assert_eq!(a.send(&data), 120_000);
        let out = drain(&mut a, t0);
        assert!(out.iter().any(|o| o.1.len() > DEFAULT_MSS));
        // The first segment arrives; the rest is lost on the old path.
        b.handle_segment(&seg(&out[0]), t0);
        for o in drain(&mut b, t0) {
            a.handle_segment(&seg(&o), t0);
        }
        a.set_mss(DEFAULT_MSS);
        a.path_changed(t0);
        let mut now = t0;
        let mut seen_big = false;
        let until = t0 + Duration::from_secs(10);
        // Deliver everything from here on, checking every segment's size.
        loop {
            let mut moved = false;
            for o in drain(&mut a, now) {
                seen_big |= o.1.len() > DEFAULT_MSS;
                b.handle_segment(&seg(&o), now);
                moved = true;
            }
            for o in drain(&mut b, now) {
                a.handle_segment(&seg(&o), now);
                moved = true;
            }
            a.check_invariants();
            if moved {
                continue;
            }
            match a.poll_timeout().into_iter().chain(b.poll_timeout()).min() {
                Some(t) if t <= until => {
                    now = now.max(t);
                    a.handle_timeout(now);
                    b.handle_timeout(now);
                }
                _ => break,
            }
        }
        assert!(!seen_big, "a segment larger than the new size was sent");
        let got = read_all(&mut b);
        assert_eq!(got.len(), data.len(), "bytes delivered");
        assert!(got == data, "the data arrived changed");
    }

    /// A connected pair (a = initiator with ISN 1000, b = responder ISN 5000).
    fn pair(cfg: Config, now: Instant) -> (Connection, Connection) {
        let mut a = Connection::connect(cfg.clone(), 1000, now);
        let syn = drain(&mut a, now);
        assert_eq!(syn.len(), 1);
        let mut b = Connection::accept(cfg, &seg(&syn[0]), 5000, now);
        let synack = drain(&mut b, now);
        a.handle_segment(&seg(&synack[0]), now);
        let ack = drain(&mut a, now);
        for o in &ack {
            b.handle_segment(&seg(o), now);
        }
        events(&mut a);
        events(&mut b);
        (a, b)
    }

    /// Deliver everything both ways until quiet (no loss), running timers.
    fn pump(a: &mut Connection, b: &mut Connection, mut now: Instant, until: Instant) -> Instant {
        loop {
            a.check_invariants();
            b.check_invariants();
            let mut moved = false;
            for o in drain(a, now) {
                b.handle_segment(&seg(&o), now);
                moved = true;
            }
            for o in drain(b, now) {
                a.handle_segment(&seg(&o), now);
                moved = true;
            }
            if moved {
                continue;
            }
            let next = [a.poll_timeout(), b.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= until => {
                    now = now.max(t);
                    a.handle_timeout(now);
                    b.handle_timeout(now);
                }
                _ => return now,
            }
        }
    }

    #[test]
    fn connection_is_send() {
        fn send<T: Send + 'static>() {}
        send::<Connection>();
    }

    #[test]
    fn handshake_fields() {
        let now = Instant::now();
        let cfg = Config::default();
        let mut a = Connection::connect(cfg.clone(), 1000, now);
        assert_eq!(a.state(), State::SynSent);
        let syn = drain(&mut a, now);
        assert_eq!(syn.len(), 1);
        let t = syn[0].0;
        assert_eq!((t.flags, t.seq, t.ack), (Flags::SYN, 1000, 0));
        assert!(t.window > 0);
        let mut b = Connection::accept(cfg, &seg(&syn[0]), 0, now);
        assert_eq!(b.state(), State::Established);
        assert_eq!(events(&mut b), vec![Event::Connected]);
        let sa = drain(&mut b, now);
        assert_eq!(sa.len(), 1);
        let t = sa[0].0;
        assert_eq!((t.flags, t.seq, t.ack), (Flags::SYN | Flags::ACK, 0, 1001));
        a.handle_segment(&seg(&sa[0]), now);
        assert_eq!(a.state(), State::Established);
        assert_eq!(events(&mut a), vec![Event::Connected]);
        let ack = drain(&mut a, now);
        assert_eq!(ack.len(), 1);
        let t = ack[0].0;
        assert_eq!(
            (t.flags, t.seq, t.ack, t.payload_len),
            (Flags::ACK, 1001, 1, 0)
        );
        assert!(t.window > 0);
        // A SYN|ACK on ESTABLISHED is ignored (§12.20).
        a.handle_segment(&seg(&sa[0]), now);
        assert!(drain(&mut a, now).is_empty());
        // A retransmitted SYN gets the same SYN|ACK again.
        b.handle_segment(&seg(&syn[0]), now);
        let again = drain(&mut b, now);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].0, sa[0].0);
    }

    #[test]
    fn refused() {
        let now = Instant::now();
        let mut a = Connection::connect(Config::default(), 7, now);
        let syn = drain(&mut a, now);
        let rst = rst_for(&seg(&syn[0])).unwrap();
        assert_eq!(
            (rst.flags, rst.seq, rst.ack, rst.window),
            (Flags::RST, 0, 0, 0)
        );
        assert!(rst_for(&mk(Flags::RST, 0, 0, 0, b"")).is_none());
        a.handle_segment(&mk(rst.flags, 0, 0, 0, b""), now);
        assert_eq!(a.state(), State::Closed);
        assert_eq!(events(&mut a), vec![Event::Refused]);
        assert!(drain(&mut a, now).is_empty());
        assert!(a.poll_timeout().is_none());
    }

    #[test]
    fn syn_timeline() {
        let t0 = Instant::now();
        let mut a = Connection::connect(Config::default(), 0, t0);
        assert_eq!(drain(&mut a, t0).len(), 1);
        let mut expiries = Vec::new();
        while let Some(t) = a.poll_timeout() {
            a.handle_timeout(t);
            let ev = events(&mut a);
            let sent = drain(&mut a, t);
            let secs = (t - t0).as_secs();
            for e in ev {
                match e {
                    Event::SynRetransmit { expiry } => {
                        assert_eq!(sent.len(), 1);
                        assert_eq!((sent[0].0.flags, sent[0].0.seq), (Flags::SYN, 0));
                        assert_eq!(a.syn_expiries(), expiry);
                        expiries.push((expiry, secs));
                    }
                    Event::TimedOut => expiries.push((a.syn_expiries(), secs)),
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(
            expiries,
            vec![(1, 1), (2, 3), (3, 7), (4, 9), (5, 13), (6, 21), (7, 29)]
        );
        assert_eq!(a.state(), State::Closed);
    }

    #[test]
    fn bytes_written_and_read_in_place_arrive_in_order() {
        let now = Instant::now();
        let cfg = Config {
            send_buffer_bytes: 50_000,
            ..Config::default()
        };
        let (mut a, mut b) = pair(cfg, now);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 13 + i / 251) as u8).collect();
        let (mut sent, mut got) = (0, Vec::<u8>::new());
        let mut t = now;
        while got.len() < data.len() {
            // Offers are capped by the room in the send buffer; a short
            // fill commits only what was written.
            let n = a.send_with(30_000, |x, y| {
                assert!(x.len() + y.len() <= 30_000);
                let k = (x.len() + y.len()).min(data.len() - sent) * 2 / 3 + 1;
                let k = k.min(x.len() + y.len()).min(data.len() - sent);
                for (i, v) in x.iter_mut().chain(y.iter_mut()).take(k).enumerate() {
                    *v = data[sent + i];
                }
                k
            });
            sent += n;
            t = pump(&mut a, &mut b, t, t + Duration::from_millis(50));
            // Take a part of what is offered, as a short socket write does.
            b.recv_with(40_000, |x, y| {
                assert!(x.len() + y.len() <= 40_000);
                let k = (x.len() + y.len()).div_ceil(2);
                got.extend(x.iter().chain(y).take(k));
                k
            });
        }
        assert_eq!(sent, data.len());
        assert_eq!(got, data);
        // Nothing to offer: the callbacks are not called.
        assert_eq!(b.recv_with(10, |_, _| unreachable!()), 0);
    }

    #[test]
    fn data_both_ways_and_clean_close() {
        let now = Instant::now();
        let (mut a, mut b) = pair(Config::default(), now);
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        assert_eq!(a.send(&data), data.len());
        assert_eq!(b.send(b"hello"), 5);
        let now = pump(&mut a, &mut b, now, now + Duration::from_secs(1));
        let mut got = vec![0u8; 200_000];
        let n = b.recv(&mut got);
        assert_eq!(&got[..n], &data[..]);
        assert_eq!(a.recv(&mut got), 5);
        a.close(now);
        assert_eq!(a.state(), State::FinWait);
        let fin = drain(&mut a, now);
        assert_eq!(fin.len(), 1);
        assert_eq!(fin[0].0.flags, Flags::FIN);
        assert_eq!(fin[0].0.window, 0);
        assert_eq!(fin[0].0.ack, 0);
        b.handle_segment(&seg(&fin[0]), now);
        assert_eq!(b.state(), State::TimeWait);
        assert!(b.is_read_closed());
        assert!(events(&mut b).contains(&Event::PeerClosed { truncated: false }));
        let fa = drain(&mut b, now);
        assert_eq!(fa.len(), 1);
        assert_eq!(fa[0].0.flags, Flags::FIN | Flags::ACK);
        assert_eq!(fa[0].0.ack, fin[0].0.seq.wrapping_add(1));
        a.handle_segment(&seg(&fa[0]), now);
        assert_eq!(a.state(), State::TimeWait);
        // FIN|ACK is never answered (§12.1), not even a second copy.
        assert!(drain(&mut a, now).is_empty());
        a.handle_segment(&seg(&fa[0]), now);
        assert!(drain(&mut a, now).is_empty());
        // TIME_WAIT is capped at 10 s from entry even with FIN|ACKs arriving.
        let later = now + Duration::from_secs(9);
        a.handle_segment(&seg(&fa[0]), later);
        assert_eq!(a.poll_timeout(), Some(now + Duration::from_secs(10)));
        let end = now + Duration::from_secs(10);
        a.handle_timeout(end);
        b.handle_timeout(end);
        assert_eq!(a.state(), State::Closed);
        assert_eq!(b.state(), State::Closed);
        assert_eq!(events(&mut a).last(), Some(&Event::Closed));
        assert!(drain(&mut a, end).is_empty() && drain(&mut b, end).is_empty());
    }

    #[test]
    fn bare_fin_answered_once_per_copy() {
        let now = Instant::now();
        let (_a, mut b) = pair(Config::default(), now);
        let fin = mk(Flags::FIN, 1001, 0, 0, b"");
        b.handle_segment(&fin, now);
        let out = drain(&mut b, now);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].0.flags, out[0].0.ack),
            (Flags::FIN | Flags::ACK, 1002)
        );
        // A retransmitted bare FIN (TIME_WAIT) is answered again, once.
        b.handle_segment(&fin, now + Duration::from_millis(300));
        let out = drain(&mut b, now + Duration::from_millis(300));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0.flags, Flags::FIN | Flags::ACK);
        // TIME_WAIT is not extended by retransmitted FINs (§12.1 cap).
        let late = now + Duration::from_secs(9);
        b.handle_segment(&fin, late);
        assert_eq!(drain(&mut b, late).len(), 1);
        assert_eq!(b.poll_timeout(), Some(now + Duration::from_secs(10)));
        // Nothing else is answered in TIME_WAIT.
        b.handle_segment(&mk(Flags::ACK, 1002, 5001, 0, b""), now);
        b.handle_segment(&mk(Flags::FIN | Flags::ACK, 1002, 5001, 0, b""), now);
        assert!(drain(&mut b, now).is_empty());
    }

    #[test]
    fn fin_ack_in_established_is_not_answered() {
        let now = Instant::now();
        let (_a, mut b) = pair(Config::default(), now);
        b.handle_segment(&mk(Flags::FIN | Flags::ACK, 1001, 5001, 0, b""), now);
        assert!(drain(&mut b, now).is_empty());
        assert_eq!(b.state(), State::TimeWait);
    }

    #[test]
    fn truncated_fin() {
        let now = Instant::now();
        let (_a, mut b) = pair(Config::default(), now);
        b.handle_segment(&mk(Flags::ACK, 1001 + 10, 5001, 10, b"later"), now);
        b.handle_segment(&mk(Flags::ACK, 1001, 5001, 10, b"early"), now);
        // The FIN comes after "early" and a lost segment (seq 1006..1011).
        b.handle_segment(&mk(Flags::FIN, 1001 + 15, 0, 0, b""), now);
        let ev = events(&mut b);
        assert!(
            ev.contains(&Event::PeerClosed { truncated: true }),
            "{ev:?}"
        );
        let mut buf = [0u8; 32];
        assert_eq!(b.recv(&mut buf), 5);
        assert_eq!(&buf[..5], b"early");
    }

    #[test]
    fn keepalive_probe_answered_exactly_once() {
        let now = Instant::now();
        let (_a, mut b) = pair(Config::default(), now);
        // Probe: empty ACK, window 0, seq == our rcv_nxt (1001).
        b.handle_segment(&mk(Flags::ACK, 1001, 5001, 0, b""), now);
        let out = drain(&mut b, now);
        assert_eq!(out.len(), 1);
        let t = out[0].0;
        assert_eq!((t.flags, t.payload_len), (Flags::ACK, 0));
        assert!(t.window > 0);
        assert_eq!(t.ack, 1001);
        // Pure ACKs with a non-zero window are never answered.
        b.handle_segment(&mk(Flags::ACK, 1001, 5001, 7, b""), now);
        assert!(drain(&mut b, now).is_empty());
        // A window-0 ACK whose seq is not our rcv_nxt is not a probe.
        b.handle_segment(&mk(Flags::ACK, 999, 5001, 0, b""), now);
        assert!(drain(&mut b, now).is_empty());
    }

    #[test]
    fn keepalive_probes_then_reset() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(Config::default(), t0);
        // The peer answers a first probe (it is one of ours) ...
        let t = a.poll_timeout().unwrap();
        assert_eq!(t, t0 + Duration::from_secs(60));
        a.handle_timeout(t);
        let probe = drain(&mut a, t);
        assert_eq!(probe.len(), 1);
        b.handle_segment(&seg(&probe[0]), t);
        for o in drain(&mut b, t) {
            a.handle_segment(&seg(&o), t);
        }
        // ... then dies: three unanswered probes, then RST (§7.10).
        let t1 = t;
        let mut probes = Vec::new();
        while let Some(t) = a.poll_timeout() {
            a.handle_timeout(t);
            for o in drain(&mut a, t) {
                probes.push(((t - t1).as_secs(), o.0.flags, o.0.window));
            }
        }
        assert_eq!(
            probes,
            vec![
                (60, Flags::ACK, 0),
                (75, Flags::ACK, 0),
                (90, Flags::ACK, 0),
                (105, Flags::RST, 0)
            ]
        );
        assert_eq!(events(&mut a), vec![Event::TimedOut]);
    }

    #[test]
    fn silent_reference_peer_gets_idle_close_not_reset() {
        // A reference peer never answers probes (§12.13): no RST at 105 s;
        // the 120 s idle timeout closes gracefully instead.
        let t0 = Instant::now();
        let (mut a, _b) = pair(Config::default(), t0);
        let mut out = Vec::new();
        while let Some(t) = a.poll_timeout() {
            if t > t0 + Duration::from_secs(120) {
                break;
            }
            a.handle_timeout(t);
            for o in drain(&mut a, t) {
                out.push(((t - t0).as_secs(), o.0.flags));
            }
        }
        assert_eq!(
            out,
            vec![
                (60, Flags::ACK),
                (75, Flags::ACK),
                (90, Flags::ACK),
                (105, Flags::ACK),
                (120, Flags::FIN)
            ]
        );
        assert_eq!(a.state(), State::FinWait);
    }

    #[test]
    fn answered_keepalive_keeps_connection() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(Config::default(), t0);
        let end = pump(&mut a, &mut b, t0, t0 + Duration::from_secs(600));
        assert_eq!(a.state(), State::Established);
        assert_eq!(b.state(), State::Established);
        assert!(end >= t0 + Duration::from_secs(540));
    }

    #[test]
    fn idle_timeout_closes_gracefully() {
        let t0 = Instant::now();
        let cfg = Config {
            keepalive_idle: None,
            ..Config::default()
        };
        let (mut a, _b) = pair(cfg, t0);
        let t = a.poll_timeout().unwrap();
        assert_eq!(t, t0 + Duration::from_secs(120));
        a.handle_timeout(t);
        assert_eq!(a.state(), State::FinWait);
        let out = drain(&mut a, t);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0.flags, Flags::FIN);
    }

    #[test]
    fn eight_transmissions_then_rst() {
        let t0 = Instant::now();
        let (mut a, _b) = pair(Config::default(), t0);
        a.send(b"lost forever");
        let first = drain(&mut a, t0);
        assert_eq!(first.len(), 1);
        let mut sends = 1;
        let mut rst = false;
        while let Some(t) = a.poll_timeout() {
            a.handle_timeout(t);
            for o in drain(&mut a, t) {
                if o.0.flags == Flags::RST {
                    rst = true;
                } else if o.0.payload_len > 0 {
                    assert_eq!(o.1, b"lost forever");
                    assert_eq!(o.0.seq, first[0].0.seq);
                    sends += 1;
                }
            }
        }
        assert_eq!(sends, 8);
        assert!(rst);
        assert_eq!(events(&mut a), vec![Event::TimedOut]);
    }

    #[test]
    fn a_path_change_gives_the_transmission_limit_a_fresh_start() {
        let t0 = Instant::now();
        let (mut a, _b) = pair(Config::default(), t0);
        a.send(b"lost on the old path");
        assert_eq!(drain(&mut a, t0).len(), 1);
        // Seven retransmissions on a dead path: eight transmissions, the
        // §7.7 limit, and the peer silent throughout.
        let mut now = t0;
        let mut sends = 1;
        while sends < 8 {
            now = a.poll_timeout().unwrap();
            a.handle_timeout(now);
            sends += drain(&mut a, now)
                .iter()
                .filter(|o| o.0.payload_len > 0)
                .count();
        }
        // The peer is found again on a new path: the data goes at once, and
        // the stream is not reset for what the old path lost.
        now += Duration::from_millis(5);
        a.path_changed(now);
        a.handle_timeout(now);
        let out = drain(&mut a, now);
        assert!(out.iter().all(|o| o.0.flags != Flags::RST), "{out:?}");
        assert_eq!(out.iter().filter(|o| o.0.payload_len > 0).count(), 1);
        assert!(events(&mut a).is_empty());
        // A new path that stays silent still ends the stream, after eight
        // more transmissions.
        let mut more = 0;
        let mut rst = false;
        while let Some(t) = a.poll_timeout() {
            a.handle_timeout(t);
            for o in drain(&mut a, t) {
                if o.0.flags == Flags::RST {
                    rst = true;
                } else if o.0.payload_len > 0 {
                    more += 1;
                }
            }
        }
        assert!(rst);
        assert_eq!(more, 7, "transmissions after the change's own");
        assert_eq!(events(&mut a), vec![Event::TimedOut]);
    }

    #[test]
    fn sack_looking_data_is_split_and_delivered() {
        let now = Instant::now();
        // nodelay: the tail after the 4-byte cut would otherwise wait for
        // Nagle (§7.9).
        let cfg = Config {
            nodelay: true,
            ..Config::default()
        };
        let (mut a, mut b) = pair(cfg, now);
        let mut data = b"SACK\x01".to_vec();
        data.extend_from_slice(&[0xAB; 40]);
        a.send(&data);
        let out = drain(&mut a, now);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].1, b"SACK");
        assert!(sack::parse_payload(&out[1].1).is_none());
        for o in &out {
            b.handle_segment(&seg(o), now);
        }
        let mut buf = [0u8; 64];
        assert_eq!(b.recv(&mut buf), data.len());
        assert_eq!(&buf[..data.len()], &data[..]);
        // Received user data of SACK-like prefix but non-exact length is data.
        let mut odd = b"SACK\x01".to_vec();
        odd.extend_from_slice(&[1; 20]);
        let (_a2, mut b2) = pair(Config::default(), now);
        b2.handle_segment(&mk(Flags::ACK, 1001, 5001, 10, &odd), now);
        assert_eq!(b2.recv(&mut buf), odd.len());
    }

    #[test]
    fn retransmission_keeps_boundaries_and_sack_skips() {
        let now = Instant::now();
        let cfg = Config {
            mss: 100,
            ..Config::default()
        };
        let (mut a, mut b) = pair(cfg, now);
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        a.send(&data);
        let out = drain(&mut a, now);
        assert_eq!(out.len(), 10);
        // Lose segments 2 and 5; deliver the rest.
        let mut acks = Vec::new();
        for (i, o) in out.iter().enumerate() {
            if i != 2 && i != 5 {
                b.handle_segment(&seg(o), now);
                acks.extend(drain(&mut b, now));
            }
        }
        assert!(acks.iter().any(|o| sack::parse_payload(&o.1).is_some()));
        let t = now + Duration::from_millis(50);
        for o in &acks {
            a.handle_segment(&seg(o), t);
        }
        // Timers: reorder window / RTO; collect retransmissions.
        let mut retx = Vec::new();
        let mut now2 = t;
        while retx.len() < 2 {
            now2 = a.poll_timeout().unwrap();
            a.handle_timeout(now2);
            retx.extend(
                drain(&mut a, now2)
                    .into_iter()
                    .filter(|o| o.0.payload_len > 0),
            );
        }
        let seqs: Vec<u32> = retx.iter().map(|o| o.0.seq).collect();
        assert_eq!(seqs, vec![out[2].0.seq, out[5].0.seq]);
        assert_eq!(retx[0].1, out[2].1);
        assert_eq!(retx[1].1, out[5].1);
        for o in &retx {
            b.handle_segment(&seg(o), now2);
        }
        let mut buf = vec![0u8; 2000];
        assert_eq!(b.recv(&mut buf), 1000);
        assert_eq!(&buf[..1000], &data[..]);
    }

    #[test]
    fn window_zero_is_no_update_and_never_advertised() {
        let now = Instant::now();
        let cfg = Config {
            mss: 100,
            recv_window_segments: 4,
            recv_buffer_bytes: 400,
            ..Config::default()
        };
        let (mut a, mut b) = pair(cfg, now);
        // Peer window 0 must not become "unlimited" nor "stop".
        a.handle_segment(&mk(Flags::ACK, 5001, 1001, 0, b""), now);
        a.send(&[7u8; 1000]);
        let out = drain(&mut a, now);
        assert_eq!(
            out.len(),
            4,
            "segments in flight limited by the peer window (4)"
        );
        for o in &out {
            b.handle_segment(&seg(o), now);
        }
        let acks = drain(&mut b, now);
        assert!(!acks.is_empty());
        for o in &acks {
            assert!(o.0.window >= 1, "never advertise 0");
            a.handle_segment(&seg(o), now);
        }
        // b's buffer is full: a may send one more segment (window 1), which b
        // drops without acknowledging it.
        let more = drain(&mut a, now);
        assert_eq!(more.len(), 1);
        b.handle_segment(&seg(&more[0]), now);
        let dup = drain(&mut b, now);
        assert_eq!(dup.len(), 1);
        assert_eq!(dup[0].0.ack, more[0].0.seq);
        assert_eq!(dup[0].0.window, 1);
        // Reading opens the window and sends an update, also when the
        // application reads in small pieces.
        let mut buf = [0u8; 1000];
        assert_eq!(b.recv(&mut buf[..100]), 100);
        assert!(drain(&mut b, now).is_empty(), "window still 1");
        assert_eq!(b.recv(&mut buf[..100]), 100);
        let upd = drain(&mut b, now);
        assert_eq!(upd.len(), 1);
        assert_eq!(upd[0].0.window, 2);
        assert_eq!(b.recv(&mut buf), 200);
        let upd = drain(&mut b, now);
        assert_eq!(upd.len(), 1);
        assert_eq!(upd[0].0.window, 4);
    }

    #[test]
    fn fast_retransmit_on_three_duplicate_acks() {
        // A peer that does not SACK (plain duplicate ACKs), and one that does
        // (§12.19: duplicates carrying SACK count too).
        for with_sack in [false, true] {
            let now = Instant::now();
            let cfg = Config {
                mss: 100,
                ..Config::default()
            };
            let (mut a, _b) = pair(cfg, now);
            a.send(&[9u8; 1000]);
            let out = drain(&mut a, now);
            assert_eq!(out.len(), 10);
            let first = out[0].0.seq;
            let t = now + Duration::from_millis(1);
            let mut payload = Vec::new();
            if with_sack {
                let r = sack::Repr::new(&[sack::Block {
                    left: first.wrapping_add(100),
                    right: first.wrapping_add(400),
                }]);
                payload = vec![0u8; r.buffer_len()];
                r.emit(&mut sack::Packet::new_unchecked(&mut payload[..]));
            }
            let mut retx = Vec::new();
            for i in 0..3 {
                a.handle_segment(&mk(Flags::ACK, 5001, first, 50, &payload), t);
                retx.extend(drain(&mut a, t));
                // Without SACK, the 3rd duplicate triggers; with SACK, RACK
                // may already act on the first (segment 0 was sent before
                // the SACKed ones and is older than their RTT).
                if i < 2 && !with_sack {
                    assert!(
                        retx.is_empty(),
                        "no retransmission before the 3rd duplicate"
                    );
                }
            }
            assert_eq!(
                retx.len(),
                1,
                "sack={with_sack} {:?}",
                retx.iter().map(|o| (o.0, first)).collect::<Vec<_>>()
            );
            assert_eq!(retx[0].0.seq, first);
            assert_eq!(retx[0].1, out[0].1);
            assert!(a.cwnd() < 10 * 100, "window reduced");
        }
    }

    #[test]
    fn delayed_ack_every_second_segment() {
        let now = Instant::now();
        let (_a, mut b) = pair(Config::default(), now);
        b.handle_segment(&mk(Flags::ACK, 1001, 5001, 10, b"one"), now);
        assert!(drain(&mut b, now).is_empty(), "first segment: delayed");
        assert_eq!(b.poll_timeout(), Some(now + DELAYED_ACK));
        b.handle_segment(&mk(Flags::ACK, 1004, 5001, 10, b"two"), now);
        let out = drain(&mut b, now);
        assert_eq!(out.len(), 1, "second segment: ACK now");
        assert_eq!(out[0].0.ack, 1007);
    }

    #[test]
    fn stalled_reader_is_not_reset() {
        let t0 = Instant::now();
        let cfg = Config {
            mss: 1000,
            recv_window_segments: 8,
            recv_buffer_bytes: 8000,
            keepalive_idle: None,
            idle_timeout: None,
            ..Config::default()
        };
        let (mut a, mut b) = pair(cfg, t0);
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
        assert_eq!(a.send(&data), data.len());
        // b's application does not read for ten minutes.
        let t = pump(&mut a, &mut b, t0, t0 + Duration::from_secs(600));
        assert_eq!(a.state(), State::Established);
        assert_eq!(b.state(), State::Established);
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let mut now = t;
        while got.len() < data.len() {
            loop {
                let n = b.recv(&mut buf);
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            now = pump(&mut a, &mut b, now, now + Duration::from_secs(11));
            assert!(now < t + Duration::from_secs(3600));
        }
        assert_eq!(got, data);
    }

    #[test]
    fn writable_after_full_send_buffer() {
        let now = Instant::now();
        let cfg = Config {
            send_buffer_bytes: 10_000,
            ..Config::default()
        };
        let (mut a, mut b) = pair(cfg, now);
        assert_eq!(a.send(&[3u8; 20_000]), 10_000);
        assert_eq!(a.send(&[3u8; 10]), 0);
        pump(&mut a, &mut b, now, now + Duration::from_secs(1));
        assert!(events(&mut a).contains(&Event::Writable));
        assert_eq!(a.send_capacity(), 10_000);
    }

    #[test]
    fn memory_pressure_caps_send_and_receive_buffers() {
        let now = Instant::now();
        let cfg = Config {
            send_buffer_bytes: 100_000,
            recv_buffer_bytes: 100_000,
            ..Config::default()
        };
        let (mut a, mut b) = pair(cfg, now);
        a.limit_send_buffer(Some(5_000));
        assert_eq!(a.send(&[1u8; 20_000]), 5_000);
        a.limit_send_buffer(None);
        assert_eq!(a.send_capacity(), 95_000);
        let before = b.rcv.window();
        b.limit_recv_buffer(Some(4 * crate::stream::DEFAULT_MSS));
        let after = b.rcv.window();
        assert!(after < before && after <= 4, "{before} -> {after}");
        b.limit_recv_buffer(None);
        assert_eq!(b.rcv.window(), before);
    }

    #[test]
    fn close_waits_for_ack_before_fin() {
        let now = Instant::now();
        let (mut a, mut b) = pair(Config::default(), now);
        a.send(b"important");
        let data = drain(&mut a, now);
        a.close(now);
        assert!(
            drain(&mut a, now).is_empty(),
            "no FIN while data is unacked"
        );
        b.handle_segment(&seg(&data[0]), now);
        let t = now + Duration::from_millis(40);
        b.handle_timeout(t);
        let ack = drain(&mut b, t);
        assert_eq!(ack.len(), 1, "delayed ACK after 40 ms");
        a.handle_segment(&seg(&ack[0]), t);
        let fin = drain(&mut a, t);
        assert_eq!(fin.len(), 1);
        assert_eq!(fin[0].0.flags, Flags::FIN);
        assert_eq!(fin[0].0.seq, 1001 + 9);
    }

    #[test]
    fn close_linger_is_bounded() {
        let t0 = Instant::now();
        let (mut a, _b) = pair(Config::default(), t0);
        a.send(b"never acked");
        drain(&mut a, t0);
        a.close(t0);
        let mut fin_at = None;
        while let Some(t) = a.poll_timeout() {
            a.handle_timeout(t);
            if drain(&mut a, t).iter().any(|o| o.0.flags == Flags::FIN) {
                fin_at = Some(t - t0);
                break;
            }
            if a.state() == State::Closed {
                break;
            }
        }
        // Either the FIN went out within close_timeout, or the 8-transmission
        // abort came first; both are bounded.
        assert!(
            fin_at.is_none_or(|d| d <= Duration::from_secs(61)),
            "{fin_at:?}"
        );
    }

    #[test]
    fn reference_peer_interop() {
        // We are the responder; the reference initiator uses ISN 0, window
        // 512 and 4096-byte segments, and sends data before its final ACK.
        let now = Instant::now();
        let syn = mk(Flags::SYN, 0, 0, 512, b"");
        let mut b = Connection::accept(Config::default(), &syn, 0x8000_0000, now);
        let sa = drain(&mut b, now);
        assert_eq!((sa[0].0.seq, sa[0].0.ack), (0x8000_0000, 1));
        let big: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        b.handle_segment(&mk(Flags::ACK, 1, 0x8000_0001, 512, &big), now);
        b.handle_segment(&mk(Flags::ACK, 4097, 0x8000_0001, 512, &big), now);
        let acks = drain(&mut b, now);
        assert_eq!(acks.len(), 1);
        assert_eq!(acks[0].0.ack, 8193);
        let mut buf = vec![0u8; 10000];
        assert_eq!(b.recv(&mut buf), 8192);

        // We are the initiator; the reference answers with ISN 0 and a
        // window of 3 segments: at most 3 segments may be outstanding.
        let mut a = Connection::connect(Config::default(), 77, now);
        drain(&mut a, now);
        a.handle_segment(&mk(Flags::SYN | Flags::ACK, 0, 78, 3, b""), now);
        assert_eq!(a.state(), State::Established);
        a.send(&vec![1u8; 20_000]);
        let out = drain(&mut a, now);
        let data: Vec<_> = out.iter().filter(|o| o.0.payload_len > 0).collect();
        assert_eq!(data.len(), 3);
        assert!(data.iter().all(|o| o.0.ack == 1 && o.0.payload_len <= 1373));
        // Reference ACK of the first segment (its window counts free slots).
        let ack = data[0].0.seq.wrapping_add(data[0].0.payload_len as u32);
        a.handle_segment(&mk(Flags::ACK, 1, ack, 3, b""), now);
        assert_eq!(drain(&mut a, now).len(), 1);
    }

    #[test]
    fn sack_vector_receiver_generation() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/sack.json");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let g = &v["receiver_generation"];
        let wire = hex::decode(g["ack_packet_wire_hex"].as_str().unwrap()).unwrap();
        // §2.1 offsets.
        let flags = Flags::from_bits_truncate(wire[0]);
        let seq = u32::from_be_bytes(wire[20..24].try_into().unwrap());
        let ack = u32::from_be_bytes(wire[24..28].try_into().unwrap());
        let window = u16::from_be_bytes(wire[28..30].try_into().unwrap());
        let plen = u16::from_be_bytes(wire[2..4].try_into().unwrap()) as usize;
        let payload = &wire[34..34 + plen];
        let expected_seq = g["expected_seq"].as_u64().unwrap() as u32;
        assert_eq!(ack, expected_seq);

        // A receiver whose rcv_nxt is expected_seq and whose snd_nxt is the
        // vector's seq: peer ISN expected_seq − 1, our ISN seq − 1.
        let now = Instant::now();
        let cfg = Config {
            recv_window_segments: 512,
            recv_buffer_bytes: 4 << 20,
            ..Config::default()
        };
        let syn = mk(Flags::SYN, expected_seq.wrapping_sub(1), 0, 512, b"");
        let mut c = Connection::accept(cfg, &syn, seq.wrapping_sub(1), now);
        drain(&mut c, now);
        let body = vec![0x5a; 4096];
        for s in g["out_of_order_segments"].as_array().unwrap() {
            let sq = s["seq"].as_u64().unwrap() as u32;
            let len = s["len"].as_u64().unwrap() as usize;
            c.handle_segment(&mk(Flags::ACK, sq, seq, 512, &body[..len]), now);
        }
        let out = drain(&mut c, now);
        let last = out.last().unwrap();
        assert_eq!(last.0.flags, flags);
        assert_eq!(last.0.seq, seq);
        assert_eq!(last.0.ack, ack);
        assert_eq!(last.0.window, window);
        assert_eq!(&last.1[..], payload);
        let blocks: Vec<(u32, u32)> = g["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["left"].as_u64().unwrap() as u32,
                    b["right"].as_u64().unwrap() as u32,
                )
            })
            .collect();
        let got: Vec<(u32, u32)> = sack::parse_payload(&last.1)
            .unwrap()
            .blocks()
            .iter()
            .map(|b| (b.left, b.right))
            .collect();
        assert_eq!(got, blocks);
    }

    #[test]
    fn isn_wraparound() {
        let now = Instant::now();
        let mut a = Connection::connect(Config::default(), u32::MAX - 5, now);
        let syn = drain(&mut a, now);
        let mut b = Connection::accept(
            Config::default(),
            &syn[0].0.into_seg(&syn[0].1),
            u32::MAX,
            now,
        );
        let sa = drain(&mut b, now);
        a.handle_segment(&seg(&sa[0]), now);
        let data: Vec<u8> = (0..50_000u32).map(|i| (i ^ (i >> 8)) as u8).collect();
        a.send(&data);
        b.send(&data);
        pump(&mut a, &mut b, now, now + Duration::from_secs(2));
        let mut buf = vec![0u8; 60_000];
        assert_eq!(b.recv(&mut buf), data.len());
        assert_eq!(&buf[..data.len()], &data[..]);
        assert_eq!(a.recv(&mut buf), data.len());
        assert_eq!(&buf[..data.len()], &data[..]);
    }

    impl Transmit {
        fn into_seg<'a>(self, payload: &'a [u8]) -> Segment<'a> {
            Segment {
                flags: self.flags,
                seq: self.seq,
                ack: self.ack,
                window: self.window,
                payload,
            }
        }
    }

    mod hostile {
        use super::*;
        use proptest::prelude::*;

        fn arb_seg() -> impl Strategy<Value = (u8, u32, u32, u16, Vec<u8>, u16)> {
            (
                0u8..16,
                prop_oneof![any::<u32>(), 990u32..1100, 4990u32..5200],
                prop_oneof![any::<u32>(), 990u32..1100, 4990u32..5200],
                any::<u16>(),
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..64),
                    (1u8..=4, proptest::collection::vec(any::<u32>(), 8)).prop_map(|(n, w)| {
                        let mut v = b"SACK".to_vec();
                        v.push(n);
                        for x in w.iter().take(2 * n as usize) {
                            v.extend_from_slice(&(x % 3000 + 4990).to_be_bytes());
                        }
                        v
                    }),
                ],
                0u16..2000,
            )
        }

        proptest! {
            // No regression file: it would live outside this module's files.
            #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]
            #[test]
            fn arbitrary_segments_never_panic(segs in proptest::collection::vec(arb_seg(), 1..60), writes in proptest::collection::vec(0usize..5000, 0..5)) {
                let t0 = Instant::now();
                let (mut a, _b) = pair(Config { mss: 300, ..Config::default() }, t0);
                for w in writes { a.send(&vec![1u8; w]); }
                let mut now = t0;
                for (f, seq, ack, win, payload, dt) in segs {
                    now += Duration::from_millis(dt as u64);
                    a.handle_timeout(now);
                    let s = mk(Flags::from_bits_truncate(f), seq, ack, win, &payload);
                    a.handle_segment(&s, now);
                    let out = drain(&mut a, now);
                    for o in &out {
                        prop_assert!(o.0.payload_len <= 300 || sack::parse_payload(&o.1).is_some());
                        if o.0.payload_len > 0 && sack::parse_payload(&o.1).is_none() {
                            prop_assert!(o.1.len() <= 4 || &o.1[..4] != b"SACK");
                        }
                        if o.0.flags == Flags::FIN | Flags::ACK {
                            prop_assert!(s.flags == Flags::FIN);
                        }
                    }
                    a.check_invariants();
                    let mut buf = [0u8; 4096];
                    a.recv(&mut buf);
                    if let Some(t) = a.poll_timeout() {
                        prop_assert!(t >= now || t + Duration::from_secs(3600) > now);
                    }
                }
            }
        }
    }
}
