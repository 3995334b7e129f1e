//! The daemon's view of the registry: typed, signed calls over one shared
//! connection, with errors classified the way `pilotctl` reports them
//! (unreachable, refused with the server's text, not found).
//!
//! Two connections (issue 10 item 3): registration, heartbeats and the other
//! calls that keep our own entry right use a control connection of their
//! own, so they are never queued behind lookups and resolves (which peers can
//! trigger; the engine bounds those in flight).
//!
//! Every call signs with the node's identity (spec §6.3) and names the node
//! id assigned at registration; `resolve_hostname` always sends our own id as
//! `requester_id` (spec §12.14).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::Mutex;

use crate::crypto::identity::{decode_public_key_b64, Identity};
use crate::ipc::proto::LookupData;
use crate::ipc::ErrorCode;
use crate::rendezvous::client::{ClientError, RegistryClient};
use crate::wire::registry as reg;

/// A failed registry call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegError {
    /// No connection to the registry.
    #[error("cannot reach the registry at {addr}: {reason}; start one with `pilot-rendezvous` (registry :9000, beacon :9001) or pass --registry HOST:PORT")]
    Unavailable {
        /// The registry address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The registry answered with an error.
    #[error("registry: {0}")]
    Refused(String),
    /// The registry answered something unexpected.
    #[error("registry sent an unexpected reply: {0}")]
    Protocol(String),
    /// The answer is not signed by the pinned rendezvous key.
    #[error("refusing the registry at {addr}: {reason}; check the #ed25519:... pin in --registry against the `registry pin:` line pilot-rendezvous prints at start")]
    Unverified {
        /// The registry address.
        addr: String,
        /// Why.
        reason: String,
    },
}

impl RegError {
    /// The IPC error class for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            RegError::Unavailable { .. } => ErrorCode::RegistryUnavailable,
            RegError::Refused(t) if t.contains("not found") => ErrorCode::NotFound,
            RegError::Refused(_) => ErrorCode::RegistryError,
            RegError::Protocol(_) | RegError::Unverified { .. } => ErrorCode::RegistryError,
        }
    }
}

/// A shared, lazily (re)connected registry connection.
pub struct RegistryHandle {
    text: String,
    addr: SocketAddr,
    /// Further rendezvous instances sharing one database
    /// (`--registry A,B`), tried in turn when the current one is
    /// unreachable; `current` indexes `[addr] + fallbacks`.
    fallbacks: Vec<SocketAddr>,
    current: std::sync::atomic::AtomicUsize,
    identity: Identity,
    node_id: AtomicU32,
    conn: Mutex<Option<RegistryClient>>,
    ctl: Mutex<Option<RegistryClient>>,
    lan_addrs: std::sync::Mutex<Vec<String>>,
    /// The rendezvous' answer key, when the user pinned it.
    pin: Option<[u8; 32]>,
}

/// Which connection a call uses.
#[derive(Clone, Copy)]
enum Lane {
    /// Our own registration: register, heartbeat, hostname, visibility.
    Control,
    /// Everything else.
    Query,
}

impl RegistryHandle {
    /// A handle for the registry at `addr` (`text` is what the user typed).
    pub fn new(text: String, addr: SocketAddr, identity: Identity) -> RegistryHandle {
        RegistryHandle {
            text,
            addr,
            fallbacks: Vec::new(),
            current: Default::default(),
            identity,
            node_id: AtomicU32::new(0),
            conn: Mutex::new(None),
            ctl: Mutex::new(None),
            lan_addrs: std::sync::Mutex::new(Vec::new()),
            pin: None,
        }
    }

    /// Requires every registry answer to be signed by `pin`
    /// ([`crate::rendezvous::pin`]).
    pub fn with_pin(mut self, pin: Option<[u8; 32]>) -> RegistryHandle {
        self.pin = pin;
        self
    }

    /// Instances to fail over to, in order, when the current one cannot
    /// be reached (instances over one shared database, issue 13).
    pub fn with_fallbacks(mut self, addrs: Vec<SocketAddr>) -> RegistryHandle {
        self.fallbacks = addrs;
        self
    }

    /// Connects to the current instance, else to the next ones in turn
    /// (the first that answers becomes current).
    async fn connect_any(&self) -> Result<RegistryClient, ClientError> {
        let n = 1 + self.fallbacks.len();
        let start = self.current.load(Ordering::Relaxed) % n;
        let mut i = 0;
        loop {
            let k = (start + i) % n;
            let addr = if k == 0 {
                self.addr
            } else {
                self.fallbacks[k - 1]
            };
            match RegistryClient::connect(addr).await {
                Ok(c) => {
                    if k != start {
                        tracing::warn!(registry = %addr, "registry unreachable; using another instance");
                        self.current.store(k, Ordering::Relaxed);
                    }
                    return Ok(c);
                }
                Err(e) if i + 1 >= n => return Err(e),
                Err(_) => i += 1,
            }
        }
    }

    /// Which instance the connections use now: 0 for the first of
    /// `--registry A,B,...`, k for the k-th fallback.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed) % (1 + self.fallbacks.len())
    }

    /// Our node id (0 before the first registration).
    pub fn node_id(&self) -> u32 {
        self.node_id.load(Ordering::Relaxed)
    }

    fn unavailable(&self, reason: impl ToString) -> RegError {
        RegError::Unavailable {
            addr: self.text.clone(),
            reason: reason.to_string(),
        }
    }

    /// Runs one call of the shared [`RegistryClient`] (which builds, signs
    /// and checks each message, and reconnects and retries once on a broken
    /// connection, spec §6.1), connecting first if needed, and classifies
    /// the failure the way pilotctl reports it.
    async fn with_client<T>(
        &self,
        call: impl AsyncFnOnce(&mut RegistryClient) -> Result<T, ClientError>,
    ) -> Result<T, RegError> {
        self.on(Lane::Query, call).await
    }

    async fn on<T>(
        &self,
        lane: Lane,
        call: impl AsyncFnOnce(&mut RegistryClient) -> Result<T, ClientError>,
    ) -> Result<T, RegError> {
        let mut conn = match lane {
            Lane::Control => self.ctl.lock().await,
            Lane::Query => self.conn.lock().await,
        };
        if conn.is_none() {
            let c = self
                .connect_any()
                .await
                .map_err(|e| self.unavailable(connection_cause(&e)))?;
            *conn = Some(c.with_pin(self.pin));
        }
        let Some(client) = conn.as_mut() else {
            return Err(self.unavailable("not connected"));
        };
        match call(client).await {
            Ok(r) => Ok(r),
            Err(ClientError::Server(text)) => Err(RegError::Refused(text)),
            Err(ClientError::Unverified(e)) => {
                *conn = None;
                Err(RegError::Unverified {
                    addr: self.text.clone(),
                    reason: e.to_string(),
                })
            }
            Err(e) if e.is_connection_error() => {
                *conn = None;
                Err(self.unavailable(connection_cause(&e)))
            }
            Err(e) => Err(RegError::Protocol(e.to_string())),
        }
    }

    fn key(&self) -> &ed25519_dalek::SigningKey {
        self.identity.signing_key()
    }

    /// `register` (spec §6.4.1); remembers the assigned node id.
    pub async fn register(&self, endpoint: &str, email: Option<&str>) -> Result<u32, RegError> {
        let mut r = reg::Register::new(&self.identity.public_key(), endpoint);
        r.owner = email.map(str::to_string);
        let lan = self.lan_addrs.lock().map(|l| l.clone()).unwrap_or_default();
        if !lan.is_empty() {
            r.lan_addrs = Some(lan);
        }
        r.version = Some(concat!("pilot-rs/", env!("CARGO_PKG_VERSION")).into());
        r.protocol_version = Some(reg::PROTOCOL_VERSION);
        // Sign it (our extension): a registration for our key must never be
        // something anyone who read the key can send (issue 10 item 1).
        r.timestamp = Some(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
        );
        {
            use ed25519_dalek::Signer;
            let sig = self.key().sign(r.signed_text().as_bytes());
            r.signature = Some(reg::b64_encode(&sig.to_bytes()));
        }
        let ok = self
            .on(Lane::Control, async |c| c.register(r).await)
            .await?;
        self.node_id.store(ok.node_id, Ordering::Relaxed);
        Ok(ok.node_id)
    }

    /// `heartbeat` (spec §6.4.2).
    pub async fn heartbeat(&self) -> Result<(), RegError> {
        let id = self.node_id();
        self.on(Lane::Control, async |c| {
            c.heartbeat(self.key(), id).await.map(|_| ())
        })
        .await
    }

    /// `deregister` (spec §6.4.10).
    pub async fn deregister(&self) -> Result<(), RegError> {
        let id = self.node_id();
        self.on(Lane::Control, async |c| c.deregister(self.key(), id).await)
            .await
    }

    /// `set_hostname` (spec §6.4.5); empty clears.
    pub async fn set_hostname(&self, hostname: &str) -> Result<(), RegError> {
        let id = self.node_id();
        self.on(Lane::Control, async |c| {
            c.set_hostname(self.key(), id, hostname).await.map(|_| ())
        })
        .await
    }

    /// `set_visibility` (spec §6.4.7).
    pub async fn set_visibility(&self, public: bool) -> Result<(), RegError> {
        let id = self.node_id();
        self.on(Lane::Control, async |c| {
            c.set_visibility(self.key(), id, public).await.map(|_| ())
        })
        .await
    }

    /// `lookup` (spec §6.4.3), shaped for `pilotctl lookup`.
    pub async fn lookup(&self, node: u32) -> Result<LookupData, RegError> {
        let ok = self.with_client(async |c| c.lookup(node).await).await?;
        Ok(LookupData {
            node_id: ok.node_id,
            address: ok.address,
            hostname: ok.hostname.filter(|h| !h.is_empty()),
            public_key: ok.public_key,
            public: ok.public,
            networks: ok.networks,
            real_addr: ok.real_addr.filter(|a| !a.is_empty()),
        })
    }

    /// The Ed25519 key the registry holds for `node` (spec §4.3 step 2).
    pub async fn lookup_key(&self, node: u32) -> Result<[u8; 32], RegError> {
        let d = self.lookup(node).await?;
        decode_public_key_b64(&d.public_key)
            .map_err(|e| RegError::Protocol(format!("bad public key: {e}")))
    }

    /// `resolve` (spec §6.4.4): the peer's endpoint.
    pub async fn resolve(&self, node: u32) -> Result<SocketAddr, RegError> {
        let id = self.node_id();
        match self
            .with_client(async |c| c.resolve(self.key(), id, node).await)
            .await
        {
            Ok(ok) => ok
                .real_addr
                .parse()
                .map_err(|_| RegError::Protocol(format!("bad real_addr {:?}", ok.real_addr))),
            // The registry hides why (spec §6.4.4); say what it usually means.
            Err(RegError::Refused(t)) if t == "request failed" => Err(RegError::Refused(format!(
                "node {node} is private or unknown (resolve refused)"
            ))),
            Err(e) => Err(e),
        }
    }

    /// `resolve` (spec §6.4.4) with the peer's LAN addresses (for the LAN
    /// shortcut, §5.4 step 2); unparsable LAN entries are skipped.
    pub async fn resolve_full(&self, node: u32) -> Result<(SocketAddr, Vec<SocketAddr>), RegError> {
        let id = self.node_id();
        match self
            .with_client(async |c| c.resolve(self.key(), id, node).await)
            .await
        {
            Ok(ok) => {
                let ep = ok
                    .real_addr
                    .parse()
                    .map_err(|_| RegError::Protocol(format!("bad real_addr {:?}", ok.real_addr)))?;
                let lan = ok
                    .lan_addrs
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|a| a.parse().ok())
                    .take(8)
                    .collect();
                Ok((ep, lan))
            }
            Err(RegError::Refused(t)) if t == "request failed" => Err(RegError::Refused(format!(
                "node {node} is private or unknown (resolve refused)"
            ))),
            Err(e) => Err(e),
        }
    }

    /// Sets the LAN addresses sent with every later `register` (spec §5.3).
    pub fn set_lan_addrs(&self, addrs: Vec<String>) {
        if let Ok(mut l) = self.lan_addrs.lock() {
            *l = addrs;
        }
    }

    /// `resolve_hostname` (spec §6.4.6) with our id as requester (§12.14).
    pub async fn resolve_hostname(&self, hostname: &str) -> Result<u32, RegError> {
        let id = self.node_id();
        let ok = self
            .with_client(async |c| c.resolve_hostname(Some(id), hostname).await)
            .await?;
        Ok(ok.node_id)
    }
}

/// Trust-handshake calls (spec §6.4.8, §6.4.9), used by `node::trust`.
impl RegistryHandle {
    /// A new, separate connection (for the handshake long-poll, which
    /// must not hold the shared connection).
    pub async fn connect_new(&self) -> Result<RegistryClient, RegError> {
        self.connect_any()
            .await
            .map(|c| c.with_pin(self.pin))
            .map_err(|e| self.unavailable(connection_cause(&e)))
    }

    /// Our signing key.
    pub fn signing_key(&self) -> &ed25519_dalek::SigningKey {
        self.key()
    }

    /// `request_handshake` from us to `to`.
    pub async fn request_handshake(&self, to: u32, justification: &str) -> Result<(), RegError> {
        let id = self.node_id();
        self.with_client(async |c| {
            c.request_handshake(self.key(), id, to, justification)
                .await
                .map(|_| ())
        })
        .await
    }

    /// `respond_handshake` from us to `peer`.
    pub async fn respond_handshake(&self, peer: u32, accept: bool) -> Result<(), RegError> {
        let id = self.node_id();
        self.with_client(async |c| {
            c.respond_handshake(self.key(), id, peer, accept)
                .await
                .map(|_| ())
        })
        .await
    }

    /// `report_trust` of `peer`.
    pub async fn report_trust(&self, peer: u32) -> Result<(), RegError> {
        let id = self.node_id();
        self.with_client(async |c| c.report_trust(self.key(), id, peer).await)
            .await
    }

    /// `revoke_trust` of `peer`.
    pub async fn revoke_trust(&self, peer: u32) -> Result<(), RegError> {
        let id = self.node_id();
        self.with_client(async |c| c.revoke_trust(self.key(), id, peer).await)
            .await
    }

    /// A network or discovery request (`node::networks`), signed by us.
    pub async fn network(
        &self,
        req: crate::wire::networks::NetRequest,
    ) -> Result<crate::wire::networks::NetResponse, RegError> {
        self.with_client(async |c| c.network(self.key(), req).await)
            .await
    }

    /// `check_trust` between us and `peer`.
    pub async fn check_trust(&self, peer: u32) -> Result<bool, RegError> {
        let id = self.node_id();
        self.with_client(async |c| c.check_trust(id, peer).await)
            .await
    }
}

/// The OS-level cause of a connection failure, without the address
/// (which [`RegError::Unavailable`] names itself).
fn connection_cause(e: &ClientError) -> String {
    match e {
        ClientError::Connect { cause, .. } | ClientError::Io { cause, .. } => cause.to_string(),
        other => other.to_string(),
    }
}
