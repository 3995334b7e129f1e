//! IPC message types. The response envelope is exactly what `pilotctl --json`
//! prints: `{"status":"ok","data":{...}}` or
//! `{"status":"error","code":"...","message":"..."}`.

use serde::{Deserialize, Serialize};

/// A request from a local client to the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// This node: address, hostname, endpoints, counters.
    Info,
    /// Registry `lookup` of a target (address, bare node id or hostname).
    Lookup {
        /// The target as the user typed it.
        target: String,
    },
    /// The peer table: who we have tunnels with, by which path.
    Peers,
    /// Set (or, with an empty string, clear) this node's hostname.
    SetHostname {
        /// The new hostname; empty clears it.
        hostname: String,
    },
    /// Resolve a hostname through the registry.
    Find {
        /// The hostname to resolve.
        hostname: String,
    },
    /// Control pings (protocol 3, port 0) to a target: `count` of them,
    /// `interval_us` apart, paced by the daemon. The daemon writes one
    /// response per ping, in order (a [`PingData`], or an error: `timeout`
    /// for a lost ping, after which the series goes on); any other error
    /// ends the series. A series of one is the plain request/response.
    ///
    /// The daemon paces a series itself rather than taking one request per
    /// ping because then each ping leaves the daemon from its own timer,
    /// not while the client that just woke it is still runnable on the
    /// same CPU: Linux then lets the peer's wake-up run on the sender's
    /// CPU instead of waking another, idle one (on a virtual machine that
    /// costs tens of microseconds per ping; BENCHMARKS.md, "Latency").
    Ping {
        /// The target as the user typed it.
        target: String,
        /// Payload bytes to carry.
        size: usize,
        /// How long to wait for each reply, in milliseconds.
        timeout_ms: u64,
        /// Pings in the series (absent: 1).
        #[serde(default = "one", skip_serializing_if = "is_one")]
        count: u32,
        /// Microseconds from a reply (or timeout) to the next ping.
        #[serde(default, skip_serializing_if = "is_zero")]
        interval_us: u64,
    },
    /// Stop the daemon (deregisters first).
    Shutdown,
    /// Open a stream to `target:port`. On success the reply is followed by
    /// the raw bytes of the stream on this same connection.
    Dial {
        /// The target as the user typed it.
        target: String,
        /// Destination virtual port.
        port: u16,
        /// Give up after this long (the spec's SYN timeline ends at ~29 s).
        timeout_ms: u64,
    },
    /// Listen for streams on `port`. The reply is followed by one
    /// [`ListenEvent`] message per accepted stream, for as long as this
    /// connection stays open; each stream is then taken with [`Request::Attach`].
    Listen {
        /// The virtual port.
        port: u16,
    },
    /// Take an accepted stream: after the reply this connection carries
    /// the stream's raw bytes.
    Attach {
        /// The id announced in [`ListenEvent::Accept`].
        conn_id: u64,
    },
    /// The open streams.
    Connections,
    /// Close one stream (gracefully; `force` resets it).
    Disconnect {
        /// The stream id.
        conn_id: u64,
        /// Reset instead of closing gracefully.
        #[serde(default)]
        force: bool,
    },
    /// Send one datagram (protocol 2).
    SendDatagram {
        /// The target as the user typed it.
        target: String,
        /// Destination virtual port.
        port: u16,
        /// The payload.
        data: String,
    },
    /// Receive datagrams addressed to `port`: the reply is followed by one
    /// [`DatagramData`] message per datagram while the connection is open.
    RecvDatagrams {
        /// The virtual port.
        port: u16,
    },
    /// Trust commands (`handshake`, `pending`, `approve`, `reject`,
    /// `untrust`, `trust`): see [`crate::node::trust`].
    Trust(TrustRequest),
    /// Whether a stream that ended did so by a reset (asked by a client
    /// after the raw stream reached end of file).
    StreamEnded {
        /// The stream id.
        conn_id: u64,
    },
    /// Stored messages and files (`inbox`, `received`).
    Mailbox {
        /// `inbox` or `received`.
        which: String,
        /// Delete what is listed.
        #[serde(default)]
        clear: bool,
        /// Only entries from this sender (address text or node id).
        #[serde(default)]
        from: Option<String>,
        /// At most this many entries (oldest first).
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Serve virtual `port` by forwarding each stream to the local TCP
    /// service `to` (`HOST:PORT`); kept by the daemon until `unexpose`.
    Expose {
        /// The virtual port.
        port: u16,
        /// The local TCP service.
        to: String,
    },
    /// Stop exposing `port`.
    Unexpose {
        /// The virtual port.
        port: u16,
    },
    /// The exposed ports.
    ExposeList,
    /// Networks, tags, discovery and broadcast: see [`crate::node::networks`].
    Network(NetworkRequest),
}

/// The operations of [`Request::Network`]. A network is named by its id or
/// its name; a node by address, bare node id or hostname.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum NetworkRequest {
    /// Create a network (we become its owner).
    Create {
        /// Its name.
        name: String,
        /// `open` or `invite`.
        join_rule: String,
    },
    /// Every network.
    List,
    /// Join a network.
    Join {
        /// Id or name.
        network: String,
    },
    /// Leave a network.
    Leave {
        /// Id or name.
        network: String,
    },
    /// The members of a network.
    Members {
        /// Id or name.
        network: String,
    },
    /// Invite a node.
    Invite {
        /// Id or name.
        network: String,
        /// The node.
        target: String,
    },
    /// Our pending invitations.
    Invites,
    /// Accept an invitation (join).
    Accept {
        /// Id or name.
        network: String,
    },
    /// Decline an invitation.
    Reject {
        /// Id or name.
        network: String,
    },
    /// Delete a network we own.
    Delete {
        /// Id or name.
        network: String,
    },
    /// Remove a member from a network we own.
    Remove {
        /// Id or name.
        network: String,
        /// The member.
        target: String,
    },
    /// Replace our tags (empty clears).
    SetTags {
        /// The tags.
        tags: Vec<String>,
    },
    /// Discovery: nodes with every tag, and/or matching a search text.
    Find {
        /// Exact tags, all required.
        #[serde(default)]
        tags: Vec<String>,
        /// Substring of a hostname or tag.
        #[serde(default)]
        query: Option<String>,
        /// Only members of this network (id or name).
        #[serde(default)]
        network: Option<String>,
        /// At most this many results.
        #[serde(default)]
        limit: Option<u32>,
    },
    /// One datagram to every online member of a network.
    Broadcast {
        /// Id or name.
        network: String,
        /// Destination port.
        port: u16,
        /// The payload.
        data: String,
    },
}

/// The trust operations of [`Request::Trust`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum TrustRequest {
    /// Ask `target` to trust us.
    Handshake {
        /// Address, node id or hostname.
        target: String,
        /// Free text shown to the other operator.
        #[serde(default)]
        justification: String,
    },
    /// Requests waiting for our decision.
    Pending,
    /// Trust a pending requester.
    Approve {
        /// Address, node id or hostname.
        target: String,
    },
    /// Refuse a pending requester.
    Reject {
        /// Address, node id or hostname.
        target: String,
        /// Text sent with the refusal.
        #[serde(default)]
        reason: String,
    },
    /// Withdraw trust.
    Untrust {
        /// Address, node id or hostname.
        target: String,
    },
    /// The trusted peers, outstanding requests and counters.
    List,
}

/// One exposed port (`expose`, `unexpose`, `expose --list`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExposeData {
    /// The virtual port.
    pub port: u16,
    /// The local TCP service it forwards to.
    pub to: String,
    /// Streams forwarded so far.
    #[serde(default)]
    pub streams: u64,
}

/// `expose --list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExposeListData {
    /// Exposed ports, by port.
    pub exposed: Vec<ExposeData>,
}

/// Announced on a listening connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ListenEvent {
    /// A stream was accepted; take it with `attach`.
    Accept {
        /// The stream id.
        conn_id: u64,
        /// The remote `address:port`.
        remote: String,
    },
}

/// A stream, as `dial`, `attach` and `connections` describe it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamData {
    /// The daemon's id for the stream.
    pub conn_id: u64,
    /// Our `address:port`.
    pub local: String,
    /// The peer's `address:port`.
    pub remote: String,
    /// State name (`SynSent`, `Established`, `FinWait`, `TimeWait`, `Closed`).
    #[serde(default)]
    pub state: String,
    /// `direct`, `lan` or `relay`.
    #[serde(default)]
    pub path: String,
    /// The peer's UDP endpoint in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Latest round-trip time to the peer in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    /// Milliseconds since the peer's path last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_since_ms: Option<u64>,
    /// Bytes received from the peer and delivered.
    #[serde(default)]
    pub bytes_in: u64,
    /// Bytes accepted from the application.
    #[serde(default)]
    pub bytes_out: u64,
}

/// `connections`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionsData {
    /// Open streams, by id.
    pub connections: Vec<StreamData>,
}

/// One received datagram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatagramData {
    /// The sender's `address:port`.
    pub from: String,
    /// The port it was sent to.
    pub port: u16,
    /// The payload (lossy UTF-8).
    pub data: String,
    /// Payload length in bytes.
    pub bytes: usize,
}

/// The response envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Response {
    /// Success, with command-specific data.
    Ok {
        /// The command's result.
        data: serde_json::Value,
    },
    /// Failure.
    Error {
        /// Machine-readable error class.
        code: ErrorCode,
        /// One human line.
        message: String,
    },
}

impl Response {
    /// A success response carrying `data`.
    pub fn ok<T: Serialize>(data: &T) -> Response {
        match serde_json::to_value(data) {
            Ok(data) => Response::Ok { data },
            Err(e) => Response::error(ErrorCode::Internal, format!("cannot encode reply: {e}")),
        }
    }

    /// An error response.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
        Response::Error {
            code,
            message: message.into(),
        }
    }
}

/// Error classes shared by the daemon and `pilotctl` (documented in the
/// README's "Errors" table; `pilotctl --json` prints them as `code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No daemon answers on the socket.
    DaemonNotRunning,
    /// A daemon is already running on this socket.
    AlreadyRunning,
    /// An address, port or hostname that does not parse.
    InvalidAddress,
    /// Any other bad argument.
    InvalidArgument,
    /// The registry does not know the node or hostname (or may not tell).
    NotFound,
    /// The registry cannot be reached.
    RegistryUnavailable,
    /// The registry refused the request.
    RegistryError,
    /// No answer in time.
    Timeout,
    /// The peer refused (no listener, limits).
    Refused,
    /// The peer cannot be reached (no endpoint, no tunnel).
    Unreachable,
    /// The daemon failed to start.
    StartFailed,
    /// A bug or an unexpected local failure.
    Internal,
    /// The peer is private and does not trust us (run `pilotctl handshake`).
    NotTrusted,
    /// The peer refused to store a message (its `ERR` reply, e.g. quota).
    PeerError,
    /// A size limit was exceeded (frame, quota).
    TooLarge,
}

impl ErrorCode {
    /// The snake_case name, as printed under `--json`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::DaemonNotRunning => "daemon_not_running",
            ErrorCode::AlreadyRunning => "already_running",
            ErrorCode::InvalidAddress => "invalid_address",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::NotFound => "not_found",
            ErrorCode::RegistryUnavailable => "registry_unavailable",
            ErrorCode::RegistryError => "registry_error",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Refused => "refused",
            ErrorCode::Unreachable => "unreachable",
            ErrorCode::StartFailed => "start_failed",
            ErrorCode::Internal => "internal",
            ErrorCode::NotTrusted => "not_trusted",
            ErrorCode::PeerError => "peer_error",
            ErrorCode::TooLarge => "too_large",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `info`: this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InfoData {
    /// Registry-assigned node id.
    pub node_id: u32,
    /// Backbone address text.
    pub address: String,
    /// Hostname, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Ed25519 public key, base64.
    pub public_key: String,
    /// Whether the node is public in the registry.
    pub public: bool,
    /// Daemon process id.
    pub pid: u32,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// The IPC socket path.
    pub socket: String,
    /// The registry address in use.
    pub registry: String,
    /// The beacon address in use.
    pub beacon: String,
    /// The local UDP tunnel socket address.
    pub listen: String,
    /// The endpoint registered with the registry.
    pub endpoint: String,
    /// Whether the registry currently accepts our heartbeats.
    pub registered: bool,
    /// Number of peers in the peer table.
    pub peers: usize,
    /// Open streams.
    #[serde(default)]
    pub streams: usize,
    /// Bytes held in stream buffers.
    #[serde(default)]
    pub stream_memory: usize,
    /// The budget those buffers share (`--stream-memory`).
    #[serde(default)]
    pub stream_memory_budget: usize,
    /// Streams refused because the budget was spent.
    #[serde(default)]
    pub refused_memory: u64,
    /// The most the stream buffers held at any check since start.
    #[serde(default)]
    pub stream_memory_peak: usize,
    /// Data-path counters.
    pub stats: Stats,
    /// Where Prometheus metrics are served (`--metrics`), if they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
}

/// Data-path counters of the daemon.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// UDP datagrams received.
    pub datagrams_in: u64,
    /// UDP datagrams sent.
    pub datagrams_out: u64,
    /// Bytes of the UDP datagrams received (tunnel frames as on the wire).
    #[serde(default)]
    pub bytes_in: u64,
    /// Bytes of the UDP datagrams sent.
    #[serde(default)]
    pub bytes_out: u64,
    /// Frames dropped as malformed or unknown.
    pub dropped_malformed: u64,
    /// Encrypted frames that failed authentication or replay checks.
    pub dropped_crypto: u64,
    /// Decrypted packets whose inner source or destination did not match the
    /// authenticated tunnel (spec §12.10).
    pub dropped_spoofed: u64,
    /// Plaintext (PILT) or PILK frames refused while encryption is on.
    pub dropped_plaintext: u64,
    /// Beacon messages from a source other than the configured beacon.
    pub dropped_beacon_source: u64,
    /// PILA frames that failed verification.
    pub dropped_auth: u64,
    /// Unauthenticated work refused by a rate limit (PILAs, key lookups,
    /// answers to undecryptable frames).
    #[serde(default)]
    pub dropped_rate_limited: u64,
    /// PILAs naming a peer key that a newer session superseded (replays).
    #[serde(default)]
    pub dropped_superseded_key: u64,
    /// Verified PILAs from an address other than the peer's endpoint
    /// (replayed or spoofed, or a move not yet proven by a PILS): answered
    /// there, endpoint unchanged.
    #[serde(default)]
    pub endpoint_refused: u64,
    /// Stream segments carrying data, a FIN or a SYN|ACK for a connection
    /// we no longer have, answered with an RST (its first RST was lost, or
    /// we restarted).
    #[serde(default)]
    pub stray_resets: u64,
}

/// `lookup`: what the registry knows of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LookupData {
    /// Node id.
    pub node_id: u32,
    /// Backbone address text.
    pub address: String,
    /// Hostname, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Ed25519 public key, base64.
    pub public_key: String,
    /// Public visibility.
    pub public: bool,
    /// Networks the node belongs to.
    #[serde(default)]
    pub networks: Vec<u16>,
    /// The node's registered endpoint (only for public nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub real_addr: Option<String>,
}

/// One entry of `peers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerData {
    /// Node id.
    pub node_id: u32,
    /// Backbone address text.
    pub address: String,
    /// UDP endpoint, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `direct` or `relay`.
    pub path: String,
    /// Whether a verified key exchange completed.
    pub encrypted: bool,
    /// Milliseconds since the last authenticated frame from the peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ms: Option<u64>,
    /// Latest round-trip time in milliseconds (path probes and pings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    /// Tunnel payload bytes received from the peer.
    #[serde(default)]
    pub bytes_in: u64,
    /// Tunnel payload bytes sent to the peer.
    #[serde(default)]
    pub bytes_out: u64,
    /// How many times the path changed.
    #[serde(default)]
    pub path_changes: u32,
    /// Milliseconds since the path last changed (absent: never changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_since_ms: Option<u64>,
    /// Payload bytes per stream segment on this path (1,373 unless a probe
    /// proved a larger size; absent from older daemons).
    #[serde(default)]
    pub segment: usize,
}

/// `peers`: the peer table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeersData {
    /// Peers, sorted by node id.
    pub peers: Vec<PeerData>,
}

/// `find` / hostname resolution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FindData {
    /// The hostname asked for.
    pub hostname: String,
    /// Its node id.
    pub node_id: u32,
    /// Its backbone address.
    pub address: String,
}

/// `set_hostname`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostnameData {
    /// Our address.
    pub address: String,
    /// The hostname now set (`None` when cleared).
    #[serde(default)]
    pub hostname: Option<String>,
}

/// serde default of [`Request::Ping`]'s `count`.
fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One control ping reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PingData {
    /// The address pinged.
    pub address: String,
    /// Payload bytes echoed.
    pub bytes: usize,
    /// Round-trip time in microseconds.
    pub rtt_us: u64,
    /// `direct` or `relay`.
    pub path: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_matches_cli_json_shape() {
        let ok = Response::ok(&serde_json::json!({"a": 1}));
        assert_eq!(
            serde_json::to_string(&ok).unwrap(),
            r#"{"status":"ok","data":{"a":1}}"#
        );
        let err = Response::error(ErrorCode::DaemonNotRunning, "no daemon");
        assert_eq!(
            serde_json::to_string(&err).unwrap(),
            r#"{"status":"error","code":"daemon_not_running","message":"no daemon"}"#
        );
    }

    #[test]
    fn requests_are_tagged_by_cmd() {
        let r = Request::Ping {
            target: "alpha".into(),
            size: 8,
            timeout_ms: 1000,
            count: 1,
            interval_us: 0,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(
            s,
            r#"{"cmd":"ping","target":"alpha","size":8,"timeout_ms":1000}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        let series = Request::Ping {
            target: "alpha".into(),
            size: 8,
            timeout_ms: 1000,
            count: 5,
            interval_us: 1000,
        };
        let s = serde_json::to_string(&series).unwrap();
        assert_eq!(
            s,
            r#"{"cmd":"ping","target":"alpha","size":8,"timeout_ms":1000,"count":5,"interval_us":1000}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), series);
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"nope"}"#).is_err());
    }

    #[test]
    fn error_code_names_match_serde() {
        for code in [
            ErrorCode::DaemonNotRunning,
            ErrorCode::InvalidAddress,
            ErrorCode::RegistryUnavailable,
        ] {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                serde_json::json!(code.as_str())
            );
        }
    }
}
