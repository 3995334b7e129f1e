//! Congestion control: the congestion window and its reactions to ACKs and
//! losses.
//!
//! Two controllers, both purely sender-side (the wire never carries anything
//! controller-specific, so either interoperates with every peer):
//!
//! * [`Controller::Reno`] — the AIMD of the reference (§7.7): slow start,
//!   congestion avoidance `cwnd += max(1, MSS·acked/cwnd)`, halving on a loss
//!   episode.
//! * [`Controller::Cubic`] — RFC 9438 (β = 0.7, C = 0.4, fast convergence,
//!   Reno-friendly region). On long or lossy paths it keeps the window much
//!   closer to the bandwidth-delay product than AIMD, which is what moves the
//!   engine from the reference's few MB/s towards the link rate.
//!
//! Loss *detection* and the recovery episode live in `conn`; this module only
//! sees "bytes newly acknowledged outside recovery", "a loss episode began"
//! and "the retransmission timer expired". After an RTO the window restarts at
//! 10·MSS like the reference (§7.7), not 1 MSS.

use std::time::{Duration, Instant};

use super::INITIAL_CWND_SEGMENTS;

/// Which congestion controller a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Controller {
    /// The reference's AIMD (§7.7).
    Reno,
    /// CUBIC (RFC 9438).
    Cubic,
}

/// CUBIC multiplicative decrease factor (RFC 9438 §4.6).
const CUBIC_BETA: f64 = 0.7;
/// CUBIC scaling constant, in segments per second³ (RFC 9438 §5).
const CUBIC_C: f64 = 0.4;

/// The congestion window state of one connection.
#[derive(Debug, Clone)]
pub struct Congestion {
    kind: Controller,
    mss: usize,
    max: usize,
    cwnd: usize,
    ssthresh: usize,
    // CUBIC state, in bytes and seconds.
    w_max: f64,
    k: f64,
    origin: f64,
    w_est: f64,
    epoch: Option<Instant>,
    frac: f64,
}

impl Congestion {
    /// A window of 10·MSS (§7.7), capped at `max`.
    pub fn new(kind: Controller, mss: usize, max: usize, initial_ssthresh: usize) -> Congestion {
        let mss = mss.max(1);
        let max = max.max(2 * mss);
        Congestion {
            kind,
            mss,
            max,
            cwnd: (INITIAL_CWND_SEGMENTS * mss).min(max),
            ssthresh: initial_ssthresh.max(2 * mss),
            w_max: 0.0,
            k: 0.0,
            origin: 0.0,
            w_est: 0.0,
            epoch: None,
            frac: 0.0,
        }
    }

    /// True while below the slow-start threshold.
    pub fn in_slow_start(&self) -> bool {
        self.cwnd < self.ssthresh
    }

    /// Current window in bytes.
    pub fn cwnd(&self) -> usize {
        self.cwnd
    }

    /// `acked` bytes newly acknowledged outside a recovery episode.
    pub fn on_ack(&mut self, acked: usize, now: Instant, srtt: Option<Duration>) {
        if acked == 0 {
            return;
        }
        if self.cwnd < self.ssthresh {
            self.cwnd = (self.cwnd + acked).min(self.max);
            return;
        }
        match self.kind {
            Controller::Reno => {
                self.cwnd += (self.mss * acked / self.cwnd.max(1)).max(1);
            }
            Controller::Cubic => self.cubic_ack(acked, now, srtt.unwrap_or_default()),
        }
        self.cwnd = self.cwnd.min(self.max);
    }

    fn cubic_ack(&mut self, acked: usize, now: Instant, srtt: Duration) {
        let mss = self.mss as f64;
        let cwnd = self.cwnd as f64;
        let epoch = *self.epoch.get_or_insert_with(|| {
            if cwnd < self.w_max {
                self.k = ((self.w_max - cwnd) / (CUBIC_C * mss)).cbrt();
                self.origin = self.w_max;
            } else {
                self.k = 0.0;
                self.origin = cwnd;
            }
            self.w_est = cwnd;
            now
        });
        let t = now.saturating_duration_since(epoch).as_secs_f64() + srtt.as_secs_f64();
        let target = (self.origin + CUBIC_C * mss * (t - self.k).powi(3)).clamp(cwnd, 1.5 * cwnd);
        // Reno-friendly estimate (RFC 9438 §4.3): α = 3(1 − β)/(1 + β).
        let alpha = 3.0 * (1.0 - CUBIC_BETA) / (1.0 + CUBIC_BETA);
        self.w_est += alpha * mss * acked as f64 / cwnd;
        let inc = if self.w_est > target {
            self.w_est - cwnd
        } else {
            (target - cwnd) * acked as f64 / cwnd
        };
        self.frac += inc.max(0.0);
        let whole = self.frac.floor();
        self.frac -= whole;
        self.cwnd += whole as usize;
    }

    fn reduce(&mut self) {
        match self.kind {
            Controller::Reno => {
                self.ssthresh = (self.cwnd / 2).max(2 * self.mss);
            }
            Controller::Cubic => {
                let cwnd = self.cwnd as f64;
                // Fast convergence (RFC 9438 §4.7).
                self.w_max = if cwnd < self.w_max {
                    cwnd * (1.0 + CUBIC_BETA) / 2.0
                } else {
                    cwnd
                };
                self.ssthresh = ((cwnd * CUBIC_BETA) as usize).max(2 * self.mss);
                self.epoch = None;
                self.frac = 0.0;
            }
        }
    }

    /// A loss episode began (fast retransmit / RACK): one multiplicative
    /// decrease.
    pub fn on_congestion_event(&mut self) {
        self.reduce();
        self.cwnd = self.ssthresh;
    }

    /// The retransmission timer expired; `new_episode` when no loss episode
    /// was already running (the decrease is applied once per episode).
    pub fn on_rto(&mut self, new_episode: bool) {
        if new_episode {
            self.reduce();
        }
        self.epoch = None;
        self.cwnd = (INITIAL_CWND_SEGMENTS * self.mss).min(self.max);
    }

    /// The segment size changed (the path was probed for larger segments,
    /// or fell back): growth steps and floors follow it; the window in bytes
    /// stays, capped at the new `max`.
    pub fn set_mss(&mut self, mss: usize, max: usize) {
        self.mss = mss.max(1);
        self.max = max.max(2 * self.mss);
        self.cwnd = self.cwnd.min(self.max);
        self.ssthresh = self.ssthresh.max(2 * self.mss);
    }

    /// Restart window after idle (RFC 5681 §4.1).
    pub fn restart_after_idle(&mut self) {
        self.cwnd = self
            .cwnd
            .min((INITIAL_CWND_SEGMENTS * self.mss).min(self.max));
        self.epoch = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reno_aimd() {
        let now = Instant::now();
        let mut c = Congestion::new(Controller::Reno, 1000, 1 << 20, 20_000);
        assert_eq!(c.cwnd(), 10_000);
        c.on_ack(10_000, now, None);
        assert_eq!(c.cwnd(), 20_000);
        c.on_ack(20_000, now, None);
        assert_eq!(c.cwnd(), 21_000);
        c.on_congestion_event();
        assert_eq!(c.cwnd(), 10_500);
        c.on_rto(true);
        assert_eq!(c.cwnd(), 10_000);
    }

    #[test]
    fn cubic_recovers_towards_w_max() {
        let t0 = Instant::now();
        let rtt = Duration::from_millis(50);
        let mut c = Congestion::new(Controller::Cubic, 1000, 16 << 20, 1_000_000);
        c.on_ack(990_000, t0, Some(rtt));
        assert_eq!(c.cwnd(), 1_000_000);
        c.on_congestion_event();
        assert_eq!(c.cwnd(), 700_000);
        // One window of ACKs per RTT: back at w_max after about K seconds.
        let k: f64 = ((1_000_000.0 - 700_000.0) / (CUBIC_C * 1000.0)).cbrt();
        let mut now = t0;
        while now < t0 + Duration::from_secs_f64(k + 1.0) {
            now += rtt;
            let w = c.cwnd();
            c.on_ack(w, now, Some(rtt));
        }
        assert!(c.cwnd() >= 1_000_000, "{}", c.cwnd());
        assert!(c.cwnd() < 2_000_000, "{}", c.cwnd());
        // Reno would have grown by only ~1 MSS per RTT.
    }
}
