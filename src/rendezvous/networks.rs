//! The registry's networks, invitations and tags (spec §6.4.11), and the
//! discovery queries over them (`find_nodes`, `list_nodes`).
//!
//! Why a module of its own: membership is what lets private nodes resolve
//! and admit each other (spec §6.4.4, §6.4.6, §6.4.9, §9.6), so the node
//! table asks it `share(a, b)`; everything else here (who owns what, who is
//! invited, which node carries which tag) is independent of the node table
//! and is kept in [`Networks`], which the registry's state holds under the
//! same lock. Node facts it needs (visibility, liveness, hostname, trust
//! pairs) come through the [`Directory`] trait, so the rules are unit-tested
//! here without a registry.
//!
//! Membership changes must reach the members' daemons at once (issue 12:
//! under 2 s, not the reference's 5-minute resync): every change bumps a
//! per-node version of every member concerned and lists them in
//! [`Networks::take_wake`]; the server wakes their `poll_networks`
//! long-polls. Versions are in memory only and start from the clock at load,
//! so a daemon's old version never matches after a registry restart.
//!
//! Bounds (everything from the network is hostile): networks in total,
//! networks a node owns, networks a node is in, members per network,
//! invitations per node, tags per node and their length. Discovery answers
//! are capped ([`MAX_FIND_RESULTS`]); the tag index makes `find_nodes --tag`
//! cost the size of the rarest tag's node set, not the registry's size.
//!
//! Deliberate differences from the reference: `deregister` keeps a node's
//! memberships (a daemon deregisters at every stop; leaving is a signed
//! `leave_network`), and `list_nodes` unsigned lists only public members.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::wire::address::Addr;
use crate::wire::networks::{
    validate_network_name, validate_tag, validate_tags, CreateNetworkOk, InviteEntry, JoinRule,
    ListNetworksOk, Membership, NetRequest, NetResponse, NetworkChangeOk, NetworkEntry, NodeEntry,
    NodesOk, PollInvitesOk, PollNetworksOk, SetTagsOk, DEFAULT_FIND_RESULTS, MAX_FIND_RESULTS,
};

/// Most networks the registry keeps (our bound: `list_networks` must fit
/// one 4 MiB frame, spec §6.1, at ~150 bytes an entry).
pub const MAX_NETWORKS: usize = 10_000;
/// Most networks one node may own (our bound).
pub const MAX_OWNED_PER_NODE: usize = 16;
/// Most networks one node may be a member of (our bound; a `poll_networks`
/// answer lists them all).
pub const MAX_NETWORKS_PER_NODE: usize = 64;
/// Most members per network (our bound: a member list in a
/// `poll_networks` answer stays under ~100 KiB).
pub const MAX_MEMBERS: usize = 10_000;
/// Most pending invitations per invited node (our bound).
pub const MAX_INVITES_PER_NODE: usize = 64;
/// Longest `find_nodes` query text (our bound).
pub const MAX_QUERY_LEN: usize = 256;

/// What the network rules need to know about nodes.
pub trait Directory {
    /// `Some(public)` for a known node id (live or not), `None` if unknown.
    fn visibility(&self, id: u32) -> Option<bool>;
    /// The node as discovery lists it (without tags), if known.
    fn entry(&self, id: u32) -> Option<NodeEntry>;
    /// A registry trust pair exists between `a` and `b`.
    fn trusted(&self, a: u32, b: u32) -> bool;
    /// Ids of nodes whose hostname contains `q` (lower case).
    fn hostnames_containing(&self, q: &str) -> Vec<u32>;
}

/// A network as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// Network id (≥ 1).
    pub id: u16,
    /// Unique name.
    pub name: String,
    /// The owner's node id.
    pub owner: u32,
    /// Who may join.
    pub join_rule: JoinRule,
    /// Unix seconds of creation.
    pub created: i64,
}

/// A pending invitation as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteRecord {
    /// The network.
    pub network_id: u16,
    /// The invited node.
    pub target: u32,
    /// Who invited.
    pub inviter: u32,
    /// Unix seconds.
    pub timestamp: i64,
}

/// One node's tags as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    /// The node.
    pub node_id: u32,
    /// Its tags, in the order it set them.
    pub tags: Vec<String>,
}

/// Everything of this module a snapshot carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetSnapshot {
    /// Networks by id.
    pub networks: Vec<NetworkRecord>,
    /// `(network, node)` memberships.
    pub members: Vec<(u16, u32)>,
    /// Pending invitations.
    pub invites: Vec<InviteRecord>,
    /// Tags.
    pub tags: Vec<TagRecord>,
}

/// Rows changed since the store last took them (current values; `None` or
/// `false` or empty: the row is gone).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetChanges {
    /// Network rows.
    pub networks: HashMap<u16, Option<NetworkRecord>>,
    /// Membership rows.
    pub members: HashMap<(u16, u32), bool>,
    /// Whole invitation lists of the nodes whose list changed.
    pub invites: HashMap<u32, Vec<InviteRecord>>,
    /// Whole tag lists of the nodes whose tags changed.
    pub tags: HashMap<u32, Vec<String>>,
}

#[derive(Debug, Default)]
struct Dirty {
    networks: HashSet<u16>,
    members: HashSet<(u16, u32)>,
    invites: HashSet<u32>,
    tags: HashSet<u32>,
}

#[derive(Debug)]
struct Network {
    rec: NetworkRecord,
    members: BTreeSet<u32>,
}

/// Networks, invitations and tags (see the module docs).
#[derive(Debug)]
pub struct Networks {
    nets: BTreeMap<u16, Network>,
    by_name: HashMap<String, u16>,
    member_of: HashMap<u32, BTreeSet<u16>>,
    invites: HashMap<u32, Vec<InviteRecord>>,
    tags: HashMap<u32, Vec<String>>,
    tag_index: HashMap<String, HashSet<u32>>,
    /// Version counter (starts at the load time in microseconds).
    counter: u64,
    /// Per-node version of its `poll_networks` answer.
    node_version: HashMap<u32, u64>,
    /// Nodes whose `poll_networks` answer changed since the last
    /// [`Networks::take_wake`].
    wake: Vec<u32>,
    dirty: Option<Dirty>,
}

impl Default for Networks {
    fn default() -> Self {
        let counter = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        Networks {
            nets: BTreeMap::new(),
            by_name: HashMap::new(),
            member_of: HashMap::new(),
            invites: HashMap::new(),
            tags: HashMap::new(),
            tag_index: HashMap::new(),
            counter,
            node_version: HashMap::new(),
            wake: Vec::new(),
            dirty: None,
        }
    }
}

fn net_not_found(id: u16) -> String {
    format!("network {id}: not found")
}

/// The result of one handled request: the answer and whether it changed
/// durable state.
pub type Handled = Result<(NetResponse, bool), String>;

impl Networks {
    /// Starts recording changed rows for [`Networks::take_changes`].
    pub fn track_changes(&mut self) {
        if self.dirty.is_none() {
            self.dirty = Some(Dirty::default());
        }
    }

    /// Rows changed since the last call.
    pub fn take_changes(&mut self) -> NetChanges {
        let Some(d) = self.dirty.as_mut().map(std::mem::take) else {
            return NetChanges::default();
        };
        NetChanges {
            networks: d
                .networks
                .into_iter()
                .map(|id| (id, self.nets.get(&id).map(|n| n.rec.clone())))
                .collect(),
            members: d
                .members
                .into_iter()
                .map(|(n, m)| ((n, m), self.is_member(m, n)))
                .collect(),
            invites: d
                .invites
                .into_iter()
                .map(|id| (id, self.invites.get(&id).cloned().unwrap_or_default()))
                .collect(),
            tags: d
                .tags
                .into_iter()
                .map(|id| (id, self.tags.get(&id).cloned().unwrap_or_default()))
                .collect(),
        }
    }

    /// Nodes to wake (their `poll_networks` answer changed).
    pub fn take_wake(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.wake)
    }

    /// Everything persisted.
    pub fn snapshot(&self) -> NetSnapshot {
        let mut s = NetSnapshot {
            networks: self.nets.values().map(|n| n.rec.clone()).collect(),
            ..NetSnapshot::default()
        };
        for n in self.nets.values() {
            s.members.extend(n.members.iter().map(|&m| (n.rec.id, m)));
        }
        let mut inv: Vec<&InviteRecord> = self.invites.values().flatten().collect();
        inv.sort_by_key(|i| (i.target, i.timestamp, i.network_id));
        s.invites = inv.into_iter().cloned().collect();
        let mut tags: Vec<TagRecord> = self
            .tags
            .iter()
            .map(|(&node_id, t)| TagRecord {
                node_id,
                tags: t.clone(),
            })
            .collect();
        tags.sort_by_key(|t| t.node_id);
        s.tags = tags;
        s
    }

    /// Rebuilds from a snapshot, keeping only rows that name networks and
    /// nodes that exist (`known`) and that respect the bounds.
    pub fn from_snapshot(snap: NetSnapshot, known: impl Fn(u32) -> bool) -> Networks {
        let mut n = Networks::default();
        for r in snap.networks {
            if r.id == 0
                || n.nets.len() >= MAX_NETWORKS
                || n.by_name.contains_key(&r.name)
                || n.nets.contains_key(&r.id)
            {
                continue;
            }
            n.by_name.insert(r.name.clone(), r.id);
            n.nets.insert(
                r.id,
                Network {
                    rec: r,
                    members: BTreeSet::new(),
                },
            );
        }
        for (net, node) in snap.members {
            if known(node) && n.nets.contains_key(&net) {
                n.add_member(net, node);
            }
        }
        for i in snap.invites {
            let list = n.invites.entry(i.target).or_default();
            if known(i.target) && list.len() < MAX_INVITES_PER_NODE {
                list.push(i);
            }
        }
        n.invites.retain(|_, l| !l.is_empty());
        for t in snap.tags {
            if known(t.node_id) && validate_tags(&t.tags).is_ok() {
                n.put_tags(t.node_id, t.tags);
            }
        }
        n.wake.clear();
        n
    }

    /// Applies rows another rendezvous instance wrote to the shared
    /// database (`store::postgres`): current values, as
    /// [`Networks::take_changes`] gives them. A row changed here and not yet
    /// written is left alone (ours is newer); nothing applied is recorded
    /// as a change of this instance. Members of the networks touched, and
    /// the nodes whose membership, invitations or tags changed, are woken
    /// ([`Networks::take_wake`]).
    pub fn apply_remote(&mut self, ch: NetChanges) {
        let dirty = self.dirty.take();
        let mine = |f: &dyn Fn(&Dirty) -> bool| dirty.as_ref().is_some_and(f);
        let mut touched: BTreeSet<u16> = BTreeSet::new();
        let mut nodes: BTreeSet<u32> = BTreeSet::new();
        for (id, row) in ch.networks {
            if id == 0 || mine(&|d| d.networks.contains(&id)) {
                continue;
            }
            match row {
                Some(rec) => {
                    if let Some(&other) = self.by_name.get(&rec.name) {
                        if other != id {
                            // The database holds one name per id; the
                            // other row is about to be replaced as well.
                            self.by_name.remove(&rec.name);
                        }
                    }
                    let room = self.nets.len() < MAX_NETWORKS;
                    match self.nets.get_mut(&id) {
                        Some(n) => {
                            if n.rec.name != rec.name {
                                self.by_name.remove(&n.rec.name);
                            }
                            n.rec = rec.clone();
                        }
                        None if room => {
                            self.nets.insert(
                                id,
                                Network {
                                    rec: rec.clone(),
                                    members: BTreeSet::new(),
                                },
                            );
                        }
                        None => continue,
                    }
                    self.by_name.insert(rec.name, id);
                    touched.insert(id);
                }
                None => {
                    if let Some(n) = self.nets.remove(&id) {
                        self.by_name.remove(&n.rec.name);
                        for m in n.members {
                            nodes.insert(m);
                            if let Some(s) = self.member_of.get_mut(&m) {
                                s.remove(&id);
                                if s.is_empty() {
                                    self.member_of.remove(&m);
                                }
                            }
                        }
                    }
                }
            }
        }
        for ((net, node), present) in ch.members {
            if mine(&|d| d.members.contains(&(net, node))) {
                continue;
            }
            if present && self.nets.contains_key(&net) {
                self.add_member(net, node);
            } else if !present {
                self.remove_member(net, node);
            } else {
                continue;
            }
            touched.insert(net);
            nodes.insert(node);
        }
        for (target, list) in ch.invites {
            if mine(&|d| d.invites.contains(&target)) {
                continue;
            }
            let list: Vec<InviteRecord> = list.into_iter().take(MAX_INVITES_PER_NODE).collect();
            if list.is_empty() {
                self.invites.remove(&target);
            } else {
                self.invites.insert(target, list);
            }
            nodes.insert(target);
        }
        for (node, tags) in ch.tags {
            if mine(&|d| d.tags.contains(&node)) || validate_tags(&tags).is_err() {
                continue;
            }
            self.put_tags(node, tags);
        }
        // `add_member`, `remove_member` and `put_tags` recorded nothing: the
        // tracker was taken out above.
        self.dirty = dirty;
        for net in touched {
            self.touch(net, &[]);
        }
        if !nodes.is_empty() {
            self.bump(nodes);
        }
    }

    /// Forgets everything about `node` (its id is being reclaimed and may
    /// go to another key): memberships, invitations, tags. Networks it owns
    /// are kept (an owner is always a proven, signing node, so this does
    /// not happen to owners).
    pub fn forget(&mut self, node: u32) {
        let nets: Vec<u16> = self
            .member_of
            .get(&node)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        for net in nets {
            self.remove_member(net, node);
            self.touch(net, &[node]);
        }
        if self.invites.remove(&node).is_some() {
            self.mark(|d| {
                d.invites.insert(node);
            });
        }
        if self.tags.contains_key(&node) {
            self.put_tags(node, Vec::new());
        }
        self.node_version.remove(&node);
    }

    /// Whether `node` is a member of `net`.
    pub fn is_member(&self, node: u32, net: u16) -> bool {
        self.member_of.get(&node).is_some_and(|s| s.contains(&net))
    }

    /// Whether `a` and `b` share a network (never the backbone).
    pub fn share(&self, a: u32, b: u32) -> bool {
        match (self.member_of.get(&a), self.member_of.get(&b)) {
            (Some(x), Some(y)) => x.intersection(y).next().is_some(),
            _ => false,
        }
    }

    /// The networks `node` is in, backbone first (for `lookup`, §6.4.3).
    pub fn networks_of(&self, node: u32) -> Vec<u16> {
        let mut v = vec![0];
        if let Some(s) = self.member_of.get(&node) {
            v.extend(s.iter().copied());
        }
        v
    }

    /// `node`'s tags, if it has any.
    pub fn tags_of(&self, node: u32) -> Option<Vec<String>> {
        self.tags.get(&node).filter(|t| !t.is_empty()).cloned()
    }

    /// Number of networks.
    pub fn len(&self) -> usize {
        self.nets.len()
    }

    /// No networks at all.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    fn mark(&mut self, f: impl FnOnce(&mut Dirty)) {
        if let Some(d) = self.dirty.as_mut() {
            f(d);
        }
    }

    /// Every member of `net` (and `extra`) gets a new version and a wake-up.
    fn touch(&mut self, net: u16, extra: &[u32]) {
        let members: Vec<u32> = self
            .nets
            .get(&net)
            .map(|n| n.members.iter().copied().collect())
            .unwrap_or_default();
        self.bump(members.into_iter().chain(extra.iter().copied()));
    }

    /// `nodes` get one new version and a wake-up.
    fn bump(&mut self, nodes: impl IntoIterator<Item = u32>) {
        self.counter += 1;
        let v = self.counter;
        for m in nodes {
            self.node_version.insert(m, v);
            self.wake.push(m);
        }
    }

    fn add_member(&mut self, net: u16, node: u32) {
        if let Some(n) = self.nets.get_mut(&net) {
            n.members.insert(node);
        }
        self.member_of.entry(node).or_default().insert(net);
        self.mark(|d| {
            d.members.insert((net, node));
        });
    }

    fn remove_member(&mut self, net: u16, node: u32) {
        if let Some(n) = self.nets.get_mut(&net) {
            n.members.remove(&node);
        }
        if let Some(s) = self.member_of.get_mut(&node) {
            s.remove(&net);
            if s.is_empty() {
                self.member_of.remove(&node);
            }
        }
        self.mark(|d| {
            d.members.insert((net, node));
        });
    }

    fn put_tags(&mut self, node: u32, tags: Vec<String>) {
        if let Some(old) = self.tags.remove(&node) {
            for t in old {
                if let Some(s) = self.tag_index.get_mut(&t) {
                    s.remove(&node);
                    if s.is_empty() {
                        self.tag_index.remove(&t);
                    }
                }
            }
        }
        for t in &tags {
            self.tag_index.entry(t.clone()).or_default().insert(node);
        }
        if !tags.is_empty() {
            self.tags.insert(node, tags);
        }
        self.mark(|d| {
            d.tags.insert(node);
        });
    }

    fn net(&self, id: u16) -> Result<&Network, String> {
        if id == 0 {
            return Err("invalid network 0: the backbone has no members to manage".into());
        }
        self.nets.get(&id).ok_or_else(|| net_not_found(id))
    }

    fn entry_of(&self, n: &Network, requester: Option<u32>) -> NetworkEntry {
        NetworkEntry {
            id: n.rec.id,
            name: n.rec.name.clone(),
            members: n.members.len() as u32,
            join_rule: n.rec.join_rule,
            enterprise: false,
            created: n.rec.created,
            owner: n.rec.owner,
            member: requester.map(|r| n.members.contains(&r)),
        }
    }

    fn change(&self, net: u16, node: u32) -> NetworkChangeOk {
        NetworkChangeOk {
            network_id: net,
            name: self
                .nets
                .get(&net)
                .map(|n| n.rec.name.clone())
                .unwrap_or_default(),
            node_id: node,
            accept: false,
        }
    }

    fn check_room(&self, net: u16, node: u32) -> Result<(), String> {
        let n = self.net(net)?;
        if n.members.len() >= MAX_MEMBERS {
            return Err(format!(
                "too many members in network {net} (max {MAX_MEMBERS})"
            ));
        }
        if self.member_of.get(&node).map_or(0, |s| s.len()) >= MAX_NETWORKS_PER_NODE {
            return Err(format!(
                "too many networks for node {node} (max {MAX_NETWORKS_PER_NODE}); leave one first"
            ));
        }
        Ok(())
    }

    fn join(&mut self, net: u16, node: u32) -> Result<(), String> {
        self.check_room(net, node)?;
        self.add_member(net, node);
        self.drop_invite(node, net);
        self.touch(net, &[]);
        Ok(())
    }

    fn drop_invite(&mut self, node: u32, net: u16) -> bool {
        let Some(list) = self.invites.get_mut(&node) else {
            return false;
        };
        let before = list.len();
        list.retain(|i| i.network_id != net);
        let removed = list.len() != before;
        if list.is_empty() {
            self.invites.remove(&node);
        }
        if removed {
            self.mark(|d| {
                d.invites.insert(node);
            });
        }
        removed
    }

    /// Whether `requester` may see `node` in discovery: public nodes to
    /// everyone, private ones to themselves, trusted peers and fellow
    /// members (issue 12).
    fn visible(&self, dir: &dyn Directory, requester: u32, node: u32) -> bool {
        match dir.visibility(node) {
            None => false,
            Some(true) => true,
            Some(false) => {
                node == requester || self.share(requester, node) || dir.trusted(requester, node)
            }
        }
    }

    fn node_entry(&self, dir: &dyn Directory, id: u32) -> Option<NodeEntry> {
        let mut e = dir.entry(id)?;
        e.tags = self.tags.get(&id).cloned().unwrap_or_default();
        Some(e)
    }

    /// Handles one request whose signature the registry has verified (the
    /// signer is live). `unix` is the time in seconds.
    pub fn handle(&mut self, req: NetRequest, dir: &dyn Directory, unix: i64) -> Handled {
        match req {
            NetRequest::CreateNetwork(r) => {
                validate_network_name(&r.name)?;
                if let Some(&id) = self.by_name.get(&r.name) {
                    return Err(format!(
                        "network name \"{}\" already in use by network {id}",
                        r.name
                    ));
                }
                if self.nets.len() >= MAX_NETWORKS {
                    return Err(format!("too many networks (max {MAX_NETWORKS})"));
                }
                let owned = self
                    .nets
                    .values()
                    .filter(|n| n.rec.owner == r.node_id)
                    .count();
                if owned >= MAX_OWNED_PER_NODE {
                    return Err(format!(
                        "too many networks owned by node {} (max {MAX_OWNED_PER_NODE})",
                        r.node_id
                    ));
                }
                if self.member_of.get(&r.node_id).map_or(0, |s| s.len()) >= MAX_NETWORKS_PER_NODE {
                    return Err(format!(
                        "too many networks for node {} (max {MAX_NETWORKS_PER_NODE}); leave one first",
                        r.node_id
                    ));
                }
                // Smallest free id (ids of deleted networks are reused
                // only once every id above them has been used).
                let last = self.nets.keys().next_back().copied().unwrap_or(0);
                let id = if last < u16::MAX {
                    last + 1
                } else {
                    (1..u16::MAX)
                        .find(|i| !self.nets.contains_key(i))
                        .ok_or_else(|| format!("too many networks (max {MAX_NETWORKS})"))?
                };
                let rec = NetworkRecord {
                    id,
                    name: r.name.clone(),
                    owner: r.node_id,
                    join_rule: r.join_rule,
                    created: unix,
                };
                self.by_name.insert(r.name, id);
                self.nets.insert(
                    id,
                    Network {
                        rec,
                        members: BTreeSet::new(),
                    },
                );
                self.mark(|d| {
                    d.networks.insert(id);
                });
                self.add_member(id, r.node_id);
                self.touch(id, &[]);
                let network = self.entry_of(&self.nets[&id], Some(r.node_id));
                Ok((
                    NetResponse::CreateNetworkOk(CreateNetworkOk { network }),
                    true,
                ))
            }
            NetRequest::JoinNetwork(r) => {
                let n = self.net(r.network_id)?;
                if n.members.contains(&r.node_id) {
                    return Ok((
                        NetResponse::JoinNetworkOk(self.change(r.network_id, r.node_id)),
                        false,
                    ));
                }
                let invited = self
                    .invites
                    .get(&r.node_id)
                    .is_some_and(|l| l.iter().any(|i| i.network_id == r.network_id));
                if n.rec.join_rule == JoinRule::Invite && !invited {
                    return Err(format!(
                        "cannot join network {} (\"{}\"): it is invite-only; ask its owner (node {}) for an invite",
                        r.network_id, n.rec.name, n.rec.owner
                    ));
                }
                self.join(r.network_id, r.node_id)?;
                Ok((
                    NetResponse::JoinNetworkOk(self.change(r.network_id, r.node_id)),
                    true,
                ))
            }
            NetRequest::LeaveNetwork(r) => {
                let n = self.net(r.network_id)?;
                if !n.members.contains(&r.node_id) {
                    return Err(format!(
                        "node {} is not a member of network {}",
                        r.node_id, r.network_id
                    ));
                }
                if n.rec.owner == r.node_id {
                    return Err(format!(
                        "cannot leave network {}: node {} owns it; delete it instead",
                        r.network_id, r.node_id
                    ));
                }
                let out = self.change(r.network_id, r.node_id);
                self.remove_member(r.network_id, r.node_id);
                self.touch(r.network_id, &[r.node_id]);
                Ok((NetResponse::LeaveNetworkOk(out), true))
            }
            NetRequest::DeleteNetwork(r) => {
                let n = self.net(r.network_id)?;
                if n.rec.owner != r.node_id {
                    return Err(format!(
                        "cannot delete network {}: only its owner (node {}) can",
                        r.network_id, n.rec.owner
                    ));
                }
                let out = self.change(r.network_id, r.node_id);
                let members: Vec<u32> = n.members.iter().copied().collect();
                self.touch(r.network_id, &[]);
                for m in &members {
                    self.remove_member(r.network_id, *m);
                }
                let invited: Vec<u32> = self
                    .invites
                    .iter()
                    .filter(|(_, l)| l.iter().any(|i| i.network_id == r.network_id))
                    .map(|(&t, _)| t)
                    .collect();
                for t in invited {
                    self.drop_invite(t, r.network_id);
                }
                if let Some(n) = self.nets.remove(&r.network_id) {
                    self.by_name.remove(&n.rec.name);
                }
                self.mark(|d| {
                    d.networks.insert(r.network_id);
                });
                Ok((NetResponse::DeleteNetworkOk(out), true))
            }
            NetRequest::InviteToNetwork(r) => {
                let n = self.net(r.network_id)?;
                if !n.members.contains(&r.inviter_id) {
                    return Err(format!(
                        "node {} is not a member of network {}",
                        r.inviter_id, r.network_id
                    ));
                }
                if n.rec.join_rule == JoinRule::Invite && n.rec.owner != r.inviter_id {
                    return Err(format!(
                        "cannot invite to network {}: only its owner (node {}) can",
                        r.network_id, n.rec.owner
                    ));
                }
                if dir.visibility(r.target_node_id).is_none() {
                    return Err(format!("node {}: node not found", r.target_node_id));
                }
                if n.members.contains(&r.target_node_id) {
                    return Err(format!(
                        "node {} is already a member of network {}",
                        r.target_node_id, r.network_id
                    ));
                }
                let out = self.change(r.network_id, r.target_node_id);
                let list = self.invites.entry(r.target_node_id).or_default();
                if list.iter().any(|i| i.network_id == r.network_id) {
                    return Ok((NetResponse::InviteToNetworkOk(out), false));
                }
                if list.len() >= MAX_INVITES_PER_NODE {
                    return Err(format!(
                        "too many pending invites for node {} (max {MAX_INVITES_PER_NODE})",
                        r.target_node_id
                    ));
                }
                list.push(InviteRecord {
                    network_id: r.network_id,
                    target: r.target_node_id,
                    inviter: r.inviter_id,
                    timestamp: unix,
                });
                self.mark(|d| {
                    d.invites.insert(r.target_node_id);
                });
                Ok((NetResponse::InviteToNetworkOk(out), true))
            }
            NetRequest::PollInvites(r) => {
                let invites = self
                    .invites
                    .get(&r.node_id)
                    .map(|l| {
                        l.iter()
                            .map(|i| InviteEntry {
                                network_id: i.network_id,
                                name: self
                                    .nets
                                    .get(&i.network_id)
                                    .map(|n| n.rec.name.clone())
                                    .unwrap_or_default(),
                                inviter_id: i.inviter,
                                timestamp: i.timestamp,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                Ok((NetResponse::PollInvitesOk(PollInvitesOk { invites }), false))
            }
            NetRequest::RespondInvite(r) => {
                self.net(r.network_id)?;
                let invited = self
                    .invites
                    .get(&r.node_id)
                    .is_some_and(|l| l.iter().any(|i| i.network_id == r.network_id));
                if !invited {
                    return Err(format!(
                        "invite to network {} for node {}: not found",
                        r.network_id, r.node_id
                    ));
                }
                if r.accept {
                    if !self.is_member(r.node_id, r.network_id) {
                        self.join(r.network_id, r.node_id)?;
                    }
                } else {
                    self.drop_invite(r.node_id, r.network_id);
                }
                let mut out = self.change(r.network_id, r.node_id);
                out.accept = r.accept;
                Ok((NetResponse::RespondInviteOk(out), true))
            }
            NetRequest::RemoveMember(r) => {
                let n = self.net(r.network_id)?;
                if n.rec.owner != r.node_id {
                    return Err(format!(
                        "cannot remove members of network {}: only its owner (node {}) can",
                        r.network_id, n.rec.owner
                    ));
                }
                if r.target_node_id == r.node_id {
                    return Err(format!(
                        "cannot remove the owner from network {}; delete it instead",
                        r.network_id
                    ));
                }
                if !n.members.contains(&r.target_node_id) {
                    return Err(format!(
                        "node {} is not a member of network {}",
                        r.target_node_id, r.network_id
                    ));
                }
                let out = self.change(r.network_id, r.target_node_id);
                self.remove_member(r.network_id, r.target_node_id);
                self.touch(r.network_id, &[r.target_node_id]);
                Ok((NetResponse::RemoveMemberOk(out), true))
            }
            NetRequest::ListNetworks(r) => {
                let networks = self
                    .nets
                    .values()
                    .map(|n| self.entry_of(n, r.requester_id))
                    .collect();
                Ok((
                    NetResponse::ListNetworksOk(ListNetworksOk { networks }),
                    false,
                ))
            }
            NetRequest::ListNodes(r) => {
                let n = self.net(r.network_id)?;
                // Signed (verified by the registry) by a member: everyone;
                // otherwise the public members only.
                let member = r.requester_id.is_some_and(|q| n.members.contains(&q));
                let nodes: Vec<NodeEntry> = n
                    .members
                    .iter()
                    .filter(|&&m| member || dir.visibility(m) == Some(true))
                    .filter_map(|&m| self.node_entry(dir, m))
                    .collect();
                let total = nodes.len() as u64;
                Ok((NetResponse::ListNodesOk(NodesOk { nodes, total }), false))
            }
            NetRequest::SetTags(r) => {
                validate_tags(&r.tags)?;
                self.put_tags(r.node_id, r.tags);
                let tags = self.tags.get(&r.node_id).cloned().unwrap_or_default();
                Ok((
                    NetResponse::SetTagsOk(SetTagsOk {
                        node_id: r.node_id,
                        tags,
                    }),
                    true,
                ))
            }
            NetRequest::FindNodes(r) => Ok((NetResponse::FindNodesOk(self.find(&r, dir)?), false)),
            NetRequest::PollNetworks(r) => {
                let version = self.node_version.get(&r.node_id).copied().unwrap_or(0);
                let networks = self
                    .member_of
                    .get(&r.node_id)
                    .map(|s| {
                        s.iter()
                            .filter_map(|id| self.nets.get(id))
                            .map(|n| Membership {
                                id: n.rec.id,
                                name: n.rec.name.clone(),
                                members: n.members.iter().copied().collect(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                Ok((
                    NetResponse::PollNetworksOk(PollNetworksOk { version, networks }),
                    false,
                ))
            }
        }
    }

    fn find(
        &self,
        r: &crate::wire::networks::FindNodes,
        dir: &dyn Directory,
    ) -> Result<NodesOk, String> {
        if r.tags.len() > crate::wire::networks::MAX_TAGS {
            return Err(format!(
                "too many tags in the query ({}, max {})",
                r.tags.len(),
                crate::wire::networks::MAX_TAGS
            ));
        }
        for t in &r.tags {
            validate_tag(t)?;
        }
        let query = r.query.as_deref().map(str::to_lowercase);
        if query.as_ref().is_some_and(|q| q.len() > MAX_QUERY_LEN) {
            return Err(format!(
                "invalid search: too long (max {MAX_QUERY_LEN} bytes)"
            ));
        }
        if let Some(net) = r.network_id {
            self.net(net)?;
        }
        let limit = r
            .limit
            .map_or(DEFAULT_FIND_RESULTS, |l| l as usize)
            .clamp(1, MAX_FIND_RESULTS);
        // Candidates: the rarest tag's nodes, else the search text's
        // matches, else the network's members.
        let mut candidates: Vec<u32> = if !r.tags.is_empty() {
            let mut sets: Vec<&HashSet<u32>> = Vec::with_capacity(r.tags.len());
            for t in &r.tags {
                match self.tag_index.get(t) {
                    Some(s) => sets.push(s),
                    None => {
                        return Ok(NodesOk {
                            nodes: Vec::new(),
                            total: 0,
                        })
                    }
                }
            }
            sets.sort_by_key(|s| s.len());
            sets[0]
                .iter()
                .copied()
                .filter(|id| sets[1..].iter().all(|s| s.contains(id)))
                .collect()
        } else if let Some(q) = query.as_deref().filter(|q| !q.is_empty()) {
            let mut v = dir.hostnames_containing(q);
            for (tag, ids) in &self.tag_index {
                if tag.contains(q) {
                    v.extend(ids.iter().copied());
                }
            }
            v.sort_unstable();
            v.dedup();
            v
        } else if let Some(net) = r.network_id {
            self.nets[&net].members.iter().copied().collect()
        } else {
            return Err("invalid search: name at least one tag, a search text or a network".into());
        };
        // A query together with tags narrows the tag matches.
        if let (Some(q), false) = (query.as_deref(), r.tags.is_empty()) {
            let by_name: HashSet<u32> = dir.hostnames_containing(q).into_iter().collect();
            candidates.retain(|id| {
                by_name.contains(id)
                    || self
                        .tags
                        .get(id)
                        .is_some_and(|t| t.iter().any(|t| t.contains(q)))
            });
        }
        if let Some(net) = r.network_id {
            candidates.retain(|&id| self.is_member(id, net));
        }
        candidates.retain(|&id| self.visible(dir, r.requester_id, id));
        let total = candidates.len() as u64;
        if candidates.len() > limit {
            candidates.select_nth_unstable(limit - 1);
            candidates.truncate(limit);
        }
        candidates.sort_unstable();
        let nodes = candidates
            .into_iter()
            .filter_map(|id| self.node_entry(dir, id))
            .collect();
        Ok(NodesOk { nodes, total })
    }
}

/// A discovery entry for a node with the given facts (used by the
/// registry's [`Directory`] implementation).
pub fn node_entry(
    id: u32,
    hostname: Option<String>,
    public: bool,
    online: bool,
    real_addr: &str,
) -> NodeEntry {
    NodeEntry {
        node_id: id,
        address: Addr::backbone(id).to_string(),
        hostname,
        tags: Vec::new(),
        public,
        online,
        real_addr: (public && !real_addr.is_empty()).then(|| real_addr.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::networks::{
        CreateNetwork, FindNodes, InviteToNetwork, NodeNetwork, RemoveMember, RespondInvite,
        SetTags,
    };

    /// Nodes 1..=9; odd ids are public; 2 and 4 trust each other.
    struct Dir;
    impl Directory for Dir {
        fn visibility(&self, id: u32) -> Option<bool> {
            (1..=9).contains(&id).then_some(id % 2 == 1)
        }
        fn entry(&self, id: u32) -> Option<NodeEntry> {
            let public = self.visibility(id)?;
            Some(node_entry(
                id,
                Some(format!("host{id}")),
                public,
                true,
                "1.2.3.4:5",
            ))
        }
        fn trusted(&self, a: u32, b: u32) -> bool {
            (a, b) == (2, 4) || (a, b) == (4, 2)
        }
        fn hostnames_containing(&self, q: &str) -> Vec<u32> {
            (1..=9).filter(|i| format!("host{i}").contains(q)).collect()
        }
    }

    fn create(n: &mut Networks, owner: u32, name: &str, rule: JoinRule) -> Result<u16, String> {
        match n.handle(
            NetRequest::CreateNetwork(CreateNetwork {
                node_id: owner,
                name: name.into(),
                join_rule: rule,
                signature: None,
            }),
            &Dir,
            0,
        )? {
            (NetResponse::CreateNetworkOk(ok), true) => Ok(ok.network.id),
            other => panic!("{other:?}"),
        }
    }

    fn nn(node: u32, net: u16) -> NodeNetwork {
        NodeNetwork {
            node_id: node,
            network_id: net,
            signature: None,
        }
    }

    fn find(n: &mut Networks, who: u32, tags: &[&str], net: Option<u16>) -> Vec<u32> {
        match n.handle(
            NetRequest::FindNodes(FindNodes {
                requester_id: who,
                tags: tags.iter().map(|t| t.to_string()).collect(),
                query: None,
                network_id: net,
                limit: None,
                signature: None,
            }),
            &Dir,
            0,
        ) {
            Ok((NetResponse::FindNodesOk(ok), _)) => ok.nodes.iter().map(|e| e.node_id).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn open_and_invite_only_networks() {
        let mut n = Networks::default();
        let open = create(&mut n, 1, "research", JoinRule::Open).unwrap();
        let closed = create(&mut n, 1, "trading", JoinRule::Invite).unwrap();
        assert_eq!((open, closed), (1, 2));
        assert!(create(&mut n, 3, "research", JoinRule::Open)
            .unwrap_err()
            .contains("already in use"));
        n.handle(NetRequest::JoinNetwork(nn(2, open)), &Dir, 0)
            .unwrap();
        assert!(n.share(1, 2));
        let e = n
            .handle(NetRequest::JoinNetwork(nn(2, closed)), &Dir, 0)
            .unwrap_err();
        assert!(e.contains("invite-only"), "{e}");
        // Only the owner invites to an invite-only network.
        let inv = |by: u32, to: u32| {
            NetRequest::InviteToNetwork(InviteToNetwork {
                inviter_id: by,
                network_id: closed,
                target_node_id: to,
                signature: None,
            })
        };
        n.handle(inv(1, 2), &Dir, 0).unwrap();
        n.handle(
            NetRequest::RespondInvite(RespondInvite {
                node_id: 2,
                network_id: closed,
                accept: true,
                signature: None,
            }),
            &Dir,
            0,
        )
        .unwrap();
        assert!(n.is_member(2, closed));
        assert!(n.handle(inv(2, 4), &Dir, 0).unwrap_err().contains("owner"));
        assert!(n
            .handle(inv(1, 77), &Dir, 0)
            .unwrap_err()
            .contains("not found"));
        // Owner removes; non-owner cannot delete; owner can.
        let rm = |by: u32| {
            NetRequest::RemoveMember(RemoveMember {
                node_id: by,
                network_id: closed,
                target_node_id: 2,
                signature: None,
            })
        };
        assert!(n
            .handle(rm(2), &Dir, 0)
            .unwrap_err()
            .contains("only its owner"));
        n.take_wake();
        n.handle(rm(1), &Dir, 0).unwrap();
        assert!(!n.is_member(2, closed));
        let woke = n.take_wake();
        assert!(woke.contains(&1) && woke.contains(&2), "{woke:?}");
        let e = n
            .handle(NetRequest::DeleteNetwork(nn(2, open)), &Dir, 0)
            .unwrap_err();
        assert!(e.contains("cannot delete") && e.contains("owner"), "{e}");
        n.handle(NetRequest::DeleteNetwork(nn(1, open)), &Dir, 0)
            .unwrap();
        assert!(!n.share(1, 2));
        assert!(n
            .handle(NetRequest::JoinNetwork(nn(2, 999)), &Dir, 0)
            .unwrap_err()
            .contains("not found"));
        assert!(n
            .handle(NetRequest::JoinNetwork(nn(2, 0)), &Dir, 0)
            .is_err());
    }

    #[test]
    fn discovery_respects_privacy_and_tags() {
        let mut n = Networks::default();
        for id in 1..=6 {
            let mut tags = vec!["agent".to_string()];
            if id <= 3 {
                tags.push("citations".into());
            }
            n.handle(
                NetRequest::SetTags(SetTags {
                    node_id: id,
                    tags,
                    signature: None,
                }),
                &Dir,
                0,
            )
            .unwrap();
        }
        // 9 (a stranger) sees the public citation nodes only.
        assert_eq!(find(&mut n, 9, &["citations"], None), vec![1, 3]);
        // 2 sees itself; 4 (trusted by 2) sees 2.
        assert_eq!(find(&mut n, 2, &["citations"], None), vec![1, 2, 3]);
        assert_eq!(
            find(&mut n, 4, &["citations", "agent"], None),
            vec![1, 2, 3]
        );
        // Sharing a network makes 2 visible to 6.
        let net = create(&mut n, 2, "lab", JoinRule::Open).unwrap();
        n.handle(NetRequest::JoinNetwork(nn(6, net)), &Dir, 0)
            .unwrap();
        assert_eq!(find(&mut n, 6, &["citations"], None), vec![1, 2, 3]);
        assert_eq!(find(&mut n, 6, &["agent"], Some(net)), vec![2, 6]);
        assert!(find(&mut n, 6, &["nothing"], None).is_empty());
        // Bad tags are refused with a reason.
        let long = "x".repeat(10_000);
        let e = n
            .handle(
                NetRequest::SetTags(SetTags {
                    node_id: 1,
                    tags: vec![long],
                    signature: None,
                }),
                &Dir,
                0,
            )
            .unwrap_err();
        assert!(e.contains("too long"), "{e}");
    }

    #[test]
    fn snapshot_round_trip_and_versions() {
        let mut n = Networks::default();
        n.track_changes();
        let net = create(&mut n, 1, "lab", JoinRule::Invite).unwrap();
        n.handle(
            NetRequest::InviteToNetwork(InviteToNetwork {
                inviter_id: 1,
                network_id: net,
                target_node_id: 2,
                signature: None,
            }),
            &Dir,
            5,
        )
        .unwrap();
        n.handle(
            NetRequest::SetTags(SetTags {
                node_id: 1,
                tags: vec!["a".into()],
                signature: None,
            }),
            &Dir,
            0,
        )
        .unwrap();
        let ch = n.take_changes();
        assert_eq!(ch.networks.len(), 1);
        assert_eq!(ch.members.get(&(net, 1)), Some(&true));
        assert_eq!(ch.invites[&2].len(), 1);
        let snap = n.snapshot();
        let m = Networks::from_snapshot(snap.clone(), |id| id < 100);
        assert_eq!(m.snapshot(), snap);
        assert!(m.is_member(1, net));
        // Versions differ after a reload (clock-based start).
        let v = |n: &mut Networks| match n
            .handle(
                NetRequest::PollNetworks(crate::wire::networks::PollNetworks {
                    node_id: 1,
                    since: 0,
                    signature: None,
                }),
                &Dir,
                0,
            )
            .unwrap()
            .0
        {
            NetResponse::PollNetworksOk(ok) => ok,
            other => panic!("{other:?}"),
        };
        let before = v(&mut n);
        assert_ne!(before.version, 0);
        assert_eq!(before.networks[0].members, vec![1]);
    }
}
