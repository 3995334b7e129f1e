//! The registry client a daemon uses (spec §6.1, §6.4).
//!
//! One long-lived TCP connection, JSON mode, strictly one request in flight
//! (the protocol has no request ids). Each request has a timeout (5 s by
//! default). On a connection-level failure (I/O error, timeout, EOF, garbled
//! frame) the connection is dropped, re-established (immediately, then after
//! 0.5 s and 1 s) and the request is retried **once**, like the reference
//! client; an error *response* is never retried and surfaces as
//! [`ClientError::Server`] carrying the registry's text.
//!
//! The typed helpers build the request, sign it over the §6.3 string with the
//! caller's `ed25519_dalek::SigningKey` where needed, and unwrap the expected
//! response type.

use std::time::Duration;

use ed25519_dalek::{Signer, SigningKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::wire::registry::{
    self as wire, CheckTrustOk, HeartbeatOk, Lookup, LookupOk, NodeSigned, PollHandshakesOk,
    Register, RegisterOk, Request, RequestHandshake, RequestHandshakeOk, Resolve, ResolveHostname,
    ResolveHostnameOk, ResolveOk, RespondHandshake, RespondHandshakeOk, Response, SetHostname,
    SetHostnameOk, SetVisibility, SetVisibilityOk, TrustPair, MAX_FRAME_LEN,
};

/// Default per-request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Delays before each reconnection attempt after a connection failure.
const RECONNECT_DELAYS: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(500),
    Duration::from_millis(1000),
];

/// Registry client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The registry could not be reached.
    #[error("cannot connect to registry {addr}: {cause}")]
    Connect {
        /// Registry address.
        addr: String,
        /// The cause.
        cause: std::io::Error,
    },
    /// The connection failed mid-request (after the retry).
    #[error("registry {addr}: {cause}")]
    Io {
        /// Registry address.
        addr: String,
        /// The cause.
        cause: std::io::Error,
    },
    /// No reply within the timeout (after the retry).
    #[error("registry {addr} did not answer within {timeout:?}")]
    Timeout {
        /// Registry address.
        addr: String,
        /// The per-request timeout.
        timeout: Duration,
    },
    /// The registry answered with an error response.
    #[error("registry: {0}")]
    Server(String),
    /// The reply was not a valid frame or response.
    #[error("registry sent an invalid response: {0}")]
    Protocol(String),
    /// The answer is not signed by the pinned key ([`super::pin`]).
    #[error("{0}")]
    Unverified(#[from] super::pin::PinError),
    /// The reply was valid but of the wrong type.
    #[error("registry answered {got} to {expected}")]
    Unexpected {
        /// The request type.
        expected: &'static str,
        /// The response type received.
        got: &'static str,
    },
}

impl ClientError {
    /// True for failures of the connection (worth reconnecting), false for
    /// answers from the registry.
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. }
                | ClientError::Io { .. }
                | ClientError::Timeout { .. }
                | ClientError::Protocol(_)
        )
    }
}

/// Signs `req` over its §6.3 string with `key` (no-op for unsigned types).
pub fn sign(mut req: Request, key: &SigningKey) -> Request {
    if let Some((_, text)) = req.signed_string() {
        req.set_signature(&key.sign(text.as_bytes()).to_bytes());
    }
    req
}

/// A registry connection.
#[derive(Debug)]
pub struct RegistryClient {
    addr: String,
    conn: Option<TcpStream>,
    timeout: Duration,
    /// The rendezvous' answer key: every answer must be signed by it
    /// ([`super::pin`]).
    pin: Option<[u8; 32]>,
}

macro_rules! expect {
    ($resp:expr, $variant:ident, $req:expr) => {
        match $resp {
            Response::$variant(x) => Ok(x),
            other => Err(ClientError::Unexpected {
                expected: $req,
                got: other.type_name(),
            }),
        }
    };
}

impl RegistryClient {
    /// Connects to the registry at `addr` (`host:port`).
    pub async fn connect(addr: impl ToString) -> Result<RegistryClient, ClientError> {
        let mut c = RegistryClient {
            addr: addr.to_string(),
            conn: None,
            timeout: DEFAULT_TIMEOUT,
            pin: None,
        };
        c.reconnect().await?;
        Ok(c)
    }

    /// Sets the per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> RegistryClient {
        self.timeout = timeout;
        self
    }

    /// Requires every answer to be signed by `pin` (the rendezvous' key).
    pub fn with_pin(mut self, pin: Option<[u8; 32]>) -> RegistryClient {
        self.pin = pin;
        self
    }

    /// The registry address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    async fn reconnect(&mut self) -> Result<(), ClientError> {
        self.conn = None;
        let connect = TcpStream::connect(self.addr.as_str());
        let stream = match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(cause)) => {
                return Err(ClientError::Connect {
                    addr: self.addr.clone(),
                    cause,
                })
            }
            Err(_) => {
                return Err(ClientError::Connect {
                    addr: self.addr.clone(),
                    cause: std::io::ErrorKind::TimedOut.into(),
                })
            }
        };
        let _ = stream.set_nodelay(true);
        self.conn = Some(stream);
        Ok(())
    }

    async fn exchange(&mut self, frame: &[u8]) -> Result<Vec<u8>, ClientError> {
        let addr = self.addr.clone();
        let timeout = self.timeout;
        let Some(conn) = self.conn.as_mut() else {
            return Err(ClientError::Io {
                addr,
                cause: std::io::ErrorKind::NotConnected.into(),
            });
        };
        let io = |cause| ClientError::Io {
            addr: addr.clone(),
            cause,
        };
        let work = async {
            conn.write_all(frame).await.map_err(io)?;
            let mut len = [0u8; 4];
            conn.read_exact(&mut len).await.map_err(io)?;
            let len = u32::from_be_bytes(len) as usize;
            if len > MAX_FRAME_LEN {
                return Err(ClientError::Protocol(format!("{len}-byte frame")));
            }
            let mut payload = vec![0u8; len];
            conn.read_exact(&mut payload).await.map_err(io)?;
            Ok(payload)
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                addr: addr.clone(),
                timeout,
            }),
        }
    }

    /// Frames `v`; when answers are pinned, adds a fresh random nonce the
    /// signed answer must echo (so an old answer cannot be replayed).
    fn frame_with_nonce(
        &self,
        mut v: serde_json::Value,
    ) -> Result<(Vec<u8>, Option<String>), ClientError> {
        let nonce = self.pin.map(|_| {
            let mut n = [0u8; 18];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut n);
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, n)
        });
        if let (Some(n), serde_json::Value::Object(m)) = (&nonce, &mut v) {
            m.insert(
                super::pin::NONCE_FIELD.into(),
                serde_json::Value::String(n.clone()),
            );
        }
        let frame =
            wire::encode_json_frame(&v).map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok((frame, nonce))
    }

    /// Sends `req` and returns the registry's reply. An `error` response is
    /// returned as [`ClientError::Server`].
    pub async fn request(&mut self, req: &Request) -> Result<Response, ClientError> {
        let (frame, nonce) = match self.pin {
            None => (
                wire::encode_json_frame(req).map_err(|e| ClientError::Protocol(e.to_string()))?,
                None,
            ),
            Some(_) => {
                let v =
                    serde_json::to_value(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
                self.frame_with_nonce(v)?
            }
        };
        let mut result = self.exchange(&frame).await;
        if matches!(&result, Err(e) if e.is_connection_error()) {
            // The stream may be out of sync: reconnect and retry once.
            self.conn = None;
            let mut reconnect_err = None;
            for delay in RECONNECT_DELAYS {
                tokio::time::sleep(delay).await;
                match self.reconnect().await {
                    Ok(()) => {
                        reconnect_err = None;
                        break;
                    }
                    Err(e) => reconnect_err = Some(e),
                }
            }
            if let Some(e) = reconnect_err {
                return Err(e);
            }
            result = self.exchange(&frame).await;
        }
        let payload = match result {
            Ok(p) => p,
            Err(e) => {
                self.conn = None;
                return Err(e);
            }
        };
        if let (Some(pin), Some(n)) = (&self.pin, &nonce) {
            if let Err(e) = super::pin::verify_answer(pin, n, &payload) {
                self.conn = None;
                return Err(ClientError::Unverified(e));
            }
        }
        match wire::parse_response(&payload) {
            Ok(Response::Error(e)) => Err(ClientError::Server(e.error)),
            Ok(r) => Ok(r),
            Err(e) => {
                self.conn = None;
                Err(ClientError::Protocol(e.to_string()))
            }
        }
    }

    /// `register` (unsigned, §6.4.1).
    pub async fn register(&mut self, req: Register) -> Result<RegisterOk, ClientError> {
        let r = self.request(&Request::Register(req)).await?;
        expect!(r, RegisterOk, "register")
    }

    /// Signed `heartbeat` (§6.4.2).
    pub async fn heartbeat(
        &mut self,
        key: &SigningKey,
        node_id: u32,
    ) -> Result<HeartbeatOk, ClientError> {
        let req = sign(
            Request::Heartbeat(NodeSigned {
                node_id,
                signature: None,
            }),
            key,
        );
        let r = self.request(&req).await?;
        expect!(r, HeartbeatOk, "heartbeat")
    }

    /// `lookup` (unsigned, §6.4.3).
    pub async fn lookup(&mut self, node_id: u32) -> Result<LookupOk, ClientError> {
        let r = self.request(&Request::Lookup(Lookup { node_id })).await?;
        expect!(r, LookupOk, "lookup")
    }

    /// Signed `resolve` of `node_id` by `requester_id` (§6.4.4).
    pub async fn resolve(
        &mut self,
        key: &SigningKey,
        requester_id: u32,
        node_id: u32,
    ) -> Result<ResolveOk, ClientError> {
        let req = sign(
            Request::Resolve(Resolve {
                node_id,
                requester_id,
                signature: None,
            }),
            key,
        );
        let r = self.request(&req).await?;
        expect!(r, ResolveOk, "resolve")
    }

    /// Signed `set_hostname` (§6.4.5); `""` clears.
    pub async fn set_hostname(
        &mut self,
        key: &SigningKey,
        node_id: u32,
        hostname: &str,
    ) -> Result<SetHostnameOk, ClientError> {
        let req = sign(
            Request::SetHostname(SetHostname {
                node_id,
                hostname: hostname.into(),
                signature: None,
            }),
            key,
        );
        let r = self.request(&req).await?;
        expect!(r, SetHostnameOk, "set_hostname")
    }

    /// `resolve_hostname` (§6.4.6). Pass your own id as `requester_id`
    /// (spec §12.14) so private trusted peers resolve.
    pub async fn resolve_hostname(
        &mut self,
        requester_id: Option<u32>,
        hostname: &str,
    ) -> Result<ResolveHostnameOk, ClientError> {
        let req = Request::ResolveHostname(ResolveHostname {
            hostname: hostname.into(),
            requester_id,
        });
        let r = self.request(&req).await?;
        expect!(r, ResolveHostnameOk, "resolve_hostname")
    }

    /// Signed `set_visibility` (§6.4.7).
    pub async fn set_visibility(
        &mut self,
        key: &SigningKey,
        node_id: u32,
        public: bool,
    ) -> Result<SetVisibilityOk, ClientError> {
        let req = sign(
            Request::SetVisibility(SetVisibility {
                node_id,
                public,
                signature: None,
            }),
            key,
        );
        let r = self.request(&req).await?;
        expect!(r, SetVisibilityOk, "set_visibility")
    }

    /// Signed `deregister` (§6.4.10).
    pub async fn deregister(&mut self, key: &SigningKey, node_id: u32) -> Result<(), ClientError> {
        let req = sign(
            Request::Deregister(NodeSigned {
                node_id,
                signature: None,
            }),
            key,
        );
        let r = self.request(&req).await?;
        expect!(r, DeregisterOk, "deregister").map(|_| ())
    }

    /// Signed `report_trust` (§6.4.9).
    pub async fn report_trust(
        &mut self,
        key: &SigningKey,
        node_id: u32,
        peer_id: u32,
    ) -> Result<(), ClientError> {
        let req = sign(
            Request::ReportTrust(TrustPair {
                node_id,
                peer_id,
                signature: None,
            }),
            key,
        );
        let r = self.request(&req).await?;
        expect!(r, ReportTrustOk, "report_trust").map(|_| ())
    }

    /// Signed `revoke_trust` (§6.4.9).
    pub async fn revoke_trust(
        &mut self,
        key: &SigningKey,
        node_id: u32,
        peer_id: u32,
    ) -> Result<(), ClientError> {
        let req = sign(
            Request::RevokeTrust(TrustPair {
                node_id,
                peer_id,
                signature: None,
            }),
            key,
        );
        let r = self.request(&req).await?;
        expect!(r, RevokeTrustOk, "revoke_trust").map(|_| ())
    }

    /// `check_trust` (unsigned, §6.4.9).
    pub async fn check_trust(&mut self, node_id: u32, peer_id: u32) -> Result<bool, ClientError> {
        let req = Request::CheckTrust(TrustPair {
            node_id,
            peer_id,
            signature: None,
        });
        let r = self.request(&req).await?;
        expect!(r, CheckTrustOk, "check_trust").map(|c: CheckTrustOk| c.trusted)
    }

    /// Signed `request_handshake` from `from` to `to` (§6.4.8, §9.7).
    pub async fn request_handshake(
        &mut self,
        key: &SigningKey,
        from_node_id: u32,
        to_node_id: u32,
        justification: &str,
    ) -> Result<RequestHandshakeOk, ClientError> {
        let req = sign(
            Request::RequestHandshake(RequestHandshake {
                from_node_id,
                to_node_id,
                justification: justification.into(),
                signature: None,
            }),
            key,
        );
        let r = self.request(&req).await?;
        expect!(r, RequestHandshakeOk, "request_handshake")
    }

    /// Signed `poll_handshakes` (§6.4.8); empties both inboxes.
    pub async fn poll_handshakes(
        &mut self,
        key: &SigningKey,
        node_id: u32,
    ) -> Result<PollHandshakesOk, ClientError> {
        let req = sign(
            Request::PollHandshakes(NodeSigned {
                node_id,
                signature: None,
            }),
            key,
        );
        let r = self.request(&req).await?;
        expect!(r, PollHandshakesOk, "poll_handshakes")
    }

    /// Signed `poll_handshakes` that asks the registry to hold the reply up
    /// to `wait` while both inboxes are empty (our extension: the extra
    /// `wait_ms` field; a reference registry ignores it and answers at
    /// once, which the caller detects by the quick empty reply).
    pub async fn poll_handshakes_wait(
        &mut self,
        key: &SigningKey,
        node_id: u32,
        wait: Duration,
    ) -> Result<PollHandshakesOk, ClientError> {
        let req = sign(
            Request::PollHandshakes(NodeSigned {
                node_id,
                signature: None,
            }),
            key,
        );
        let mut v = serde_json::to_value(&req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if let Some(o) = v.as_object_mut() {
            o.insert("wait_ms".into(), (wait.as_millis() as u64).into());
        }
        let saved = self.timeout;
        self.timeout = saved + wait;
        let r = self.request_value(&v).await;
        self.timeout = saved;
        expect!(r?, PollHandshakesOk, "poll_handshakes")
    }

    /// Like [`RegistryClient::request`] for a request already in JSON form.
    async fn request_value(&mut self, v: &serde_json::Value) -> Result<Response, ClientError> {
        let (frame, nonce) = self.frame_with_nonce(v.clone())?;
        let result = self.exchange(&frame).await;
        let payload = match result {
            Ok(p) => p,
            Err(e) => {
                self.conn = None;
                return Err(e);
            }
        };
        if let (Some(pin), Some(n)) = (&self.pin, &nonce) {
            if let Err(e) = super::pin::verify_answer(pin, n, &payload) {
                self.conn = None;
                return Err(ClientError::Unverified(e));
            }
        }
        match wire::parse_response(&payload) {
            Ok(Response::Error(e)) => Err(ClientError::Server(e.error)),
            Ok(r) => Ok(r),
            Err(e) => {
                self.conn = None;
                Err(ClientError::Protocol(e.to_string()))
            }
        }
    }

    /// Signed `respond_handshake` by `node_id` to `peer_id` (§6.4.8).
    pub async fn respond_handshake(
        &mut self,
        key: &SigningKey,
        node_id: u32,
        peer_id: u32,
        accept: bool,
    ) -> Result<RespondHandshakeOk, ClientError> {
        let req = sign(
            Request::RespondHandshake(RespondHandshake {
                node_id,
                peer_id,
                accept,
                signature: None,
            }),
            key,
        );
        let r = self.request(&req).await?;
        expect!(r, RespondHandshakeOk, "respond_handshake")
    }
    /// A network or discovery request (signed with `key` when the
    /// operation is signed, see [`crate::wire::networks`]), answered by
    /// its `*_ok` response.
    pub async fn network(
        &mut self,
        key: &SigningKey,
        req: crate::wire::networks::NetRequest,
    ) -> Result<crate::wire::networks::NetResponse, ClientError> {
        let expected = req.type_name();
        let req = sign(Request::Network(req), key);
        match self.request(&req).await? {
            Response::Network(r) => Ok(r),
            other => Err(ClientError::Unexpected {
                expected,
                got: other.type_name(),
            }),
        }
    }

    /// Signed `poll_networks` held by the registry up to `wait` while the
    /// answer's version equals `since` (the `wait_ms` extension, as
    /// [`RegistryClient::poll_handshakes_wait`]).
    pub async fn poll_networks_wait(
        &mut self,
        key: &SigningKey,
        node_id: u32,
        since: u64,
        wait: Duration,
    ) -> Result<crate::wire::networks::PollNetworksOk, ClientError> {
        use crate::wire::networks::{NetRequest, NetResponse, PollNetworks};
        let req = sign(
            Request::Network(NetRequest::PollNetworks(PollNetworks {
                node_id,
                since,
                signature: None,
            })),
            key,
        );
        let mut v = serde_json::to_value(&req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if let Some(o) = v.as_object_mut() {
            o.insert("wait_ms".into(), (wait.as_millis() as u64).into());
        }
        if self.conn.is_none() {
            self.reconnect().await?;
        }
        let saved = self.timeout;
        self.timeout = saved + wait;
        let r = self.request_value(&v).await;
        self.timeout = saved;
        match r? {
            Response::Network(NetResponse::PollNetworksOk(ok)) => Ok(ok),
            other => Err(ClientError::Unexpected {
                expected: "poll_networks",
                got: other.type_name(),
            }),
        }
    }
}
