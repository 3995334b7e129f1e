//! The shared store: any number of rendezvous instances over one
//! PostgreSQL-protocol database (issue 13 item 2).
//!
//! `pilot-rendezvous --store postgres://user@host/db` (any URL
//! `tokio_postgres` accepts, `postgresql://` or `key=value` form). The SQL
//! is limited to what PostgreSQL, CockroachDB and YugabyteDB share: plain
//! tables, `BIGINT`/`TEXT`/`BYTEA`/`BOOLEAN`/`TIMESTAMPTZ`, one sequence,
//! `INSERT ... ON CONFLICT`, `unnest` of arrays, `= ANY($1)`, `SELECT ...
//! FOR UPDATE`. No `LISTEN`/`NOTIFY`, no triggers, no stored procedures.
//!
//! How the instances stay one registry:
//! * Each instance keeps the whole registry in memory, exactly as with
//!   SQLite: reads never touch the database. Its writes are the same
//!   batched transactions (group commit), and a reply that acknowledges a
//!   mutation is sent once the transaction holding it has committed
//!   (PostgreSQL's default `synchronous_commit = on`: durable).
//! * Every transaction also appends to the `changes` log which rows it
//!   touched. Each instance reads the log every [`POLL_INTERVAL`] and
//!   applies the current value of those rows to its memory
//!   ([`Registry::apply_remote`]); a row it changed itself and has not yet
//!   written is left alone (its own is newer). A sequence number taken by
//!   a transaction that commits after a later one leaves a gap, which is
//!   read again for [`LATE_COMMIT`].
//! * A registration, and a request that claims a hostname, first waits
//!   for one read of the log that began after it arrived ([`Catchup`]); a
//!   request refused with what this instance knows (a node not found, a
//!   resolve denied) waits for one and is handled again. So a node
//!   registered with A is found through B at once, and a key registered
//!   with A keeps its id on B. Reads are single-flight (all requests
//!   waiting share the next read), so a flood of lookups of unknown ids
//!   costs the database one small query per round, not one per request.
//! * Hostnames live in their own table with the name as primary key; a
//!   transaction claims a name with `INSERT ... ON CONFLICT DO NOTHING`, so
//!   two instances can never both hold it. The claim checked on the way in
//!   (the read above) makes a name taken on A refused on B; two instances
//!   granting the same free name within the same few milliseconds is the
//!   one race left: the later commit loses, and its node loses the name
//!   (logged; it gets `hostname ... in use` when it registers again).
//! * Node ids come in blocks of [`ID_BLOCK`] from the `node_id_blocks`
//!   sequence: an instance allocates from its own block, with a spare
//!   fetched ahead, so ids never collide and registering never waits for
//!   the database.
//! * A handshake inbox is written as a difference from what this instance
//!   last saw in the database (entries delivered are deleted, new ones
//!   inserted), and read back after each write: a request added on B
//!   while A delivers the same node's inbox is kept and delivered next.
//! * A relay frame for a node this instance's beacon does not know is
//!   forwarded to the other instances' beacons (listed in `instances`,
//!   read every [`PEERS_EVERY`]), tagged with a key derived from the
//!   shared rendezvous key; the one that knows the node delivers it
//!   ([`crate::rendezvous::beacon::Peers`]).
//! * Networks, memberships, invitations and tags (schema 2) travel the
//!   same way: one change-log entry per network row, membership, invitation
//!   list or tag list, applied by the others ([`crate::rendezvous::networks::Networks::apply_remote`]),
//!   which wakes the members' `poll_networks` long-polls there. A network
//!   change first waits for a read of the log, like a registration; a
//!   network name is UNIQUE in the database, so two instances creating the
//!   same name at the same moment cannot both commit it.
//! * Liveness stays in memory. Each node row names the instance that
//!   serves it, and only that instance reaps it. Each instance stamps its
//!   row in `instances` every [`STAMP_EVERY`]; the nodes of an instance
//!   whose stamp is older than the stale-node timeout are marked offline
//!   (and lose their hostnames) by whichever instance sweeps first. A node
//!   whose instance died registers with another one within its retry time
//!   and keeps its id and hostname: the other instance knows its key and
//!   name already.
//!
//! Known limits:
//! * relay forwarding needs each instance's beacon bound to an address
//!   the others can reach (not `0.0.0.0`), and all instances started with
//!   the same `--identity` (the forwarding key derives from it);
//! * an instance cut off from the database for longer than [`LOG_KEEP`]
//!   has missed changes and should be restarted;
//! * no TLS to the database (`NoTls`): keep it on a private network.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};
use tokio_postgres::{Client, NoTls};

use super::{Durability, StoreError, RETRY_AFTER};
use crate::rendezvous::metrics::Metrics;
use crate::rendezvous::networks::{InviteRecord, NetworkRecord, TagRecord};
use crate::rendezvous::state::{
    Changes, HandshakeRequestRecord, HandshakeResponseRecord, Inboxes, NodeRecord, Registry,
    Snapshot, MAX_NODES,
};
use crate::wire::networks::JoinRule;
use crate::wire::registry as wire;

/// Node ids reserved per block (ours: one fetch per 1,024 new nodes; an
/// instance restart leaves at most two blocks unused, which is why
/// `MAX_NODES` is above the million the registry must hold).
pub const ID_BLOCK: u32 = 1024;
/// How often an instance reads the others' changes when no request asks
/// sooner (ours: a handshake request reaches a node on another instance in
/// well under the 2 s issue 13 allows).
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long a gap in the change log's sequence numbers is read again (a
/// transaction still committing; ours, far above any commit time).
pub const LATE_COMMIT: Duration = Duration::from_secs(5);
/// Most sequence gaps watched at once (ours; a gap is a transaction still
/// committing or one rolled back, normally a handful).
const MAX_GAPS: usize = 100_000;
/// Attempts at creating or migrating the schema (ours; see [`open`]).
const MIGRATE_TRIES: u32 = 5;
/// Most change-log entries read per query.
const MAX_LOG_READ: i64 = 10_000;
/// How often an instance stamps its `instances` row, sweeps dead instances'
/// nodes and prunes the log (ours).
pub const STAMP_EVERY: Duration = Duration::from_secs(10);
/// How often the list of the other instances' beacons is read (ours: a
/// new instance gets relay frames forwarded within seconds).
pub const PEERS_EVERY: Duration = Duration::from_secs(2);
/// How long change-log entries are kept (ours; see the module notes).
pub const LOG_KEEP: &str = "10 minutes";

/// What one change-log entry names (`changes.kind`). A table added later
/// gets the next number here and a branch in [`Pg::pull`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i16)]
enum Kind {
    /// `nodes`/`hostnames` row `a`.
    Node = 1,
    /// `trust` pair `(a, b)`.
    Trust = 2,
    /// `consents` pair `(a, b)`.
    Consent = 3,
    /// Both handshake inboxes of node `a`.
    Inbox = 4,
    /// `networks` row `a` (schema 2).
    Network = 5,
    /// `network_members` row `(a, b)`: network `a`, node `b`.
    Member = 6,
    /// The invitation list of node `a`.
    Invites = 7,
    /// The tags of node `a`.
    Tags = 8,
}

/// The schema version this build writes (the number of `MIGRATIONS`).
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Migration `i` takes a database from schema version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the first shared schema (issue 13 item 2).
    "CREATE TABLE nodes (
         id BIGINT PRIMARY KEY,
         public_key BYTEA NOT NULL,
         owner TEXT,
         live BOOLEAN NOT NULL,
         public BOOLEAN NOT NULL,
         real_addr TEXT NOT NULL,
         lan_addrs TEXT NOT NULL,
         version TEXT,
         key_created BIGINT NOT NULL,
         instance BIGINT NOT NULL
     );
     CREATE TABLE hostnames (name TEXT PRIMARY KEY, id BIGINT NOT NULL);
     CREATE INDEX hostnames_id ON hostnames (id);
     CREATE TABLE trust (a BIGINT NOT NULL, b BIGINT NOT NULL, PRIMARY KEY (a, b));
     CREATE TABLE consents (a BIGINT NOT NULL, b BIGINT NOT NULL, PRIMARY KEY (a, b));
     CREATE TABLE handshake_requests (
         to_id BIGINT NOT NULL, from_id BIGINT NOT NULL,
         justification TEXT NOT NULL, ts BIGINT NOT NULL,
         PRIMARY KEY (to_id, from_id));
     CREATE TABLE handshake_responses (
         to_id BIGINT NOT NULL, from_id BIGINT NOT NULL,
         ts BIGINT NOT NULL, accept BOOLEAN NOT NULL,
         PRIMARY KEY (to_id, from_id, ts, accept));
     CREATE SEQUENCE node_id_blocks;
     CREATE SEQUENCE change_seq;
     CREATE TABLE changes (
         seq BIGINT PRIMARY KEY DEFAULT nextval('change_seq'),
         instance BIGINT NOT NULL, kind SMALLINT NOT NULL,
         a BIGINT NOT NULL, b BIGINT NOT NULL,
         at TIMESTAMPTZ NOT NULL DEFAULT now());
     CREATE INDEX changes_at ON changes (at);
     CREATE TABLE instances (
         id BIGINT PRIMARY KEY, registry TEXT NOT NULL, beacon TEXT NOT NULL,
         last_seen TIMESTAMPTZ NOT NULL)",
    // 2: networks, invitations and tags (issue 12), as in the SQLite store.
    // A network's name is unique in the database as it is in memory.
    "CREATE TABLE networks (
         id BIGINT PRIMARY KEY, name TEXT NOT NULL UNIQUE, owner BIGINT NOT NULL,
         join_rule TEXT NOT NULL, created BIGINT NOT NULL);
     CREATE TABLE network_members (
         network_id BIGINT NOT NULL, node_id BIGINT NOT NULL,
         PRIMARY KEY (network_id, node_id));
     CREATE TABLE network_invites (
         target BIGINT NOT NULL, seq BIGINT NOT NULL, network_id BIGINT NOT NULL,
         inviter BIGINT NOT NULL, ts BIGINT NOT NULL, PRIMARY KEY (target, seq));
     CREATE TABLE node_tags (node_id BIGINT PRIMARY KEY, tags TEXT NOT NULL)",
];

/// `host:port/dbname` of a connection configuration: what errors and logs
/// name (never the password).
fn target(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or_default();
    format!("postgres://{host}:{port}/{db}")
}

/// What went wrong, in one line: the server's message for a database
/// error (`tokio_postgres` alone says only "db error"), else the error and
/// its cause.
pub fn reason(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// True if `store` names a PostgreSQL-protocol database rather than a file.
pub fn is_url(store: &str) -> bool {
    store.starts_with("postgres://") || store.starts_with("postgresql://")
}

/// An open connection to the shared database and this instance's place in
/// its change log.
pub struct Pg {
    config: tokio_postgres::Config,
    target: String,
    client: Option<Client>,
    /// This instance's id in `instances` and `nodes.instance` (random).
    instance: i64,
    /// What this instance tells the others where to find it.
    registry_addr: String,
    beacon_addr: String,
    /// The newest change-log entry read.
    last_seq: i64,
    /// Sequence numbers below `last_seq` not seen yet, and when first missed.
    gaps: HashMap<i64, Instant>,
    /// Dead nodes are swept after this (the registry's stale-node timeout).
    stale_after: Duration,
    /// The handshake inboxes as this instance last read or wrote them in
    /// the database: a write inserts and deletes only the difference, so
    /// an entry another instance added meanwhile is kept.
    known_inboxes: HashMap<u32, Inboxes>,
    /// Inboxes written since the last read: read back in the next one (an
    /// entry another instance added while ours was being changed here).
    reread: HashSet<u32>,
    /// The other instances' beacons, kept up to date from `instances`.
    peers: Option<Arc<crate::rendezvous::beacon::Peers>>,
}

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pg")
            .field("target", &self.target)
            .field("instance", &self.instance)
            .finish()
    }
}

impl Pg {
    fn err(&self, cause: tokio_postgres::Error) -> StoreError {
        StoreError::Postgres {
            target: self.target.clone(),
            cause,
        }
    }

    /// Where this instance was bound (recorded in `instances` so that the
    /// others can forward relay frames to its beacon), and the peer list
    /// to keep up to date.
    pub fn set_addrs(
        &mut self,
        registry: std::net::SocketAddr,
        beacon: std::net::SocketAddr,
        peers: Option<Arc<crate::rendezvous::beacon::Peers>>,
    ) {
        self.registry_addr = registry.to_string();
        self.beacon_addr = beacon.to_string();
        self.peers = peers;
    }

    /// Reads the beacons of the other live instances into the peer list.
    /// An instance bound to an unspecified address (`0.0.0.0`) cannot be
    /// reached by it and is left out.
    async fn refresh_peers(&mut self) -> Result<(), StoreError> {
        let Some(peers) = self.peers.clone() else {
            return Ok(());
        };
        let (target, instance) = (self.target.clone(), self.instance);
        self.connect().await?;
        let Some(c) = self.client.as_ref() else {
            return Err(self.not_connected());
        };
        let rows = c
            .query(
                "SELECT beacon FROM instances WHERE id <> $1 \
                 AND last_seen > now() - $2::FLOAT8 * INTERVAL '1 second' LIMIT 64",
                &[&instance, &(3.0 * STAMP_EVERY.as_secs_f64())],
            )
            .await
            .map_err(|cause| StoreError::Postgres { target, cause })?;
        peers.set(
            rows.iter()
                .filter_map(|r| r.get::<_, String>(0).parse::<std::net::SocketAddr>().ok())
                .filter(|a| !a.ip().is_unspecified() && a.port() != 0)
                .collect(),
        );
        Ok(())
    }

    fn not_connected(&self) -> StoreError {
        StoreError::PostgresClosed {
            target: self.target.clone(),
        }
    }

    /// Connects if not connected (or if the connection broke).
    async fn connect(&mut self) -> Result<(), StoreError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            let (client, conn) = self.config.connect(NoTls).await.map_err(|e| self.err(e))?;
            let target = self.target.clone();
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::warn!(store = %target, error = %e, "database connection closed");
                }
            });
            self.client = Some(client);
        }
        Ok(())
    }

    async fn migrate(&mut self) -> Result<(), StoreError> {
        let target = self.target.clone();
        self.connect().await?;
        let Some(c) = self.client.as_mut() else {
            return Err(self.not_connected());
        };
        let e = |cause| StoreError::Postgres {
            target: target.clone(),
            cause,
        };
        c.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_version (id INT PRIMARY KEY, version INT NOT NULL);
             INSERT INTO schema_version (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING",
        )
        .await
        .map_err(e)?;
        // One instance migrates at a time: the others wait on the row lock.
        let tx = c.transaction().await.map_err(e)?;
        let found: i32 = tx
            .query_one(
                "SELECT version FROM schema_version WHERE id = 1 FOR UPDATE",
                &[],
            )
            .await
            .map_err(e)?
            .get(0);
        let found = u32::try_from(found).unwrap_or(u32::MAX);
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: target.clone().into(),
                found,
                known: SCHEMA_VERSION,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            tx.batch_execute(sql).await.map_err(e)?;
            tx.execute(
                "UPDATE schema_version SET version = $1 WHERE id = 1",
                &[&(i as i32 + 1)],
            )
            .await
            .map_err(e)?;
        }
        tx.commit().await.map_err(e)
    }

    /// Reads the whole database into a snapshot. A key or hostname held by
    /// two ids (two instances registered one new key at once) keeps the
    /// lower id, so that a database is never refused over it.
    async fn load(&mut self) -> Result<(Snapshot, HashSet<u32>), StoreError> {
        let target = self.target.clone();
        let instance = self.instance;
        self.connect().await?;
        let Some(c) = self.client.as_mut() else {
            return Err(self.not_connected());
        };
        let e = |cause| StoreError::Postgres {
            target: target.clone(),
            cause,
        };
        let rows = c
            .query(
                "SELECT n.id, n.public_key, n.owner, n.live, h.name, n.public, n.real_addr, \
                 n.lan_addrs, n.version, n.key_created, n.instance \
                 FROM nodes n LEFT JOIN hostnames h ON h.id = n.id ORDER BY n.id",
                &[],
            )
            .await
            .map_err(e)?;
        let (mut nodes, mut remote) = (Vec::new(), HashSet::new());
        let (mut keys, mut names, mut ids) = (HashSet::new(), HashSet::new(), HashSet::new());
        for r in &rows {
            let Some((rec, inst)) = node_row(r) else {
                continue;
            };
            if !ids.insert(rec.id) || !keys.insert(rec.public_key.clone()) {
                tracing::warn!(store = %target, node = rec.id, "skipping a duplicate node row or key");
                continue;
            }
            let mut rec = rec;
            if let Some(h) = &rec.hostname {
                if !names.insert(h.clone()) {
                    rec.hostname = None;
                }
            }
            if inst != instance {
                remote.insert(rec.id);
            }
            nodes.push(rec);
        }
        let next_id = nodes
            .iter()
            .map(|n| n.id)
            .max()
            .unwrap_or(0)
            .saturating_add(1);
        let pairs = async |sql: &str| -> Result<Vec<[u32; 2]>, StoreError> {
            let rows = c.query(sql, &[]).await.map_err(e)?;
            Ok(rows
                .iter()
                .filter_map(|r| Some([id32(r.get(0))?, id32(r.get(1))?]))
                .filter(|[a, b]| ids.contains(a) && ids.contains(b))
                .collect())
        };
        let trust = pairs("SELECT a, b FROM trust ORDER BY a, b").await?;
        let consents = pairs("SELECT a, b FROM consents ORDER BY a, b").await?;
        let (handshake_requests, handshake_responses) = inboxes(c, None).await.map_err(e)?;
        self.known_inboxes = group_inboxes(&[], &handshake_requests, &handshake_responses);
        let net = read_networks(c, None, None, None, None).await.map_err(e)?;
        let snap = Snapshot {
            next_id,
            nodes,
            trust,
            consents,
            handshake_requests,
            handshake_responses,
            networks: net.networks,
            network_members: net
                .members
                .into_iter()
                .filter(|m| m.1)
                .map(|m| m.0)
                .collect(),
            network_invites: net.invites.into_values().flatten().collect(),
            node_tags: net
                .tags
                .into_iter()
                .filter(|t| !t.1.is_empty())
                .map(|(node_id, tags)| TagRecord { node_id, tags })
                .collect(),
        };
        Ok((snap, remote))
    }

    /// Reserves the next block of node ids for this instance.
    async fn id_block(&mut self) -> Result<Option<std::ops::Range<u32>>, StoreError> {
        let target = self.target.clone();
        self.connect().await?;
        let Some(c) = self.client.as_mut() else {
            return Err(self.not_connected());
        };
        let k: i64 = c
            .query_one("SELECT nextval('node_id_blocks')", &[])
            .await
            .map_err(|cause| StoreError::Postgres { target, cause })?
            .get(0);
        let start = k
            .saturating_sub(1)
            .saturating_mul(i64::from(ID_BLOCK))
            .saturating_add(1);
        let end = start
            .saturating_add(i64::from(ID_BLOCK))
            .min(i64::from(MAX_NODES) + 1);
        match (u32::try_from(start), u32::try_from(end)) {
            (Ok(s), Ok(e)) if s < e => Ok(Some(s..e)),
            _ => Ok(None),
        }
    }

    /// Writes one batch in one transaction with its change-log entries.
    /// Returns the hostnames this instance granted but another instance's
    /// node holds in the database (see the module notes).
    async fn commit(
        &mut self,
        ch: &Changes,
        remote: &HashSet<u32>,
    ) -> Result<Vec<(u32, String)>, StoreError> {
        let (target, instance) = (self.target.clone(), self.instance);
        let e = |cause| StoreError::Postgres {
            target: target.clone(),
            cause,
        };
        self.connect().await?;
        let Some(c) = self.client.as_mut() else {
            return Err(self.not_connected());
        };
        let tx = c.transaction().await.map_err(e)?;
        let mut log: (Vec<i16>, Vec<i64>, Vec<i64>) = Default::default();
        let mut add_log = |k: Kind, a: u32, b: u32| {
            log.0.push(k as i16);
            log.1.push(i64::from(a));
            log.2.push(i64::from(b));
        };

        // Nodes: one upsert of every changed row, one delete.
        #[derive(Default)]
        struct Cols {
            id: Vec<i64>,
            key: Vec<Vec<u8>>,
            owner: Vec<Option<String>>,
            live: Vec<bool>,
            public: Vec<bool>,
            real_addr: Vec<String>,
            lan: Vec<String>,
            version: Vec<Option<String>>,
            key_created: Vec<i64>,
            instance: Vec<i64>,
        }
        let mut cols = Cols::default();
        let (mut all, mut gone, mut names, mut name_ids) = (vec![], vec![], vec![], vec![]);
        for (&id, row) in &ch.nodes {
            add_log(Kind::Node, id, 0);
            all.push(i64::from(id));
            let Some(n) = row else {
                gone.push(i64::from(id));
                continue;
            };
            let Some(key) = wire::decode_public_key(&n.public_key) else {
                continue;
            };
            cols.id.push(i64::from(id));
            cols.key.push(key.to_vec());
            cols.owner.push(n.owner.clone());
            cols.live.push(n.live);
            cols.public.push(n.public);
            cols.real_addr.push(n.real_addr.clone());
            cols.lan.push(if n.lan_addrs.is_empty() {
                String::new()
            } else {
                serde_json::to_string(&n.lan_addrs).unwrap_or_default()
            });
            cols.version.push(n.version.clone());
            cols.key_created
                .push(i64::try_from(n.key_created).unwrap_or(i64::MAX));
            // A node another instance serves keeps its instance.
            cols.instance
                .push(if remote.contains(&id) { -1 } else { instance });
            if let Some(h) = n.hostname.as_ref().filter(|_| n.live) {
                names.push(h.clone());
                name_ids.push(i64::from(id));
            }
        }
        if !cols.id.is_empty() {
            tx.execute(
                "INSERT INTO nodes (id, public_key, owner, live, public, real_addr, lan_addrs, \
                 version, key_created, instance) \
                 SELECT * FROM unnest($1::BIGINT[], $2::BYTEA[], $3::TEXT[], $4::BOOLEAN[], \
                 $5::BOOLEAN[], $6::TEXT[], $7::TEXT[], $8::TEXT[], $9::BIGINT[], $10::BIGINT[]) \
                 ON CONFLICT (id) DO UPDATE SET public_key = excluded.public_key, \
                 owner = excluded.owner, live = excluded.live, public = excluded.public, \
                 real_addr = excluded.real_addr, lan_addrs = excluded.lan_addrs, \
                 version = excluded.version, key_created = excluded.key_created, \
                 instance = CASE WHEN excluded.instance < 0 THEN nodes.instance \
                 ELSE excluded.instance END",
                &[
                    &cols.id,
                    &cols.key,
                    &cols.owner,
                    &cols.live,
                    &cols.public,
                    &cols.real_addr,
                    &cols.lan,
                    &cols.version,
                    &cols.key_created,
                    &cols.instance,
                ],
            )
            .await
            .map_err(e)?;
        }
        if !gone.is_empty() {
            tx.execute("DELETE FROM nodes WHERE id = ANY($1)", &[&gone])
                .await
                .map_err(e)?;
        }
        // Hostnames: drop the names these nodes no longer hold, then claim
        // the ones they do. A name held by a node of this batch may be
        // taken over (this instance decided both); one held by anyone else
        // is not.
        let mut lost = Vec::new();
        if !all.is_empty() {
            tx.execute(
                "DELETE FROM hostnames WHERE id = ANY($1) AND NOT (name = ANY($2))",
                &[&all, &names],
            )
            .await
            .map_err(e)?;
        }
        if !names.is_empty() {
            tx.execute(
                "INSERT INTO hostnames (name, id) SELECT * FROM unnest($1::TEXT[], $2::BIGINT[]) \
                 ON CONFLICT (name) DO UPDATE SET id = excluded.id WHERE hostnames.id = ANY($3)",
                &[&names, &name_ids, &all],
            )
            .await
            .map_err(e)?;
            let held: HashMap<String, i64> = tx
                .query(
                    "SELECT name, id FROM hostnames WHERE name = ANY($1)",
                    &[&names],
                )
                .await
                .map_err(e)?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            for (name, id) in names.iter().zip(&name_ids) {
                if held.get(name) != Some(id) {
                    lost.push((*id as u32, name.clone()));
                }
            }
        }

        // Trust pairs and consents.
        for (table, rows, kind) in [
            ("trust", &ch.trust, Kind::Trust),
            ("consents", &ch.consents, Kind::Consent),
        ] {
            let (mut add, mut rm) = (PairCols::default(), PairCols::default());
            for (&(a, b), &present) in rows {
                add_log(kind, a, b);
                let v = if present { &mut add } else { &mut rm };
                v.a.push(i64::from(a));
                v.b.push(i64::from(b));
            }
            if !add.a.is_empty() {
                tx.execute(
                    &format!(
                        "INSERT INTO {table} (a, b) SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[]) \
                         ON CONFLICT (a, b) DO NOTHING"
                    ),
                    &[&add.a, &add.b],
                )
                .await
                .map_err(e)?;
            }
            if !rm.a.is_empty() {
                tx.execute(
                    &format!(
                        "DELETE FROM {table} WHERE (a, b) IN \
                         (SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[]))"
                    ),
                    &[&rm.a, &rm.b],
                )
                .await
                .map_err(e)?;
            }
        }

        // Handshake inboxes: only what changed since this instance last
        // saw them in the database.
        let (mut req_add, mut req_del) = (InboxCols::<String>::default(), PairCols::default());
        let mut req_del_ts = Vec::new();
        let (mut resp_add, mut resp_del) =
            (InboxCols::<bool>::default(), InboxCols::<bool>::default());
        for (&id, inbox) in &ch.inboxes {
            add_log(Kind::Inbox, id, 0);
            let before = self.known_inboxes.get(&id);
            let had: HashSet<(u32, i64)> = before
                .map(|b| b.requests.iter().map(|r| (r.from, r.timestamp)).collect())
                .unwrap_or_default();
            let now: HashSet<(u32, i64)> = inbox
                .requests
                .iter()
                .map(|r| (r.from, r.timestamp))
                .collect();
            let mut added_from = HashSet::new();
            for r in &inbox.requests {
                if !had.contains(&(r.from, r.timestamp)) && added_from.insert(r.from) {
                    req_add.to.push(i64::from(id));
                    req_add.from.push(i64::from(r.from));
                    req_add.val.push(r.justification.clone());
                    req_add.ts.push(r.timestamp);
                }
            }
            for &(from, ts) in had.difference(&now) {
                req_del.a.push(i64::from(id));
                req_del.b.push(i64::from(from));
                req_del_ts.push(ts);
            }
            let key = |r: &HandshakeResponseRecord| (r.from, r.timestamp, r.accept);
            let had: HashSet<(u32, i64, bool)> = before
                .map(|b| b.responses.iter().map(key).collect())
                .unwrap_or_default();
            let now: HashSet<(u32, i64, bool)> = inbox.responses.iter().map(key).collect();
            for &(from, ts, accept) in now.difference(&had) {
                resp_add.to.push(i64::from(id));
                resp_add.from.push(i64::from(from));
                resp_add.val.push(accept);
                resp_add.ts.push(ts);
            }
            for &(from, ts, accept) in had.difference(&now) {
                resp_del.to.push(i64::from(id));
                resp_del.from.push(i64::from(from));
                resp_del.val.push(accept);
                resp_del.ts.push(ts);
            }
        }
        if !req_del.a.is_empty() {
            tx.execute(
                "DELETE FROM handshake_requests WHERE (to_id, from_id, ts) IN \
                 (SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[], $3::BIGINT[]))",
                &[&req_del.a, &req_del.b, &req_del_ts],
            )
            .await
            .map_err(e)?;
        }
        if !req_add.to.is_empty() {
            tx.execute(
                "INSERT INTO handshake_requests (to_id, from_id, justification, ts) \
                 SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::BIGINT[]) \
                 ON CONFLICT (to_id, from_id) DO UPDATE SET \
                 justification = excluded.justification, ts = excluded.ts",
                &[&req_add.to, &req_add.from, &req_add.val, &req_add.ts],
            )
            .await
            .map_err(e)?;
        }
        if !resp_del.to.is_empty() {
            tx.execute(
                "DELETE FROM handshake_responses WHERE (to_id, from_id, ts, accept) IN \
                 (SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[], $3::BIGINT[], $4::BOOLEAN[]))",
                &[&resp_del.to, &resp_del.from, &resp_del.ts, &resp_del.val],
            )
            .await
            .map_err(e)?;
        }
        if !resp_add.to.is_empty() {
            tx.execute(
                "INSERT INTO handshake_responses (to_id, from_id, ts, accept) \
                 SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[], $3::BIGINT[], $4::BOOLEAN[]) \
                 ON CONFLICT (to_id, from_id, ts, accept) DO NOTHING",
                &[&resp_add.to, &resp_add.from, &resp_add.ts, &resp_add.val],
            )
            .await
            .map_err(e)?;
        }

        // Networks, memberships, invitations and tags (schema 2).
        for (&id, row) in &ch.networks {
            add_log(Kind::Network, u32::from(id), 0);
            match row {
                Some(n) => {
                    // A name another network row holds (another instance
                    // created it at the same moment) is refused by the
                    // UNIQUE constraint: the batch fails and is retried,
                    // and the catch-up before a create makes this rare.
                    tx.execute(
                        "INSERT INTO networks (id, name, owner, join_rule, created) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET \
                         name = excluded.name, owner = excluded.owner, \
                         join_rule = excluded.join_rule, created = excluded.created",
                        &[
                            &i64::from(id),
                            &n.name,
                            &i64::from(n.owner),
                            &n.join_rule.as_str(),
                            &n.created,
                        ],
                    )
                    .await
                    .map_err(e)?;
                }
                None => {
                    tx.execute("DELETE FROM networks WHERE id = $1", &[&i64::from(id)])
                        .await
                        .map_err(e)?;
                }
            }
        }
        let (mut add, mut rm) = (PairCols::default(), PairCols::default());
        for (&(net, node), &present) in &ch.network_members {
            add_log(Kind::Member, u32::from(net), node);
            let v = if present { &mut add } else { &mut rm };
            v.a.push(i64::from(net));
            v.b.push(i64::from(node));
        }
        if !add.a.is_empty() {
            tx.execute(
                "INSERT INTO network_members (network_id, node_id) \
                 SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[]) ON CONFLICT DO NOTHING",
                &[&add.a, &add.b],
            )
            .await
            .map_err(e)?;
        }
        if !rm.a.is_empty() {
            tx.execute(
                "DELETE FROM network_members WHERE (network_id, node_id) IN \
                 (SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[]))",
                &[&rm.a, &rm.b],
            )
            .await
            .map_err(e)?;
        }
        if !ch.network_invites.is_empty() {
            let targets: Vec<i64> = ch.network_invites.keys().map(|&t| i64::from(t)).collect();
            tx.execute(
                "DELETE FROM network_invites WHERE target = ANY($1)",
                &[&targets],
            )
            .await
            .map_err(e)?;
            #[derive(Default)]
            struct InviteCols {
                target: Vec<i64>,
                seq: Vec<i64>,
                net: Vec<i64>,
                inviter: Vec<i64>,
                ts: Vec<i64>,
            }
            let mut cols = InviteCols::default();
            for (&target, list) in &ch.network_invites {
                add_log(Kind::Invites, target, 0);
                for (seq, i) in list.iter().enumerate() {
                    cols.target.push(i64::from(target));
                    cols.seq.push(seq as i64);
                    cols.net.push(i64::from(i.network_id));
                    cols.inviter.push(i64::from(i.inviter));
                    cols.ts.push(i.timestamp);
                }
            }
            if !cols.target.is_empty() {
                tx.execute(
                    "INSERT INTO network_invites (target, seq, network_id, inviter, ts) \
                     SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[], $3::BIGINT[], \
                     $4::BIGINT[], $5::BIGINT[])",
                    &[&cols.target, &cols.seq, &cols.net, &cols.inviter, &cols.ts],
                )
                .await
                .map_err(e)?;
            }
        }
        if !ch.node_tags.is_empty() {
            let (mut put_ids, mut put_tags, mut del_ids) = (Vec::new(), Vec::new(), Vec::new());
            for (&node, tags) in &ch.node_tags {
                add_log(Kind::Tags, node, 0);
                if tags.is_empty() {
                    del_ids.push(i64::from(node));
                } else {
                    put_ids.push(i64::from(node));
                    put_tags.push(serde_json::to_string(tags).unwrap_or_else(|_| "[]".into()));
                }
            }
            if !del_ids.is_empty() {
                tx.execute("DELETE FROM node_tags WHERE node_id = ANY($1)", &[&del_ids])
                    .await
                    .map_err(e)?;
            }
            if !put_ids.is_empty() {
                tx.execute(
                    "INSERT INTO node_tags (node_id, tags) \
                     SELECT * FROM unnest($1::BIGINT[], $2::TEXT[]) \
                     ON CONFLICT (node_id) DO UPDATE SET tags = excluded.tags",
                    &[&put_ids, &put_tags],
                )
                .await
                .map_err(e)?;
            }
        }

        if !log.0.is_empty() {
            tx.execute(
                "INSERT INTO changes (instance, kind, a, b) \
                 SELECT $1, k, a, b FROM unnest($2::SMALLINT[], $3::BIGINT[], $4::BIGINT[]) \
                 AS t(k, a, b)",
                &[&instance, &log.0, &log.1, &log.2],
            )
            .await
            .map_err(e)?;
        }
        tx.commit().await.map_err(e)?;
        for (&id, inbox) in &ch.inboxes {
            self.reread.insert(id);
            if inbox.requests.is_empty() && inbox.responses.is_empty() {
                self.known_inboxes.remove(&id);
            } else {
                self.known_inboxes.insert(id, inbox.clone());
            }
        }
        Ok(lost)
    }

    /// Reads the change log since the last read and applies the current
    /// value of every row another instance changed.
    async fn pull(&mut self, registry: &Registry) -> Result<usize, StoreError> {
        let (target, instance) = (self.target.clone(), self.instance);
        let e = |cause| StoreError::Postgres {
            target: target.clone(),
            cause,
        };
        let now = Instant::now();
        self.gaps
            .retain(|_, t| now.duration_since(*t) < LATE_COMMIT);
        let from = self
            .gaps
            .keys()
            .min()
            .map_or(self.last_seq, |g| g - 1)
            .min(self.last_seq);
        let last = self.last_seq;
        self.connect().await?;
        let Some(c) = self.client.as_mut() else {
            return Err(self.not_connected());
        };
        let rows = c
            .query(
                "SELECT seq, instance, kind, a, b FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&from, &MAX_LOG_READ],
            )
            .await
            .map_err(e)?;
        let mut newest = last;
        let (mut nodes, mut trust, mut consents, mut inbox) = (
            HashSet::new(),
            HashSet::new(),
            HashSet::new(),
            HashSet::new(),
        );
        let (mut nets, mut members, mut invites, mut tags) = (
            HashSet::new(),
            HashSet::new(),
            HashSet::new(),
            HashSet::new(),
        );
        let mut seen = HashSet::new();
        for r in &rows {
            let seq: i64 = r.get(0);
            seen.insert(seq);
            if seq <= last && !self.gaps.contains_key(&seq) {
                continue;
            }
            newest = newest.max(seq);
            let inst: i64 = r.get(1);
            if inst == instance {
                continue;
            }
            let (kind, a, b): (i16, i64, i64) = (r.get(2), r.get(3), r.get(4));
            // `b` is 0 for the kinds that name one row.
            let (Some(a), Some(b)) = (id32(a), u32::try_from(b).ok()) else {
                continue;
            };
            let net = u16::try_from(a).ok();
            match kind {
                k if k == Kind::Node as i16 => nodes.insert(a),
                k if k == Kind::Trust as i16 => trust.insert((a, b)),
                k if k == Kind::Consent as i16 => consents.insert((a, b)),
                k if k == Kind::Inbox as i16 => inbox.insert(a),
                k if k == Kind::Network as i16 => net.is_some_and(|n| nets.insert(n)),
                k if k == Kind::Member as i16 => net.is_some_and(|n| members.insert((n, b))),
                k if k == Kind::Invites as i16 => invites.insert(a),
                k if k == Kind::Tags as i16 => tags.insert(a),
                _ => false,
            };
        }
        for s in seen.iter().filter(|&&s| s <= last) {
            self.gaps.remove(s);
        }
        for s in (last + 1)..newest {
            if self.gaps.len() >= MAX_GAPS {
                break;
            }
            if !seen.contains(&s) {
                self.gaps.insert(s, now);
            }
        }
        self.last_seq = newest;
        inbox.extend(self.reread.drain());
        let touched = nodes.len()
            + trust.len()
            + consents.len()
            + inbox.len()
            + nets.len()
            + members.len()
            + invites.len()
            + tags.len();
        if touched == 0 {
            return Ok(0);
        }
        let mut ch = Changes::default();
        let mut remote = HashSet::new();
        if !nodes.is_empty() {
            let ids: Vec<i64> = nodes.iter().map(|&id| i64::from(id)).collect();
            let rows = c
                .query(
                    "SELECT n.id, n.public_key, n.owner, n.live, h.name, n.public, n.real_addr, \
                     n.lan_addrs, n.version, n.key_created, n.instance \
                     FROM nodes n LEFT JOIN hostnames h ON h.id = n.id WHERE n.id = ANY($1)",
                    &[&ids],
                )
                .await
                .map_err(e)?;
            for id in &nodes {
                ch.nodes.insert(*id, None);
            }
            for r in &rows {
                if let Some((rec, inst)) = node_row(r) {
                    if inst != instance {
                        remote.insert(rec.id);
                    }
                    ch.nodes.insert(rec.id, Some(rec));
                }
            }
        }
        for (table, want, out) in [
            ("trust", &trust, &mut ch.trust),
            ("consents", &consents, &mut ch.consents),
        ] {
            if want.is_empty() {
                continue;
            }
            let a: Vec<i64> = want.iter().map(|p| i64::from(p.0)).collect();
            let b: Vec<i64> = want.iter().map(|p| i64::from(p.1)).collect();
            let rows = c
                .query(
                    &format!("SELECT a, b FROM {table} WHERE a = ANY($1) AND b = ANY($2)"),
                    &[&a, &b],
                )
                .await
                .map_err(e)?;
            let present: HashSet<(u32, u32)> = rows
                .iter()
                .filter_map(|r| Some((id32(r.get(0))?, id32(r.get(1))?)))
                .collect();
            for p in want {
                out.insert(*p, present.contains(p));
            }
        }
        if !inbox.is_empty() {
            let ids: Vec<u32> = inbox.iter().copied().collect();
            let (reqs, resps) = inboxes(c, Some(&ids)).await.map_err(e)?;
            ch.inboxes = group_inboxes(&ids, &reqs, &resps);
        }
        if nets.len() + members.len() + invites.len() + tags.len() > 0 {
            let net = read_networks(c, Some(&nets), Some(&members), Some(&invites), Some(&tags))
                .await
                .map_err(e)?;
            ch.networks = net.networks.into_iter().map(|r| (r.id, Some(r))).collect();
            for id in &nets {
                ch.networks.entry(*id).or_insert(None);
            }
            ch.network_members = net.members.into_iter().collect();
            ch.network_invites = net.invites;
            ch.node_tags = net.tags.into_iter().collect();
        }
        // What this instance knows of an inbox is what its memory holds:
        // one changed here meanwhile was not replaced, and is read again
        // after its write.
        let read: Vec<(u32, Inboxes)> = ch.inboxes.iter().map(|(&id, i)| (id, i.clone())).collect();
        let skipped: HashSet<u32> = registry
            .apply_remote(ch, &remote, Instant::now())
            .into_iter()
            .collect();
        for (id, i) in read {
            if skipped.contains(&id) {
                self.reread.insert(id);
            } else if i.requests.is_empty() && i.responses.is_empty() {
                self.known_inboxes.remove(&id);
            } else {
                self.known_inboxes.insert(id, i);
            }
        }
        Ok(touched)
    }

    /// Stamps this instance as alive, marks offline the nodes of instances
    /// whose stamp is older than the stale-node timeout, and prunes the
    /// change log.
    async fn housekeeping(&mut self) -> Result<(), StoreError> {
        let (target, instance) = (self.target.clone(), self.instance);
        let (reg, beacon) = (self.registry_addr.clone(), self.beacon_addr.clone());
        let stale = self.stale_after.as_secs_f64();
        let e = |cause| StoreError::Postgres {
            target: target.clone(),
            cause,
        };
        self.connect().await?;
        let Some(c) = self.client.as_mut() else {
            return Err(self.not_connected());
        };
        c.execute(
            "INSERT INTO instances (id, registry, beacon, last_seen) VALUES ($1, $2, $3, now()) \
             ON CONFLICT (id) DO UPDATE SET registry = excluded.registry, \
             beacon = excluded.beacon, last_seen = now()",
            &[&instance, &reg, &beacon],
        )
        .await
        .map_err(e)?;
        let tx = c.transaction().await.map_err(e)?;
        let swept: Vec<i64> = tx
            .query(
                "UPDATE nodes SET live = false WHERE live AND instance <> $1 AND NOT EXISTS \
                 (SELECT 1 FROM instances i WHERE i.id = nodes.instance \
                 AND i.last_seen > now() - $2::FLOAT8 * INTERVAL '1 second') RETURNING id",
                &[&instance, &stale],
            )
            .await
            .map_err(e)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !swept.is_empty() {
            tx.execute("DELETE FROM hostnames WHERE id = ANY($1)", &[&swept])
                .await
                .map_err(e)?;
            // Instance 0: every instance applies it, this one included.
            tx.execute(
                "INSERT INTO changes (instance, kind, a, b) SELECT 0, $1, a, 0 FROM unnest($2::BIGINT[]) AS t(a)",
                &[&(Kind::Node as i16), &swept],
            )
            .await
            .map_err(e)?;
            tracing::info!(store = %target, nodes = swept.len(), "marked offline the nodes of dead instances");
        }
        tx.execute(
            "DELETE FROM instances WHERE last_seen < now() - $1::FLOAT8 * INTERVAL '1 second'",
            &[&(stale * 2.0)],
        )
        .await
        .map_err(e)?;
        tx.execute(
            &format!("DELETE FROM changes WHERE at < now() - INTERVAL '{LOG_KEEP}'"),
            &[],
        )
        .await
        .map_err(e)?;
        tx.commit().await.map_err(e)
    }
}

/// Two id columns, bound as arrays.
#[derive(Default)]
struct PairCols {
    a: Vec<i64>,
    b: Vec<i64>,
}

/// The columns of one handshake inbox table, bound as arrays.
#[derive(Default)]
struct InboxCols<T> {
    to: Vec<i64>,
    from: Vec<i64>,
    val: Vec<T>,
    ts: Vec<i64>,
}

/// Rows of the schema-2 tables as read: networks (only those present),
/// memberships with whether they are present, whole invitation lists and
/// whole tag lists (empty: none) per node.
#[derive(Default)]
struct NetRows {
    networks: Vec<NetworkRecord>,
    members: Vec<((u16, u32), bool)>,
    invites: HashMap<u32, Vec<InviteRecord>>,
    tags: Vec<(u32, Vec<String>)>,
}

/// Reads the schema-2 rows: all of them (every filter `None`, at load), or
/// the current value of the rows named (after a read of the change log).
async fn read_networks(
    c: &Client,
    nets: Option<&HashSet<u16>>,
    members: Option<&HashSet<(u16, u32)>>,
    invites: Option<&HashSet<u32>>,
    tags: Option<&HashSet<u32>>,
) -> Result<NetRows, tokio_postgres::Error> {
    let mut out = NetRows::default();
    let ids16 = |s: &HashSet<u16>| s.iter().map(|&v| i64::from(v)).collect::<Vec<i64>>();
    let ids32 = |s: &HashSet<u32>| s.iter().map(|&v| i64::from(v)).collect::<Vec<i64>>();
    let net_rows = match nets {
        None => {
            c.query(
                "SELECT id, name, owner, join_rule, created FROM networks ORDER BY id",
                &[],
            )
            .await?
        }
        Some(s) if !s.is_empty() => {
            c.query(
                "SELECT id, name, owner, join_rule, created FROM networks WHERE id = ANY($1)",
                &[&ids16(s)],
            )
            .await?
        }
        Some(_) => Vec::new(),
    };
    for r in &net_rows {
        let (Ok(id), Some(owner)) = (u16::try_from(r.get::<_, i64>(0)), id32(r.get(2))) else {
            continue;
        };
        let Some(join_rule) = JoinRule::parse(r.get::<_, &str>(3)) else {
            continue;
        };
        out.networks.push(NetworkRecord {
            id,
            name: r.get(1),
            owner,
            join_rule,
            created: r.get(4),
        });
    }
    let pair =
        |r: &tokio_postgres::Row| Some((u16::try_from(r.get::<_, i64>(0)).ok()?, id32(r.get(1))?));
    match members {
        None => {
            for r in c
                .query(
                    "SELECT network_id, node_id FROM network_members ORDER BY network_id, node_id",
                    &[],
                )
                .await?
            {
                if let Some(p) = pair(&r) {
                    out.members.push((p, true));
                }
            }
        }
        Some(want) if !want.is_empty() => {
            let a: Vec<i64> = want.iter().map(|p| i64::from(p.0)).collect();
            let b: Vec<i64> = want.iter().map(|p| i64::from(p.1)).collect();
            let present: HashSet<(u16, u32)> = c
                .query(
                    "SELECT network_id, node_id FROM network_members \
                     WHERE network_id = ANY($1) AND node_id = ANY($2)",
                    &[&a, &b],
                )
                .await?
                .iter()
                .filter_map(pair)
                .collect();
            out.members = want.iter().map(|p| (*p, present.contains(p))).collect();
        }
        Some(_) => {}
    }
    let invite_rows = match invites {
        None => {
            c.query(
                "SELECT target, network_id, inviter, ts FROM network_invites ORDER BY target, seq",
                &[],
            )
            .await?
        }
        Some(s) if !s.is_empty() => {
            for &t in s {
                out.invites.insert(t, Vec::new());
            }
            c.query(
                "SELECT target, network_id, inviter, ts FROM network_invites \
                 WHERE target = ANY($1) ORDER BY target, seq",
                &[&ids32(s)],
            )
            .await?
        }
        Some(_) => Vec::new(),
    };
    for r in &invite_rows {
        let (Some(target), Ok(network_id), Some(inviter)) = (
            id32(r.get(0)),
            u16::try_from(r.get::<_, i64>(1)),
            id32(r.get(2)),
        ) else {
            continue;
        };
        out.invites.entry(target).or_default().push(InviteRecord {
            network_id,
            target,
            inviter,
            timestamp: r.get(3),
        });
    }
    let tag_rows = match tags {
        None => {
            c.query("SELECT node_id, tags FROM node_tags ORDER BY node_id", &[])
                .await?
        }
        Some(s) if !s.is_empty() => {
            let rows = c
                .query(
                    "SELECT node_id, tags FROM node_tags WHERE node_id = ANY($1)",
                    &[&ids32(s)],
                )
                .await?;
            let found: HashSet<u32> = rows.iter().filter_map(|r| id32(r.get(0))).collect();
            out.tags.extend(
                s.iter()
                    .filter(|n| !found.contains(n))
                    .map(|&n| (n, Vec::new())),
            );
            rows
        }
        Some(_) => Vec::new(),
    };
    for r in &tag_rows {
        let Some(node) = id32(r.get(0)) else { continue };
        let Ok(list) = serde_json::from_str::<Vec<String>>(r.get(1)) else {
            continue;
        };
        out.tags.push((node, list));
    }
    Ok(out)
}

fn id32(v: i64) -> Option<u32> {
    u32::try_from(v).ok().filter(|&id| id != 0)
}

/// A `nodes` row joined with its hostname, and the instance serving it.
fn node_row(r: &tokio_postgres::Row) -> Option<(NodeRecord, i64)> {
    let id = id32(r.try_get(0).ok()?)?;
    let key: Vec<u8> = r.try_get(1).ok()?;
    if key.len() != 32 {
        return None;
    }
    let lan: String = r.try_get(7).ok()?;
    let lan_addrs = if lan.is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(&lan).ok()?
    };
    let key_created: i64 = r.try_get(9).ok()?;
    Some((
        NodeRecord {
            id,
            public_key: wire::b64_encode(&key),
            owner: r.try_get(2).ok()?,
            live: r.try_get(3).ok()?,
            hostname: r.try_get(4).ok()?,
            public: r.try_get(5).ok()?,
            real_addr: r.try_get(6).ok()?,
            lan_addrs,
            version: r.try_get(8).ok()?,
            key_created: u64::try_from(key_created).unwrap_or(0),
        },
        r.try_get(10).ok()?,
    ))
}

/// Inboxes by node: one (maybe empty) for each of `ids`, and one for every
/// node the rows name.
fn group_inboxes(
    ids: &[u32],
    reqs: &[HandshakeRequestRecord],
    resps: &[HandshakeResponseRecord],
) -> HashMap<u32, Inboxes> {
    let mut out: HashMap<u32, Inboxes> = ids.iter().map(|&id| (id, Inboxes::default())).collect();
    for r in reqs {
        out.entry(r.to).or_default().requests.push(r.clone());
    }
    for r in resps {
        out.entry(r.to).or_default().responses.push(r.clone());
    }
    out
}

/// The handshake inboxes of `ids` (all with `None`), oldest first.
async fn inboxes(
    c: &Client,
    ids: Option<&[u32]>,
) -> Result<(Vec<HandshakeRequestRecord>, Vec<HandshakeResponseRecord>), tokio_postgres::Error> {
    let ids: Option<Vec<i64>> = ids.map(|v| v.iter().map(|&i| i64::from(i)).collect());
    let filter = if ids.is_some() {
        "WHERE to_id = ANY($1)"
    } else {
        "WHERE $1::BIGINT[] IS NULL"
    };
    let reqs = c
        .query(
            &format!(
                "SELECT to_id, from_id, justification, ts FROM handshake_requests {filter} \
                 ORDER BY to_id, ts, from_id"
            ),
            &[&ids],
        )
        .await?
        .iter()
        .filter_map(|r| {
            Some(HandshakeRequestRecord {
                to: id32(r.get(0))?,
                from: id32(r.get(1))?,
                justification: r.get(2),
                timestamp: r.get(3),
            })
        })
        .collect();
    let resps = c
        .query(
            &format!(
                "SELECT to_id, from_id, accept, ts FROM handshake_responses {filter} \
                 ORDER BY to_id, ts, from_id"
            ),
            &[&ids],
        )
        .await?
        .iter()
        .filter_map(|r| {
            Some(HandshakeResponseRecord {
                to: id32(r.get(0))?,
                from: id32(r.get(1))?,
                accept: r.get(2),
                timestamp: r.get(3),
            })
        })
        .collect();
    Ok((reqs, resps))
}

/// Where this instance is reached (stored in `instances`, for operators
/// and for forwarding between instances later).
#[derive(Debug, Clone)]
pub struct InstanceInfo {
    /// The registry's TCP address.
    pub registry: String,
    /// The beacon's UDP address.
    pub beacon: String,
    /// The stale-node timeout; a dead instance's nodes are marked offline
    /// after it.
    pub stale_after: Duration,
}

/// Connects to the database at `url`, creates or migrates the schema, and
/// loads the registry it holds.
pub async fn open(
    url: &str,
    info: InstanceInfo,
    now: Instant,
) -> Result<(Pg, Registry), StoreError> {
    let config: tokio_postgres::Config =
        url.parse()
            .map_err(|e: tokio_postgres::Error| StoreError::PostgresUrl {
                reason: e.to_string(),
            })?;
    let instance = {
        use rand_core::RngCore;
        // Positive and non-zero (0 marks the sweeper's log entries).
        (rand_core::OsRng.next_u64() >> 1).max(1) as i64
    };
    let mut pg = Pg {
        target: target(&config),
        config,
        client: None,
        instance,
        registry_addr: info.registry,
        beacon_addr: info.beacon,
        last_seq: 0,
        gaps: HashMap::new(),
        stale_after: info.stale_after,
        known_inboxes: HashMap::new(),
        reread: HashSet::new(),
        peers: None,
    };
    // Instances starting together race to create the schema; the loser's
    // `CREATE TABLE IF NOT EXISTS` can fail, and then finds it done.
    let mut tries = 0;
    loop {
        match pg.migrate().await {
            Ok(()) => break,
            Err(StoreError::Postgres { .. }) if tries < MIGRATE_TRIES => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    }
    // Where the log stands before loading: changes after this are read
    // again and applied (idempotently) by the first pull.
    let target = pg.target.clone();
    pg.connect().await?;
    let Some(c) = pg.client.as_ref() else {
        return Err(pg.not_connected());
    };
    let last: Option<i64> = c
        .query_one("SELECT max(seq) FROM changes", &[])
        .await
        .map_err(|cause| StoreError::Postgres {
            target: target.clone(),
            cause,
        })?
        .get(0);
    pg.last_seq = last.unwrap_or(0);
    let (snap, remote) = pg.load().await?;
    let registry = Registry::from_snapshot(snap, now).map_err(|e| StoreError::Corrupt {
        path: target.clone().into(),
        reason: e.0,
    })?;
    super::release_freed_memory();
    registry.track_changes();
    registry.use_id_blocks();
    registry.mark_remote(remote);
    for _ in 0..2 {
        if let Some(b) = pg.id_block().await? {
            registry.add_id_block(b);
        }
    }
    pg.housekeeping().await?;
    tracing::info!(store = %target, instance, nodes = registry.known_nodes(), "joined the shared database");
    Ok((pg, registry))
}

/// Lets a request wait for one read of the change log that began after it
/// arrived (see the module notes). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Catchup {
    requested: Arc<AtomicU64>,
    notify: Arc<Notify>,
    done: watch::Receiver<u64>,
}

impl Catchup {
    /// Waits for a fresh read of what the other instances wrote; false on
    /// timeout (the request then goes on with what this instance knows).
    pub async fn wait(&self, timeout: Duration) -> bool {
        let want = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.notify.notify_one();
        let mut rx = self.done.clone();
        tokio::time::timeout(timeout, rx.wait_for(|d| *d >= want))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Starts the task that writes this instance's changes and reads the
/// others', returning the durability handle requests wait on, the
/// catch-up handle and the task.
pub fn spawn(
    mut pg: Pg,
    registry: Arc<Registry>,
    mut stop: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) -> (Durability, Catchup, tokio::task::JoinHandle<()>) {
    let notify = Arc::new(Notify::new());
    let (tx, rx) = watch::channel(registry.generation());
    let durability = Durability {
        notify: notify.clone(),
        durable: rx,
        enabled: true,
    };
    let (done_tx, done_rx) = watch::channel(0u64);
    let catchup = Catchup {
        requested: Arc::new(AtomicU64::new(0)),
        notify: notify.clone(),
        done: done_rx,
    };
    let requested = catchup.requested.clone();
    let task = tokio::spawn(async move {
        let mut failed: Option<Changes> = None;
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first round stamps the bound addresses at once.
        let mut last_housekeeping: Option<Instant> = None;
        let mut last_peers: Option<Instant> = None;
        loop {
            let stopping = tokio::select! {
                _ = notify.notified() => false,
                _ = tick.tick() => false,
                _ = stop.wait_for(|s| *s) => true,
            };
            let asked = requested.load(Ordering::SeqCst);
            let round = async {
                // Our writes first, so a read that follows sees them.
                loop {
                    let (generation, changes) = registry.take_changes();
                    let batch = match failed.take() {
                        Some(mut f) => {
                            f.merge(changes);
                            f
                        }
                        None => changes,
                    };
                    if batch.rows() == 0 {
                        tx.send_if_modified(|d| {
                            let newer = generation > *d;
                            *d = (*d).max(generation);
                            newer
                        });
                        break;
                    }
                    let started = Instant::now();
                    let remote = registry.remote_nodes(batch.nodes.keys().copied());
                    match pg.commit(&batch, &remote).await {
                        Ok(lost) => {
                            metrics.store_batch(started.elapsed(), batch.rows());
                            for (id, name) in lost {
                                tracing::warn!(node = id, hostname = %name, "hostname taken on another instance at the same time; dropped");
                                registry.drop_hostname(id, &name);
                            }
                            tx.send_replace(generation);
                        }
                        Err(e) => {
                            failed = Some(batch);
                            return Err(e);
                        }
                    }
                }
                if registry.needs_id_block() {
                    if let Some(b) = pg.id_block().await? {
                        registry.add_id_block(b);
                    }
                }
                pg.pull(&registry).await?;
                done_tx.send_replace(asked);
                if last_housekeeping.is_none_or(|t| t.elapsed() >= STAMP_EVERY) {
                    last_housekeeping = Some(Instant::now());
                    pg.housekeeping().await?;
                }
                if last_peers.is_none_or(|t| t.elapsed() >= PEERS_EVERY) {
                    last_peers = Some(Instant::now());
                    pg.refresh_peers().await?;
                }
                Ok::<(), StoreError>(())
            };
            if let Err(e) = round.await {
                tracing::error!(error = %e, "cannot use the shared database");
                metrics.store_errors.inc();
                if stopping {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_AFTER) => {}
                    _ = stop.wait_for(|s| *s) => {}
                }
                continue;
            }
            if stopping {
                break;
            }
        }
    });
    (durability, catchup, task)
}
