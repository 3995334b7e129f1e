//! Registry messages for networks, tags and discovery (spec §6.4.11 names
//! them; their fields are ours where the spec is silent).
//!
//! These ride on the same JSON framing as every registry message (§6.1):
//! [`NetRequest`] and [`NetResponse`] are internally tagged on `"type"` and
//! are folded into [`crate::wire::registry::Request`] /
//! [`crate::wire::registry::Response`] as untagged variants, so a parser of
//! registry frames sees one message set. Signed strings follow §6.3: the
//! spec's own strings for `join_network`, `leave_network`,
//! `invite_to_network`, `poll_invites`, `respond_invite` and `set_tags`, and
//! the same `<op>:<ids>` shape for the operations it does not list.
//!
//! Messages a reference node never sends (`create_network` is an admin
//! operation there, `find_nodes` and `poll_networks` do not exist) are our
//! extensions; a reference registry answers them `request failed`.

use serde::{Deserialize, Serialize};

use super::registry::signed;

/// Longest tag in bytes (our bound, like a hostname label, spec §6.4.5).
pub const MAX_TAG_LEN: usize = 63;
/// Most tags one node may carry (our bound: the discovery benchmark uses
/// 10; agents describe a handful of capabilities).
pub const MAX_TAGS: usize = 16;
/// Longest network name (same rule as hostnames, spec §6.4.5).
pub const MAX_NETWORK_NAME: usize = 63;
/// Most results one `find_nodes` returns (our bound: one frame stays far
/// below 4 MiB, §6.1).
pub const MAX_FIND_RESULTS: usize = 1000;
/// Results a `find_nodes` returns when it names no limit.
pub const DEFAULT_FIND_RESULTS: usize = 100;

fn is_false(b: &bool) -> bool {
    !*b
}

/// Checks one tag: 1-63 bytes of `a-z`, `0-9`, `-`, `_`, `.`, starting with
/// a letter or digit. The error text says which rule failed (and passes the
/// registry's error filter, §6.2: it contains `invalid` or `too long`).
pub fn validate_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() {
        return Err("invalid tag: empty".into());
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(format!(
            "invalid tag: too long ({} bytes, max {MAX_TAG_LEN})",
            tag.len()
        ));
    }
    let b = tag.as_bytes();
    let first_ok = b[0].is_ascii_lowercase() || b[0].is_ascii_digit();
    let ok = b
        .iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_' | b'.'));
    if !first_ok || !ok {
        let shown: String = tag.chars().take(32).collect();
        return Err(format!(
            "invalid tag {shown:?}: use lower-case letters, digits, '-', '_' and '.', starting with a letter or digit"
        ));
    }
    Ok(())
}

/// Checks a whole tag list (count, then each tag, then duplicates).
pub fn validate_tags(tags: &[String]) -> Result<(), String> {
    if tags.len() > MAX_TAGS {
        return Err(format!(
            "too many tags ({}, max {MAX_TAGS} per node)",
            tags.len()
        ));
    }
    for t in tags {
        validate_tag(t)?;
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(d) = tags.iter().find(|t| !seen.insert(t.as_str())) {
        return Err(format!("invalid tags: {d:?} listed twice"));
    }
    Ok(())
}

/// Checks a network name (the hostname rule of §6.4.5: 1-63 of `a-z`,
/// `0-9`, `-`, not starting or ending with `-`; `backbone` is reserved).
pub fn validate_network_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if name.len() > MAX_NETWORK_NAME {
        return Err(format!(
            "invalid network name: too long ({} bytes, max {MAX_NETWORK_NAME})",
            name.len()
        ));
    }
    let ok = !b.is_empty()
        && alnum(&b[0])
        && alnum(&b[b.len() - 1])
        && b.iter().all(|c| alnum(c) || *c == b'-');
    if !ok {
        return Err("invalid network name: use 1-63 lower-case letters, digits and '-', starting and ending with a letter or digit".into());
    }
    if name == "backbone" || name.bytes().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "invalid network name {name:?}: reserved (names may not be all digits or \"backbone\")"
        ));
    }
    Ok(())
}

/// Who may join a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum JoinRule {
    /// Any registered node may join.
    #[default]
    Open,
    /// Only nodes the owner invited.
    Invite,
}

impl JoinRule {
    /// `open` or `invite`.
    pub fn as_str(self) -> &'static str {
        match self {
            JoinRule::Open => "open",
            JoinRule::Invite => "invite",
        }
    }

    /// Parses `open`, `invite` (or `invite-only`).
    pub fn parse(s: &str) -> Option<JoinRule> {
        match s {
            "open" => Some(JoinRule::Open),
            "invite" | "invite-only" | "invite_only" => Some(JoinRule::Invite),
            _ => None,
        }
    }
}

/// Signed strings of the operations §6.3 does not list (same shape).
pub mod signed_ext {
    /// `create_network:<node_id>:<name>`
    pub fn create_network(node_id: u32, name: &str) -> String {
        format!("create_network:{node_id}:{name}")
    }
    /// `delete_network:<node_id>:<network_id>`
    pub fn delete_network(node_id: u32, network_id: u16) -> String {
        format!("delete_network:{node_id}:{network_id}")
    }
    /// `remove_member:<owner_id>:<network_id>:<target_node_id>`
    pub fn remove_member(node_id: u32, network_id: u16, target: u32) -> String {
        format!("remove_member:{node_id}:{network_id}:{target}")
    }
    /// `list_nodes:<requester_id>:<network_id>`
    pub fn list_nodes(requester_id: u32, network_id: u16) -> String {
        format!("list_nodes:{requester_id}:{network_id}")
    }
    /// `find_nodes:<requester_id>`
    pub fn find_nodes(requester_id: u32) -> String {
        format!("find_nodes:{requester_id}")
    }
    /// `poll_networks:<node_id>`
    pub fn poll_networks(node_id: u32) -> String {
        format!("poll_networks:{node_id}")
    }
}

/// `create_network`: the signer becomes the owner and first member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateNetwork {
    /// The creator.
    pub node_id: u32,
    /// The name (unique).
    pub name: String,
    /// Who may join.
    #[serde(default)]
    pub join_rule: JoinRule,
    /// Base64 signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// `join_network`, `leave_network`, `delete_network`: one node, one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeNetwork {
    /// The node (signs).
    pub node_id: u32,
    /// The network.
    pub network_id: u16,
    /// Base64 signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// `invite_to_network` (spec §6.3 string `invite:<inviter>:<net>:<target>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteToNetwork {
    /// The inviter (signs; the owner of an invite-only network).
    pub inviter_id: u32,
    /// The network.
    pub network_id: u16,
    /// Who is invited.
    pub target_node_id: u32,
    /// Base64 signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// `remove_member`: the owner removes a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveMember {
    /// The owner (signs).
    pub node_id: u32,
    /// The network.
    pub network_id: u16,
    /// The member to remove.
    pub target_node_id: u32,
    /// Base64 signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// A request naming one node, signed by it (`poll_invites`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeOnly {
    /// The node (signs).
    pub node_id: u32,
    /// Base64 signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// `respond_invite` (spec §6.3 string `respond_invite:<node>:<net>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RespondInvite {
    /// The invited node (signs).
    pub node_id: u32,
    /// The network.
    pub network_id: u16,
    /// Join (true) or decline.
    #[serde(default)]
    pub accept: bool,
    /// Base64 signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// `list_networks` (unsigned, spec §6.4.11).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ListNetworks {
    /// If given, each entry says whether this node is a member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester_id: Option<u32>,
}

/// `list_nodes` of a network ≠ 0. Unsigned (as the reference) it lists
/// only the public members; signed by a member it lists every member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListNodes {
    /// The network.
    pub network_id: u16,
    /// The member asking (signs `list_nodes:<requester>:<net>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester_id: Option<u32>,
    /// Base64 signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// `set_tags` (spec §6.3 string `set_tags:<node>`): replaces the node's tags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetTags {
    /// The node (signs).
    pub node_id: u32,
    /// The new tags (empty clears).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Base64 signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// `find_nodes`: nodes carrying every tag in `tags`, and/or whose hostname
/// or a tag contains `query`, optionally only members of `network_id`.
/// Signed, because what it lists depends on who asks (a private node is
/// listed only to itself, its trusted peers and its fellow members).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindNodes {
    /// Who asks (signs `find_nodes:<requester>`).
    pub requester_id: u32,
    /// Every one of these tags must be present (exact match).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Case-insensitive substring of the hostname or of a tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Only members of this network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_id: Option<u16>,
    /// At most this many results (default [`DEFAULT_FIND_RESULTS`], max
    /// [`MAX_FIND_RESULTS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Base64 signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// `poll_networks`: the node's networks and their members, answered when
/// they differ from `since` (with `wait_ms`, held until they do: the
/// long-poll that brings membership changes to daemons within 2 s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollNetworks {
    /// The node (signs).
    pub node_id: u32,
    /// The `version` of the last answer the node holds (0: none).
    #[serde(default)]
    pub since: u64,
    /// Base64 signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// The network and discovery requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NetRequest {
    /// Create a network.
    CreateNetwork(CreateNetwork),
    /// Join one (open, or invited).
    JoinNetwork(NodeNetwork),
    /// Leave one.
    LeaveNetwork(NodeNetwork),
    /// Delete one (owner).
    DeleteNetwork(NodeNetwork),
    /// Invite a node.
    InviteToNetwork(InviteToNetwork),
    /// Pending invites of the node.
    PollInvites(NodeOnly),
    /// Accept or decline an invite.
    RespondInvite(RespondInvite),
    /// Remove a member (owner).
    RemoveMember(RemoveMember),
    /// Every network.
    ListNetworks(ListNetworks),
    /// The members of one network.
    ListNodes(ListNodes),
    /// Replace the node's tags.
    SetTags(SetTags),
    /// Discovery.
    FindNodes(FindNodes),
    /// Membership long-poll.
    PollNetworks(PollNetworks),
}

impl NetRequest {
    /// The `"type"` string.
    pub fn type_name(&self) -> &'static str {
        match self {
            NetRequest::CreateNetwork(_) => "create_network",
            NetRequest::JoinNetwork(_) => "join_network",
            NetRequest::LeaveNetwork(_) => "leave_network",
            NetRequest::DeleteNetwork(_) => "delete_network",
            NetRequest::InviteToNetwork(_) => "invite_to_network",
            NetRequest::PollInvites(_) => "poll_invites",
            NetRequest::RespondInvite(_) => "respond_invite",
            NetRequest::RemoveMember(_) => "remove_member",
            NetRequest::ListNetworks(_) => "list_networks",
            NetRequest::ListNodes(_) => "list_nodes",
            NetRequest::SetTags(_) => "set_tags",
            NetRequest::FindNodes(_) => "find_nodes",
            NetRequest::PollNetworks(_) => "poll_networks",
        }
    }

    /// The signer and the string it signs; `None` for unsigned requests.
    pub fn signed_string(&self) -> Option<(u32, String)> {
        Some(match self {
            NetRequest::CreateNetwork(r) => {
                (r.node_id, signed_ext::create_network(r.node_id, &r.name))
            }
            NetRequest::JoinNetwork(r) => {
                (r.node_id, signed::join_network(r.node_id, r.network_id))
            }
            NetRequest::LeaveNetwork(r) => {
                (r.node_id, signed::leave_network(r.node_id, r.network_id))
            }
            NetRequest::DeleteNetwork(r) => (
                r.node_id,
                signed_ext::delete_network(r.node_id, r.network_id),
            ),
            NetRequest::InviteToNetwork(r) => (
                r.inviter_id,
                signed::invite_to_network(r.inviter_id, r.network_id, r.target_node_id),
            ),
            NetRequest::PollInvites(r) => (r.node_id, signed::poll_invites(r.node_id)),
            NetRequest::RespondInvite(r) => {
                (r.node_id, signed::respond_invite(r.node_id, r.network_id))
            }
            NetRequest::RemoveMember(r) => (
                r.node_id,
                signed_ext::remove_member(r.node_id, r.network_id, r.target_node_id),
            ),
            NetRequest::ListNetworks(_) => return None,
            NetRequest::ListNodes(r) => {
                let req = r.requester_id?;
                (req, signed_ext::list_nodes(req, r.network_id))
            }
            NetRequest::SetTags(r) => (r.node_id, signed::set_tags(r.node_id)),
            NetRequest::FindNodes(r) => (r.requester_id, signed_ext::find_nodes(r.requester_id)),
            NetRequest::PollNetworks(r) => (r.node_id, signed_ext::poll_networks(r.node_id)),
        })
    }

    /// The `signature` field.
    pub fn signature(&self) -> Option<&str> {
        match self {
            NetRequest::CreateNetwork(r) => r.signature.as_deref(),
            NetRequest::JoinNetwork(r)
            | NetRequest::LeaveNetwork(r)
            | NetRequest::DeleteNetwork(r) => r.signature.as_deref(),
            NetRequest::InviteToNetwork(r) => r.signature.as_deref(),
            NetRequest::PollInvites(r) => r.signature.as_deref(),
            NetRequest::RespondInvite(r) => r.signature.as_deref(),
            NetRequest::RemoveMember(r) => r.signature.as_deref(),
            NetRequest::ListNetworks(_) => None,
            NetRequest::ListNodes(r) => r.signature.as_deref(),
            NetRequest::SetTags(r) => r.signature.as_deref(),
            NetRequest::FindNodes(r) => r.signature.as_deref(),
            NetRequest::PollNetworks(r) => r.signature.as_deref(),
        }
    }

    /// Sets the `signature` field (base64 of `sig`).
    pub fn set_signature(&mut self, sig: String) {
        let s = Some(sig);
        match self {
            NetRequest::CreateNetwork(r) => r.signature = s,
            NetRequest::JoinNetwork(r)
            | NetRequest::LeaveNetwork(r)
            | NetRequest::DeleteNetwork(r) => r.signature = s,
            NetRequest::InviteToNetwork(r) => r.signature = s,
            NetRequest::PollInvites(r) => r.signature = s,
            NetRequest::RespondInvite(r) => r.signature = s,
            NetRequest::RemoveMember(r) => r.signature = s,
            NetRequest::ListNetworks(_) => {}
            NetRequest::ListNodes(r) => r.signature = s,
            NetRequest::SetTags(r) => r.signature = s,
            NetRequest::FindNodes(r) => r.signature = s,
            NetRequest::PollNetworks(r) => r.signature = s,
        }
    }
}

/// One network as `list_networks` and `create_network_ok` describe it
/// (the reference's fields, spec §6.4.11, plus `owner` and `member`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkEntry {
    /// Network id (≥ 1).
    pub id: u16,
    /// Name.
    pub name: String,
    /// Number of members.
    #[serde(default)]
    pub members: u32,
    /// `open` or `invite`.
    #[serde(default)]
    pub join_rule: JoinRule,
    /// Always false here (enterprise features do not exist).
    #[serde(default)]
    pub enterprise: bool,
    /// Unix seconds of creation.
    #[serde(default)]
    pub created: i64,
    /// The owner's node id.
    #[serde(default)]
    pub owner: u32,
    /// Whether the requester is a member (when it named itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<bool>,
}

/// One node in `list_nodes_ok` / `find_nodes_ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// Node id.
    pub node_id: u32,
    /// Backbone address text.
    pub address: String,
    /// Hostname, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Visibility.
    #[serde(default)]
    pub public: bool,
    /// Registered and heartbeating (not reaped).
    #[serde(default)]
    pub online: bool,
    /// Endpoint, only for public nodes (as `lookup`, §6.4.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub real_addr: Option<String>,
}

/// A pending invitation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteEntry {
    /// The network.
    pub network_id: u16,
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// Who invited.
    pub inviter_id: u32,
    /// Unix seconds.
    #[serde(default)]
    pub timestamp: i64,
}

/// One network of the node in `poll_networks_ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Network id.
    pub id: u16,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Every member's node id (the node itself included).
    #[serde(default)]
    pub members: Vec<u32>,
}

/// `create_network_ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateNetworkOk {
    /// The new network.
    pub network: NetworkEntry,
}

/// `join_network_ok`, `leave_network_ok`, `delete_network_ok`,
/// `respond_invite_ok`, `invite_to_network_ok`, `remove_member_ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkChangeOk {
    /// The network.
    pub network_id: u16,
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// The node concerned (joined, left, invited, removed).
    #[serde(default)]
    pub node_id: u32,
    /// For `respond_invite`: accepted.
    #[serde(default, skip_serializing_if = "is_false")]
    pub accept: bool,
}

/// `poll_invites_ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollInvitesOk {
    /// Invitations waiting for an answer, oldest first.
    #[serde(default)]
    pub invites: Vec<InviteEntry>,
}

/// `list_networks_ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListNetworksOk {
    /// Every network, by id.
    #[serde(default)]
    pub networks: Vec<NetworkEntry>,
}

/// `list_nodes_ok` / `find_nodes_ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodesOk {
    /// The nodes, by id.
    #[serde(default)]
    pub nodes: Vec<NodeEntry>,
    /// Matching nodes visible to the requester (may exceed `nodes.len()`).
    #[serde(default)]
    pub total: u64,
}

/// `set_tags_ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetTagsOk {
    /// The node.
    pub node_id: u32,
    /// Its tags now.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// `poll_networks_ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollNetworksOk {
    /// Changes whenever the answer would (pass it back as `since`).
    pub version: u64,
    /// The node's networks (backbone excluded), by id.
    #[serde(default)]
    pub networks: Vec<Membership>,
}

/// The network and discovery responses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NetResponse {
    /// `create_network_ok`
    CreateNetworkOk(CreateNetworkOk),
    /// `join_network_ok`
    JoinNetworkOk(NetworkChangeOk),
    /// `leave_network_ok`
    LeaveNetworkOk(NetworkChangeOk),
    /// `delete_network_ok`
    DeleteNetworkOk(NetworkChangeOk),
    /// `invite_to_network_ok`
    InviteToNetworkOk(NetworkChangeOk),
    /// `poll_invites_ok`
    PollInvitesOk(PollInvitesOk),
    /// `respond_invite_ok`
    RespondInviteOk(NetworkChangeOk),
    /// `remove_member_ok`
    RemoveMemberOk(NetworkChangeOk),
    /// `list_networks_ok`
    ListNetworksOk(ListNetworksOk),
    /// `list_nodes_ok`
    ListNodesOk(NodesOk),
    /// `set_tags_ok`
    SetTagsOk(SetTagsOk),
    /// `find_nodes_ok`
    FindNodesOk(NodesOk),
    /// `poll_networks_ok`
    PollNetworksOk(PollNetworksOk),
}

impl NetResponse {
    /// The `"type"` string.
    pub fn type_name(&self) -> &'static str {
        match self {
            NetResponse::CreateNetworkOk(_) => "create_network_ok",
            NetResponse::JoinNetworkOk(_) => "join_network_ok",
            NetResponse::LeaveNetworkOk(_) => "leave_network_ok",
            NetResponse::DeleteNetworkOk(_) => "delete_network_ok",
            NetResponse::InviteToNetworkOk(_) => "invite_to_network_ok",
            NetResponse::PollInvitesOk(_) => "poll_invites_ok",
            NetResponse::RespondInviteOk(_) => "respond_invite_ok",
            NetResponse::RemoveMemberOk(_) => "remove_member_ok",
            NetResponse::ListNetworksOk(_) => "list_networks_ok",
            NetResponse::ListNodesOk(_) => "list_nodes_ok",
            NetResponse::SetTagsOk(_) => "set_tags_ok",
            NetResponse::FindNodesOk(_) => "find_nodes_ok",
            NetResponse::PollNetworksOk(_) => "poll_networks_ok",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::registry::{parse_request, to_json, Request};

    #[test]
    fn tags_are_validated_with_clear_errors() {
        assert!(validate_tag("citations").is_ok());
        assert!(validate_tag("gpu.a100_x-2").is_ok());
        assert!(validate_tag("").unwrap_err().contains("empty"));
        let long = "a".repeat(10_000);
        let e = validate_tag(&long).unwrap_err();
        assert!(e.contains("too long") && e.contains("10000"), "{e}");
        assert!(validate_tag("GPU").unwrap_err().contains("lower-case"));
        assert!(validate_tag("-x").is_err());
        let many: Vec<String> = (0..10_000).map(|i| format!("t{i}")).collect();
        assert!(validate_tags(&many).unwrap_err().contains("too many tags"));
        let dup = vec!["a".to_string(), "a".to_string()];
        assert!(validate_tags(&dup).unwrap_err().contains("twice"));
        // Every error passes the registry's error filter (§6.2).
        for e in [
            validate_tag(&long).unwrap_err(),
            validate_tag("GPU").unwrap_err(),
            validate_tags(&many).unwrap_err(),
            validate_network_name("Bad_Name").unwrap_err(),
        ] {
            assert_ne!(
                crate::wire::registry::public_error_text(&e),
                "request failed"
            );
        }
    }

    #[test]
    fn network_names() {
        assert!(validate_network_name("trading").is_ok());
        assert!(validate_network_name("backbone").is_err());
        assert!(validate_network_name("42").is_err());
        assert!(validate_network_name("-a").is_err());
    }

    #[test]
    fn requests_round_trip_through_the_registry_parser() {
        let j = br#"{"type":"join_network","node_id":42,"network_id":7,"signature":"x"}"#;
        let r = parse_request(j).unwrap();
        match &r {
            Request::Network(NetRequest::JoinNetwork(n)) => {
                assert_eq!((n.node_id, n.network_id), (42, 7))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            r.signed_string(),
            Some((42, "join_network:42:7".to_string()))
        );
        let back = to_json(&r);
        assert_eq!(parse_request(&back).unwrap(), r);
        // Unknown types still fail.
        assert!(parse_request(br#"{"type":"frobnicate"}"#).is_err());
        // A JSON array is not a request (serde would read it as a variant
        // index and fields).
        assert!(parse_request(b"[1,2,3]").is_err());
        assert!(parse_request(b" [11, 2, 3]").is_err());
        // The spec's invite string (§6.3 vectors).
        let inv = NetRequest::InviteToNetwork(InviteToNetwork {
            inviter_id: 42,
            network_id: 7,
            target_node_id: 1000,
            signature: None,
        });
        assert_eq!(inv.signed_string().unwrap().1, "invite:42:7:1000");
    }
}
