//! Sequence-number arithmetic (spec §7.3).
//!
//! On the wire, sequence numbers are 32-bit and compared with serial
//! arithmetic: `a` is after `b` iff `(a − b) mod 2³²`, read as a signed 32-bit
//! value, is positive. Inside the engine every position is a 64-bit *offset*
//! that never wraps (offset 0 is the first data byte, ISN + 1); offsets are
//! turned into wire numbers only at the edge ([`to_wire`]) and received numbers
//! are mapped back relative to a known offset ([`unwrap_near`]). That keeps all
//! buffer and scoreboard code free of wrap-around cases.

/// True when `a` is after `b` in serial arithmetic (§7.3).
pub fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// True when `a` is after `b` or equal to it.
pub fn seq_after_or_equal(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) >= 0
}

/// The wire number of offset `off` for a stream whose first data byte has
/// wire number `base` (ISN + 1).
pub fn to_wire(base: u32, off: u64) -> u32 {
    base.wrapping_add(off as u32)
}

/// Map a received wire number `seq` back to an offset, taking the
/// interpretation closest to the known offset `near` (whose wire number is
/// `to_wire(base, near)`). `None` when it would lie before offset 0.
pub fn unwrap_near(base: u32, near: u64, seq: u32) -> Option<u64> {
    let d = seq.wrapping_sub(to_wire(base, near)) as i32 as i64;
    let off = near as i64 + d;
    if off < 0 {
        None
    } else {
        Some(off as u64)
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
        let cases = v["seq_compare"].as_array().unwrap();
        assert!(!cases.is_empty());
        for c in cases {
            let a = c["a"].as_u64().unwrap() as u32;
            let b = c["b"].as_u64().unwrap() as u32;
            assert_eq!(seq_after(a, b), c["a_after_b"].as_bool().unwrap(), "{c}");
            assert_eq!(
                seq_after_or_equal(a, b),
                c["a_after_or_equal_b"].as_bool().unwrap(),
                "{c}"
            );
        }
    }

    #[test]
    fn unwrap_across_wrap() {
        let base = u32::MAX - 10;
        assert_eq!(to_wire(base, 20), 9);
        assert_eq!(unwrap_near(base, 15, 9), Some(20));
        assert_eq!(unwrap_near(base, 0, base.wrapping_sub(1)), None);
        assert_eq!(unwrap_near(base, 5, base), Some(0));
        let far = (1u64 << 33) + 7;
        assert_eq!(
            unwrap_near(base, far, to_wire(base, far + 100)),
            Some(far + 100)
        );
    }
}
