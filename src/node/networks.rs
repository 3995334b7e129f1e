//! The daemon's side of networks and discovery: the membership view that
//! opens the trust gate to fellow members (spec §9.6: trust source
//! "network"), and the operator commands behind `pilotctl network ...`,
//! `set-tags`, `clear-tags`, `find --tag`, `peers --search` and `broadcast`.
//!
//! Membership reaches the gate through a dedicated registry connection that
//! long-polls `poll_networks` (our extension, [`crate::wire::networks`]):
//! the rendezvous answers the moment a network of ours changes, so a join,
//! a leave or a removal is in force here within milliseconds instead of the
//! reference's 5-minute resync (spec §6.6). Against a registry that does not
//! know the message (a reference one answers `request failed`) the loop
//! retries slowly and the view stays empty: the gate then behaves as
//! before (local trust only).
//!
//! Broadcast (spec §1.5, §8.1): a datagram to every online member of a
//! network we belong to, sent as one unicast per member; the backbone
//! (network 0) is refused, and so is a network we are not in.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::engine::Cmd;
use super::registry::RegError;
use super::Shared;
use crate::ipc::proto::NetworkRequest;
use crate::ipc::{ErrorCode, Response};
use crate::rendezvous::client::ClientError;
use crate::wire::address::Addr;
use crate::wire::networks::{
    validate_tags, CreateNetwork, FindNodes, InviteToNetwork, JoinRule, ListNetworks, ListNodes,
    Membership, NetRequest, NetResponse, NodeNetwork, NodeOnly, RemoveMember, RespondInvite,
    SetTags,
};

/// How long one `poll_networks` is held by the registry (well under its
/// 5-minute idle cut, spec §6.1).
const LONG_POLL: Duration = Duration::from_secs(25);
/// Wait after a failed poll (connection lost) before trying again: starts
/// short so a restarted rendezvous is back in the view well within the 2 s
/// goal, doubling to [`RETRY_MAX`].
const RETRY: Duration = Duration::from_millis(100);
/// Longest wait between reconnection attempts.
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Wait when the registry does not know `poll_networks` (reference).
const UNSUPPORTED_RETRY: Duration = Duration::from_secs(60);
/// Largest broadcast payload: what one datagram carries (spec §8.1 keeps
/// datagrams ≤ 65 000 bytes in this implementation, see `send_datagram`).
pub const MAX_BROADCAST: usize = 65_000;

/// What the daemon knows of its networks (from the last `poll_networks`).
#[derive(Debug, Default)]
pub struct NetState {
    view: Mutex<View>,
}

#[derive(Debug, Default)]
struct View {
    version: u64,
    networks: BTreeMap<u16, Membership>,
    /// The registry answered `poll_networks` at least once.
    synced: bool,
}

impl NetState {
    fn lock(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every fellow member of every network we are in (not `me`).
    pub fn peers(&self, me: u32) -> HashSet<u32> {
        let v = self.lock();
        v.networks
            .values()
            .flat_map(|m| m.members.iter().copied())
            .filter(|&p| p != me)
            .collect()
    }

    /// The networks we share with `peer`.
    pub fn shared_with(&self, peer: u32) -> Vec<u16> {
        let v = self.lock();
        v.networks
            .values()
            .filter(|m| m.members.contains(&peer))
            .map(|m| m.id)
            .collect()
    }

    /// Whether we are a member of `net` (as last seen).
    pub fn is_member(&self, net: u16) -> bool {
        self.lock().networks.contains_key(&net)
    }

    fn set(&self, version: u64, networks: Vec<Membership>) {
        let mut v = self.lock();
        v.version = version;
        v.networks = networks.into_iter().map(|m| (m.id, m)).collect();
        v.synced = true;
    }
}

/// Keeps [`NetState`] and the engine's gate in step with the registry.
pub async fn start(shared: Arc<Shared>, cmds: mpsc::Sender<Cmd>) {
    let mut client = None;
    let mut since = 0u64;
    let mut backoff = RETRY;
    loop {
        let me = shared.registry.node_id();
        if client.is_none() {
            match shared.registry.connect_new().await {
                Ok(c) => client = Some(c),
                Err(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                    continue;
                }
            }
        }
        let Some(c) = client.as_mut() else { continue };
        match c
            .poll_networks_wait(shared.registry.signing_key(), me, since, LONG_POLL)
            .await
        {
            Ok(ok) => {
                backoff = RETRY;
                let changed = ok.version != since || !shared.networks.lock().synced;
                since = ok.version;
                if changed {
                    shared.networks.set(ok.version, ok.networks);
                    let peers = shared.networks.peers(me);
                    tracing::debug!("network view v{since}: {} fellow members", peers.len());
                    if cmds.send(Cmd::SetNetworkPeers(peers)).await.is_err() {
                        return;
                    }
                }
            }
            Err(ClientError::Server(text)) => {
                // A reference registry: "request failed". Ours refuses
                // only while we are not registered (yet, or any more).
                tracing::debug!("poll_networks refused: {text}");
                let wait = if text == "request failed" {
                    UNSUPPORTED_RETRY
                } else {
                    RETRY_MAX
                };
                tokio::time::sleep(wait).await;
            }
            Err(e) => {
                tracing::debug!("poll_networks: {e}");
                client = None;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
    }
}

/// A registry refusal, with the command that usually helps quoted in it
/// (pilotctl turns a quoted command into the error's `hint`).
fn reg_error(e: RegError) -> Response {
    let mut text = e.to_string();
    let next = if text.contains("invite-only") {
        Some("`pilotctl network invites` lists your invitations")
    } else if text.contains("only its owner") {
        Some("`pilotctl network list` shows each network's owner")
    } else if text.contains("delete it instead") {
        Some("`pilotctl network delete <network>` removes it for every member")
    } else if text.contains("is not a member") {
        Some("`pilotctl network members <network>` lists the members")
    } else if text.contains("network") && text.contains("not found") {
        Some("`pilotctl network list` shows the networks")
    } else {
        None
    };
    if let Some(n) = next {
        text.push_str("; ");
        text.push_str(n);
    }
    Response::error(e.code(), text)
}

fn invalid(msg: impl Into<String>) -> Response {
    Response::error(ErrorCode::InvalidArgument, msg)
}

/// One registry call of this module on the shared query connection.
async fn call(shared: &Shared, req: NetRequest) -> Result<NetResponse, Response> {
    shared.registry.network(req).await.map_err(reg_error)
}

/// A network named by id or by name.
async fn network_id(shared: &Shared, text: &str) -> Result<u16, Response> {
    let text = text.trim();
    if let Ok(id) = text.parse::<u32>() {
        return u16::try_from(id)
            .map_err(|_| invalid(format!("invalid network id {id}: network ids are 1-65535")));
    }
    match call(
        shared,
        NetRequest::ListNetworks(ListNetworks { requester_id: None }),
    )
    .await?
    {
        NetResponse::ListNetworksOk(ok) => ok
            .networks
            .iter()
            .find(|n| n.name == text)
            .map(|n| n.id)
            .ok_or_else(|| {
                Response::error(
                    ErrorCode::NotFound,
                    format!("network {text:?} not found; `pilotctl network list` shows them"),
                )
            }),
        other => Err(unexpected(&other)),
    }
}

fn unexpected(r: &NetResponse) -> Response {
    Response::error(
        ErrorCode::RegistryError,
        format!("registry sent an unexpected reply: {}", r.type_name()),
    )
}

/// The reply of a change (`join`, `leave`, ...), as `pilotctl` prints it.
#[derive(Debug, Serialize)]
struct ChangeData {
    network_id: u16,
    name: String,
    node_id: u32,
    address: String,
    action: &'static str,
}

/// `broadcast` reply.
#[derive(Debug, Serialize)]
struct BroadcastData {
    network_id: u16,
    port: u16,
    bytes: usize,
    /// Members the datagram was sent to.
    sent: Vec<String>,
    /// Members skipped because the registry lists them offline.
    offline: Vec<String>,
    /// Members the send failed for, with the reason.
    failed: Vec<serde_json::Value>,
}

fn change(r: NetResponse, action: &'static str) -> Response {
    match r {
        NetResponse::JoinNetworkOk(c)
        | NetResponse::LeaveNetworkOk(c)
        | NetResponse::DeleteNetworkOk(c)
        | NetResponse::InviteToNetworkOk(c)
        | NetResponse::RespondInviteOk(c)
        | NetResponse::RemoveMemberOk(c) => Response::ok(&ChangeData {
            network_id: c.network_id,
            name: c.name,
            node_id: c.node_id,
            address: Addr::backbone(c.node_id).to_string(),
            action,
        }),
        other => unexpected(&other),
    }
}

/// Handles one `pilotctl` network/discovery command.
pub async fn handle_ipc(
    shared: Arc<Shared>,
    cmds: mpsc::Sender<Cmd>,
    op: NetworkRequest,
) -> Response {
    match run(&shared, &cmds, op).await {
        Ok(r) | Err(r) => r,
    }
}

async fn run(
    shared: &Shared,
    cmds: &mpsc::Sender<Cmd>,
    op: NetworkRequest,
) -> Result<Response, Response> {
    let me = shared.registry.node_id();
    Ok(match op {
        NetworkRequest::Create { name, join_rule } => {
            let rule = JoinRule::parse(&join_rule).ok_or_else(|| {
                invalid(format!(
                    "invalid join rule {join_rule:?} (expected open or invite)"
                ))
            })?;
            match call(
                shared,
                NetRequest::CreateNetwork(CreateNetwork {
                    node_id: me,
                    name,
                    join_rule: rule,
                    signature: None,
                }),
            )
            .await?
            {
                NetResponse::CreateNetworkOk(ok) => Response::ok(&ok.network),
                other => unexpected(&other),
            }
        }
        NetworkRequest::List => match call(
            shared,
            NetRequest::ListNetworks(ListNetworks {
                requester_id: Some(me),
            }),
        )
        .await?
        {
            NetResponse::ListNetworksOk(ok) => Response::ok(&ok),
            other => unexpected(&other),
        },
        NetworkRequest::Join { network } => {
            let id = network_id(shared, &network).await?;
            change(
                call(shared, NetRequest::JoinNetwork(nn(me, id))).await?,
                "joined",
            )
        }
        NetworkRequest::Leave { network } => {
            let id = network_id(shared, &network).await?;
            change(
                call(shared, NetRequest::LeaveNetwork(nn(me, id))).await?,
                "left",
            )
        }
        NetworkRequest::Delete { network } => {
            let id = network_id(shared, &network).await?;
            change(
                call(shared, NetRequest::DeleteNetwork(nn(me, id))).await?,
                "deleted",
            )
        }
        NetworkRequest::Members { network } => {
            let id = network_id(shared, &network).await?;
            match call(
                shared,
                NetRequest::ListNodes(ListNodes {
                    network_id: id,
                    requester_id: Some(me),
                    signature: None,
                }),
            )
            .await?
            {
                NetResponse::ListNodesOk(ok) => Response::ok(&serde_json::json!({
                    "network_id": id,
                    "member": shared.networks.is_member(id) || ok.nodes.iter().any(|n| n.node_id == me),
                    "nodes": ok.nodes,
                    "total": ok.total,
                })),
                other => unexpected(&other),
            }
        }
        NetworkRequest::Invite { network, target } => {
            let id = network_id(shared, &network).await?;
            let addr = super::ipc_server::resolve_target(shared, &target).await?;
            change(
                call(
                    shared,
                    NetRequest::InviteToNetwork(InviteToNetwork {
                        inviter_id: me,
                        network_id: id,
                        target_node_id: addr.node,
                        signature: None,
                    }),
                )
                .await?,
                "invited",
            )
        }
        NetworkRequest::Remove { network, target } => {
            let id = network_id(shared, &network).await?;
            let addr = super::ipc_server::resolve_target(shared, &target).await?;
            change(
                call(
                    shared,
                    NetRequest::RemoveMember(RemoveMember {
                        node_id: me,
                        network_id: id,
                        target_node_id: addr.node,
                        signature: None,
                    }),
                )
                .await?,
                "removed",
            )
        }
        NetworkRequest::Invites => match call(
            shared,
            NetRequest::PollInvites(NodeOnly {
                node_id: me,
                signature: None,
            }),
        )
        .await?
        {
            NetResponse::PollInvitesOk(ok) => Response::ok(&ok),
            other => unexpected(&other),
        },
        NetworkRequest::Accept { network } => respond(shared, me, &network, true).await?,
        NetworkRequest::Reject { network } => respond(shared, me, &network, false).await?,
        NetworkRequest::SetTags { tags } => {
            validate_tags(&tags).map_err(invalid)?;
            match call(
                shared,
                NetRequest::SetTags(SetTags {
                    node_id: me,
                    tags,
                    signature: None,
                }),
            )
            .await?
            {
                NetResponse::SetTagsOk(ok) => Response::ok(&ok),
                other => unexpected(&other),
            }
        }
        NetworkRequest::Find {
            tags,
            query,
            network,
            limit,
        } => {
            let network_id = match network {
                Some(n) => Some(network_id(shared, &n).await?),
                None => None,
            };
            match call(
                shared,
                NetRequest::FindNodes(FindNodes {
                    requester_id: me,
                    tags,
                    query,
                    network_id,
                    limit,
                    signature: None,
                }),
            )
            .await?
            {
                NetResponse::FindNodesOk(ok) => Response::ok(&ok),
                other => unexpected(&other),
            }
        }
        NetworkRequest::Broadcast {
            network,
            port,
            data,
        } => broadcast(shared, cmds, me, &network, port, data.into_bytes()).await?,
    })
}

fn nn(me: u32, id: u16) -> NodeNetwork {
    NodeNetwork {
        node_id: me,
        network_id: id,
        signature: None,
    }
}

async fn respond(
    shared: &Shared,
    me: u32,
    network: &str,
    accept: bool,
) -> Result<Response, Response> {
    let id = network_id(shared, network).await?;
    Ok(change(
        call(
            shared,
            NetRequest::RespondInvite(RespondInvite {
                node_id: me,
                network_id: id,
                accept,
                signature: None,
            }),
        )
        .await?,
        if accept { "joined" } else { "declined" },
    ))
}

async fn broadcast(
    shared: &Shared,
    cmds: &mpsc::Sender<Cmd>,
    me: u32,
    network: &str,
    port: u16,
    data: Vec<u8>,
) -> Result<Response, Response> {
    if network.trim() == "0" || network.trim() == "backbone" {
        return Err(invalid(
            "broadcast on the backbone (network 0) is refused; broadcast to a network you are a member of (`pilotctl network list`)",
        ));
    }
    if data.is_empty() {
        return Err(invalid(
            "empty datagrams are dropped by receivers; broadcast at least one byte",
        ));
    }
    if data.len() > MAX_BROADCAST {
        return Err(Response::error(
            ErrorCode::TooLarge,
            format!(
                "broadcast of {} bytes is larger than one datagram ({MAX_BROADCAST} bytes)",
                data.len()
            ),
        ));
    }
    let id = network_id(shared, network).await?;
    let nodes = match call(
        shared,
        NetRequest::ListNodes(ListNodes {
            network_id: id,
            requester_id: Some(me),
            signature: None,
        }),
    )
    .await?
    {
        NetResponse::ListNodesOk(ok) => ok.nodes,
        other => return Err(unexpected(&other)),
    };
    if !nodes.iter().any(|n| n.node_id == me) {
        return Err(Response::error(
            ErrorCode::Refused,
            format!("not a member of network {id}: join it before broadcasting (`pilotctl network join {id}`)"),
        ));
    }
    let mut out = BroadcastData {
        network_id: id,
        port,
        bytes: data.len(),
        sent: Vec::new(),
        offline: Vec::new(),
        failed: Vec::new(),
    };
    for n in nodes.iter().filter(|n| n.node_id != me) {
        let addr = Addr::new(id, n.node_id);
        if !n.online {
            out.offline.push(addr.to_string());
            continue;
        }
        let (tx, rx) = oneshot::channel();
        let sent = cmds
            .send(Cmd::SendDatagram {
                addr,
                port,
                data: data.clone(),
                reply: tx,
            })
            .await
            .is_ok();
        match (sent, rx.await) {
            (true, Ok(Response::Ok { .. })) => out.sent.push(addr.to_string()),
            (_, Ok(Response::Error { message, .. })) => out
                .failed
                .push(serde_json::json!({"address": addr.to_string(), "error": message})),
            _ => out
                .failed
                .push(serde_json::json!({"address": addr.to_string(), "error": "daemon stopping"})),
        }
    }
    Ok(Response::ok(&out))
}
