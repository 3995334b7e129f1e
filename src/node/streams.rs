//! Streams and datagrams in the daemon: the glue between the sans-IO stream
//! engine ([`crate::stream::Connection`]), the tunnel (header encode, seal,
//! send), and the applications on the IPC socket.
//!
//! Every connection lives in the event loop's [`StreamTable`](super::stream_table::StreamTable) (in
//! [`super::stream_table`], with the application links); its timers sit in
//! one min-heap, so 10,000 idle streams cost nothing per tick.

use std::cmp::Reverse;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use tokio::sync::{mpsc, oneshot};

use super::engine::Engine;
pub use super::stream_table::Admission;
use super::stream_table::{
    state_name, App, AppLink, Bucket, Listener, Pressure, StreamConn, APP_CHUNK, ATTACH_TIMEOUT,
    DGRAM_QUEUE, ECHO_PORT, MAX_TRACKED_SOURCES, RST_REPEAT_EVERY,
};
use crate::ipc::proto::{ConnectionsData, DatagramData, ListenEvent, StreamData};

/// How many times the per-source SYN rate a trusted peer gets (10/s by
/// default becomes 200/s; the global rate still bounds everyone).
const TRUSTED_SYN_FACTOR: f64 = 20.0;

/// RSTs per second for segments of connections we do not have. A lost RST
/// needs one answer; a peer with many dead streams is answered within
/// seconds at this rate, and a flood of stray segments costs at most this.
const STRAY_RST_RATE: f64 = 50.0;
use crate::ipc::{ErrorCode, Response};
use crate::stream::{self, Connection, Event, Segment, State};
use crate::wire::address::{Addr, SockAddr};
use crate::wire::header::{Flags, Packet, Protocol, Repr, HEADER_LEN};

impl Engine {
    // ------------------------------------------------------------ wire side

    /// A stream segment from `sender` (already authenticated and bound).
    pub(super) fn on_stream_segment(
        &mut self,
        sender: u32,
        repr: &Repr,
        payload: &[u8],
        now: Instant,
    ) {
        let seg = Segment {
            flags: repr.flags,
            seq: repr.seq,
            ack: repr.ack,
            window: repr.window,
            payload,
        };
        let key = (repr.dst_port, repr.src, repr.src_port);
        if let Some(&id) = self.streams.by_tuple.get(&key) {
            // At loopback speed 100 ms is tens of MiB: a burst of received
            // bytes brings the next memory check forward.
            self.streams.unchecked_bytes += payload.len();
            if self.streams.unchecked_bytes >= self.streams.admission.memory_budget / 16 {
                self.streams.check_memory(now);
            }
            if let Some(s) = self.streams.conns.get_mut(&id) {
                s.conn.handle_segment(&seg, now);
                // Output waits for the end of the receive batch, so a run of
                // segments is answered by one ACK (the engine coalesces).
                if !s.dirty {
                    s.dirty = true;
                    self.streams.dirty.push(id);
                }
            }
            return;
        }
        if repr.flags.contains(Flags::SYN) && !repr.flags.contains(Flags::ACK) {
            self.on_syn(sender, repr, &seg, now);
            return;
        }
        self.on_stray(sender, repr, now);
    }

    /// A segment for a connection we do not have. One that still carries
    /// data, a FIN or a SYN|ACK comes from a peer that believes the
    /// connection is open: our RST was lost (RSTs are never retransmitted)
    /// or we restarted. Answer it with an RST (§7.10 shape, [`stream::rst_for`])
    /// so the far application fails now instead of waiting for its
    /// keepalive. Pure ACKs and RSTs are ignored (stale after TIME_WAIT;
    /// never answer an RST), untrusted peers get nothing (§12.20), and the
    /// answers are rate-limited: one RST per stray segment never amplifies.
    fn on_stray(&mut self, sender: u32, repr: &Repr, now: Instant) {
        let f = repr.flags;
        let believes_open =
            repr.payload_len > 0 || f.contains(Flags::FIN) || f.contains(Flags::SYN | Flags::ACK);
        if f.contains(Flags::RST) || !believes_open || !self.admits(sender) {
            return;
        }
        if !self.streams.stray_bucket.take(STRAY_RST_RATE, now) {
            return;
        }
        self.stats.stray_resets += 1;
        self.refuse(repr, now);
    }

    fn refuse(&mut self, repr: &Repr, now: Instant) {
        let rst = Repr {
            flags: Flags::RST,
            protocol: Protocol::Stream,
            src: repr.dst,
            dst: repr.src,
            src_port: repr.dst_port,
            dst_port: repr.src_port,
            seq: 0,
            ack: 0,
            window: 0,
            payload_len: 0,
        };
        self.send_packet(repr.src.node, &rst, &[], now);
    }

    /// Spec §7.2 responder steps.
    fn on_syn(&mut self, sender: u32, repr: &Repr, seg: &Segment, now: Instant) {
        let port = repr.dst_port;
        // Trust gate first (spec §7.2 step 3, §12.16), answered exactly like
        // a closed port: an untrusted peer learns nothing about our ports,
        // and its dial fails at once instead of timing out (the dialler
        // tells `not_trusted` from `refused` with what it knows, see
        // `node::trust::explain_refusal`).
        if !self.admits(sender) {
            self.refuse(repr, now);
            return;
        }
        let echo = port == ECHO_PORT && self.streams.echo;
        if !echo && !self.streams.listeners.contains_key(&port) {
            self.refuse(repr, now);
            return;
        }
        let adm = self.streams.admission.clone();
        if !self.streams.global_bucket.take(adm.syn_rate, now) {
            return;
        }
        if !self.streams.source_buckets.contains_key(&sender)
            && self.streams.source_buckets.len() >= MAX_TRACKED_SOURCES
        {
            self.streams
                .source_buckets
                .retain(|_, b| now.duration_since(b.at) < Duration::from_secs(10));
            if self.streams.source_buckets.len() >= MAX_TRACKED_SOURCES {
                return;
            }
        }
        // A peer this node trusts gets a larger share: the spec's 10/s per
        // source is a flood guard, and one agent messaging another in a
        // loop opens a stream per message (a dropped SYN costs it 1 s).
        let per_source = if self.trusted.contains(&sender) {
            adm.syn_rate_per_source * TRUSTED_SYN_FACTOR
        } else {
            adm.syn_rate_per_source
        };
        let bucket = self.streams.source_buckets.entry(sender).or_insert(Bucket {
            tokens: per_source,
            at: now,
        });
        if !bucket.take(per_source, now) {
            return;
        }
        let per_port = self.streams.listeners.get(&port).map_or(0, |l| l.live);
        if self.streams.conns.len() >= adm.max_total || per_port >= adm.max_per_port {
            self.refuse(repr, now);
            return;
        }
        if self.streams.check_memory(now) == Pressure::Full {
            self.streams.refused_memory += 1;
            self.refuse(repr, now);
            return;
        }
        let id = self.streams.next_id;
        self.streams.next_id += 1;
        let app = if echo {
            App::Echo
        } else {
            let Some(l) = self.streams.listeners.get_mut(&port) else {
                return;
            };
            let ev = ListenEvent::Accept {
                conn_id: id,
                remote: SockAddr::new(repr.src, repr.src_port).to_string(),
            };
            if l.events.try_send(ev).is_err() {
                // The accept queue is full or the listener is gone.
                self.refuse(repr, now);
                return;
            }
            l.live += 1;
            App::Pending(now + ATTACH_TIMEOUT)
        };
        let mut conn = Connection::accept(self.streams.config(), seg, OsRng.next_u32(), now);
        conn.set_mss(self.segment_for(sender));
        let mut s = StreamConn::new(
            conn,
            sender,
            SockAddr::new(repr.dst, port),
            SockAddr::new(repr.src, repr.src_port),
            app,
        );
        s.listener_port = (!echo).then_some(port);
        self.insert_stream(id, s);
        self.after_io(id, now);
    }

    fn insert_stream(&mut self, id: u64, s: StreamConn) {
        self.streams
            .by_tuple
            .insert((s.local_port, s.remote, s.remote_port), id);
        *self.streams.ports_in_use.entry(s.local_port).or_default() += 1;
        self.streams.conns.insert(id, s);
    }

    fn remove_stream(&mut self, id: u64) {
        let Some(mut s) = self.streams.conns.remove(&id) else {
            return;
        };
        self.streams.closed_retransmissions += s.conn.stats().retransmissions;
        self.streams
            .by_tuple
            .remove(&(s.local_port, s.remote, s.remote_port));
        if let Some(n) = self.streams.ports_in_use.get_mut(&s.local_port) {
            *n -= 1;
            if *n == 0 {
                self.streams.ports_in_use.remove(&s.local_port);
            }
        }
        if let Some(l) = s
            .listener_port
            .and_then(|p| self.streams.listeners.get_mut(&p))
        {
            l.live = l.live.saturating_sub(1);
        }
        match std::mem::replace(&mut s.app, App::Gone) {
            App::Attached(AppLink::Chan(link)) => link.credits.close(),
            App::Attached(AppLink::Sock(link)) => {
                // Bytes the application has not taken yet still reach it.
                let rest = s.conn.recv_vec(usize::MAX);
                link.retire(rest);
            }
            _ => {}
        }
    }

    /// Runs after anything touched stream `id`: events, delivery to the
    /// application, transmission, timer, removal.
    pub(super) fn after_io(&mut self, id: u64, now: Instant) {
        let mut relay_switch = false;
        let mut resend_pila = false;
        let peer;
        {
            let Some(s) = self.streams.conns.get_mut(&id) else {
                return;
            };
            peer = s.peer;
            while let Some(ev) = s.conn.poll_event() {
                match ev {
                    Event::Connected => {
                        if let Some((reply, _)) = s.dial.take() {
                            let data = StreamData {
                                conn_id: id,
                                local: SockAddr::new(s.local, s.local_port).to_string(),
                                remote: SockAddr::new(s.remote, s.remote_port).to_string(),
                                state: state_name(s.conn.state()).into(),
                                path: String::new(),
                                endpoint: None,
                                rtt_ms: None,
                                path_since_ms: None,
                                bytes_in: 0,
                                bytes_out: 0,
                            };
                            let _ = reply.send(Response::ok(&data));
                        }
                    }
                    Event::SynRetransmit { expiry } => {
                        // Spec §4.8 item 4 and §5.5.
                        resend_pila = expiry >= 2;
                        relay_switch = expiry == stream::SYN_RELAY_EXPIRY;
                    }
                    Event::PeerClosed { truncated: true } => {
                        tracing::warn!("stream {id}: peer closed with data missing (truncated)");
                    }
                    Event::Refused | Event::TimedOut | Event::Reset | Event::Closed => {
                        if let (Event::Reset | Event::TimedOut, App::Attached(link)) =
                            (&ev, &mut s.app)
                        {
                            link.mark_reset();
                        }
                        if let Some((reply, _)) = s.dial.take() {
                            let to = SockAddr::new(s.remote, s.remote_port);
                            let r = match ev {
                                Event::Refused => Response::error(
                                    ErrorCode::Refused,
                                    format!("connection refused by {to}"),
                                ),
                                Event::TimedOut => Response::error(
                                    ErrorCode::Timeout,
                                    format!("no answer from {to} (dial timeout)"),
                                ),
                                _ => Response::error(
                                    ErrorCode::Refused,
                                    format!("connection to {to} reset"),
                                ),
                            };
                            let _ = reply.send(r);
                        }
                    }
                    Event::Readable | Event::Writable | Event::PeerClosed { .. } => {}
                }
            }
        }
        if resend_pila {
            self.force_pila(peer, now);
        }
        if relay_switch && self.beacon.is_some() {
            if let Some(p) = self.peers.get_mut(&peer) {
                if p.session.is_none() && !p.relay {
                    tracing::info!("node {peer} unreachable directly; trying the relay");
                    p.relay = true;
                }
            }
        }
        self.pump_from_app(id, now);
        self.deliver(id, now);
        if let Some(s) = self.streams.conns.get_mut(&id) {
            Self::close_if_done(s, now);
        }
        self.flush_stream(id, now);
        let Some(s) = self.streams.conns.get_mut(&id) else {
            return;
        };
        if s.conn.state() == State::Closed {
            self.remove_stream(id);
            return;
        }
        // Keep one heap entry per stream: a later deadline keeps the earlier
        // entry (firing early is harmless: the engine re-arms), so the heap
        // does not fill with superseded entries on every segment.
        if let Some(t) = s.conn.poll_timeout() {
            if s.timer.is_none_or(|cur| t < cur) {
                s.timer = Some(t);
                self.streams.timers.push(Reverse((t, id)));
            }
        }
    }

    /// Moves application bytes into the stream engine; closes once the
    /// application is done and everything was handed over.
    fn pump_from_app(&mut self, id: u64, now: Instant) {
        let Some(s) = self.streams.conns.get_mut(&id) else {
            return;
        };
        if let App::Attached(AppLink::Sock(link)) = &mut s.app {
            if !s.app_eof && !s.close_requested {
                let m = link.pull(&mut s.conn);
                s.bytes_out += m.bytes as u64;
                s.app_eof |= m.eof;
                if m.failed {
                    // A Unix socket read fails (ECONNRESET) when the
                    // application closed with bytes of ours unread.
                    Self::app_died(s);
                }
            }
        }
        while let Some(front) = s.pending.front() {
            let n = s.conn.send(&front[s.pending_off..]);
            if n == 0 {
                break;
            }
            s.bytes_out += n as u64;
            if let App::Attached(AppLink::Chan(link)) = &s.app {
                link.credits.add_permits(n);
            }
            s.pending_off += n;
            if s.pending_off == front.len() {
                s.pending.pop_front();
                s.pending_off = 0;
            }
        }
        Self::close_if_done(s, now);
    }

    /// An IPC client's socket failed: it closed with bytes unread (ours or
    /// the peer's). They cannot be delivered, so the peer must not think
    /// they were: reset, as TCP does for a socket closed with unread data.
    fn app_died(s: &mut StreamConn) {
        s.app_eof = true;
        s.app = App::Gone;
        s.conn.abort();
    }

    /// Closes the stream once the application is done sending and every
    /// byte it handed over is in the stream. An IPC client must also have
    /// taken every byte that came for it: one that closed with bytes still
    /// on their way gets a reset instead (`deliver`), which a FIN sent first
    /// would hide from the peer.
    fn close_if_done(s: &mut StreamConn, now: Instant) {
        let undelivered = matches!(s.app, App::Attached(AppLink::Sock(_))) && s.conn.readable() > 0;
        if s.app_eof && s.pending.is_empty() && !s.close_requested && !undelivered {
            s.close_requested = true;
            s.conn.close(now);
        }
    }

    /// Hands in-order bytes to the application (or echoes them).
    fn deliver(&mut self, id: u64, now: Instant) {
        let Engine {
            streams, app_buf, ..
        } = self;
        let Some(s) = streams.conns.get_mut(&id) else {
            return;
        };
        match &mut s.app {
            App::Echo => {
                loop {
                    let room = s.conn.send_capacity().min(app_buf.len());
                    if room == 0 {
                        break;
                    }
                    let n = s.conn.recv(&mut app_buf[..room]);
                    if n == 0 {
                        break;
                    }
                    s.bytes_in += n as u64;
                    s.bytes_out += s.conn.send(&app_buf[..n]) as u64;
                }
                if s.conn.is_read_closed() && s.conn.readable() == 0 && !s.close_requested {
                    s.close_requested = true;
                    s.conn.close(now);
                }
            }
            App::Attached(AppLink::Sock(link)) => {
                if link.write_closed() {
                    return;
                }
                let m = link.push(&mut s.conn);
                s.bytes_in += m.bytes as u64;
                if m.failed {
                    // The application closed with bytes still coming to it.
                    Self::app_died(s);
                    return;
                }
                if s.conn.is_read_closed() {
                    // The application sees the end once our own bytes are
                    // acknowledged too (or the stream leaves the loop,
                    // `retire`): a peer that closed while they were in
                    // flight may yet reset them (its application died with
                    // them unread), and the application must learn that
                    // from `StreamEnded` rather than see a clean end first.
                    if s.conn.send_pending() == 0 {
                        link.close_write(id);
                    }
                    if s.app_eof || s.conn.state() != State::Established {
                        return;
                    }
                    // No half-close in Pilot v1 (spec §7.10), as below.
                    s.app_eof = true;
                }
            }
            App::Attached(AppLink::Chan(link)) => {
                if let Some(tx) = &link.to_app {
                    loop {
                        if tx.capacity() == 0 {
                            link.blocked.store(true, Ordering::Release);
                            break;
                        }
                        let chunk = s.conn.recv_vec(APP_CHUNK);
                        if chunk.is_empty() {
                            break;
                        }
                        s.bytes_in += chunk.len() as u64;
                        if tx.try_send(chunk).is_err() {
                            break;
                        }
                    }
                    if s.conn.is_read_closed() && s.conn.readable() == 0 {
                        link.to_app = None; // end of stream for the application
                        if s.app_eof || s.conn.state() != State::Established {
                            return;
                        }
                        // No half-close in Pilot v1 (spec §7.10): the peer is done,
                        // so are we once our data is out.
                        s.app_eof = true;
                    }
                }
            }
            App::Gone => while s.conn.recv(&mut app_buf[..APP_CHUNK]) > 0 {},
            App::Pending(_) => {}
        }
    }

    /// Transmits whatever the stream engine has to send: sealed straight
    /// into the send batch when the peer's path allows
    /// ([`Engine::seal_into_batch`]), else through the frame buffer.
    fn flush_stream(&mut self, id: u64, now: Instant) {
        loop {
            let Some((peer, mss)) = self.streams.conns.get(&id).map(|s| (s.peer, s.conn.mss()))
            else {
                return;
            };
            let fast = self.seal_into_batch(peer, HEADER_LEN + mss, now, |streams, buf| {
                Self::write_segment(streams, id, buf, now)
            });
            match fast {
                Some(true) => continue,
                Some(false) => return,
                None => {}
            }
            let at = super::engine::PLAIN_AT;
            let Some(len) = Self::write_segment(&mut self.streams, id, &mut self.sbuf[at..], now)
            else {
                return;
            };
            self.send_plain(peer, len, now);
        }
    }

    /// Writes stream `id`'s next segment (header, then payload) at the
    /// front of `buf` and returns its length; `None` when it has nothing
    /// to send. An RST is remembered to be sent again
    /// ([`StreamTable::note_rst`](super::stream_table::StreamTable::note_rst)).
    fn write_segment(
        streams: &mut super::stream_table::StreamTable,
        id: u64,
        buf: &mut [u8],
        now: Instant,
    ) -> Option<usize> {
        let s = streams.conns.get_mut(&id)?;
        let t = s.conn.poll_transmit(now, &mut buf[HEADER_LEN..])?;
        let len = HEADER_LEN + t.payload_len;
        let repr = Self::stream_header(s, &t);
        // The header's checksum covers the payload: the view spans both.
        repr.emit(&mut Packet::new_unchecked(&mut buf[..len]));
        let peer = s.peer;
        streams.note_rst(peer, &repr, now);
        Some(len)
    }

    /// The header of a segment `s` sends.
    fn stream_header(s: &StreamConn, t: &stream::Transmit) -> Repr {
        Repr {
            flags: t.flags,
            protocol: Protocol::Stream,
            src: s.local,
            dst: s.remote,
            src_port: s.local_port,
            dst_port: s.remote_port,
            seq: t.seq,
            ack: t.ack,
            window: t.window,
            payload_len: t.payload_len,
        }
    }

    /// Runs the deferred output of streams that received segments.
    pub(super) fn flush_dirty(&mut self, now: Instant) {
        while let Some(id) = self.streams.dirty.pop() {
            if let Some(s) = self.streams.conns.get_mut(&id) {
                s.dirty = false;
                self.after_io(id, now);
            }
        }
    }

    /// Fires due stream timers.
    pub(super) fn stream_timers(&mut self, now: Instant) {
        while let Some(Reverse((t, id))) = self.streams.timers.peek().copied() {
            if t > now {
                break;
            }
            self.streams.timers.pop();
            let Some(s) = self.streams.conns.get_mut(&id) else {
                continue;
            };
            if s.timer != Some(t) {
                continue; // superseded
            }
            s.timer = None;
            s.conn.handle_timeout(now);
            self.after_io(id, now);
        }
    }

    /// The path to `node` changed: its streams retransmit what is in flight
    /// now (see [`crate::stream::Connection::path_changed`]).
    pub(super) fn streams_path_changed(&mut self, node: u32, now: Instant) {
        self.for_streams_to(node, now, |c| {
            c.path_changed(now);
            c.handle_timeout(now);
        });
    }

    /// `node`'s path carries `size`-byte segments (or only the default
    /// again): its streams cut new data to that size (pmtu.rs).
    pub(super) fn streams_set_segment(&mut self, node: u32, size: usize, now: Instant) {
        self.for_streams_to(node, now, |c| c.set_mss(size));
    }

    /// Applies `f` to every stream with `node`, then lets each send.
    fn for_streams_to(&mut self, node: u32, now: Instant, f: impl Fn(&mut Connection)) {
        let ids: Vec<u64> = self
            .streams
            .conns
            .iter()
            .filter(|(_, s)| s.peer == node)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(s) = self.streams.conns.get_mut(&id) {
                f(&mut s.conn);
            }
            self.after_io(id, now);
        }
    }

    /// Segment size for a new stream to `node`.
    fn segment_for(&self, node: u32) -> usize {
        self.peers
            .get(&node)
            .map_or(crate::stream::DEFAULT_MSS, |p| p.pmtu.segment())
    }

    /// Dial deadlines and attach deadlines (from the housekeeping tick).
    pub(super) fn stream_housekeeping(&mut self, now: Instant) {
        self.streams.check_memory(now);
        while let Some(r) = self.streams.rst_repeats.front() {
            if r.due > now {
                break;
            }
            let Some(mut r) = self.streams.rst_repeats.pop_front() else {
                break;
            };
            self.send_packet(r.peer, &r.repr, &[], now);
            r.left -= 1;
            if r.left > 0 {
                r.due = now + RST_REPEAT_EVERY;
                self.streams.rst_repeats.push_back(r);
            }
        }
        let mut expired = Vec::new();
        for (&id, s) in &mut self.streams.conns {
            if let Some((_, deadline)) = &s.dial {
                if now >= *deadline {
                    if let Some((reply, _)) = s.dial.take() {
                        let to = SockAddr::new(s.remote, s.remote_port);
                        let _ = reply.send(Response::error(
                            ErrorCode::Timeout,
                            format!("no answer from {to} (dial timeout)"),
                        ));
                    }
                    s.conn.abort();
                    expired.push(id);
                }
            }
            if let App::Pending(deadline) = s.app {
                if now >= deadline {
                    s.conn.abort();
                    expired.push(id);
                }
            }
        }
        for id in expired {
            self.after_io(id, now);
        }
    }

    // ------------------------------------------------------ application side

    /// `dial`.
    pub(super) fn dial(
        &mut self,
        addr: Addr,
        port: u16,
        timeout: Duration,
        link: AppLink,
        reply: oneshot::Sender<Response>,
        now: Instant,
    ) {
        if addr.node == self.node_id || addr.node == 0 || addr.is_broadcast() {
            let _ = reply.send(Response::error(
                ErrorCode::InvalidAddress,
                format!("cannot open a stream to {addr}: not a remote node"),
            ));
            return;
        }
        if self.streams.conns.len() >= self.streams.admission.max_total {
            let _ = reply.send(Response::error(ErrorCode::Refused, "too many open streams"));
            return;
        }
        if self.streams.check_memory(now) == Pressure::Full {
            self.streams.refused_memory += 1;
            let _ = reply.send(Response::error(
                ErrorCode::Refused,
                format!(
                    "the open streams hold this node's whole stream memory budget ({} MiB, pilot-daemon --stream-memory)",
                    self.streams.admission.memory_budget >> 20
                ),
            ));
            return;
        }
        let mut local_port = 0;
        for _ in 0..=(u16::MAX - super::engine::EPHEMERAL_START) {
            let p = self.alloc_port();
            if !self.streams.port_busy(p) {
                local_port = p;
                break;
            }
        }
        if local_port == 0 {
            let _ = reply.send(Response::error(
                ErrorCode::Refused,
                "no free ephemeral port",
            ));
            return;
        }
        let id = self.streams.next_id;
        self.streams.next_id += 1;
        let mut conn = Connection::connect(self.streams.config(), OsRng.next_u32(), now);
        conn.set_mss(self.segment_for(addr.node));
        let mut s = StreamConn::new(
            conn,
            addr.node,
            SockAddr::new(Addr::new(addr.network, self.node_id), local_port),
            SockAddr::new(addr, port),
            App::Attached(link),
        );
        s.dial = Some((reply, now + timeout));
        self.insert_stream(id, s);
        self.after_io(id, now);
    }

    /// `listen`.
    pub(super) fn listen(
        &mut self,
        port: u16,
        events: mpsc::Sender<ListenEvent>,
        reply: oneshot::Sender<Response>,
    ) {
        if port == 0
            || (port == ECHO_PORT && self.streams.echo)
            || self.streams.listeners.contains_key(&port)
        {
            let msg = if port == 0 {
                "port 0 is reserved; listen on a port from 1 to 65535".to_string()
            } else {
                format!("port {port} is already in use")
            };
            let _ = reply.send(Response::error(ErrorCode::InvalidArgument, msg));
            return;
        }
        self.streams
            .listeners
            .insert(port, Listener { events, live: 0 });
        let _ = reply.send(Response::ok(&serde_json::json!({"port": port})));
    }

    /// The listening IPC connection closed.
    pub(super) fn unlisten(&mut self, port: u16, now: Instant) {
        self.streams.listeners.remove(&port);
        let pending: Vec<u64> = self
            .streams
            .conns
            .iter()
            .filter(|(_, s)| s.listener_port == Some(port) && matches!(s.app, App::Pending(_)))
            .map(|(&id, _)| id)
            .collect();
        for id in pending {
            if let Some(s) = self.streams.conns.get_mut(&id) {
                s.conn.abort();
            }
            self.after_io(id, now);
        }
    }

    /// `attach`.
    pub(super) fn attach(
        &mut self,
        id: u64,
        link: AppLink,
        reply: oneshot::Sender<Response>,
        now: Instant,
    ) {
        let Some(s) = self.streams.conns.get_mut(&id) else {
            let _ = reply.send(Response::error(
                ErrorCode::InvalidArgument,
                format!("no stream {id}"),
            ));
            return;
        };
        if !matches!(s.app, App::Pending(_)) {
            let _ = reply.send(Response::error(
                ErrorCode::InvalidArgument,
                format!("stream {id} is already taken"),
            ));
            return;
        }
        s.app = App::Attached(link);
        let _ = reply.send(Response::ok(&self.stream_data(id)));
        self.after_io(id, now);
    }

    /// Bytes from the application.
    pub(super) fn app_data(&mut self, id: u64, data: Vec<u8>, now: Instant) {
        let Some(s) = self.streams.conns.get_mut(&id) else {
            return;
        };
        if s.app_eof || s.close_requested {
            return;
        }
        s.pending.push_back(data);
        self.after_io(id, now);
    }

    /// The application closed its sending side.
    pub(super) fn app_eof(&mut self, id: u64, now: Instant) {
        let Some(s) = self.streams.conns.get_mut(&id) else {
            return;
        };
        s.app_eof = true;
        self.after_io(id, now);
    }

    /// The application went away entirely.
    pub(super) fn app_gone(&mut self, id: u64, now: Instant) {
        let Some(s) = self.streams.conns.get_mut(&id) else {
            return;
        };
        s.app_eof = true;
        if let App::Attached(AppLink::Chan(link)) = &s.app {
            link.credits.close();
        }
        s.app = App::Gone;
        self.after_io(id, now);
    }

    /// The application's queue has room again.
    pub(super) fn app_drained(&mut self, id: u64, now: Instant) {
        self.after_io(id, now);
    }

    /// The application's socket is ready again ([`super::appsock`]): it
    /// may hold bytes (`read`) or take them (`!read`).
    pub(super) fn app_ready(&mut self, id: u64, read: bool, now: Instant) {
        if let Some(App::Attached(AppLink::Sock(link))) =
            self.streams.conns.get_mut(&id).map(|s| &mut s.app)
        {
            link.live = true;
            if read {
                link.readable = true;
            } else {
                link.writable = true;
            }
        }
        self.after_io(id, now);
    }

    /// `disconnect`.
    pub(super) fn disconnect(&mut self, id: u64, force: bool, now: Instant) -> Response {
        let Some(s) = self.streams.conns.get_mut(&id) else {
            return Response::error(
                ErrorCode::NotFound,
                format!("no stream {id}; `pilotctl connections` lists the open ones"),
            );
        };
        if force {
            s.conn.abort();
        } else {
            s.app_eof = true;
        }
        let data = self.stream_data(id);
        self.after_io(id, now);
        Response::ok(&data)
    }

    fn stream_data(&self, id: u64) -> StreamData {
        let Some(s) = self.streams.conns.get(&id) else {
            return StreamData {
                conn_id: id,
                local: String::new(),
                remote: String::new(),
                state: "Closed".into(),
                path: String::new(),
                endpoint: None,
                rtt_ms: None,
                path_since_ms: None,
                bytes_in: 0,
                bytes_out: 0,
            };
        };
        let peer = self.peers.get(&s.peer);
        StreamData {
            conn_id: id,
            local: SockAddr::new(s.local, s.local_port).to_string(),
            remote: SockAddr::new(s.remote, s.remote_port).to_string(),
            state: state_name(s.conn.state()).into(),
            path: peer.map_or("direct", |p| p.path_name()).into(),
            endpoint: peer.and_then(|p| p.endpoint).map(|e| e.to_string()),
            rtt_ms: peer
                .and_then(|p| p.path.rtt)
                .map(|r| r.as_secs_f64() * 1000.0),
            path_since_ms: peer
                .and_then(|p| p.path.changed_at)
                .map(|t| t.elapsed().as_millis() as u64),
            bytes_in: s.bytes_in,
            bytes_out: s.bytes_out,
        }
    }

    /// `connections`.
    pub(super) fn connections(&self) -> ConnectionsData {
        let mut ids: Vec<u64> = self.streams.conns.keys().copied().collect();
        ids.sort_unstable();
        ConnectionsData {
            connections: ids.into_iter().map(|id| self.stream_data(id)).collect(),
        }
    }

    /// Total bytes the streams hold in buffers (for `info`).
    pub(super) fn stream_memory(&self) -> usize {
        self.streams.conns.values().map(|s| s.conn.memory()).sum()
    }

    // -------------------------------------------------------------- datagrams

    /// `send` (spec §8.1).
    pub(super) fn send_datagram(
        &mut self,
        addr: Addr,
        port: u16,
        data: &[u8],
        now: Instant,
    ) -> Response {
        if data.is_empty() {
            return Response::error(
                ErrorCode::InvalidArgument,
                "empty datagrams are dropped by receivers; send at least one byte",
            );
        }
        if data.len() > 65_000 {
            return Response::error(
                ErrorCode::InvalidArgument,
                "datagram larger than 65000 bytes",
            );
        }
        if addr.node == self.node_id || addr.node == 0 || addr.is_broadcast() {
            return Response::error(
                ErrorCode::InvalidAddress,
                format!("cannot send to {addr}: not a remote node"),
            );
        }
        let src_port = self.alloc_port();
        let repr = Repr {
            flags: Flags::NONE,
            protocol: Protocol::Datagram,
            src: Addr::new(addr.network, self.node_id),
            dst: addr,
            src_port,
            dst_port: port,
            seq: 0,
            ack: 0,
            window: 0,
            payload_len: data.len(),
        };
        self.send_packet(addr.node, &repr, data, now);
        Response::ok(
            &serde_json::json!({"to": SockAddr::new(addr, port).to_string(), "bytes": data.len()}),
        )
    }

    /// A datagram from `sender`.
    pub(super) fn on_datagram(&mut self, sender: u32, repr: &Repr, payload: &[u8]) {
        if payload.is_empty() || !self.admits(sender) {
            return;
        }
        let Some(tx) = self.streams.dgram_listeners.get(&repr.dst_port) else {
            return;
        };
        let msg = DatagramData {
            from: SockAddr::new(repr.src, repr.src_port).to_string(),
            port: repr.dst_port,
            data: String::from_utf8_lossy(payload).into_owned(),
            bytes: payload.len(),
        };
        if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(msg) {
            self.streams.dgram_listeners.remove(&repr.dst_port);
        }
    }

    /// `recv`: register a datagram receiver.
    pub(super) fn recv_datagrams(
        &mut self,
        port: u16,
        reply: oneshot::Sender<Response>,
    ) -> Option<mpsc::Receiver<DatagramData>> {
        if self
            .streams
            .dgram_listeners
            .get(&port)
            .is_some_and(|t| !t.is_closed())
        {
            let _ = reply.send(Response::error(
                ErrorCode::InvalidArgument,
                format!("port {port} already has a datagram receiver"),
            ));
            return None;
        }
        let (tx, rx) = mpsc::channel(DGRAM_QUEUE);
        self.streams.dgram_listeners.insert(port, tx);
        let _ = reply.send(Response::ok(&serde_json::json!({"port": port})));
        Some(rx)
    }

    /// Adds a peer to the trust gate, or removes it and resets its open
    /// streams at once (`pilotctl untrust`: the peer sees a reset, not a
    /// hang). Public nodes admit everyone, so nothing is cut there.
    pub(super) fn set_trusted(&mut self, node: u32, on: bool, now: Instant) {
        if on {
            self.trusted.insert(node);
            return;
        }
        self.trusted.remove(&node);
        if self.shared.config.public {
            return;
        }
        let ids: Vec<u64> = self
            .streams
            .conns
            .iter()
            .filter(|(_, s)| s.peer == node)
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            if let Some(s) = self.streams.conns.get_mut(&id) {
                s.conn.abort();
            }
            self.after_io(id, now);
        }
    }

    /// Fails the pending dials to `node` after the registry refused to tell
    /// us where it is (a private node that does not trust us, or an unknown
    /// one): the user gets the reason now, not a dial timeout.
    pub(super) fn fail_dials(&mut self, node: u32, err: &super::registry::RegError, now: Instant) {
        let ids: Vec<u64> = self
            .streams
            .conns
            .iter()
            .filter(|(_, s)| s.peer == node && s.dial.is_some())
            .map(|(&id, _)| id)
            .collect();
        let text = err.to_string();
        let addr = Addr::backbone(node);
        let resp = if text.contains("private") {
            Response::error(
                ErrorCode::NotTrusted,
                super::trust::not_trusted_message(addr),
            )
        } else {
            Response::error(err.code(), format!("cannot reach {addr}: {err}"))
        };
        for id in ids {
            if let Some(s) = self.streams.conns.get_mut(&id) {
                if let Some((reply, _)) = s.dial.take() {
                    let _ = reply.send(resp.clone());
                }
                s.conn.abort();
            }
            self.after_io(id, now);
        }
    }

    /// The SYN and datagram gate (spec §7.2 step 3, §9.6, §12.16): public
    /// nodes admit everyone; private ones locally trusted peers and fellow
    /// members of a shared network.
    fn admits(&self, sender: u32) -> bool {
        self.shared.config.public
            || self.trusted.contains(&sender)
            || self.network_peers.contains(&sender)
    }
}
