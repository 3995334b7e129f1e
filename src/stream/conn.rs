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
//! AIMD as in §7.7: slow start, congestion avoidance `+MSS·acked/cwnd`, one
//! multiplicative decrease (`ssthresh = cwnd/2`, `cwnd = ssthresh`) per loss
//! episode (an episode ends when the cumulative ACK passes the highest
//! sequence sent when it began), 10·MSS after an RTO. Caps are configurable
//! (the reference's 1 MiB is too small for fast paths).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::rangeset::RangeSet;
use super::recv::{Accepted, RecvBuffer};
use super::ring::ByteRing;
use super::rtt::RttEstimator;
use super::seq::{to_wire, unwrap_near};
use super::{
    Config, Event, Segment, State, Transmit, ACK_EVERY_SEGMENTS, DELAYED_ACK, DUP_ACK_THRESHOLD,
    INITIAL_CWND_SEGMENTS, MAX_FINACK_QUEUE, NAGLE_DELAY, SYN_INITIAL_RTO, SYN_MAX_EXPIRIES,
    SYN_MAX_RTO,
};
use crate::wire::header::Flags;
use crate::wire::sack;

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

/// One reliable stream (see the module docs of [`crate::stream`]).
#[derive(Debug)]
pub struct Connection {
    cfg: Config,
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
    segs: VecDeque<SentSeg>,
    seg_id_front: u64,
    log: VecDeque<LogEntry>,
    retx: VecDeque<u64>,
    sacked: RangeSet,
    scratch: Vec<(u64, u64)>,
    pipe: usize,
    cwnd: usize,
    ssthresh: usize,
    recovery_point: Option<u64>,
    dupacks: u32,
    rtt: RttEstimator,
    rack: Option<Rack>,
    next_xmit_id: u64,
    rto_deadline: Option<Instant>,
    reorder_deadline: Option<Instant>,
    peer_window: u16,
    nagle_deadline: Option<Instant>,
    nagle_expired: bool,
    heard_since_rto: bool,

    // --- receive side ---
    rcv: RecvBuffer,
    unacked_segs: u32,
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
    ka_last_probe: Instant,
    probe_pending: bool,

    // --- events ---
    events: VecDeque<Event>,
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
        let cwnd = (INITIAL_CWND_SEGMENTS * cfg.mss).min(cfg.max_cwnd);
        let ssthresh = cfg.initial_ssthresh.max(2 * cfg.mss);
        Connection {
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
            segs: VecDeque::new(),
            seg_id_front: 0,
            log: VecDeque::new(),
            retx: VecDeque::new(),
            sacked: RangeSet::default(),
            scratch: Vec::new(),
            pipe: 0,
            cwnd,
            ssthresh,
            recovery_point: None,
            dupacks: 0,
            rtt: RttEstimator::default(),
            rack: None,
            next_xmit_id: 0,
            rto_deadline: None,
            reorder_deadline: None,
            peer_window: 1,
            nagle_deadline: None,
            nagle_expired: false,
            heard_since_rto: true,
            rcv,
            unacked_segs: 0,
            ack_now: false,
            delack_deadline: None,
            syn_pending: false,
            syn_deadline: None,
            syn_interval: SYN_INITIAL_RTO,
            syn_expiries: 0,
            synack_pending: false,
            close_requested: false,
            linger_deadline: None,
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
            ka_last_probe: now,
            probe_pending: false,
            events: VecDeque::new(),
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
        self.cfg.send_buffer_bytes.saturating_sub(self.sbuf.len())
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

    /// Current congestion window in bytes (diagnostics).
    pub fn cwnd(&self) -> usize {
        self.cwnd
    }

    /// Current retransmission timeout (diagnostics).
    pub fn rto(&self) -> Duration {
        self.rtt.rto()
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

    /// Read in-order bytes; returns how many (0 when none are ready; see
    /// [`is_read_closed`](Self::is_read_closed) for end of stream).
    pub fn recv(&mut self, buf: &mut [u8]) -> usize {
        let before = self.rcv.window();
        let n = self.rcv.read(buf);
        self.readable_signalled = false;
        if n > 0 && matches!(self.state, State::Established | State::FinWait) && !self.peer_closed {
            // Window update when the window opens substantially from small.
            let after = self.rcv.window();
            let full = self.cfg.recv_window_segments.max(1);
            if before <= full / 4 && after >= before.saturating_mul(2).max(before + 2) {
                self.ack_now = true;
            }
        }
        n
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
                _ => Event::Reset,
            };
            self.finish(ev);
            return;
        }
        self.last_recv = now;
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
        let snd_max = self.snd_nxt + self.fin_off.is_some() as u64;
        let Some(ack) = unwrap_near(self.snd_base, self.snd_una, seg.ack) else {
            return;
        };
        if ack > snd_max {
            return;
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
            if self.dupacks == DUP_ACK_THRESHOLD {
                let id = self.seg_id_front;
                if self.segs[0].state == SegState::InFlight {
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
                self.pipe -= s.len as usize;
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
        } else if self.cwnd < self.ssthresh {
            self.cwnd += acked;
        } else {
            self.cwnd += (self.cfg.mss * acked / self.cwnd.max(1)).max(1);
        }
        self.cwnd = self.cwnd.min(self.cfg.max_cwnd);
        self.dupacks = 0;
        self.rto_deadline = if self.segs.is_empty() {
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
                            self.pipe -= len as usize;
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
        self.pipe -= self.segs[i].len as usize;
        self.retx.push_back(id);
        if self.recovery_point.is_none() {
            self.ssthresh = (self.cwnd / 2).max(2 * self.cfg.mss);
            self.cwnd = self.ssthresh;
            self.recovery_point = Some(self.snd_nxt);
        }
    }

    fn handle_data(&mut self, seg: &Segment, now: Instant) {
        let Some(off) = unwrap_near(self.rcv_base, self.rcv.rcv_nxt(), seg.seq) else {
            self.ack_now = true;
            return;
        };
        match self.rcv.accept(off, seg.payload) {
            Accepted::InOrder { filled_gap } => {
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
        if self.state == State::Established || self.state == State::FinWait {
            add(self.keepalive_deadline());
            if !self.close_requested {
                add(self.cfg.idle_timeout.map(|d| self.last_recv + d));
            }
        }
        t
    }

    fn keepalive_deadline(&self) -> Option<Instant> {
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
                self.rst_pending = true;
                self.finish(Event::TimedOut);
                return;
            }
            self.rtt.back_off();
            self.fin_pending = true;
            self.fin_deadline = Some(now + self.rtt.rto());
        }
        if due(self.linger_deadline) {
            // Bounded wait over: send FIN even though data is outstanding.
            self.linger_deadline = None;
            self.fin_pending = self.fin_off.is_none();
        }
        if matches!(self.state, State::Established | State::FinWait) {
            if due(self.keepalive_deadline()) {
                if self.ka_probes >= self.cfg.keepalive_probes {
                    self.rst_pending = true;
                    self.finish(Event::TimedOut);
                    return;
                }
                self.ka_probes += 1;
                self.ka_last_probe = now;
                self.probe_pending = true;
            }
            if due(self.cfg.idle_timeout.map(|d| self.last_recv + d)) && !self.close_requested {
                self.close(now);
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
        if front.tx_count >= self.cfg.max_transmissions && !self.heard_since_rto {
            // §7.7: the segment was sent the maximum number of times and the
            // timer expired again with the peer silent: reset.
            self.rst_pending = true;
            self.finish(Event::TimedOut);
            return;
        }
        self.heard_since_rto = false;
        if self.recovery_point.is_none() {
            self.ssthresh = (self.cwnd / 2).max(2 * self.cfg.mss);
        }
        self.cwnd = (INITIAL_CWND_SEGMENTS * self.cfg.mss).min(self.cfg.max_cwnd);
        self.recovery_point = Some(self.snd_nxt);
        self.retx.clear();
        for (i, s) in self.segs.iter_mut().enumerate() {
            match s.state {
                SegState::InFlight => {
                    s.state = SegState::Lost;
                    self.retx.push_back(self.seg_id_front + i as u64);
                }
                SegState::Lost => self.retx.push_back(self.seg_id_front + i as u64),
                SegState::Sacked => {}
            }
        }
        self.pipe = 0;
        self.log.clear();
        self.rtt.back_off();
        self.rto_deadline = Some(now + self.rtt.rto());
    }

    // ------------------------------------------------------------------
    // Output
    // ------------------------------------------------------------------

    fn window(&self) -> u16 {
        self.rcv.window()
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
                    return Some(self.control(Flags::SYN, self.iss, 0, self.window()));
                }
                return None;
            }
            _ => {}
        }
        if self.synack_pending {
            self.synack_pending = false;
            let t = self.control(
                Flags::SYN | Flags::ACK,
                self.iss,
                self.irs.wrapping_add(1),
                self.window(),
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
                if let Some(t) = self.transmit_new(now, payload_buf) {
                    return Some(t);
                }
            }
            if self.close_requested
                && (forced_fin || (self.snd_una == self.sbuf_off + self.sbuf.len() as u64))
            {
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
        Transmit {
            flags: Flags::ACK,
            seq: self.snd_nxt_wire(),
            ack: self.rcv_nxt_wire(),
            window: self.window(),
            payload_len: len,
        }
    }

    fn data_segment(&mut self, start: u64, len: usize) -> Transmit {
        self.acked_now();
        self.last_send_data = self.last_send_data.max(self.last_recv);
        Transmit {
            flags: Flags::ACK,
            seq: to_wire(self.snd_base, start),
            ack: self.rcv_nxt_wire(),
            window: self.window(),
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
        x
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
            if self.pipe > 0 && self.pipe + len > self.cwnd {
                return None;
            }
            if len > buf.len() {
                return None;
            }
            self.retx.pop_front();
            let start = self.segs[i].start;
            self.sbuf
                .copy_out((start - self.sbuf_off) as usize, &mut buf[..len]);
            let x = self.log_transmission(id, now);
            let s = &mut self.segs[i];
            s.state = SegState::InFlight;
            s.tx_count = s.tx_count.saturating_add(1);
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
        if self.pipe >= self.cwnd || self.segs.len() >= self.peer_window as usize {
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
        {
            if !self.nagle_expired {
                if self.nagle_deadline.is_none() {
                    self.nagle_deadline = Some(now + NAGLE_DELAY);
                }
                return None;
            }
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
        Some(self.data_segment(start, len))
    }
}
