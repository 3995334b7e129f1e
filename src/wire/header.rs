//! The 34-byte virtual packet header (spec §2).

/// The four flag bits of the low nibble of byte 0 (spec §2.1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(u8);

impl Flags {
    /// No flags: datagrams and control requests.
    pub const NONE: Flags = Flags(0);
    /// Synchronise (open a stream).
    pub const SYN: Flags = Flags(0x1);
    /// The acknowledgement field is meaningful.
    pub const ACK: Flags = Flags(0x2);
    /// Finish (close a stream).
    pub const FIN: Flags = Flags(0x4);
    /// Reset (refuse or abort a stream).
    pub const RST: Flags = Flags(0x8);

    /// Flags from the low nibble of `bits`; the high nibble is ignored.
    pub const fn from_bits_truncate(bits: u8) -> Flags {
        Flags(bits & 0x0f)
    }

    /// The raw bits (low nibble only).
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// True when every bit of `other` is set in `self`.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// True when any bit of `other` is set in `self`.
    pub const fn intersects(self, other: Flags) -> bool {
        self.0 & other.0 != 0
    }
}

impl core::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

impl core::ops::BitOrAssign for Flags {
    fn bitor_assign(&mut self, rhs: Flags) {
        self.0 |= rhs.0;
    }
}

impl core::fmt::Debug for Flags {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let names = [
            (Flags::SYN, "SYN"),
            (Flags::ACK, "ACK"),
            (Flags::FIN, "FIN"),
            (Flags::RST, "RST"),
        ];
        let mut first = true;
        for (flag, name) in names {
            if self.contains(flag) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("NONE")?;
        }
        Ok(())
    }
}
