//! Registry protocol messages (spec §6): the TCP framing, the JSON requests
//! and responses a node uses, the signed "challenge" strings, the error-text
//! rule, and the binary-mode frames.
//!
//! Sans-IO: [`encode_frame`] / [`decode_frame`] / [`FrameDecoder`] turn bytes
//! into frame payloads and back without touching a socket, so the server, the
//! client and the fuzz target share one implementation. A decoder never
//! allocates more than the bytes it was actually given, and refuses a length
//! prefix above [`MAX_FRAME_LEN`] as soon as the 4 prefix bytes are seen.
//!
//! JSON messages are serde types: [`Request`] and [`Response`] are internally
//! tagged on `"type"`, with one struct per message so callers can build them
//! field by field. Optional fields are omitted when absent. [`to_json`]
//! serialises through `serde_json::Value`, whose map is ordered, so the bytes
//! have the reference's sorted key order and re-encode its frames exactly.
//! Node-id fields are read leniently, like the reference (which reads every
//! number as a float): an integral float is accepted, a string reads as 0.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Largest frame payload in either mode: 4 MiB (spec §6.1, App. C).
pub const MAX_FRAME_LEN: usize = 4 * 1024 * 1024;

/// The 5-byte preamble that switches a connection to binary mode (§6.1):
/// `"PILT"` and version 1.
pub const BINARY_PREAMBLE: [u8; 5] = *b"PILT\x01";

/// The protocol version a `register_ok` reports (§6.4.1).
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest `request_handshake` justification in bytes (§6.4.8).
pub const MAX_JUSTIFICATION: usize = 1024;

/// Handshake inbox capacity per node (§6.4.8).
pub const HANDSHAKE_INBOX: usize = 100;

/// Framing errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix (or the payload to encode) exceeds [`MAX_FRAME_LEN`].
    #[error("frame of {0} bytes exceeds the 4 MiB limit")]
    TooLarge(usize),
}

/// Prefixes `payload` with its u32 big-endian length.
pub fn encode_frame(payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    if payload.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(payload.len()));
    }
    let mut v = Vec::with_capacity(4 + payload.len());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    Ok(v)
}

/// The result of looking for one frame at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// At least this many more bytes are needed.
    NeedMore(usize),
    /// A complete frame: its payload and the bytes it occupied (4 + len).
    Frame {
        /// The payload after the length prefix.
        payload: &'a [u8],
        /// Bytes consumed from the front of the buffer.
        consumed: usize,
    },
}

/// Looks for one length-prefixed frame at the front of `buf`.
pub fn decode_frame(buf: &[u8]) -> Result<Decoded<'_>, FrameError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(Decoded::NeedMore(4 - buf.len()));
    };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(len));
    }
    match buf.get(4..4 + len) {
        Some(payload) => Ok(Decoded::Frame {
            payload,
            consumed: 4 + len,
        }),
        None => Ok(Decoded::NeedMore(4 + len - buf.len())),
    }
}

/// An incremental frame decoder: push bytes as they arrive, pop payloads.
///
/// Memory is bounded by what was pushed (never by a claimed length), and a
/// too-large prefix is reported before any of its payload is buffered.
#[derive(Debug, Default, Clone)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Drops `n` buffered bytes (e.g. the binary-mode preamble).
    pub fn discard(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
    }

    /// Pops the next complete frame payload, `Ok(None)` if more bytes are
    /// needed. After an error the decoder should be discarded (the stream is
    /// no longer in sync).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        match decode_frame(self.pending())? {
            Decoded::NeedMore(_) => {
                if self.start > 0 {
                    self.buf.drain(..self.start);
                    self.start = 0;
                }
                // Give back the memory of a large frame once it is consumed.
                if self.buf.capacity() > 64 * 1024 && self.buf.len() <= 16 * 1024 {
                    self.buf.shrink_to(16 * 1024);
                }
                Ok(None)
            }
            Decoded::Frame { payload, consumed } => {
                let out = payload.to_vec();
                self.start += consumed;
                Ok(Some(out))
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Signed strings (spec §6.3)

/// The exact ASCII "challenge" strings signed for each operation (§6.3).
/// Decimal numbers, no padding, no nonce.
pub mod signed {
    /// `heartbeat:<node_id>`
    pub fn heartbeat(node_id: u32) -> String {
        format!("heartbeat:{node_id}")
    }
    /// `deregister:<node_id>`
    pub fn deregister(node_id: u32) -> String {
        format!("deregister:{node_id}")
    }
    /// `resolve:<requester_id>:<node_id>`
    pub fn resolve(requester_id: u32, node_id: u32) -> String {
        format!("resolve:{requester_id}:{node_id}")
    }
    /// `report_trust:<node_id>:<peer_id>`
    pub fn report_trust(node_id: u32, peer_id: u32) -> String {
        format!("report_trust:{node_id}:{peer_id}")
    }
    /// `revoke_trust:<node_id>:<peer_id>`
    pub fn revoke_trust(node_id: u32, peer_id: u32) -> String {
        format!("revoke_trust:{node_id}:{peer_id}")
    }
    /// `set_visibility:<node_id>`
    pub fn set_visibility(node_id: u32) -> String {
        format!("set_visibility:{node_id}")
    }
    /// `set_hostname:<node_id>`
    pub fn set_hostname(node_id: u32) -> String {
        format!("set_hostname:{node_id}")
    }
    /// `set_tags:<node_id>`
    pub fn set_tags(node_id: u32) -> String {
        format!("set_tags:{node_id}")
    }
    /// `set_task_exec:<node_id>`
    pub fn set_task_exec(node_id: u32) -> String {
        format!("set_task_exec:{node_id}")
    }
    /// `poll_handshakes:<node_id>`
    pub fn poll_handshakes(node_id: u32) -> String {
        format!("poll_handshakes:{node_id}")
    }
    /// `handshake:<from_node_id>:<to_node_id>` (request_handshake)
    pub fn request_handshake(from_node_id: u32, to_node_id: u32) -> String {
        format!("handshake:{from_node_id}:{to_node_id}")
    }
    /// `respond:<node_id>:<peer_id>` (respond_handshake, signed by `node_id`)
    pub fn respond_handshake(node_id: u32, peer_id: u32) -> String {
        format!("respond:{node_id}:{peer_id}")
    }
    /// `punch:<node_a>:<node_b>`
    pub fn punch(node_a: u32, node_b: u32) -> String {
        format!("punch:{node_a}:{node_b}")
    }
    /// `join_network:<node_id>:<network_id>`
    pub fn join_network(node_id: u32, network_id: u16) -> String {
        format!("join_network:{node_id}:{network_id}")
    }
    /// `leave_network:<node_id>:<network_id>`
    pub fn leave_network(node_id: u32, network_id: u16) -> String {
        format!("leave_network:{node_id}:{network_id}")
    }
    /// `invite:<inviter_id>:<network_id>:<target_node_id>`
    pub fn invite_to_network(inviter_id: u32, network_id: u16, target_node_id: u32) -> String {
        format!("invite:{inviter_id}:{network_id}:{target_node_id}")
    }
    /// `poll_invites:<node_id>`
    pub fn poll_invites(node_id: u32) -> String {
        format!("poll_invites:{node_id}")
    }
    /// `respond_invite:<node_id>:<network_id>`
    pub fn respond_invite(node_id: u32, network_id: u16) -> String {
        format!("respond_invite:{node_id}:{network_id}")
    }
    /// `set_key_expiry:<node_id>`
    pub fn set_key_expiry(node_id: u32) -> String {
        format!("set_key_expiry:{node_id}")
    }
    /// `rotate:<node_id>` (signed with the old key)
    pub fn rotate_key(node_id: u32) -> String {
        format!("rotate:{node_id}")
    }
}

/// Base64 (standard alphabet, padded) of a signature or key (§6.2).
pub fn b64_encode(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// Decodes a base64 signature field into 64 raw bytes.
pub fn decode_signature(s: &str) -> Option<[u8; 64]> {
    B64.decode(s).ok()?.try_into().ok()
}

/// Decodes a base64 public-key field into 32 raw bytes.
pub fn decode_public_key(s: &str) -> Option<[u8; 32]> {
    B64.decode(s).ok()?.try_into().ok()
}

// ---------------------------------------------------------------------------
// Error text (spec §6.2)

/// Words that let a server error text through to the client (§6.2).
pub const PASS_THROUGH_WORDS: [&str; 11] = [
    "rate limited",
    "enterprise feature",
    "expired",
    "already",
    "not a member",
    "cannot",
    "too many",
    "too long",
    "not found",
    "invalid",
    "required",
];

/// The text an error response carries: `text` if it contains one of
/// [`PASS_THROUGH_WORDS`], otherwise `request failed` (§6.2).
pub fn public_error_text(text: &str) -> String {
    if PASS_THROUGH_WORDS.iter().any(|w| text.contains(w)) {
        text.to_string()
    } else {
        "request failed".to_string()
    }
}

// ---------------------------------------------------------------------------
// Lenient numbers

mod lenient {
    //! The reference decodes JSON into `map[string]interface{}` and converts
    //! float64 numbers; strings (and other non-numbers) read as 0 (§6.2).
    use serde::{Deserialize, Deserializer};

    fn to_u64(v: &serde_json::Value, max: u64) -> Result<u64, String> {
        match v {
            serde_json::Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    if u <= max {
                        return Ok(u);
                    }
                } else if let Some(f) = n.as_f64() {
                    if f >= 0.0 && f <= max as f64 && f.fract() == 0.0 {
                        return Ok(f as u64);
                    }
                }
                Err(format!("number {n} out of range"))
            }
            serde_json::Value::String(_) | serde_json::Value::Null => Ok(0),
            _ => Err("expected a number".into()),
        }
    }

    pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        to_u64(&v, u32::MAX.into())
            .map(|u| u as u32)
            .map_err(serde::de::Error::custom)
    }

    pub fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        if v.is_null() {
            return Ok(None);
        }
        to_u64(&v, u32::MAX.into())
            .map(|u| Some(u as u32))
            .map_err(serde::de::Error::custom)
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

// ---------------------------------------------------------------------------
// Requests (spec §6.4)

/// `register` (§6.4.1). Not signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    /// `host:port`; only the port is used by the registry.
    #[serde(default)]
    pub listen_addr: String,
    /// Base64 Ed25519 public key (required).
    pub public_key: String,
    /// Owner e-mail (informational; never used to take over an id here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Private LAN endpoints `ip:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lan_addrs: Option<Vec<String>>,
    /// Software version, e.g. `v1.9.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Hostname to claim at registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Protocol version (only logged by the reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<u32>,
    /// Our extension (ignored by a reference registry): unix seconds when
    /// the registration was signed, part of [`Register::signed_text`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    /// Our extension: base64 Ed25519 signature of [`Register::signed_text`]
    /// by `public_key`, proving possession of the key (see docs/SECURITY.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl Register {
    /// A registration for `public_key` listening on `listen_addr`.
    pub fn new(public_key: &[u8; 32], listen_addr: impl Into<String>) -> Self {
        Register {
            listen_addr: listen_addr.into(),
            public_key: b64_encode(public_key),
            owner: None,
            lan_addrs: None,
            version: None,
            hostname: None,
            protocol_version: None,
            timestamp: None,
            signature: None,
        }
    }

    /// The string a signed registration signs:
    /// `register:<public_key>:<listen_addr>:<timestamp>` (our extension; the
    /// timestamp bounds replays to the registry's acceptance window).
    pub fn signed_text(&self) -> String {
        format!(
            "register:{}:{}:{}",
            self.public_key,
            self.listen_addr,
            self.timestamp.unwrap_or(0)
        )
    }
}

/// A request naming one node and signed by it: `heartbeat`, `deregister`,
/// `poll_handshakes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSigned {
    /// The node.
    #[serde(deserialize_with = "lenient::u32")]
    pub node_id: u32,
    /// Base64 signature of the operation's string (§6.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// `lookup` (§6.4.3). Not signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lookup {
    /// The node to look up.
    #[serde(deserialize_with = "lenient::u32")]
    pub node_id: u32,
}

/// `resolve` (§6.4.4), signed `resolve:<requester_id>:<node_id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolve {
    /// The target.
    #[serde(deserialize_with = "lenient::u32")]
    pub node_id: u32,
    /// The requester (must be registered; signs).
    #[serde(default, deserialize_with = "lenient::u32")]
    pub requester_id: u32,
    /// Base64 signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// `set_hostname` (§6.4.5), signed `set_hostname:<node_id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetHostname {
    /// The node.
    #[serde(deserialize_with = "lenient::u32")]
    pub node_id: u32,
    /// The new hostname; empty clears.
    #[serde(default)]
    pub hostname: String,
    /// Base64 signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// `resolve_hostname` (§6.4.6). Not signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolveHostname {
    /// The name to resolve.
    #[serde(default)]
    pub hostname: String,
    /// Who asks (unauthenticated; lets private nodes resolve their peers).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_u32"
    )]
    pub requester_id: Option<u32>,
}

/// `set_visibility` (§6.4.7), signed `set_visibility:<node_id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetVisibility {
    /// The node.
    #[serde(deserialize_with = "lenient::u32")]
    pub node_id: u32,
    /// True for public.
    #[serde(default)]
    pub public: bool,
    /// Base64 signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// `request_handshake` (§6.4.8), signed `handshake:<from>:<to>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestHandshake {
    /// The requester (signs).
    #[serde(deserialize_with = "lenient::u32")]
    pub from_node_id: u32,
    /// The target.
    #[serde(deserialize_with = "lenient::u32")]
    pub to_node_id: u32,
    /// Free text, at most [`MAX_JUSTIFICATION`] bytes.
    #[serde(default)]
    pub justification: String,
    /// Base64 signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// `respond_handshake` (§6.4.8), signed `respond:<node_id>:<peer_id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RespondHandshake {
    /// The responder (signs).
    #[serde(deserialize_with = "lenient::u32")]
    pub node_id: u32,
    /// The original requester.
    #[serde(deserialize_with = "lenient::u32")]
    pub peer_id: u32,
    /// Accept (creates the trust pair) or reject.
    #[serde(default)]
    pub accept: bool,
    /// Base64 signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// `report_trust`, `revoke_trust` (signed by `node_id`) and `check_trust`
/// (unsigned) (§6.4.9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustPair {
    /// The reporting node.
    #[serde(deserialize_with = "lenient::u32")]
    pub node_id: u32,
    /// The other node.
    #[serde(deserialize_with = "lenient::u32")]
    pub peer_id: u32,
    /// Base64 signature (absent for `check_trust`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// `punch` (§6.4.11), signed `punch:<node_a>:<node_b>` by the requester.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Punch {
    /// The requester (signs).
    #[serde(deserialize_with = "lenient::u32")]
    pub requester_id: u32,
    /// First node.
    #[serde(deserialize_with = "lenient::u32")]
    pub node_a: u32,
    /// Second node.
    #[serde(deserialize_with = "lenient::u32")]
    pub node_b: u32,
    /// Base64 signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// Every request a node sends (§6.4), tagged by `"type"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// §6.4.1
    Register(Register),
    /// §6.4.2
    Heartbeat(NodeSigned),
    /// §6.4.3
    Lookup(Lookup),
    /// §6.4.4
    Resolve(Resolve),
    /// §6.4.5
    SetHostname(SetHostname),
    /// §6.4.6
    ResolveHostname(ResolveHostname),
    /// §6.4.7
    SetVisibility(SetVisibility),
    /// §6.4.10
    Deregister(NodeSigned),
    /// §6.4.8
    RequestHandshake(RequestHandshake),
    /// §6.4.8
    PollHandshakes(NodeSigned),
    /// §6.4.8
    RespondHandshake(RespondHandshake),
    /// §6.4.9
    ReportTrust(TrustPair),
    /// §6.4.9
    RevokeTrust(TrustPair),
    /// §6.4.9
    CheckTrust(TrustPair),
    /// §6.4.11
    Punch(Punch),
    /// Networks, tags and discovery (§6.4.11; see [`super::networks`]).
    #[serde(untagged)]
    Network(super::networks::NetRequest),
}

impl Request {
    /// The `"type"` string.
    pub fn type_name(&self) -> &'static str {
        match self {
            Request::Register(_) => "register",
            Request::Heartbeat(_) => "heartbeat",
            Request::Lookup(_) => "lookup",
            Request::Resolve(_) => "resolve",
            Request::SetHostname(_) => "set_hostname",
            Request::ResolveHostname(_) => "resolve_hostname",
            Request::SetVisibility(_) => "set_visibility",
            Request::Deregister(_) => "deregister",
            Request::RequestHandshake(_) => "request_handshake",
            Request::PollHandshakes(_) => "poll_handshakes",
            Request::RespondHandshake(_) => "respond_handshake",
            Request::ReportTrust(_) => "report_trust",
            Request::RevokeTrust(_) => "revoke_trust",
            Request::CheckTrust(_) => "check_trust",
            Request::Punch(_) => "punch",
            Request::Network(r) => r.type_name(),
        }
    }

    /// For a signed operation: the signer's node id and the string it must
    /// have signed (§6.3). `None` for unsigned requests.
    pub fn signed_string(&self) -> Option<(u32, String)> {
        Some(match self {
            Request::Heartbeat(r) => (r.node_id, signed::heartbeat(r.node_id)),
            Request::Deregister(r) => (r.node_id, signed::deregister(r.node_id)),
            Request::PollHandshakes(r) => (r.node_id, signed::poll_handshakes(r.node_id)),
            Request::Resolve(r) => (r.requester_id, signed::resolve(r.requester_id, r.node_id)),
            Request::SetHostname(r) => (r.node_id, signed::set_hostname(r.node_id)),
            Request::SetVisibility(r) => (r.node_id, signed::set_visibility(r.node_id)),
            Request::RequestHandshake(r) => (
                r.from_node_id,
                signed::request_handshake(r.from_node_id, r.to_node_id),
            ),
            Request::RespondHandshake(r) => {
                (r.node_id, signed::respond_handshake(r.node_id, r.peer_id))
            }
            Request::ReportTrust(r) => (r.node_id, signed::report_trust(r.node_id, r.peer_id)),
            Request::RevokeTrust(r) => (r.node_id, signed::revoke_trust(r.node_id, r.peer_id)),
            Request::Punch(r) => (r.requester_id, signed::punch(r.node_a, r.node_b)),
            Request::Network(r) => return r.signed_string(),
            Request::Register(_)
            | Request::Lookup(_)
            | Request::ResolveHostname(_)
            | Request::CheckTrust(_) => return None,
        })
    }

    /// The base64 `signature` field, if the request has one.
    pub fn signature(&self) -> Option<&str> {
        match self {
            Request::Heartbeat(r) | Request::Deregister(r) | Request::PollHandshakes(r) => {
                r.signature.as_deref()
            }
            Request::Resolve(r) => r.signature.as_deref(),
            Request::SetHostname(r) => r.signature.as_deref(),
            Request::SetVisibility(r) => r.signature.as_deref(),
            Request::RequestHandshake(r) => r.signature.as_deref(),
            Request::RespondHandshake(r) => r.signature.as_deref(),
            Request::ReportTrust(r) | Request::RevokeTrust(r) | Request::CheckTrust(r) => {
                r.signature.as_deref()
            }
            Request::Punch(r) => r.signature.as_deref(),
            Request::Network(r) => r.signature(),
            Request::Register(_) | Request::Lookup(_) | Request::ResolveHostname(_) => None,
        }
    }

    /// Sets the `signature` field of a signed request to `sig` (base64).
    /// Unsigned requests are left unchanged.
    pub fn set_signature(&mut self, sig: &[u8; 64]) {
        let s = Some(b64_encode(sig));
        match self {
            Request::Heartbeat(r) | Request::Deregister(r) | Request::PollHandshakes(r) => {
                r.signature = s
            }
            Request::Resolve(r) => r.signature = s,
            Request::SetHostname(r) => r.signature = s,
            Request::SetVisibility(r) => r.signature = s,
            Request::RequestHandshake(r) => r.signature = s,
            Request::RespondHandshake(r) => r.signature = s,
            Request::ReportTrust(r) | Request::RevokeTrust(r) => r.signature = s,
            Request::Punch(r) => r.signature = s,
            Request::Network(r) => r.set_signature(b64_encode(sig)),
            Request::CheckTrust(_)
            | Request::Register(_)
            | Request::Lookup(_)
            | Request::ResolveHostname(_) => {}
        }
    }
}

// ---------------------------------------------------------------------------
// Responses (spec §6.4)

/// `register_ok` (§6.4.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterOk {
    /// The allocated (or restored) node id.
    #[serde(deserialize_with = "lenient::u32")]
    pub node_id: u32,
    /// Always 0 (backbone).
    #[serde(default)]
    pub network_id: u16,
    /// Backbone address text, e.g. `0:0000.0000.0001`.
    pub address: String,
    /// Echo of the registered key.
    pub public_key: String,
    /// TCP source IP of the registration + the `listen_addr` port.
    #[serde(default)]
    pub observed_addr: String,
    /// [`PROTOCOL_VERSION`].
    #[serde(default)]
    pub protocol_version: u32,
    /// The node's hostname, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Why the hostname in the request was not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname_error: Option<String>,
}

/// `heartbeat_ok` (§6.4.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatOk {
    /// Server unix time in seconds.
    #[serde(default)]
    pub time: i64,
    /// The key expires within 24 h.
    #[serde(default, skip_serializing_if = "is_false")]
    pub key_expiry_warning: bool,
}

/// `lookup_ok` (§6.4.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupOk {
    /// The node.
    #[serde(deserialize_with = "lenient::u32")]
    pub node_id: u32,
    /// Backbone address text.
    pub address: String,
    /// Network ids the node is a member of (0 always).
    #[serde(default)]
    pub networks: Vec<u16>,
    /// Base64 Ed25519 key.
    pub public_key: String,
    /// Visibility.
    #[serde(default)]
    pub public: bool,
    /// Reputation score (always 0 here).
    #[serde(default)]
    pub polo_score: i64,
    /// Hostname, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Tags, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Task execution flag.
    #[serde(default, skip_serializing_if = "is_false")]
    pub task_exec: bool,
    /// Endpoint, only for public nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub real_addr: Option<String>,
    /// Enterprise external id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// Software version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// `resolve_ok` (§6.4.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolveOk {
    /// The target.
    #[serde(deserialize_with = "lenient::u32")]
    pub node_id: u32,
    /// `ip:port`.
    pub real_addr: String,
    /// LAN endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lan_addrs: Option<Vec<String>>,
    /// Age of the node's key in days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_age_days: Option<u64>,
}

/// `set_hostname_ok` (§6.4.5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetHostnameOk {
    /// The node.
    #[serde(deserialize_with = "lenient::u32")]
    pub node_id: u32,
    /// The hostname now set (empty when cleared).
    #[serde(default)]
    pub hostname: String,
}

/// `resolve_hostname_ok` (§6.4.6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolveHostnameOk {
    /// The node.
    #[serde(deserialize_with = "lenient::u32")]
    pub node_id: u32,
    /// Backbone address text.
    pub address: String,
    /// Visibility.
    #[serde(default)]
    pub public: bool,
    /// The name.
    pub hostname: String,
}

/// `set_visibility_ok` (§6.4.7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetVisibilityOk {
    /// The node.
    #[serde(deserialize_with = "lenient::u32")]
    pub node_id: u32,
    /// `"public"` or `"private"`.
    pub visibility: String,
}

/// `request_handshake_ok` (§6.4.8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestHandshakeOk {
    /// `"delivered"`.
    pub status: String,
}

/// A relayed handshake request in a `poll_handshakes_ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeRequestEntry {
    /// The requester.
    #[serde(deserialize_with = "lenient::u32")]
    pub from_node_id: u32,
    /// Its justification.
    #[serde(default)]
    pub justification: String,
    /// Unix seconds when the registry received it.
    #[serde(default)]
    pub timestamp: i64,
}

/// A relayed handshake response in a `poll_handshakes_ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeResponseEntry {
    /// The responder.
    #[serde(deserialize_with = "lenient::u32")]
    pub from_node_id: u32,
    /// Accepted or rejected.
    #[serde(default)]
    pub accept: bool,
    /// Unix seconds when the registry received it.
    #[serde(default)]
    pub timestamp: i64,
}

/// `poll_handshakes_ok` (§6.4.8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollHandshakesOk {
    /// Pending requests addressed to the node.
    #[serde(default)]
    pub requests: Vec<HandshakeRequestEntry>,
    /// Responses to the node's own requests.
    #[serde(default)]
    pub responses: Vec<HandshakeResponseEntry>,
}

/// `respond_handshake_ok` (§6.4.8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RespondHandshakeOk {
    /// Echo of `accept`.
    #[serde(default)]
    pub accept: bool,
    /// Echo of `peer_id`.
    #[serde(deserialize_with = "lenient::u32")]
    pub peer_id: u32,
}

/// `check_trust_ok` (§6.4.9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckTrustOk {
    /// A trust pair exists (or the nodes share a non-backbone network).
    pub trusted: bool,
}

/// `punch_ok` (§6.4.11).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PunchOk {
    /// `node_a`'s endpoint.
    pub node_a_addr: String,
    /// `node_b`'s endpoint.
    pub node_b_addr: String,
}

/// An empty response body (`deregister_ok`, `report_trust_ok`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// `{"type":"error","error":"<text>"}` (§6.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Already sanitised text (see [`public_error_text`]).
    #[serde(default)]
    pub error: String,
}

/// Every response a node receives, tagged by `"type"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// `register_ok`
    RegisterOk(RegisterOk),
    /// `heartbeat_ok`
    HeartbeatOk(HeartbeatOk),
    /// `lookup_ok`
    LookupOk(LookupOk),
    /// `resolve_ok`
    ResolveOk(ResolveOk),
    /// `set_hostname_ok`
    SetHostnameOk(SetHostnameOk),
    /// `resolve_hostname_ok`
    ResolveHostnameOk(ResolveHostnameOk),
    /// `set_visibility_ok`
    SetVisibilityOk(SetVisibilityOk),
    /// `deregister_ok`
    DeregisterOk(Empty),
    /// `request_handshake_ok`
    RequestHandshakeOk(RequestHandshakeOk),
    /// `poll_handshakes_ok`
    PollHandshakesOk(PollHandshakesOk),
    /// `respond_handshake_ok`
    RespondHandshakeOk(RespondHandshakeOk),
    /// `report_trust_ok`
    ReportTrustOk(Empty),
    /// `revoke_trust_ok`
    RevokeTrustOk(Empty),
    /// `check_trust_ok`
    CheckTrustOk(CheckTrustOk),
    /// `punch_ok`
    PunchOk(PunchOk),
    /// `error`
    Error(ErrorBody),
    /// Networks, tags and discovery (see [`super::networks`]).
    #[serde(untagged)]
    Network(super::networks::NetResponse),
}

impl Response {
    /// An error response whose text follows the §6.2 pass-through rule.
    pub fn error(text: &str) -> Response {
        Response::Error(ErrorBody {
            error: public_error_text(text),
        })
    }

    /// The `"type"` string.
    pub fn type_name(&self) -> &'static str {
        match self {
            Response::RegisterOk(_) => "register_ok",
            Response::HeartbeatOk(_) => "heartbeat_ok",
            Response::LookupOk(_) => "lookup_ok",
            Response::ResolveOk(_) => "resolve_ok",
            Response::SetHostnameOk(_) => "set_hostname_ok",
            Response::ResolveHostnameOk(_) => "resolve_hostname_ok",
            Response::SetVisibilityOk(_) => "set_visibility_ok",
            Response::DeregisterOk(_) => "deregister_ok",
            Response::RequestHandshakeOk(_) => "request_handshake_ok",
            Response::PollHandshakesOk(_) => "poll_handshakes_ok",
            Response::RespondHandshakeOk(_) => "respond_handshake_ok",
            Response::ReportTrustOk(_) => "report_trust_ok",
            Response::RevokeTrustOk(_) => "revoke_trust_ok",
            Response::CheckTrustOk(_) => "check_trust_ok",
            Response::PunchOk(_) => "punch_ok",
            Response::Error(_) => "error",
            Response::Network(r) => r.type_name(),
        }
    }
}

/// JSON bytes of a message with keys sorted (the reference's order).
pub fn to_json<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serialising our own types to a Value cannot fail (no non-string map
    // keys, no failing Serialize impls); fall back to direct bytes anyway.
    match serde_json::to_value(msg) {
        Ok(v) => serde_json::to_vec(&v).unwrap_or_default(),
        Err(_) => serde_json::to_vec(msg).unwrap_or_default(),
    }
}

/// A complete JSON-mode frame for `msg`.
pub fn encode_json_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    encode_frame(&to_json(msg))
}

/// Parses a request payload. Any failure (not JSON, not an object, unknown
/// `type`, missing or mistyped field) is an error whose text the server
/// replaces by `request failed`.
pub fn parse_request(payload: &[u8]) -> Result<Request, serde_json::Error> {
    // Only a JSON object is a request (the reference decodes into a map).
    // Checked first because serde would read an array as a variant index
    // followed by the fields in order (`[1,2,3]` as a request).
    if payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(serde::de::Error::custom("a request must be a JSON object"));
    }
    serde_json::from_slice(payload)
}

/// Parses a response payload.
pub fn parse_response(payload: &[u8]) -> Result<Response, serde_json::Error> {
    serde_json::from_slice(payload)
}

// ---------------------------------------------------------------------------
// Binary mode (spec §6.5)

/// Binary-mode message types (§6.5).
pub mod binary_type {
    /// JSON pass-through (both directions).
    pub const JSON: u8 = 0x00;
    /// Heartbeat request.
    pub const HEARTBEAT: u8 = 0x01;
    /// Lookup request.
    pub const LOOKUP: u8 = 0x02;
    /// Resolve request.
    pub const RESOLVE: u8 = 0x03;
    /// Heartbeat reply.
    pub const HEARTBEAT_REPLY: u8 = 0x81;
    /// Lookup reply.
    pub const LOOKUP_REPLY: u8 = 0x82;
    /// Resolve reply.
    pub const RESOLVE_REPLY: u8 = 0x83;
    /// Error.
    pub const ERROR: u8 = 0xFF;
}

/// Errors parsing or emitting a binary-mode message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BinaryError {
    /// The payload ends before a field.
    #[error("binary message truncated")]
    Truncated,
    /// Bytes remain after the last field.
    #[error("binary message has trailing bytes")]
    Trailing,
    /// An unknown type byte.
    #[error("unknown binary message type 0x{0:02x}")]
    UnknownType(u8),
    /// A string field is not UTF-8.
    #[error("binary message string is not UTF-8")]
    Utf8,
    /// A field is too long for its length prefix, or the frame for 4 MiB.
    #[error("binary message field too long")]
    TooLong,
    /// A frame with no type byte.
    #[error("empty binary frame")]
    Empty,
}

/// `lookup` reply body in binary mode (0x82).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BinaryLookupReply {
    /// The node.
    pub node_id: u32,
    /// flags bit 0.
    pub public: bool,
    /// flags bit 1.
    pub task_exec: bool,
    /// Polo score.
    pub polo_score: i32,
    /// Network ids.
    pub networks: Vec<u16>,
    /// Raw public key (normally 32 bytes).
    pub public_key: Vec<u8>,
    /// Hostname (may be empty).
    pub hostname: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Endpoint (empty unless public).
    pub real_addr: String,
    /// External id (may be empty).
    pub external_id: String,
}

/// One binary-mode message (§6.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BinaryMessage {
    /// 0x00: a JSON request or response.
    Json(Vec<u8>),
    /// 0x01: heartbeat with a raw signature of `heartbeat:<id>`.
    Heartbeat {
        /// The node.
        node_id: u32,
        /// Raw Ed25519 signature.
        signature: [u8; 64],
    },
    /// 0x81: heartbeat reply.
    HeartbeatReply {
        /// Server unix time.
        unix_time: i64,
        /// flags bit 0.
        key_expiry_warning: bool,
    },
    /// 0x02: lookup.
    Lookup {
        /// The node.
        node_id: u32,
    },
    /// 0x82: lookup reply.
    LookupReply(BinaryLookupReply),
    /// 0x03: resolve with a raw signature of `resolve:<requester>:<node>`.
    Resolve {
        /// Target.
        node_id: u32,
        /// Requester.
        requester_id: u32,
        /// Raw Ed25519 signature.
        signature: [u8; 64],
    },
    /// 0x83: resolve reply.
    ResolveReply {
        /// Target.
        node_id: u32,
        /// Endpoint.
        real_addr: String,
        /// LAN endpoints.
        lan_addrs: Vec<String>,
        /// Key age; `None` is encoded as 0xFFFFFFFF.
        key_age_days: Option<u32>,
    },
    /// 0xFF: error text.
    Error(String),
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BinaryError> {
        if self.b.len() < n {
            return Err(BinaryError::Truncated);
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, BinaryError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, BinaryError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, BinaryError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i64(&mut self) -> Result<i64, BinaryError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(i64::from_be_bytes(a))
    }
    fn sig(&mut self) -> Result<[u8; 64], BinaryError> {
        let mut a = [0u8; 64];
        a.copy_from_slice(self.take(64)?);
        Ok(a)
    }
    fn str_n(&mut self, n: usize) -> Result<String, BinaryError> {
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| BinaryError::Utf8)
    }
    fn str8(&mut self) -> Result<String, BinaryError> {
        let n = self.u8()?;
        self.str_n(n.into())
    }
    fn str16(&mut self) -> Result<String, BinaryError> {
        let n = self.u16()?;
        self.str_n(n.into())
    }
    fn end(&self) -> Result<(), BinaryError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(BinaryError::Trailing)
        }
    }
}

fn put_str8(out: &mut Vec<u8>, s: &[u8]) -> Result<(), BinaryError> {
    let n = u8::try_from(s.len()).map_err(|_| BinaryError::TooLong)?;
    out.push(n);
    out.extend_from_slice(s);
    Ok(())
}

fn put_str16(out: &mut Vec<u8>, s: &[u8]) -> Result<(), BinaryError> {
    let n = u16::try_from(s.len()).map_err(|_| BinaryError::TooLong)?;
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(s);
    Ok(())
}

impl BinaryMessage {
    /// The type byte.
    pub fn msg_type(&self) -> u8 {
        match self {
            BinaryMessage::Json(_) => binary_type::JSON,
            BinaryMessage::Heartbeat { .. } => binary_type::HEARTBEAT,
            BinaryMessage::HeartbeatReply { .. } => binary_type::HEARTBEAT_REPLY,
            BinaryMessage::Lookup { .. } => binary_type::LOOKUP,
            BinaryMessage::LookupReply(_) => binary_type::LOOKUP_REPLY,
            BinaryMessage::Resolve { .. } => binary_type::RESOLVE,
            BinaryMessage::ResolveReply { .. } => binary_type::RESOLVE_REPLY,
            BinaryMessage::Error(_) => binary_type::ERROR,
        }
    }

    /// Parses the body of a frame of type `msg_type`.
    pub fn parse(msg_type: u8, payload: &[u8]) -> Result<BinaryMessage, BinaryError> {
        let mut r = Reader { b: payload };
        let m = match msg_type {
            binary_type::JSON => return Ok(BinaryMessage::Json(payload.to_vec())),
            binary_type::HEARTBEAT => BinaryMessage::Heartbeat {
                node_id: r.u32()?,
                signature: r.sig()?,
            },
            binary_type::HEARTBEAT_REPLY => BinaryMessage::HeartbeatReply {
                unix_time: r.i64()?,
                key_expiry_warning: r.u8()? & 1 != 0,
            },
            binary_type::LOOKUP => BinaryMessage::Lookup { node_id: r.u32()? },
            binary_type::LOOKUP_REPLY => {
                let node_id = r.u32()?;
                let flags = r.u8()?;
                let polo_score = r.u32()? as i32;
                let n = r.u16()?;
                let networks = (0..n).map(|_| r.u16()).collect::<Result<_, _>>()?;
                let pk_len = r.u8()?;
                let public_key = r.take(pk_len.into())?.to_vec();
                let hostname = r.str8()?;
                let tag_count = r.u8()?;
                let tags = (0..tag_count).map(|_| r.str8()).collect::<Result<_, _>>()?;
                let real_addr = r.str16()?;
                let external_id = r.str8()?;
                BinaryMessage::LookupReply(BinaryLookupReply {
                    node_id,
                    public: flags & 1 != 0,
                    task_exec: flags & 2 != 0,
                    polo_score,
                    networks,
                    public_key,
                    hostname,
                    tags,
                    real_addr,
                    external_id,
                })
            }
            binary_type::RESOLVE => BinaryMessage::Resolve {
                node_id: r.u32()?,
                requester_id: r.u32()?,
                signature: r.sig()?,
            },
            binary_type::RESOLVE_REPLY => {
                let node_id = r.u32()?;
                let real_addr = r.str16()?;
                let n = r.u16()?;
                let lan_addrs = (0..n).map(|_| r.str16()).collect::<Result<_, _>>()?;
                let age = r.u32()?;
                BinaryMessage::ResolveReply {
                    node_id,
                    real_addr,
                    lan_addrs,
                    key_age_days: (age != u32::MAX).then_some(age),
                }
            }
            binary_type::ERROR => BinaryMessage::Error(r.str16()?),
            other => return Err(BinaryError::UnknownType(other)),
        };
        r.end()?;
        Ok(m)
    }

    /// Parses a frame payload (type byte + body), as returned by
    /// [`decode_frame`] on a binary-mode connection.
    pub fn parse_frame_payload(payload: &[u8]) -> Result<BinaryMessage, BinaryError> {
        let (&ty, body) = payload.split_first().ok_or(BinaryError::Empty)?;
        Self::parse(ty, body)
    }

    /// The body bytes (without type and length).
    pub fn emit_body(&self) -> Result<Vec<u8>, BinaryError> {
        let mut o = Vec::new();
        match self {
            BinaryMessage::Json(j) => o.extend_from_slice(j),
            BinaryMessage::Heartbeat { node_id, signature } => {
                o.extend_from_slice(&node_id.to_be_bytes());
                o.extend_from_slice(signature);
            }
            BinaryMessage::HeartbeatReply {
                unix_time,
                key_expiry_warning,
            } => {
                o.extend_from_slice(&unix_time.to_be_bytes());
                o.push(u8::from(*key_expiry_warning));
            }
            BinaryMessage::Lookup { node_id } => o.extend_from_slice(&node_id.to_be_bytes()),
            BinaryMessage::LookupReply(l) => {
                o.extend_from_slice(&l.node_id.to_be_bytes());
                o.push(u8::from(l.public) | (u8::from(l.task_exec) << 1));
                o.extend_from_slice(&l.polo_score.to_be_bytes());
                let n = u16::try_from(l.networks.len()).map_err(|_| BinaryError::TooLong)?;
                o.extend_from_slice(&n.to_be_bytes());
                for net in &l.networks {
                    o.extend_from_slice(&net.to_be_bytes());
                }
                put_str8(&mut o, &l.public_key)?;
                put_str8(&mut o, l.hostname.as_bytes())?;
                o.push(u8::try_from(l.tags.len()).map_err(|_| BinaryError::TooLong)?);
                for t in &l.tags {
                    put_str8(&mut o, t.as_bytes())?;
                }
                put_str16(&mut o, l.real_addr.as_bytes())?;
                put_str8(&mut o, l.external_id.as_bytes())?;
            }
            BinaryMessage::Resolve {
                node_id,
                requester_id,
                signature,
            } => {
                o.extend_from_slice(&node_id.to_be_bytes());
                o.extend_from_slice(&requester_id.to_be_bytes());
                o.extend_from_slice(signature);
            }
            BinaryMessage::ResolveReply {
                node_id,
                real_addr,
                lan_addrs,
                key_age_days,
            } => {
                o.extend_from_slice(&node_id.to_be_bytes());
                put_str16(&mut o, real_addr.as_bytes())?;
                let n = u16::try_from(lan_addrs.len()).map_err(|_| BinaryError::TooLong)?;
                o.extend_from_slice(&n.to_be_bytes());
                for a in lan_addrs {
                    put_str16(&mut o, a.as_bytes())?;
                }
                o.extend_from_slice(&key_age_days.unwrap_or(u32::MAX).to_be_bytes());
            }
            BinaryMessage::Error(e) => put_str16(&mut o, e.as_bytes())?,
        }
        Ok(o)
    }

    /// The complete frame: `len(4) ‖ type(1) ‖ body`, len counting type+body.
    pub fn emit_frame(&self) -> Result<Vec<u8>, BinaryError> {
        let body = self.emit_body()?;
        if body.len() + 1 > MAX_FRAME_LEN {
            return Err(BinaryError::TooLong);
        }
        let mut o = Vec::with_capacity(5 + body.len());
        o.extend_from_slice(&((body.len() + 1) as u32).to_be_bytes());
        o.push(self.msg_type());
        o.extend_from_slice(&body);
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip_and_limits() {
        let f = encode_frame(b"{}").unwrap();
        assert_eq!(f, b"\0\0\0\x02{}");
        assert_eq!(
            decode_frame(&f).unwrap(),
            Decoded::Frame {
                payload: b"{}",
                consumed: 6
            }
        );
        assert_eq!(decode_frame(&f[..2]).unwrap(), Decoded::NeedMore(2));
        assert_eq!(decode_frame(&f[..5]).unwrap(), Decoded::NeedMore(1));
        let big = (64u32 << 20).to_be_bytes();
        assert_eq!(decode_frame(&big), Err(FrameError::TooLarge(64 << 20)));
        assert!(encode_frame(&vec![0; MAX_FRAME_LEN + 1]).is_err());
        let max = (MAX_FRAME_LEN as u32).to_be_bytes();
        assert_eq!(
            decode_frame(&max).unwrap(),
            Decoded::NeedMore(MAX_FRAME_LEN)
        );
    }

    #[test]
    fn decoder_handles_split_and_pipelined_frames() {
        let mut all = encode_frame(b"one").unwrap();
        all.extend(encode_frame(b"two").unwrap());
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        for b in &all {
            d.push(std::slice::from_ref(b));
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
        assert!(d.pending().is_empty());
        d.push(&[0xff, 0, 0, 0]);
        assert!(d.next_frame().is_err());
    }

    #[test]
    fn error_text_rule() {
        assert_eq!(public_error_text("bad signature"), "request failed");
        assert_eq!(
            public_error_text("node 7: node not found"),
            "node 7: node not found"
        );
        assert_eq!(
            public_error_text("hostname \"a\" already in use by node 2"),
            "hostname \"a\" already in use by node 2"
        );
    }

    #[test]
    fn requests_use_reference_field_names_and_omit_absent_fields() {
        let r = Request::ResolveHostname(ResolveHostname {
            hostname: "alpha".into(),
            requester_id: None,
        });
        assert_eq!(
            String::from_utf8(to_json(&r)).unwrap(),
            r#"{"hostname":"alpha","type":"resolve_hostname"}"#
        );
        let hb = Request::Heartbeat(NodeSigned {
            node_id: 1,
            signature: None,
        });
        assert_eq!(to_json(&hb), br#"{"node_id":1,"type":"heartbeat"}"#);
    }

    #[test]
    fn lenient_numbers() {
        let r = parse_request(br#"{"type":"lookup","node_id":42.0}"#).unwrap();
        assert_eq!(r, Request::Lookup(Lookup { node_id: 42 }));
        let r = parse_request(br#"{"type":"lookup","node_id":"42"}"#).unwrap();
        assert_eq!(r, Request::Lookup(Lookup { node_id: 0 }));
        assert!(parse_request(br#"{"type":"lookup","node_id":-1}"#).is_err());
        assert!(parse_request(br#"{"type":"lookup","node_id":4294967296}"#).is_err());
        assert!(parse_request(br#"{"type":"frobnicate"}"#).is_err());
        assert!(parse_request(b"[1,2]").is_err());
    }

    #[test]
    fn empty_responses() {
        let r = parse_response(br#"{"type":"deregister_ok"}"#).unwrap();
        assert_eq!(r, Response::DeregisterOk(Empty {}));
        assert_eq!(to_json(&r), br#"{"type":"deregister_ok"}"#);
    }

    #[test]
    fn binary_parse_never_panics_on_short_input() {
        for ty in [0u8, 1, 2, 3, 0x81, 0x82, 0x83, 0xff, 0x42] {
            for n in 0..80 {
                let _ = BinaryMessage::parse(ty, &vec![1u8; n]);
            }
        }
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn decoder_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
                let mut d = FrameDecoder::new();
                d.push(&data);
                while let Ok(Some(f)) = d.next_frame() {
                    let _ = parse_request(&f);
                    let _ = BinaryMessage::parse_frame_payload(&f);
                }
            }

            #[test]
            fn binary_resolve_reply_round_trip(
                node_id in any::<u32>(),
                addr in "[0-9.:]{0,30}",
                lans in proptest::collection::vec("[0-9.:]{0,21}", 0..4),
                age in proptest::option::of(0u32..u32::MAX),
            ) {
                let m = BinaryMessage::ResolveReply { node_id, real_addr: addr, lan_addrs: lans, key_age_days: age };
                let f = m.emit_frame().unwrap();
                let Decoded::Frame { payload, .. } = decode_frame(&f).unwrap() else { panic!() };
                prop_assert_eq!(BinaryMessage::parse_frame_payload(payload).unwrap(), m);
            }

            #[test]
            fn every_request_round_trips(
                kind in 0u8..15,
                a in any::<u32>(),
                b in any::<u32>(),
                flag in any::<bool>(),
                text in "\\PC{0,40}",
                opt in proptest::option::of("[a-z@.]{1,20}"),
                sig in proptest::option::of(any::<[u8; 32]>()),
            ) {
                let sig = sig.map(|s| b64_encode(&[s, s].concat()));
                let req = match kind {
                    0 => Request::Register(Register {
                        listen_addr: text.clone(),
                        public_key: b64_encode(&[a as u8; 32]),
                        owner: opt.clone(),
                        lan_addrs: opt.clone().map(|o| vec![o]),
                        version: opt.clone(),
                        hostname: opt.clone(),
                        protocol_version: flag.then_some(1),
                        timestamp: flag.then_some(i64::from(b)),
                        signature: sig.clone(),
                    }),
                    1 => Request::Heartbeat(NodeSigned { node_id: a, signature: sig }),
                    2 => Request::Lookup(Lookup { node_id: a }),
                    3 => Request::Resolve(Resolve { node_id: a, requester_id: b, signature: sig }),
                    4 => Request::SetHostname(SetHostname { node_id: a, hostname: text, signature: sig }),
                    5 => Request::ResolveHostname(ResolveHostname { hostname: text, requester_id: flag.then_some(b) }),
                    6 => Request::SetVisibility(SetVisibility { node_id: a, public: flag, signature: sig }),
                    7 => Request::Deregister(NodeSigned { node_id: a, signature: sig }),
                    8 => Request::RequestHandshake(RequestHandshake { from_node_id: a, to_node_id: b, justification: text, signature: sig }),
                    9 => Request::PollHandshakes(NodeSigned { node_id: a, signature: sig }),
                    10 => Request::RespondHandshake(RespondHandshake { node_id: a, peer_id: b, accept: flag, signature: sig }),
                    11 => Request::ReportTrust(TrustPair { node_id: a, peer_id: b, signature: sig }),
                    12 => Request::RevokeTrust(TrustPair { node_id: a, peer_id: b, signature: sig }),
                    13 => Request::CheckTrust(TrustPair { node_id: a, peer_id: b, signature: None }),
                    _ => Request::Punch(Punch { requester_id: a, node_a: a, node_b: b, signature: sig }),
                };
                let json = to_json(&req);
                let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
                prop_assert_eq!(v["type"].as_str(), Some(req.type_name()));
                let frame = encode_json_frame(&req).unwrap();
                let Decoded::Frame { payload, .. } = decode_frame(&frame).unwrap() else { panic!() };
                prop_assert_eq!(parse_request(payload).unwrap(), req);
            }

            #[test]
            fn heartbeat_json_round_trip(node_id in any::<u32>(), sig in any::<[u8; 32]>()) {
                let mut r = Request::Heartbeat(NodeSigned { node_id, signature: None });
                let mut s = [0u8; 64];
                s[..32].copy_from_slice(&sig);
                r.set_signature(&s);
                let back = parse_request(&to_json(&r)).unwrap();
                prop_assert_eq!(back.signature().and_then(decode_signature), Some(s));
                prop_assert_eq!(back, r);
            }
        }
    }
}
