//! The event broker (port 1002, spec §10.4): the first frame on a
//! connection subscribes it to a topic (`*`: every topic); every later
//! frame is published to every *other* connection subscribed to that
//! topic, and to every `*` subscriber unless the topic is `*` itself.
//! Never back to the publisher; no acknowledgements.
//!
//! Shaped so one slow subscriber cannot stall the others or grow memory:
//! publishing only puts the encoded event (shared, one copy) on each
//! subscriber's queue, bounded in bytes ([`QUEUE_BYTES`]); an event that
//! does not fit is dropped for that subscriber and counted. Each
//! connection's task alternates between reading its peer's frames and
//! writing its queue. At most [`MAX_CONNS`] connections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Semaphore};

use super::engine::Cmd;
use super::svc::{NodeStream, ServiceListener};
use crate::wire::dataexchange::{self as dx, Event};

/// Connections served at once.
pub const MAX_CONNS: usize = 256;
/// Bytes of events queued for one subscriber before new ones are dropped
/// for it (two of the spec's largest, 16 MiB, events).
pub const QUEUE_BYTES: usize = 32 << 20;

struct Sub {
    topic: Vec<u8>,
    tx: mpsc::UnboundedSender<Arc<Vec<u8>>>,
    queued: Arc<AtomicUsize>,
}

#[derive(Default)]
struct Broker {
    next: u64,
    subs: HashMap<u64, Sub>,
}

/// Events dropped because a subscriber's queue was full (since start).
pub static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Events published (since start).
pub static PUBLISHED: AtomicU64 = AtomicU64::new(0);

impl Broker {
    fn publish(&self, from: u64, topic: &[u8], frame: &Arc<Vec<u8>>) {
        PUBLISHED.fetch_add(1, Ordering::Relaxed);
        let wildcard = topic == dx::WILDCARD_TOPIC;
        for (&id, s) in &self.subs {
            let wanted = s.topic == topic || (!wildcard && s.topic == dx::WILDCARD_TOPIC);
            if id == from || !wanted {
                continue;
            }
            let len = frame.len();
            if s.queued.fetch_add(len, Ordering::AcqRel) + len > QUEUE_BYTES {
                s.queued.fetch_sub(len, Ordering::AcqRel);
                DROPPED.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if s.tx.send(frame.clone()).is_err() {
                s.queued.fetch_sub(len, Ordering::AcqRel);
            }
        }
    }
}

/// Starts the broker on port 1002. A failure is logged; the daemon runs
/// on without it.
pub async fn start(cmds: &mpsc::Sender<Cmd>) {
    let mut listener = match ServiceListener::bind(cmds, dx::EVENT_STREAM_PORT).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("event stream disabled: cannot listen on port 1002: {e:?}");
            return;
        }
    };
    let broker = Arc::new(Mutex::new(Broker::default()));
    let conns = Arc::new(Semaphore::new(MAX_CONNS));
    tokio::spawn(async move {
        while let Some(s) = listener.accept().await {
            let Ok(permit) = conns.clone().try_acquire_owned() else {
                let mut s = s;
                s.reset().await;
                continue;
            };
            let broker = broker.clone();
            tokio::spawn(async move {
                serve(s, broker).await;
                drop(permit);
            });
        }
    });
}

async fn serve(mut s: NodeStream, broker: Arc<Mutex<Broker>>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Arc<Vec<u8>>>();
    let queued = Arc::new(AtomicUsize::new(0));
    let id = {
        let mut b = broker.lock().unwrap_or_else(|e| e.into_inner());
        b.next += 1;
        b.next
    };
    let mut tx = Some(tx);
    let mut buf: Vec<u8> = Vec::new();
    'conn: loop {
        tokio::select! {
            chunk = s.recv() => {
                let Some(chunk) = chunk else { break };
                buf.extend_from_slice(&chunk);
                loop {
                    let (topic, frame, used) = match dx::decode_event(&buf) {
                        Ok(Some((ev, used))) => (ev.topic.to_vec(), ev_frame(&ev), used),
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!("event stream from {}: {e}; closing", s.remote);
                            break 'conn;
                        }
                    };
                    buf.drain(..used);
                    let mut b = broker.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(tx) = tx.take() {
                        b.subs.insert(id, Sub { topic, tx, queued: queued.clone() });
                    } else if let Some(frame) = frame {
                        b.publish(id, &topic, &Arc::new(frame));
                    }
                }
            }
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                queued.fetch_sub(ev.len(), Ordering::AcqRel);
                if !s.write_all(&ev).await {
                    break;
                }
            }
        }
    }
    broker
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .subs
        .remove(&id);
    s.close().await;
}

fn ev_frame(ev: &Event<'_>) -> Option<Vec<u8>> {
    ev.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(b: &mut Broker, topic: &[u8]) -> (u64, mpsc::UnboundedReceiver<Arc<Vec<u8>>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        b.next += 1;
        b.subs.insert(
            b.next,
            Sub {
                topic: topic.to_vec(),
                tx,
                queued: Arc::new(AtomicUsize::new(0)),
            },
        );
        (b.next, rx)
    }

    #[test]
    fn fan_out_follows_the_spec() {
        let mut b = Broker::default();
        let (p, mut prx) = sub(&mut b, b"news");
        let (_, mut a) = sub(&mut b, b"news");
        let (_, mut all) = sub(&mut b, b"*");
        let (_, mut other) = sub(&mut b, b"sport");
        let f = Arc::new(Event::new(b"news", b"hi").to_vec().unwrap());
        b.publish(p, b"news", &f);
        assert!(prx.try_recv().is_err(), "never back to the publisher");
        assert_eq!(*a.try_recv().unwrap(), *f);
        assert_eq!(*all.try_recv().unwrap(), *f);
        assert!(other.try_recv().is_err());
        // A `*` publish reaches `*` subscribers once, not the others.
        let w = Arc::new(Event::new(b"*", b"x").to_vec().unwrap());
        b.publish(p, b"*", &w);
        assert_eq!(*all.try_recv().unwrap(), *w);
        assert!(all.try_recv().is_err());
        assert!(a.try_recv().is_err());
    }

    #[test]
    fn a_full_queue_drops_for_that_subscriber_only() {
        let mut b = Broker::default();
        let (_, mut slow) = sub(&mut b, b"t");
        let (fast_id, mut fast) = sub(&mut b, b"t");
        let big = Arc::new(vec![0u8; QUEUE_BYTES / 2 + 1]);
        b.publish(0, b"t", &big);
        // `fast` reads its event (what `serve` does: take it off the count).
        let _ = fast.try_recv().unwrap();
        b.subs[&fast_id]
            .queued
            .fetch_sub(big.len(), Ordering::AcqRel);
        let before = DROPPED.load(Ordering::Relaxed);
        b.publish(0, b"t", &big);
        assert!(DROPPED.load(Ordering::Relaxed) > before);
        assert!(fast.try_recv().is_ok(), "the fast subscriber still gets it");
        assert!(slow.try_recv().is_ok());
        assert!(
            slow.try_recv().is_err(),
            "the second was dropped for the slow one"
        );
    }
}
