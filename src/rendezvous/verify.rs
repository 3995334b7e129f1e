//! Signature checks off the event loop.
//!
//! Every registration decompresses an Ed25519 key (~15 us) and every signed
//! request verifies a signature (~50 us), where a lookup costs one or two
//! microseconds. Done on the tokio workers, a closed-loop burst of
//! registrations over hundreds of connections kept the one core of a
//! pinned server busy with checks, and a lookup waited behind them: 6.7-9.7
//! ms at p99 with 1,000,000 nodes (BENCHMARKS.md, issue 13: under 5 ms).
//! Here the checks run on threads of their own at a lower priority
//! ([`CHECK_NICE`]), so that when a lookup arrives the scheduler runs the
//! event loop first; the event loop only parses, looks up and answers. A
//! checking thread yields after each check (a lookup that woke the event
//! loop would otherwise wait for the rest of the thread's time slice: p99
//! 5.1 ms, against 1.7 ms with the yield) and answers what it checked in
//! batches (one by one, each answer preempted it: two context switches per
//! request).
//!
//! The registry's lock is not held during a check either:
//! [`sig_check`](super::state::Registry::sig_check) copies out what a
//! check needs, the check runs here, and its verdict goes back in with the
//! request ([`Prechecked`]), which the registry trusts only for the same
//! key and signature.
//!
//! Plain threads with a channel each (round robin), not tokio's blocking
//! pool: the pool's threads are shared with the store and are not ours to
//! renice. The queues are bounded by the connections, each of which has
//! at most one request in flight.

use super::state::{Prechecked, SigCheck};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use tokio::sync::oneshot;

/// Niceness of the checking threads: below the event loop (nice 0), so a
/// waking event loop preempts a check, and above the store writer's
/// (`store::WRITER_NICE`, 10), so commits do not hold registrations back.
pub const CHECK_NICE: i32 = 5;

/// Most checks answered at once (at ~60 us each, 3.8 ms: the longest a
/// checked request waits for its neighbours' checks).
const MAX_BATCH: usize = 64;

type Job = (SigCheck, oneshot::Sender<Prechecked>);

/// A small pool of checking threads.
#[derive(Debug)]
pub struct Verifier {
    queues: Vec<mpsc::Sender<Job>>,
    next: AtomicUsize,
}

impl Verifier {
    /// Starts `threads` checking threads (at least one). They end when the
    /// verifier is dropped.
    pub fn start(threads: usize) -> std::io::Result<Self> {
        let mut queues = Vec::new();
        for i in 0..threads.max(1) {
            let (tx, rx) = mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name(format!("pilot-check-{i}"))
                .spawn(move || {
                    background_priority(CHECK_NICE);
                    let mut done = Vec::with_capacity(MAX_BATCH);
                    while let Ok(first) = rx.recv() {
                        // Check what is queued, then answer all of it:
                        // each answer wakes the event loop, which (at a
                        // higher priority) preempts this thread, so
                        // answering one by one cost two context switches
                        // per request (heartbeats fell from 20,500/s to
                        // 15,200/s on one core, measured).
                        let mut next = Some(first);
                        while let Some((check, reply)) = next {
                            done.push((check.run(), reply));
                            // A lookup that woke the event loop meanwhile
                            // runs now rather than at the end of this
                            // thread's time slice (see the module doc).
                            std::thread::yield_now();
                            next = (done.len() < MAX_BATCH)
                                .then(|| rx.try_recv().ok())
                                .flatten();
                        }
                        for (verdict, reply) in done.drain(..) {
                            let _ = reply.send(verdict);
                        }
                    }
                })?;
            queues.push(tx);
        }
        Ok(Self {
            queues,
            next: AtomicUsize::new(0),
        })
    }

    /// Runs `check` on a checking thread. If the thread is gone (it cannot
    /// panic on any input, but a verdict must come back regardless), the
    /// check runs here.
    pub async fn check(&self, check: SigCheck) -> Prechecked {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.queues.len();
        let (tx, rx) = oneshot::channel();
        match self.queues[i].send((check, tx)) {
            Ok(()) => rx.await.unwrap_or_default(),
            Err(mpsc::SendError((check, _))) => check.run(),
        }
    }
}

/// Lowers the calling thread's priority to `nice`. Linux only (per-thread
/// niceness); a failure changes nothing.
pub fn background_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on the calling thread's own id; no memory is
    // passed.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rendezvous::state::Registry;
    use crate::wire::registry::{self as wire, NodeSigned, Request, Response};
    use ed25519_dalek::{Signer, SigningKey};
    use std::time::Instant;

    #[tokio::test]
    async fn verdicts_come_back_from_the_checking_threads() {
        let v = Verifier::start(2).unwrap();
        let reg = Registry::new();
        let peer = "127.0.0.1:5555".parse().unwrap();
        let key = SigningKey::from_bytes(&[7; 32]);
        let req = Request::Register(wire::Register::new(
            key.verifying_key().as_bytes(),
            "0.0.0.0:4000",
        ));
        let check = reg
            .sig_check(&req)
            .expect("a registration needs its key decompressed");
        let pre = v.check(check).await;
        assert_eq!(
            pre.verdict(),
            None,
            "an unsigned registration has no verdict"
        );
        let id = match reg
            .handle_checked(&mut Default::default(), req, peer, Instant::now(), pre)
            .response
        {
            Response::RegisterOk(ok) => ok.node_id,
            other => panic!("{other:?}"),
        };
        let mut good = Request::Heartbeat(NodeSigned {
            node_id: id,
            signature: None,
        });
        let (_, text) = good.signed_string().unwrap();
        good.set_signature(&key.sign(text.as_bytes()).to_bytes());
        let mut bad = good.clone();
        bad.set_signature(
            &SigningKey::from_bytes(&[8; 32])
                .sign(text.as_bytes())
                .to_bytes(),
        );
        for (req, ok) in [(good, true), (bad, false)] {
            let check = reg.sig_check(&req).expect("a signed request needs a check");
            let pre = v.check(check).await;
            assert_eq!(pre.verdict(), Some(ok));
            let out = reg.handle_checked(&mut Default::default(), req, peer, Instant::now(), pre);
            assert_eq!(
                matches!(out.response, Response::HeartbeatOk(_)),
                ok,
                "{:?}",
                out.response
            );
        }
    }

    /// A good verdict is for one signed text: handed in with another
    /// request that carries the same signature string, it counts for
    /// nothing and the registry checks (and refuses) that request itself.
    #[tokio::test]
    async fn a_verdict_does_not_carry_over_to_another_request() {
        let v = Verifier::start(1).unwrap();
        let reg = Registry::new();
        let peer = "127.0.0.1:5555".parse().unwrap();
        let key = SigningKey::from_bytes(&[9; 32]);
        let req = Request::Register(wire::Register::new(
            key.verifying_key().as_bytes(),
            "0.0.0.0:4000",
        ));
        let id = match reg.handle(req, peer, Instant::now()).response {
            Response::RegisterOk(ok) => ok.node_id,
            other => panic!("{other:?}"),
        };
        let text = wire::signed::heartbeat(id);
        let sig = wire::b64_encode(&key.sign(text.as_bytes()).to_bytes());
        let heartbeat = Request::Heartbeat(NodeSigned {
            node_id: id,
            signature: Some(sig.clone()),
        });
        let pre = v.check(reg.sig_check(&heartbeat).unwrap()).await;
        assert_eq!(pre.verdict(), Some(true));
        // The heartbeat's verdict and signature, on a deregistration.
        let deregister = Request::Deregister(NodeSigned {
            node_id: id,
            signature: Some(sig),
        });
        let out = reg.handle_checked(
            &mut Default::default(),
            deregister,
            peer,
            Instant::now(),
            pre,
        );
        assert!(
            matches!(out.response, Response::Error(_)),
            "{:?}",
            out.response
        );
        // The heartbeat itself, checked under the lock, passes: the key is live.
        let out = reg.handle(heartbeat, peer, Instant::now());
        assert!(
            matches!(out.response, Response::HeartbeatOk(_)),
            "{:?}",
            out.response
        );
    }
}
