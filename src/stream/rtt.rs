//! Round-trip-time estimation and the retransmission timeout (spec §7.7,
//! RFC 6298).
//!
//! Integer nanoseconds with truncating division, in exactly the order the
//! reference uses (RTTVAR first, then SRTT), so that `rto.json` reproduces
//! bit for bit. Exponential backoff lives here too so that the first valid
//! sample after a timeout restores the computed value.

use std::time::Duration;

/// Initial RTO before any sample (§7.7).
pub const INITIAL_RTO: Duration = Duration::from_secs(1);
/// Lower clamp of the RTO (§7.7).
pub const MIN_RTO: Duration = Duration::from_millis(200);
/// Upper clamp of the RTO, also of the backed-off value (§7.7).
pub const MAX_RTO: Duration = Duration::from_secs(10);
/// Clock granularity G (§7.7).
pub const GRANULARITY: Duration = Duration::from_millis(10);

/// RFC 6298 estimator with the spec's constants.
#[derive(Debug, Clone)]
pub struct RttEstimator {
    srtt_ns: u64,
    rttvar_ns: u64,
    rto_ns: u64,
    min_rtt_ns: u64,
    has_sample: bool,
    backoff: u32,
}

impl Default for RttEstimator {
    fn default() -> Self {
        RttEstimator {
            srtt_ns: 0,
            rttvar_ns: 0,
            rto_ns: INITIAL_RTO.as_nanos() as u64,
            min_rtt_ns: u64::MAX,
            has_sample: false,
            backoff: 0,
        }
    }
}

impl RttEstimator {
    /// Feed one RTT sample (Karn's rule is the caller's job). Resets backoff.
    pub fn sample(&mut self, r: Duration) {
        let r = r.as_nanos().min(u64::MAX as u128) as u64;
        if self.has_sample {
            let diff = self.srtt_ns.abs_diff(r);
            self.rttvar_ns = self.rttvar_ns / 4 * 3 + (self.rttvar_ns % 4) * 3 / 4 + diff / 4;
            self.srtt_ns = self.srtt_ns / 8 * 7 + (self.srtt_ns % 8) * 7 / 8 + r / 8;
        } else {
            self.srtt_ns = r;
            self.rttvar_ns = r / 2;
            self.has_sample = true;
        }
        self.min_rtt_ns = self.min_rtt_ns.min(r);
        let g = GRANULARITY.as_nanos() as u64;
        let rto = self
            .srtt_ns
            .saturating_add(g.max(self.rttvar_ns.saturating_mul(4)));
        self.rto_ns = rto.clamp(MIN_RTO.as_nanos() as u64, MAX_RTO.as_nanos() as u64);
        self.backoff = 0;
    }

    /// The computed RTO without backoff.
    pub fn base_rto(&self) -> Duration {
        Duration::from_nanos(self.rto_ns)
    }

    /// The RTO to arm timers with: the computed value doubled once per
    /// unanswered timeout, capped at [`MAX_RTO`].
    pub fn rto(&self) -> Duration {
        let r = self.rto_ns.saturating_mul(1u64 << self.backoff.min(20));
        Duration::from_nanos(r.min(MAX_RTO.as_nanos() as u64))
    }

    /// Double the RTO after a timeout (§7.7).
    pub fn back_off(&mut self) {
        if self.rto() < MAX_RTO {
            self.backoff += 1;
        }
    }

    /// Forget the backoff (a new cumulative ACK arrived).
    pub fn reset_backoff(&mut self) {
        self.backoff = 0;
    }

    /// Smoothed RTT, if a sample was taken.
    pub fn srtt(&self) -> Option<Duration> {
        self.has_sample.then(|| Duration::from_nanos(self.srtt_ns))
    }

    /// RTT variation, if a sample was taken.
    pub fn rttvar(&self) -> Option<Duration> {
        self.has_sample
            .then(|| Duration::from_nanos(self.rttvar_ns))
    }

    /// Smallest sample seen.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.has_sample
            .then(|| Duration::from_nanos(self.min_rtt_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/rto.json");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut n = 0;
        for key in ["sequence_1", "sequence_2"] {
            let mut e = RttEstimator::default();
            assert_eq!(e.rto(), INITIAL_RTO);
            for step in v[key].as_array().unwrap() {
                e.sample(Duration::from_nanos(step["sample_ns"].as_u64().unwrap()));
                assert_eq!(
                    e.srtt().unwrap().as_nanos() as u64,
                    step["srtt_ns"].as_u64().unwrap(),
                    "{key} {step}"
                );
                assert_eq!(
                    e.rttvar().unwrap().as_nanos() as u64,
                    step["rttvar_ns"].as_u64().unwrap(),
                    "{key} {step}"
                );
                assert_eq!(
                    e.rto().as_nanos() as u64,
                    step["rto_ns"].as_u64().unwrap(),
                    "{key} {step}"
                );
                n += 1;
            }
        }
        assert!(n >= 9);
    }

    #[test]
    fn backoff_caps() {
        let mut e = RttEstimator::default();
        e.sample(Duration::from_millis(100));
        let base = e.rto();
        e.back_off();
        assert_eq!(e.rto(), base * 2);
        for _ in 0..100 {
            e.back_off();
        }
        assert_eq!(e.rto(), MAX_RTO);
        e.reset_backoff();
        assert_eq!(e.rto(), base);
    }
}
