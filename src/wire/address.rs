//! Virtual addresses (spec §1): the 6-byte binary form, the `N:NNNN.HHHH.LLLL`
//! text form, socket addresses (`address:port`) and the CLI target shorthand.
//!
//! Text parsing mirrors the reference `ParseAddr` / `ParseSocketAddr` step by
//! step (§1.2, §1.3), including the order of its checks and the exact text of
//! its errors, because operators and tests compare those strings
//! (`tests/vectors/address.json`). The reference builds its messages with Go's
//! `%q` and `strconv.ParseUint`, so this module carries small re-creations of
//! both ([`go_quote`] and a digit-by-digit unsigned parser with Go's
//! syntax/range distinction). Nothing here allocates except error values and
//! `Display` output.

use core::fmt;
use core::str::FromStr;

/// Size of the binary address form (§1.1): network u16 + node u32, big-endian.
pub const ADDR_LEN: usize = 6;

/// A 48-bit virtual address (§1.1): a network id and a global node id.
///
/// Ordering is by network, then node (field order), which gives stable maps.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct Addr {
    /// Network id; 0 is the backbone (§1.5).
    pub network: u16,
    /// Node id assigned by the registry.
    pub node: u32,
}

impl Addr {
    /// `0:0000.0000.0000`, the zero / unspecified address (§1.5).
    pub const ZERO: Addr = Addr {
        network: 0,
        node: 0,
    };

    /// The node id that means "broadcast" in any network (§1.5).
    pub const BROADCAST_NODE: u32 = 0xFFFF_FFFF;

    /// An address from its two parts.
    pub const fn new(network: u16, node: u32) -> Addr {
        Addr { network, node }
    }

    /// The backbone (network 0) address of `node`.
    pub const fn backbone(node: u32) -> Addr {
        Addr { network: 0, node }
    }

    /// True when the node part is the broadcast id; the network is not
    /// consulted, exactly like the reference's `IsBroadcast` (§1.5).
    pub fn is_broadcast(&self) -> bool {
        self.node == Self::BROADCAST_NODE
    }

    /// True for `0:0000.0000.0000`.
    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }

    /// The 6-byte big-endian wire form (§1.1).
    pub fn to_bytes(&self) -> [u8; ADDR_LEN] {
        let n = self.network.to_be_bytes();
        let h = self.node.to_be_bytes();
        [n[0], n[1], h[0], h[1], h[2], h[3]]
    }

    /// An address from its 6-byte wire form (§1.1).
    pub fn from_bytes(b: [u8; ADDR_LEN]) -> Addr {
        Addr {
            network: u16::from_be_bytes([b[0], b[1]]),
            node: u32::from_be_bytes([b[2], b[3], b[4], b[5]]),
        }
    }

    /// The address in the first 6 bytes of `b`, or `None` if `b` is shorter.
    pub fn from_slice(b: &[u8]) -> Option<Addr> {
        let six: [u8; ADDR_LEN] = b.get(..ADDR_LEN)?.try_into().ok()?;
        Some(Addr::from_bytes(six))
    }
}

impl fmt::Display for Addr {
    /// Canonical text (§1.2): decimal network, then the network and the two
    /// node halves as zero-padded upper-case hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{:04X}.{:04X}.{:04X}",
            self.network,
            self.network,
            self.node >> 16,
            self.node & 0xFFFF
        )
    }
}

impl FromStr for Addr {
    type Err = AddrParseError;

    /// Parses §1.2 text with the reference's rules and error order:
    /// split at the first `:`, decimal network, exactly three 4-character
    /// groups, first group parsed and compared with the network, then the two
    /// node groups.
    fn from_str(s: &str) -> Result<Addr, AddrParseError> {
        let Some((net_text, rest)) = s.split_once(':') else {
            return Err(AddrParseError::Invalid {
                input: s.to_owned(),
            });
        };
        let network = go_parse_uint(net_text, 10, u64::from(u16::MAX)).map_err(|cause| {
            AddrParseError::NetworkId {
                text: net_text.to_owned(),
                cause,
            }
        })?;
        let mut groups = [""; 3];
        let mut count = 0usize;
        for g in rest.split('.') {
            if let Some(slot) = groups.get_mut(count) {
                *slot = g;
            }
            count += 1;
        }
        if count != 3 {
            return Err(AddrParseError::GroupCount {
                rest: rest.to_owned(),
            });
        }
        if let Some(bad) = groups.iter().find(|g| g.len() != 4) {
            return Err(AddrParseError::GroupLength {
                group: (*bad).to_owned(),
            });
        }
        let hex = |g: &str| {
            go_parse_uint(g, 16, u64::from(u16::MAX)).map_err(|cause| AddrParseError::HexGroup {
                group: g.to_owned(),
                cause,
            })
        };
        let net_hex = hex(groups[0])?;
        if net_hex != network {
            return Err(AddrParseError::NetworkMismatch {
                decimal: network,
                hex: net_hex,
            });
        }
        let high = hex(groups[1])?;
        let low = hex(groups[2])?;
        // All three values were range-checked against u16::MAX above.
        Ok(Addr {
            network: network as u16,
            node: ((high as u32) << 16) | low as u32,
        })
    }
}

impl serde::Serialize for Addr {
    /// Serialised as its canonical text, the form used in JSON (registry
    /// replies, inbox files).
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Addr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Addr, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A virtual socket address: address and port (§1.3).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct SockAddr {
    /// The virtual address.
    pub addr: Addr,
    /// The virtual port (§2.5).
    pub port: u16,
}

impl SockAddr {
    /// A socket address from its parts.
    pub const fn new(addr: Addr, port: u16) -> SockAddr {
        SockAddr { addr, port }
    }
}

impl fmt::Display for SockAddr {
    /// `address:port`, port in decimal (§1.3).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.addr, self.port)
    }
}

impl FromStr for SockAddr {
    type Err = AddrParseError;

    /// Splits at the **last** `:`; parses the address first (its error wins),
    /// then the decimal port (§1.3, reference `ParseSocketAddr`).
    fn from_str(s: &str) -> Result<SockAddr, AddrParseError> {
        let Some((addr_text, port_text)) = s.rsplit_once(':') else {
            return Err(AddrParseError::NoPort {
                input: s.to_owned(),
            });
        };
        let addr: Addr = addr_text.parse()?;
        let port = go_parse_uint(port_text, 10, u64::from(u16::MAX)).map_err(|cause| {
            AddrParseError::Port {
                text: port_text.to_owned(),
                cause,
            }
        })?;
        Ok(SockAddr {
            addr,
            port: port as u16,
        })
    }
}

impl serde::Serialize for SockAddr {
    /// Serialised as its text form.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SockAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SockAddr, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What a user-supplied target names (§1.4).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Target {
    /// A full address, or a bare node id mapped to the backbone.
    Addr(Addr),
    /// A hostname still to be resolved through the registry (§6.4.6).
    Hostname(String),
}

/// Interprets a CLI target (§1.4): a full address; else a decimal u32 node id
/// on the backbone (`11` → `0:0000.0000.000B`); else a valid hostname
/// (§6.4.5); else [`AddrParseError::Target`].
pub fn parse_target(s: &str) -> Result<Target, AddrParseError> {
    if let Ok(addr) = s.parse::<Addr>() {
        return Ok(Target::Addr(addr));
    }
    if let Ok(node) = go_parse_uint(s, 10, u64::from(u32::MAX)) {
        return Ok(Target::Addr(Addr::backbone(node as u32)));
    }
    if is_valid_hostname(s) {
        return Ok(Target::Hostname(s.to_owned()));
    }
    Err(AddrParseError::Target {
        input: s.to_owned(),
    })
}

/// Longest hostname the registry accepts (§6.4.5).
pub const MAX_HOSTNAME_LEN: usize = 63;

/// Names the registry refuses as hostnames (§6.4.5).
pub const RESERVED_HOSTNAMES: [&str; 3] = ["localhost", "backbone", "broadcast"];

/// True when `s` is a hostname the registry would accept (§6.4.5):
/// `^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$` and not a reserved name.
pub fn is_valid_hostname(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let (Some(first), Some(last)) = (b.first(), b.last()) else {
        return false;
    };
    b.len() <= MAX_HOSTNAME_LEN
        && alnum(first)
        && alnum(last)
        && b.iter().all(|c| alnum(c) || *c == b'-')
        && !RESERVED_HOSTNAMES.contains(&s)
}

/// Why Go's `strconv.ParseUint` refused a number; shown as the reference
/// shows it (`strconv.ParseUint: parsing "X": invalid syntax`).
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum UintError {
    /// Empty, or a character that is not a digit of the base.
    #[error("strconv.ParseUint: parsing {}: invalid syntax", go_quote(.0))]
    Syntax(String),
    /// Well-formed but larger than the target type.
    #[error("strconv.ParseUint: parsing {}: value out of range", go_quote(.0))]
    Range(String),
}

/// Errors of address, socket-address and target parsing. `Display` is the
/// reference's error text, byte for byte (`tests/vectors/address.json`).
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum AddrParseError {
    /// No `:` in an address.
    #[error("invalid address: {} (expected N:XXXX.YYYY.YYYY)", go_quote(.input))]
    Invalid {
        /// The whole input.
        input: String,
    },
    /// The decimal network part is not a u16.
    #[error("invalid network ID: {}: {cause}", go_quote(.text))]
    NetworkId {
        /// The text before the first `:`.
        text: String,
        /// Why it was refused.
        cause: UintError,
    },
    /// The part after the `:` does not have exactly three `.` groups.
    #[error("invalid address: {} (expected 3 dot-separated hex groups)", go_quote(.rest))]
    GroupCount {
        /// The text after the first `:`.
        rest: String,
    },
    /// A group is not exactly 4 bytes long.
    #[error("invalid hex group: {} (expected 4 digits)", go_quote(.group))]
    GroupLength {
        /// The offending group.
        group: String,
    },
    /// A group is not a hex number.
    #[error("invalid hex group: {}: {cause}", go_quote(.group))]
    HexGroup {
        /// The offending group.
        group: String,
        /// Why it was refused.
        cause: UintError,
    },
    /// The hex network group disagrees with the decimal network.
    #[error("network mismatch: decimal {decimal} != hex 0x{hex:04X}")]
    NetworkMismatch {
        /// The decimal network id.
        decimal: u64,
        /// The first hex group.
        hex: u64,
    },
    /// A socket address without any `:`.
    #[error("invalid socket address: {} (no port)", go_quote(.input))]
    NoPort {
        /// The whole input.
        input: String,
    },
    /// The port after the last `:` is not a u16.
    #[error("invalid port: {}: {cause}", go_quote(.text))]
    Port {
        /// The text after the last `:`.
        text: String,
        /// Why it was refused.
        cause: UintError,
    },
    /// A CLI target that is neither an address, a node id nor a hostname.
    #[error(
        "invalid target: {} (expected an address N:XXXX.YYYY.YYYY, a decimal node id or a hostname)",
        go_quote(.input)
    )]
    Target {
        /// The whole input.
        input: String,
    },
}

/// Go's `strconv.ParseUint(s, base, bits)` for base 10 or 16 with `max` the
/// largest value of the target width: no sign, no prefix, no underscores,
/// empty is a syntax error, and the scan stops at the first bad character or
/// the first overflow, whichever comes first (so `"99999X"` is out of range
/// for 16 bits, as in Go).
fn go_parse_uint(s: &str, base: u32, max: u64) -> Result<u64, UintError> {
    if s.is_empty() {
        return Err(UintError::Syntax(String::new()));
    }
    let mut n: u64 = 0;
    for c in s.chars() {
        let Some(d) = c.to_digit(base) else {
            return Err(UintError::Syntax(s.to_owned()));
        };
        n = match n
            .checked_mul(u64::from(base))
            .and_then(|v| v.checked_add(u64::from(d)))
        {
            Some(v) if v <= max => v,
            _ => return Err(UintError::Range(s.to_owned())),
        };
    }
    Ok(n)
}

/// Go's `strconv.Quote` (what `%q` prints for a string): double quotes,
/// `\a \b \f \n \r \t \v \\ \"` escapes, other control characters as `\xNN`
/// (below 0x80) or `\uNNNN` / `\UNNNNNNNN`. Go additionally escapes
/// printable-looking but non-graphic code points per its Unicode tables; this
/// approximation treats every non-control character as printable.
pub fn go_quote(s: &str) -> String {
    use fmt::Write;
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' || c == '\u{feff}' => {
                if (c as u32) < 0x10000 {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                } else {
                    let _ = write!(out, "\\U{:08x}", c as u32);
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_examples() {
        assert_eq!(Addr::new(1, 0xF291_0004).to_string(), "1:0001.F291.0004");
        assert_eq!(Addr::backbone(11).to_string(), "0:0000.0000.000B");
        assert_eq!(
            SockAddr::new(Addr::new(1, 0xF291_0004), 1000).to_string(),
            "1:0001.F291.0004:1000"
        );
    }

    #[test]
    fn binary_round_trip() {
        let a = Addr::new(0x0102, 0x0A0B_0C0D);
        assert_eq!(a.to_bytes(), [1, 2, 0x0a, 0x0b, 0x0c, 0x0d]);
        assert_eq!(Addr::from_bytes(a.to_bytes()), a);
        assert_eq!(
            Addr::from_slice(&[1, 2, 0x0a, 0x0b, 0x0c, 0x0d, 9]),
            Some(a)
        );
        assert_eq!(Addr::from_slice(&[1, 2, 3]), None);
    }

    #[test]
    fn parse_edge_cases() {
        assert_eq!("00:0000.0000.000B".parse(), Ok(Addr::backbone(11)));
        assert_eq!(
            "1:0001.f291.0004".parse::<Addr>(),
            Ok(Addr::new(1, 0xF291_0004))
        );
        // Overflow is found before the bad character, as in Go.
        assert_eq!(
            "99999X:0000.0000.0000"
                .parse::<Addr>()
                .unwrap_err()
                .to_string(),
            "invalid network ID: \"99999X\": strconv.ParseUint: parsing \"99999X\": value out of range"
        );
        // Length checks of all groups come before any hex parsing.
        assert!(matches!(
            "0:zzzz.0000.000".parse::<Addr>(),
            Err(AddrParseError::GroupLength { .. })
        ));
        // Mismatch is reported before a bad node group.
        assert!(matches!(
            "1:0000.zzzz.0000".parse::<Addr>(),
            Err(AddrParseError::NetworkMismatch { .. })
        ));
        // Multi-byte characters count as bytes, like Go's len().
        assert!(matches!(
            "0:é00.0000.0000".parse::<Addr>(),
            Err(AddrParseError::HexGroup { .. })
        ));
        assert!("0:0000.0000.0001\u{0}".parse::<Addr>().is_err());
    }

    #[test]
    fn socket_addr_no_port() {
        let e = "abc".parse::<SockAddr>().unwrap_err();
        assert_eq!(e.to_string(), "invalid socket address: \"abc\" (no port)");
    }

    #[test]
    fn quote_like_go() {
        assert_eq!(go_quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(go_quote("\n\t\u{1}\u{7f}"), "\"\\n\\t\\x01\\x7f\"");
        assert_eq!(go_quote("é"), "\"é\"");
        assert_eq!(go_quote("\u{85}"), "\"\\u0085\"");
    }

    #[test]
    fn targets() {
        assert_eq!(parse_target("11"), Ok(Target::Addr(Addr::backbone(11))));
        assert_eq!(
            parse_target("1:0001.0000.0004"),
            Ok(Target::Addr(Addr::new(1, 4)))
        );
        assert_eq!(
            parse_target("4294967296"),
            Ok(Target::Hostname("4294967296".into()))
        );
        assert_eq!(parse_target("alpha"), Ok(Target::Hostname("alpha".into())));
        assert!(parse_target("+11").is_err());
        let e = parse_target("Bad Name").unwrap_err().to_string();
        assert!(
            e.contains("N:XXXX.YYYY.YYYY") && e.contains("hostname"),
            "{e}"
        );
    }

    #[test]
    fn hostnames() {
        for ok in ["a", "0", "a-b", "abc123", &"a".repeat(63)] {
            assert!(is_valid_hostname(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "localhost",
            "backbone",
            "broadcast",
            &"a".repeat(64),
            "é",
        ] {
            assert!(!is_valid_hostname(bad), "{bad}");
        }
    }

    #[test]
    fn serde_as_text() {
        let a = Addr::new(1, 4);
        let j = serde_json::to_string(&a).unwrap();
        assert_eq!(j, "\"1:0001.0000.0004\"");
        assert_eq!(serde_json::from_str::<Addr>(&j).unwrap(), a);
        assert!(serde_json::from_str::<Addr>("\"nope\"").is_err());
        let s = SockAddr::new(a, 7);
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<SockAddr>(&j).unwrap(), s);
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn addr() -> impl Strategy<Value = Addr> {
            (any::<u16>(), any::<u32>()).prop_map(|(n, h)| Addr::new(n, h))
        }

        proptest! {
            #[test]
            fn text_round_trip(a in addr()) {
                prop_assert_eq!(a.to_string().parse::<Addr>(), Ok(a));
                // Lower-case hex parses to the same address.
                prop_assert_eq!(a.to_string().to_lowercase().parse::<Addr>(), Ok(a));
            }

            #[test]
            fn binary_round_trip(a in addr()) {
                prop_assert_eq!(Addr::from_bytes(a.to_bytes()), a);
            }

            #[test]
            fn sock_round_trip(a in addr(), port in any::<u16>()) {
                let s = SockAddr::new(a, port);
                prop_assert_eq!(s.to_string().parse::<SockAddr>(), Ok(s));
            }

            #[test]
            fn arbitrary_text_never_panics(t in "\\PC{0,40}") {
                let _ = t.parse::<Addr>();
                let _ = t.parse::<SockAddr>();
                let _ = parse_target(&t);
                let _ = is_valid_hostname(&t);
            }

            #[test]
            fn addressy_text_never_panics(t in "[0-9a-fA-F:.+\\- ]{0,24}") {
                if let Ok(a) = t.parse::<Addr>() {
                    // Whatever parses formats back to something that parses the same.
                    prop_assert_eq!(a.to_string().parse::<Addr>(), Ok(a));
                }
                let _ = t.parse::<SockAddr>();
            }

            #[test]
            fn valid_hostnames_are_targets(h in "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?") {
                prop_assume!(!RESERVED_HOSTNAMES.contains(&h.as_str()));
                prop_assert!(is_valid_hostname(&h));
                if h.bytes().all(|b| b.is_ascii_digit()) {
                    prop_assert!(parse_target(&h).is_ok());
                } else {
                    prop_assert_eq!(parse_target(&h), Ok(Target::Hostname(h.clone())));
                }
            }
        }
    }
}
