//! The SQLite side of the store: schema, migrations, loading, and writing
//! one batch of changed rows in one transaction.
//!
//! Schema (version 1):
//!
//! | table | rows |
//! |---|---|
//! | `schema_version` | one row: the schema version of the file |
//! | `meta` | `next_id` (the next node id to allocate; ids are never reused except reclaimed unproven ones) |
//! | `nodes` | one row per known id: 32-byte key, owner, live flag, hostname, visibility, endpoint of the last registration, LAN endpoints (JSON array text, `''` for none), software version, key creation time |
//! | `trust` | trust pairs `(a, b)`, `a < b` |
//! | `consents` | one-sided signed consents `(a, b)`: `a` trusts `b` |
//! | `handshake_requests` | pending requests per inbox, `seq` = position (oldest first) |
//! | `handshake_responses` | answers waiting for their requester, `seq` = position |
//! | `networks` | (version 2) one row per network: name, owner, join rule (`open`/`invite`), creation time |
//! | `network_members` | (version 2) memberships `(network_id, node_id)` |
//! | `network_invites` | (version 2) pending invitations per invited node, `seq` = position |
//! | `node_tags` | (version 2) each tagged node's tags (JSON array text) |
//!
//! Uniqueness of keys and hostnames is the registry's job (it checks both
//! again on load): a batch applies rows in any order, and a hostname freed
//! by one node and taken by another in the same batch must not trip an
//! index on the way. Migrations are a list of SQL scripts; the file records
//! how many have run, and a file from a newer build is refused rather than
//! misread.
//!
//! Pragmas: `journal_mode=WAL` (readers never block the writer, and a
//! commit appends to the log instead of rewriting pages) and
//! `synchronous=FULL` (the log is fsynced at every commit, so an
//! acknowledged registration survives power loss, not just a crash).

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, ErrorCode, OpenFlags};

use super::StoreError;
use crate::rendezvous::networks::{InviteRecord, NetSnapshot, NetworkRecord, TagRecord};
use crate::rendezvous::state::{
    Changes, HandshakeRequestRecord, HandshakeResponseRecord, NodeRecord, Snapshot,
};
use crate::wire::networks::JoinRule;
use crate::wire::registry as wire;

/// The schema version this build writes (the number of `MIGRATIONS`).
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Migration `i` takes a file from schema version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema (issue 13).
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
     CREATE TABLE nodes (
         id INTEGER PRIMARY KEY,
         public_key BLOB NOT NULL,
         owner TEXT,
         live INTEGER NOT NULL,
         hostname TEXT,
         public INTEGER NOT NULL,
         real_addr TEXT NOT NULL,
         lan_addrs TEXT NOT NULL,
         version TEXT,
         key_created INTEGER NOT NULL
     );
     CREATE TABLE trust (a INTEGER NOT NULL, b INTEGER NOT NULL, PRIMARY KEY (a, b)) WITHOUT ROWID;
     CREATE TABLE consents (a INTEGER NOT NULL, b INTEGER NOT NULL, PRIMARY KEY (a, b)) WITHOUT ROWID;
     CREATE TABLE handshake_requests (
         to_id INTEGER NOT NULL, seq INTEGER NOT NULL, from_id INTEGER NOT NULL,
         justification TEXT NOT NULL, ts INTEGER NOT NULL,
         PRIMARY KEY (to_id, seq)) WITHOUT ROWID;
     CREATE TABLE handshake_responses (
         to_id INTEGER NOT NULL, seq INTEGER NOT NULL, from_id INTEGER NOT NULL,
         accept INTEGER NOT NULL, ts INTEGER NOT NULL,
         PRIMARY KEY (to_id, seq)) WITHOUT ROWID;",
    // 2: networks, invitations and tags (issue 12).
    "CREATE TABLE networks (
         id INTEGER PRIMARY KEY,
         name TEXT NOT NULL,
         owner INTEGER NOT NULL,
         join_rule TEXT NOT NULL,
         created INTEGER NOT NULL
     );
     CREATE TABLE network_members (
         network_id INTEGER NOT NULL, node_id INTEGER NOT NULL,
         PRIMARY KEY (network_id, node_id)) WITHOUT ROWID;
     CREATE TABLE network_invites (
         target INTEGER NOT NULL, seq INTEGER NOT NULL, network_id INTEGER NOT NULL,
         inviter INTEGER NOT NULL, ts INTEGER NOT NULL,
         PRIMARY KEY (target, seq)) WITHOUT ROWID;
     CREATE TABLE node_tags (node_id INTEGER PRIMARY KEY, tags TEXT NOT NULL);",
];

/// An open SQLite store file.
pub(super) struct Db {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

/// Maps a SQLite error to the store error naming `path`: damage is
/// [`StoreError::Corrupt`], anything else [`StoreError::Sqlite`].
pub(super) fn error(path: &Path, cause: rusqlite::Error) -> StoreError {
    match cause.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StoreError::Corrupt {
            path: path.to_path_buf(),
            reason: cause.to_string(),
        },
        _ => StoreError::Sqlite {
            path: path.to_path_buf(),
            cause,
        },
    }
}

fn corrupt(path: &Path, reason: String) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        reason,
    }
}

impl Db {
    /// Opens (creating if needed) the database at `path`, sets the pragmas
    /// and runs pending migrations. `wal` false keeps a rollback journal
    /// (used while importing, so the finished file stands alone).
    pub(super) fn open(path: &Path, wal: bool) -> Result<Db, StoreError> {
        let err = |e| error(path, e);
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        let mode: String = conn
            .query_row(
                if wal {
                    "PRAGMA journal_mode=WAL"
                } else {
                    "PRAGMA journal_mode=DELETE"
                },
                [],
                |r| r.get(0),
            )
            .map_err(err)?;
        let want = if wal { "wal" } else { "delete" };
        if !mode.eq_ignore_ascii_case(want) {
            return Err(StoreError::Sqlite {
                path: path.to_path_buf(),
                cause: rusqlite::Error::InvalidQuery,
            });
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        let mut db = Db {
            conn,
            path: path.to_path_buf(),
        };
        db.migrate()?;
        Ok(db)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |e| error(&path, e);
        self.conn
            .execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            .map_err(err)?;
        let found: Option<i64> = self
            .conn
            .query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))
            .map_err(err)?;
        let found = u32::try_from(found.unwrap_or(0))
            .map_err(|_| corrupt(&path, "negative or huge schema version".into()))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path,
                found,
                known: SCHEMA_VERSION,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let tx = self.conn.transaction().map_err(err)?;
            tx.execute_batch(sql).map_err(err)?;
            tx.execute("DELETE FROM schema_version", []).map_err(err)?;
            tx.execute(
                "INSERT INTO schema_version (version) VALUES (?1)",
                params![i as i64 + 1],
            )
            .map_err(err)?;
            tx.commit().map_err(err)?;
        }
        Ok(())
    }

    /// Reads the whole store into a [`Snapshot`] (the registry then checks
    /// it as it checks an imported JSON store).
    pub(super) fn load(&self) -> Result<Snapshot, StoreError> {
        let path = &self.path;
        let err = |e| error(path, e);
        let next_id: Option<i64> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'next_id'", [], |r| {
                r.get(0)
            })
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
            .map_err(err)?;
        let next_id = u32::try_from(next_id.unwrap_or(1))
            .map_err(|_| corrupt(path, "next_id out of range".into()))?;

        let mut nodes = Vec::new();
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, public_key, owner, live, hostname, public, real_addr, lan_addrs, \
                 version, key_created FROM nodes ORDER BY id",
            )
            .map_err(err)?;
        let mut rows = stmt.query([]).map_err(err)?;
        while let Some(r) = rows.next().map_err(err)? {
            let id: i64 = r.get(0).map_err(err)?;
            let id = u32::try_from(id).map_err(|_| corrupt(path, format!("node id {id}")))?;
            let bad = |m: &str| corrupt(path, format!("node {id}: {m}"));
            let key: Vec<u8> = r.get(1).map_err(err)?;
            if key.len() != 32 {
                return Err(bad("public key is not 32 bytes"));
            }
            let lan: String = r.get(7).map_err(err)?;
            let lan_addrs = if lan.is_empty() {
                Vec::new()
            } else {
                serde_json::from_str(&lan).map_err(|e| bad(&format!("lan_addrs: {e}")))?
            };
            let key_created: i64 = r.get(9).map_err(err)?;
            nodes.push(NodeRecord {
                id,
                public_key: wire::b64_encode(&key),
                owner: r.get(2).map_err(err)?,
                live: r.get(3).map_err(err)?,
                hostname: r.get(4).map_err(err)?,
                public: r.get(5).map_err(err)?,
                real_addr: r.get(6).map_err(err)?,
                lan_addrs,
                version: r.get(8).map_err(err)?,
                key_created: u64::try_from(key_created).unwrap_or(0),
            });
        }
        drop(rows);
        drop(stmt);

        let pairs = |sql: &str| -> Result<Vec<[u32; 2]>, StoreError> {
            let mut stmt = self.conn.prepare(sql).map_err(err)?;
            let mut rows = stmt.query([]).map_err(err)?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(err)? {
                let (a, b): (i64, i64) = (r.get(0).map_err(err)?, r.get(1).map_err(err)?);
                match (u32::try_from(a), u32::try_from(b)) {
                    (Ok(a), Ok(b)) => out.push([a, b]),
                    _ => return Err(corrupt(path, format!("pair {a}-{b} out of range"))),
                }
            }
            Ok(out)
        };
        let trust = pairs("SELECT a, b FROM trust ORDER BY a, b")?;
        let consents = pairs("SELECT a, b FROM consents ORDER BY a, b")?;

        let id32 = |v: i64| u32::try_from(v).map_err(|_| corrupt(path, format!("node id {v}")));
        let mut handshake_requests = Vec::new();
        let mut stmt = self
            .conn
            .prepare(
                "SELECT to_id, from_id, justification, ts FROM handshake_requests \
                 ORDER BY to_id, seq",
            )
            .map_err(err)?;
        let mut rows = stmt.query([]).map_err(err)?;
        while let Some(r) = rows.next().map_err(err)? {
            handshake_requests.push(HandshakeRequestRecord {
                to: id32(r.get(0).map_err(err)?)?,
                from: id32(r.get(1).map_err(err)?)?,
                justification: r.get(2).map_err(err)?,
                timestamp: r.get(3).map_err(err)?,
            });
        }
        drop(rows);
        drop(stmt);
        let mut handshake_responses = Vec::new();
        let mut stmt = self
            .conn
            .prepare(
                "SELECT to_id, from_id, accept, ts FROM handshake_responses ORDER BY to_id, seq",
            )
            .map_err(err)?;
        let mut rows = stmt.query([]).map_err(err)?;
        while let Some(r) = rows.next().map_err(err)? {
            handshake_responses.push(HandshakeResponseRecord {
                to: id32(r.get(0).map_err(err)?)?,
                from: id32(r.get(1).map_err(err)?)?,
                accept: r.get(2).map_err(err)?,
                timestamp: r.get(3).map_err(err)?,
            });
        }
        drop(rows);
        drop(stmt);

        let net = self.load_networks()?;
        Ok(Snapshot {
            next_id,
            nodes,
            trust,
            consents,
            handshake_requests,
            handshake_responses,
            networks: net.networks,
            network_members: net.members,
            network_invites: net.invites,
            node_tags: net.tags,
        })
    }

    /// The rows of schema version 2 (networks, invitations, tags).
    fn load_networks(&self) -> Result<NetSnapshot, StoreError> {
        let path = &self.path;
        let err = |e| error(path, e);
        let mut out = NetSnapshot::default();
        let id16 = |v: i64| u16::try_from(v).map_err(|_| corrupt(path, format!("network id {v}")));
        let id32 = |v: i64| u32::try_from(v).map_err(|_| corrupt(path, format!("node id {v}")));
        let mut stmt = self
            .conn
            .prepare("SELECT id, name, owner, join_rule, created FROM networks ORDER BY id")
            .map_err(err)?;
        let mut rows = stmt.query([]).map_err(err)?;
        while let Some(r) = rows.next().map_err(err)? {
            let rule: String = r.get(3).map_err(err)?;
            let id = id16(r.get(0).map_err(err)?)?;
            out.networks.push(NetworkRecord {
                id,
                name: r.get(1).map_err(err)?,
                owner: id32(r.get(2).map_err(err)?)?,
                join_rule: JoinRule::parse(&rule)
                    .ok_or_else(|| corrupt(path, format!("network {id}: join rule {rule:?}")))?,
                created: r.get(4).map_err(err)?,
            });
        }
        drop(rows);
        drop(stmt);
        let mut stmt = self
            .conn
            .prepare("SELECT network_id, node_id FROM network_members ORDER BY network_id, node_id")
            .map_err(err)?;
        let mut rows = stmt.query([]).map_err(err)?;
        while let Some(r) = rows.next().map_err(err)? {
            out.members
                .push((id16(r.get(0).map_err(err)?)?, id32(r.get(1).map_err(err)?)?));
        }
        drop(rows);
        drop(stmt);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT target, network_id, inviter, ts FROM network_invites ORDER BY target, seq",
            )
            .map_err(err)?;
        let mut rows = stmt.query([]).map_err(err)?;
        while let Some(r) = rows.next().map_err(err)? {
            out.invites.push(InviteRecord {
                target: id32(r.get(0).map_err(err)?)?,
                network_id: id16(r.get(1).map_err(err)?)?,
                inviter: id32(r.get(2).map_err(err)?)?,
                timestamp: r.get(3).map_err(err)?,
            });
        }
        drop(rows);
        drop(stmt);
        let mut stmt = self
            .conn
            .prepare("SELECT node_id, tags FROM node_tags ORDER BY node_id")
            .map_err(err)?;
        let mut rows = stmt.query([]).map_err(err)?;
        while let Some(r) = rows.next().map_err(err)? {
            let node_id = id32(r.get(0).map_err(err)?)?;
            let text: String = r.get(1).map_err(err)?;
            let tags = serde_json::from_str(&text)
                .map_err(|e| corrupt(path, format!("node {node_id}: tags: {e}")))?;
            out.tags.push(TagRecord { node_id, tags });
        }
        Ok(out)
    }

    /// Writes one batch of changed rows in one transaction; returns once it
    /// is durable (committed with `synchronous=FULL`).
    pub(super) fn commit(&mut self, ch: &Changes) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |e| error(&path, e);
        let tx = self.conn.transaction().map_err(err)?;
        {
            tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES ('next_id', ?1)")
                .map_err(err)?
                .execute(params![i64::from(ch.next_id)])
                .map_err(err)?;
            let mut put = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO nodes (id, public_key, owner, live, hostname, public, \
                     real_addr, lan_addrs, version, key_created) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )
                .map_err(err)?;
            let mut del = tx
                .prepare_cached("DELETE FROM nodes WHERE id = ?1")
                .map_err(err)?;
            for (&id, row) in &ch.nodes {
                match row {
                    Some(n) => {
                        let key = wire::decode_public_key(&n.public_key).ok_or_else(|| {
                            corrupt(&path, format!("node {id}: unencodable public key"))
                        })?;
                        let lan = if n.lan_addrs.is_empty() {
                            String::new()
                        } else {
                            serde_json::to_string(&n.lan_addrs).unwrap_or_default()
                        };
                        put.execute(params![
                            i64::from(id),
                            &key[..],
                            n.owner,
                            n.live,
                            n.hostname,
                            n.public,
                            n.real_addr,
                            lan,
                            n.version,
                            i64::try_from(n.key_created).unwrap_or(i64::MAX),
                        ])
                        .map_err(err)?;
                    }
                    None => {
                        del.execute(params![i64::from(id)]).map_err(err)?;
                    }
                }
            }
            for (table, rows) in [("trust", &ch.trust), ("consents", &ch.consents)] {
                let mut add = tx
                    .prepare_cached(&format!(
                        "INSERT OR IGNORE INTO {table} (a, b) VALUES (?1, ?2)"
                    ))
                    .map_err(err)?;
                let mut rm = tx
                    .prepare_cached(&format!("DELETE FROM {table} WHERE a = ?1 AND b = ?2"))
                    .map_err(err)?;
                for (&(a, b), &present) in rows {
                    let p = params![i64::from(a), i64::from(b)];
                    if present {
                        add.execute(p)
                    } else {
                        rm.execute(p)
                    }
                    .map_err(err)?;
                }
            }
            let mut clear_req = tx
                .prepare_cached("DELETE FROM handshake_requests WHERE to_id = ?1")
                .map_err(err)?;
            let mut clear_resp = tx
                .prepare_cached("DELETE FROM handshake_responses WHERE to_id = ?1")
                .map_err(err)?;
            let mut add_req = tx
                .prepare_cached(
                    "INSERT INTO handshake_requests (to_id, seq, from_id, justification, ts) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(err)?;
            let mut add_resp = tx
                .prepare_cached(
                    "INSERT INTO handshake_responses (to_id, seq, from_id, accept, ts) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(err)?;
            for (&id, inbox) in &ch.inboxes {
                clear_req.execute(params![i64::from(id)]).map_err(err)?;
                clear_resp.execute(params![i64::from(id)]).map_err(err)?;
                for (seq, r) in inbox.requests.iter().enumerate() {
                    add_req
                        .execute(params![
                            i64::from(id),
                            seq as i64,
                            i64::from(r.from),
                            r.justification,
                            r.timestamp
                        ])
                        .map_err(err)?;
                }
                for (seq, r) in inbox.responses.iter().enumerate() {
                    add_resp
                        .execute(params![
                            i64::from(id),
                            seq as i64,
                            i64::from(r.from),
                            r.accept,
                            r.timestamp
                        ])
                        .map_err(err)?;
                }
            }
            Self::commit_networks(&tx, ch, &path)?;
        }
        tx.commit().map_err(err)
    }

    /// The schema-2 rows of one batch (inside its transaction).
    fn commit_networks(
        tx: &rusqlite::Transaction<'_>,
        ch: &Changes,
        path: &Path,
    ) -> Result<(), StoreError> {
        let err = |e| error(path, e);
        let mut put = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO networks (id, name, owner, join_rule, created) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(err)?;
        let mut del = tx
            .prepare_cached("DELETE FROM networks WHERE id = ?1")
            .map_err(err)?;
        for (&id, row) in &ch.networks {
            match row {
                Some(n) => put.execute(params![
                    i64::from(id),
                    n.name,
                    i64::from(n.owner),
                    n.join_rule.as_str(),
                    n.created
                ]),
                None => del.execute(params![i64::from(id)]),
            }
            .map_err(err)?;
        }
        let mut add = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO network_members (network_id, node_id) VALUES (?1, ?2)",
            )
            .map_err(err)?;
        let mut rm = tx
            .prepare_cached("DELETE FROM network_members WHERE network_id = ?1 AND node_id = ?2")
            .map_err(err)?;
        for (&(net, node), &present) in &ch.network_members {
            let p = params![i64::from(net), i64::from(node)];
            if present {
                add.execute(p)
            } else {
                rm.execute(p)
            }
            .map_err(err)?;
        }
        let mut clear = tx
            .prepare_cached("DELETE FROM network_invites WHERE target = ?1")
            .map_err(err)?;
        let mut inv = tx
            .prepare_cached(
                "INSERT INTO network_invites (target, seq, network_id, inviter, ts) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(err)?;
        for (&target, list) in &ch.network_invites {
            clear.execute(params![i64::from(target)]).map_err(err)?;
            for (seq, i) in list.iter().enumerate() {
                inv.execute(params![
                    i64::from(target),
                    seq as i64,
                    i64::from(i.network_id),
                    i64::from(i.inviter),
                    i.timestamp
                ])
                .map_err(err)?;
            }
        }
        let mut put_tags = tx
            .prepare_cached("INSERT OR REPLACE INTO node_tags (node_id, tags) VALUES (?1, ?2)")
            .map_err(err)?;
        let mut del_tags = tx
            .prepare_cached("DELETE FROM node_tags WHERE node_id = ?1")
            .map_err(err)?;
        for (&node, tags) in &ch.node_tags {
            if tags.is_empty() {
                del_tags.execute(params![i64::from(node)])
            } else {
                put_tags.execute(params![
                    i64::from(node),
                    serde_json::to_string(tags).unwrap_or_else(|_| "[]".into())
                ])
            }
            .map_err(err)?;
        }
        Ok(())
    }

    /// Writes a whole snapshot into this (empty) database in one
    /// transaction (the JSON import).
    pub(super) fn write_snapshot(&mut self, snap: &Snapshot) -> Result<(), StoreError> {
        let mut ch = Changes {
            next_id: snap.next_id.max(1),
            ..Changes::default()
        };
        for n in &snap.nodes {
            ch.nodes.insert(n.id, Some(n.clone()));
        }
        for &[a, b] in &snap.trust {
            ch.trust.insert((a.min(b), a.max(b)), true);
        }
        for &[a, b] in &snap.consents {
            ch.consents.insert((a, b), true);
        }
        for r in &snap.handshake_requests {
            ch.inboxes.entry(r.to).or_default().requests.push(r.clone());
        }
        for r in &snap.handshake_responses {
            ch.inboxes
                .entry(r.to)
                .or_default()
                .responses
                .push(r.clone());
        }
        self.commit(&ch)
    }

    /// The store file.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}
