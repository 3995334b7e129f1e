//! Trust-handshake messages on port 444 (spec §9.1–9.4) and the `trust.json`
//! file that persists trust state (§11).
//!
//! Both are JSON written by Go's `encoding/json` in the reference. Two details
//! make byte-exact output matter: the receiver's replay protection hashes the
//! message *re-serialised in canonical form* (§9.4 step 2), and operators diff
//! `trust.json` files. Go escapes `<`, `>`, `&`, U+2028 and U+2029 in strings
//! where serde_json does not, so serialisation goes through [`GoFormatter`],
//! a serde_json formatter that adds Go's escapes; field order is the struct
//! order, which is the reference's (§9.2). Parsing is bounded by
//! [`MAX_MESSAGE_LEN`] because a message must fit in one segment (§9.1).
//!
//! Signing and verifying belong to the crypto layer; this module only builds
//! the signed string (§9.3) and decodes the base64 key and signature fields.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use std::io;

/// The trust-handshake port (§2.5, §9.1).
pub const TRUST_PORT: u16 = 444;
/// Largest message accepted or sent: one segment of at most the MSS (§9.1).
pub const MAX_MESSAGE_LEN: usize = 4096;
/// Longest justification a sender should use (§9.1).
pub const MAX_JUSTIFICATION_LEN: usize = 1024;
/// Messages older than this many seconds are dropped (§9.4 step 1).
pub const MAX_AGE_SECS: i64 = 5 * 60;
/// Messages more than this many seconds in the future are dropped (§9.4 step 1).
pub const MAX_FUTURE_SKEW_SECS: i64 = 30;

/// The `type` field (§9.2).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum HandshakeType {
    /// `handshake_request`: ask to be trusted.
    #[serde(rename = "handshake_request")]
    Request,
    /// `handshake_accept`: grant trust.
    #[serde(rename = "handshake_accept")]
    Accept,
    /// `handshake_reject`: refuse a request.
    #[serde(rename = "handshake_reject")]
    Reject,
    /// `handshake_revoke`: withdraw trust.
    #[serde(rename = "handshake_revoke")]
    Revoke,
}

impl HandshakeType {
    /// The wire name, e.g. `handshake_request`.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeType::Request => "handshake_request",
            HandshakeType::Accept => "handshake_accept",
            HandshakeType::Reject => "handshake_reject",
            HandshakeType::Revoke => "handshake_revoke",
        }
    }
}

impl core::fmt::Display for HandshakeType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One trust-handshake message (§9.2). Field order is the reference's and is
/// the serialisation order.
///
/// Missing fields other than `type` decode as empty / zero, as Go's decoder
/// does; unknown fields are ignored. (Go also matches keys
/// case-insensitively; this decoder does not.)
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct HandshakeMessage {
    /// Message kind.
    #[serde(rename = "type")]
    pub kind: HandshakeType,
    /// Sender's node id.
    #[serde(default)]
    pub node_id: u32,
    /// Sender's Ed25519 public key, base64 (empty if none).
    #[serde(default)]
    pub public_key: String,
    /// Free text for requests, else empty.
    #[serde(default)]
    pub justification: String,
    /// Base64 Ed25519 signature over [`signed_string`].
    #[serde(default)]
    pub signature: String,
    /// Rejection / revocation text, else empty.
    #[serde(default)]
    pub reason: String,
    /// Unix seconds at sending.
    #[serde(default)]
    pub timestamp: i64,
}

/// `handshake:<from>:<to>`: what every handshake signature covers (§9.3).
pub fn signed_string(from: u32, to: u32) -> String {
    format!("handshake:{from}:{to}")
}

/// `respond:<responder>:<requester>`: what a registry-relayed response is
/// signed over (§9.3, §6.4.8).
pub fn respond_signed_string(responder: u32, requester: u32) -> String {
    format!("respond:{responder}:{requester}")
}

/// Why a handshake message or trust file was refused.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum TrustError {
    /// More than [`MAX_MESSAGE_LEN`] bytes.
    #[error("handshake message too large: {0} bytes (max 4096)")]
    TooLarge(usize),
    /// Not a JSON message of the expected shape.
    #[error("invalid handshake JSON: {0}")]
    Json(String),
    /// A base64 field that does not decode to the expected length.
    #[error("invalid {field}: {reason}")]
    Field {
        /// `public_key` or `signature`.
        field: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// Older than [`MAX_AGE_SECS`] or further than [`MAX_FUTURE_SKEW_SECS`]
    /// in the future (§9.4 step 1).
    #[error("handshake timestamp {timestamp} out of range (now {now})")]
    Stale {
        /// The message's timestamp.
        timestamp: i64,
        /// The receiver's clock.
        now: i64,
    },
    /// A `trust.json` that does not parse.
    #[error("invalid trust file: {0}")]
    TrustFile(String),
}

impl HandshakeMessage {
    /// A message with the key and signature base64-encoded (standard
    /// alphabet, padded, §9.3).
    pub fn new(
        kind: HandshakeType,
        node_id: u32,
        public_key: &[u8; 32],
        signature: &[u8; 64],
        timestamp: i64,
    ) -> HandshakeMessage {
        let b64 = base64::engine::general_purpose::STANDARD;
        HandshakeMessage {
            kind,
            node_id,
            public_key: b64.encode(public_key),
            justification: String::new(),
            signature: b64.encode(signature),
            reason: String::new(),
            timestamp,
        }
    }

    /// Parses one complete message of at most [`MAX_MESSAGE_LEN`] bytes
    /// (surrounding whitespace allowed, nothing else after the object).
    pub fn from_slice(bytes: &[u8]) -> Result<HandshakeMessage, TrustError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(TrustError::TooLarge(bytes.len()));
        }
        serde_json::from_slice(bytes).map_err(|e| TrustError::Json(e.to_string()))
    }

    /// For a receiver accumulating stream bytes (§9.1): `Ok(None)` while the
    /// bytes so far are a valid but unfinished JSON prefix, the message once
    /// complete, an error when it can no longer become valid or exceeds
    /// [`MAX_MESSAGE_LEN`].
    pub fn parse_partial(bytes: &[u8]) -> Result<Option<HandshakeMessage>, TrustError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(TrustError::TooLarge(bytes.len()));
        }
        match serde_json::from_slice(bytes) {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.is_eof() => Ok(None),
            Err(e) => Err(TrustError::Json(e.to_string())),
        }
    }

    /// The compact JSON the reference sends and hashes: the seven fields in
    /// order, Go's string escaping (§9.2).
    pub fn canonical_json(&self) -> String {
        to_go_json(self, false)
    }

    /// SHA-256 of [`HandshakeMessage::canonical_json`]: the replay-set key
    /// (§9.4 step 2).
    pub fn replay_hash(&self) -> [u8; 32] {
        sha2::Sha256::digest(self.canonical_json().as_bytes()).into()
    }

    /// The string this message's signature must cover when sent to `to`.
    pub fn signed_string_to(&self, to: u32) -> String {
        signed_string(self.node_id, to)
    }

    /// The decoded public key; `Ok(None)` when the field is empty.
    pub fn public_key_bytes(&self) -> Result<Option<[u8; 32]>, TrustError> {
        decode_fixed(&self.public_key, "public_key")
    }

    /// The decoded signature; `Ok(None)` when the field is empty.
    pub fn signature_bytes(&self) -> Result<Option<[u8; 64]>, TrustError> {
        decode_fixed(&self.signature, "signature")
    }

    /// §9.4 step 1 against the receiver's clock (unix seconds).
    pub fn check_timestamp(&self, now: i64) -> Result<(), TrustError> {
        let age = now.saturating_sub(self.timestamp);
        if !(-MAX_FUTURE_SKEW_SECS..=MAX_AGE_SECS).contains(&age) {
            return Err(TrustError::Stale {
                timestamp: self.timestamp,
                now,
            });
        }
        Ok(())
    }
}

fn decode_fixed<const N: usize>(
    text: &str,
    field: &'static str,
) -> Result<Option<[u8; N]>, TrustError> {
    if text.is_empty() {
        return Ok(None);
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| TrustError::Field {
            field,
            reason: e.to_string(),
        })?;
    let len = bytes.len();
    bytes.try_into().map(Some).map_err(|_| TrustError::Field {
        field,
        reason: format!("{len} bytes (expected {N})"),
    })
}

/// One trusted peer in `trust.json` (§11).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct TrustedPeer {
    /// The peer's node id.
    pub node_id: u32,
    /// Its Ed25519 key, base64, or empty.
    #[serde(default)]
    pub public_key: String,
    /// RFC 3339 time of approval.
    #[serde(default)]
    pub approved_at: String,
    /// Trust was granted in both directions.
    #[serde(default)]
    pub mutual: bool,
    /// The shared network that implied the trust; 0 (omitted) if none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub network: u16,
    /// How the trust came about (`mutual`, `approved`, `network`, `auto`);
    /// our addition, omitted when empty (the reference ignores unknown
    /// fields).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub via: String,
}

/// One pending (not yet approved) request in `trust.json` (§11).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PendingRequest {
    /// The requester's node id.
    pub node_id: u32,
    /// Its Ed25519 key, base64; omitted if empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub public_key: String,
    /// The request's justification; omitted if empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub justification: String,
    /// RFC 3339 time of receipt.
    #[serde(default)]
    pub received_at: String,
}

/// The whole `trust.json` (§11). `pending` is omitted when empty; a `null`
/// list (Go's nil slice) reads as empty.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct TrustFile {
    /// Trusted peers.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub trusted: Vec<TrustedPeer>,
    /// Requests awaiting the operator.
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub pending: Vec<PendingRequest>,
}

impl TrustFile {
    /// Parses the file's bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<TrustFile, TrustError> {
        serde_json::from_slice(bytes).map_err(|e| TrustError::TrustFile(e.to_string()))
    }

    /// The file as the reference writes it: Go's `MarshalIndent` with a
    /// 2-space indent, no trailing newline.
    pub fn to_pretty_json(&self) -> String {
        to_go_json(self, true)
    }
}

fn is_zero(v: &u16) -> bool {
    *v == 0
}

fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// Serialises `value` as Go's `encoding/json` would: compact like
/// `json.Marshal`, or pretty like `json.MarshalIndent(v, "", "  ")`.
pub fn to_go_json<T: Serialize + ?Sized>(value: &T, pretty: bool) -> String {
    let mut out = Vec::new();
    let result = if pretty {
        let f = GoFormatter(serde_json::ser::PrettyFormatter::with_indent(b"  "));
        value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, f))
    } else {
        let f = GoFormatter(serde_json::ser::CompactFormatter);
        value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, f))
    };
    // Our types have string keys only and writing to a Vec cannot fail; a
    // failure would leave partial output, which `from_utf8_lossy` keeps.
    debug_assert!(result.is_ok());
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// A serde_json formatter that adds Go's extra string escapes (`<`, `>`,
/// `&` as `\u003c`, `\u003e`, `\u0026`; U+2028/U+2029 as `\u2028`/`\u2029`)
/// to an inner formatter. Control characters are already escaped like Go
/// (≥ 1.22) by serde_json: `\b \f \n \r \t`, others as lower-case `\u00XX`.
pub struct GoFormatter<F>(pub F);

impl<F: serde_json::ser::Formatter> serde_json::ser::Formatter for GoFormatter<F> {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let esc = match c {
                '<' => "\\u003c",
                '>' => "\\u003e",
                '&' => "\\u0026",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            w.write_all(&fragment.as_bytes()[start..i])?;
            w.write_all(esc.as_bytes())?;
            start = i + c.len_utf8();
        }
        w.write_all(&fragment.as_bytes()[start..])
    }
    fn begin_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.begin_array(w)
    }
    fn end_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_array(w)
    }
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.0.begin_array_value(w, first)
    }
    fn end_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_array_value(w)
    }
    fn begin_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.begin_object(w)
    }
    fn end_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_object(w)
    }
    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.0.begin_object_key(w, first)
    }
    fn end_object_key<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_object_key(w)
    }
    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.begin_object_value(w)
    }
    fn end_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_object_value(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HandshakeMessage {
        HandshakeMessage {
            kind: HandshakeType::Request,
            node_id: 42,
            public_key: "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=".into(),
            justification: "need weather data".into(),
            signature: String::new(),
            reason: String::new(),
            timestamp: 1_767_225_600,
        }
    }

    #[test]
    fn go_escaping() {
        let m = HandshakeMessage {
            justification: "<a&b>\u{2028}\u{2029}\n\u{1}\u{8}\u{c}\"\\é".into(),
            ..sample()
        };
        let j = m.canonical_json();
        assert!(
            j.contains(r#""justification":"\u003ca\u0026b\u003e\u2028\u2029\n\u0001\b\f\"\\é""#),
            "{j}"
        );
        assert_eq!(HandshakeMessage::from_slice(j.as_bytes()).unwrap(), m);
    }

    #[test]
    fn field_order_and_defaults() {
        let j = sample().canonical_json();
        assert!(j.starts_with(r#"{"type":"handshake_request","node_id":42,"public_key":"#));
        assert!(j.ends_with(r#""signature":"","reason":"","timestamp":1767225600}"#));
        let m = HandshakeMessage::from_slice(br#"{"type":"handshake_revoke","extra":1}"#).unwrap();
        assert_eq!(m.kind, HandshakeType::Revoke);
        assert_eq!((m.node_id, m.timestamp), (0, 0));
        assert!(HandshakeMessage::from_slice(br#"{"node_id":1}"#).is_err());
        assert!(HandshakeMessage::from_slice(br#"{"type":"handshake_hello"}"#).is_err());
        assert!(
            HandshakeMessage::from_slice(br#"{"type":"handshake_accept","node_id":-1}"#).is_err()
        );
        assert!(HandshakeMessage::from_slice(b"[]").is_err());
        assert!(HandshakeMessage::from_slice(b"").is_err());
    }

    #[test]
    fn size_limit() {
        let mut big = sample();
        big.justification = "x".repeat(MAX_MESSAGE_LEN);
        let j = big.canonical_json();
        assert_eq!(
            HandshakeMessage::from_slice(j.as_bytes()),
            Err(TrustError::TooLarge(j.len()))
        );
        assert!(HandshakeMessage::parse_partial(j.as_bytes()).is_err());
    }

    #[test]
    fn partial_accumulation() {
        let j = sample().canonical_json();
        for n in 0..j.len() {
            assert_eq!(
                HandshakeMessage::parse_partial(&j.as_bytes()[..n]),
                Ok(None),
                "{n}"
            );
        }
        assert_eq!(
            HandshakeMessage::parse_partial(j.as_bytes()),
            Ok(Some(sample()))
        );
        assert!(HandshakeMessage::parse_partial(b"{\"type\":7").is_err());
        assert!(HandshakeMessage::parse_partial(b"x").is_err());
    }

    #[test]
    fn timestamps() {
        let m = sample();
        let t = m.timestamp;
        assert!(m.check_timestamp(t).is_ok());
        assert!(m.check_timestamp(t + MAX_AGE_SECS).is_ok());
        assert!(m.check_timestamp(t + MAX_AGE_SECS + 1).is_err());
        assert!(m.check_timestamp(t - MAX_FUTURE_SKEW_SECS).is_ok());
        assert!(m.check_timestamp(t - MAX_FUTURE_SKEW_SECS - 1).is_err());
        let extreme = HandshakeMessage {
            timestamp: i64::MIN,
            ..sample()
        };
        assert!(extreme.check_timestamp(i64::MAX).is_err());
        assert!(sample().check_timestamp(i64::MIN).is_err());
    }

    #[test]
    fn base64_fields() {
        let m = HandshakeMessage::new(HandshakeType::Accept, 7, &[1; 32], &[2; 64], 5);
        assert_eq!(m.public_key_bytes(), Ok(Some([1; 32])));
        assert_eq!(m.signature_bytes(), Ok(Some([2; 64])));
        let empty = sample();
        assert_eq!(empty.signature_bytes(), Ok(None));
        let bad = HandshakeMessage {
            public_key: "AAAA".into(),
            signature: "!!".into(),
            ..sample()
        };
        assert!(bad.public_key_bytes().is_err());
        assert!(bad.signature_bytes().is_err());
        assert_eq!(signed_string(42, 1000), "handshake:42:1000");
        assert_eq!(m.signed_string_to(9), "handshake:7:9");
        assert_eq!(respond_signed_string(42, 1000), "respond:42:1000");
    }

    #[test]
    fn trust_file_shapes() {
        let empty = TrustFile::default();
        assert_eq!(empty.to_pretty_json(), "{\n  \"trusted\": []\n}");
        let f = TrustFile::from_slice(br#"{"trusted":null,"pending":null}"#).unwrap();
        assert_eq!(f, empty);
        let f = TrustFile {
            trusted: vec![TrustedPeer {
                node_id: 1,
                public_key: String::new(),
                approved_at: "t".into(),
                mutual: false,
                network: 7,
                via: String::new(),
            }],
            pending: vec![],
        };
        let j = f.to_pretty_json();
        assert!(j.contains("\"public_key\": \"\""), "{j}");
        assert!(j.contains("\"mutual\": false"), "{j}");
        assert!(j.contains("\"network\": 7"), "{j}");
        assert_eq!(TrustFile::from_slice(j.as_bytes()).unwrap(), f);
        assert!(TrustFile::from_slice(b"{").is_err());
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn kind() -> impl Strategy<Value = HandshakeType> {
            prop_oneof![
                Just(HandshakeType::Request),
                Just(HandshakeType::Accept),
                Just(HandshakeType::Reject),
                Just(HandshakeType::Revoke),
            ]
        }

        proptest! {
            #[test]
            fn json_round_trip(
                kind in kind(),
                node_id in any::<u32>(),
                public_key in "\\PC{0,50}",
                justification in "\\PC{0,200}",
                signature in "[A-Za-z0-9+/=]{0,90}",
                reason in ".{0,40}",
                timestamp in any::<i64>(),
            ) {
                let m = HandshakeMessage { kind, node_id, public_key, justification, signature, reason, timestamp };
                let j = m.canonical_json();
                let back = HandshakeMessage::from_slice(j.as_bytes()).unwrap();
                prop_assert_eq!(&back, &m);
                prop_assert_eq!(back.canonical_json(), j);
                prop_assert_eq!(back.replay_hash(), m.replay_hash());
            }

            #[test]
            fn arbitrary_bytes_never_panic(v in proptest::collection::vec(any::<u8>(), 0..300)) {
                let _ = HandshakeMessage::from_slice(&v);
                let _ = HandshakeMessage::parse_partial(&v);
                let _ = TrustFile::from_slice(&v);
            }

            #[test]
            fn trust_file_round_trip(
                ids in proptest::collection::vec((any::<u32>(), any::<bool>(), any::<u16>(), ".{0,20}"), 0..4),
                pend in proptest::collection::vec((any::<u32>(), ".{0,20}", ".{0,20}"), 0..4),
            ) {
                let f = TrustFile {
                    trusted: ids.into_iter().map(|(node_id, mutual, network, k)| TrustedPeer {
                        node_id, public_key: k, approved_at: "2026-01-01T12:00:00Z".into(), mutual, network, via: String::new(),
                    }).collect(),
                    pending: pend.into_iter().map(|(node_id, k, j)| PendingRequest {
                        node_id, public_key: k, justification: j, received_at: "2026-01-01T12:00:00Z".into(),
                    }).collect(),
                };
                let j = f.to_pretty_json();
                let back = TrustFile::from_slice(j.as_bytes()).unwrap();
                prop_assert_eq!(&back, &f);
                prop_assert_eq!(back.to_pretty_json(), j);
            }
        }
    }
}
