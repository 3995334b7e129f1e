//! `pilotctl network ...`, `set-tags`, `clear-tags`, `find --tag`,
//! `peers --search` and `broadcast`: networks and discovery from the
//! command line (issue 12). The daemon does the work (`node::networks`,
//! which signs the registry calls); these commands check arguments early,
//! and render the answers as tables or, under `--json`, as the envelope.

use clap::{Args, Subcommand};
use serde_json::Value;

use super::client::call;
use super::output::{kv, print_ok, table};
use super::{Cli, CliError};
use crate::ipc::proto::NetworkRequest;
use crate::ipc::{ErrorCode, Request};
use crate::wire::networks::{validate_network_name, validate_tag, validate_tags, JoinRule};

/// `pilotctl network ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum NetworkCommand {
    /// Create a network; you become its owner and first member.
    ///
    /// `--join-rule invite` makes it invite-only: nodes join by accepting
    /// an invitation from the owner (`network invite`).
    Create {
        /// The name: 1-63 lower-case letters, digits and '-'.
        name: String,
        /// Who may join: open (anyone) or invite (only invited nodes).
        #[arg(long, default_value = "open", value_parser = ["open", "invite"])]
        join_rule: String,
    },
    /// List every network, its owner, join rule and size, and whether you
    /// are a member.
    List,
    /// Join an open network (or one you were invited to).
    Join {
        /// Network id or name.
        network: String,
    },
    /// Leave a network (its owner deletes it instead).
    Leave {
        /// Network id or name.
        network: String,
    },
    /// List a network's members with their addresses and online state
    /// (a non-member sees the public members only).
    Members {
        /// Network id or name.
        network: String,
    },
    /// Invite a node (only the owner may invite to an invite-only network).
    Invite {
        /// Network id or name.
        network: String,
        /// Address, bare node id or hostname.
        target: String,
    },
    /// List the invitations waiting for your answer.
    Invites,
    /// Accept an invitation: join the network.
    Accept {
        /// Network id or name.
        network: String,
    },
    /// Decline an invitation.
    Reject {
        /// Network id or name.
        network: String,
    },
    /// Delete a network you own (every member leaves it).
    Delete {
        /// Network id or name.
        network: String,
    },
    /// Remove a member from a network you own.
    Remove {
        /// Network id or name.
        network: String,
        /// Address, bare node id or hostname of the member.
        target: String,
    },
}

/// Options of `broadcast`.
#[derive(Debug, Clone, Args)]
pub struct BroadcastArgs {
    /// Network id or name (not the backbone, network 0).
    pub network: String,
    /// The payload (one datagram, at most 65,000 bytes).
    #[arg(long, short = 'd')]
    pub data: String,
    /// Destination virtual port (members read it with `pilotctl recv PORT`).
    #[arg(long, default_value_t = 1000)]
    pub port: u16,
}

fn err(code: ErrorCode, m: impl Into<String>) -> CliError {
    CliError::new(code, m)
}

fn check_network_arg(n: &str) -> Result<(), CliError> {
    if n.trim().parse::<u32>().is_ok() {
        return Ok(());
    }
    validate_network_name(n).map_err(|e| err(ErrorCode::InvalidArgument, e))
}

fn text(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

async fn net_call(cli: &Cli, op: NetworkRequest) -> Result<Value, CliError> {
    call(cli, &Request::Network(op)).await
}

/// Renders a node list (`members`, `find`, `peers --search`).
fn nodes_table(d: &Value, empty: &str) -> String {
    let rows: Vec<Vec<String>> = d["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let tags: Vec<String> = n["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect();
            vec![
                text(n, "address"),
                n["hostname"].as_str().unwrap_or("-").to_string(),
                if n["online"].as_bool() == Some(true) {
                    "online"
                } else {
                    "offline"
                }
                .into(),
                if n["public"].as_bool() == Some(true) {
                    "public"
                } else {
                    "private"
                }
                .into(),
                if tags.is_empty() {
                    "-".into()
                } else {
                    tags.join(",")
                },
            ]
        })
        .collect();
    if rows.is_empty() {
        return empty.into();
    }
    let mut out = table(
        &["ADDRESS", "HOSTNAME", "STATE", "VISIBILITY", "TAGS"],
        &rows,
    );
    let total = d["total"].as_u64().unwrap_or(0);
    if total > rows.len() as u64 {
        out.push_str(&format!(
            "\n({} of {total} shown; narrow the search)",
            rows.len()
        ));
    }
    out
}

fn change_line(d: &Value) -> String {
    let net = format!("network {} ({})", text(d, "network_id"), text(d, "name"));
    match text(d, "action").as_str() {
        "joined" => format!("joined {net}"),
        "left" => format!("left {net}"),
        "deleted" => format!("deleted {net}"),
        "invited" => format!("invited {} to {net}", text(d, "address")),
        "removed" => format!("removed {} from {net}", text(d, "address")),
        "declined" => format!("declined the invitation to {net}"),
        other => format!("{other} {net}"),
    }
}

/// `pilotctl network ...`.
pub(super) async fn network(cli: &Cli, c: &NetworkCommand) -> Result<(), CliError> {
    let op = match c {
        NetworkCommand::Create { name, join_rule } => {
            validate_network_name(name).map_err(|e| err(ErrorCode::InvalidArgument, e))?;
            let rule = JoinRule::parse(join_rule).unwrap_or_default();
            let d = net_call(
                cli,
                NetworkRequest::Create {
                    name: name.clone(),
                    join_rule: rule.as_str().into(),
                },
            )
            .await?;
            print_ok(cli.json, &d, || {
                format!(
                    "created network {} ({}), {}; you own it",
                    text(&d, "id"),
                    text(&d, "name"),
                    if rule == JoinRule::Invite {
                        "invite-only"
                    } else {
                        "open"
                    }
                )
            });
            return Ok(());
        }
        NetworkCommand::List => {
            let d = net_call(cli, NetworkRequest::List).await?;
            print_ok(cli.json, &d, || {
                let rows: Vec<Vec<String>> = d["networks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|n| {
                        vec![
                            text(n, "id"),
                            text(n, "name"),
                            text(n, "join_rule"),
                            text(n, "members"),
                            text(n, "owner"),
                            if n["member"].as_bool() == Some(true) {
                                "yes"
                            } else {
                                "no"
                            }
                            .into(),
                        ]
                    })
                    .collect();
                if rows.is_empty() {
                    "no networks yet; create one with `pilotctl network create NAME`".into()
                } else {
                    table(&["ID", "NAME", "JOIN", "MEMBERS", "OWNER", "MEMBER"], &rows)
                }
            });
            return Ok(());
        }
        NetworkCommand::Invites => {
            let d = net_call(cli, NetworkRequest::Invites).await?;
            print_ok(cli.json, &d, || {
                let rows: Vec<Vec<String>> = d["invites"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|i| {
                        vec![
                            text(i, "network_id"),
                            text(i, "name"),
                            text(i, "inviter_id"),
                        ]
                    })
                    .collect();
                if rows.is_empty() {
                    "no invitations".into()
                } else {
                    table(&["NETWORK", "NAME", "INVITED BY"], &rows)
                }
            });
            return Ok(());
        }
        NetworkCommand::Members { network } => {
            check_network_arg(network)?;
            let d = net_call(
                cli,
                NetworkRequest::Members {
                    network: network.clone(),
                },
            )
            .await?;
            print_ok(cli.json, &d, || {
                nodes_table(&d, "no members visible to you")
            });
            return Ok(());
        }
        NetworkCommand::Join { network } => NetworkRequest::Join {
            network: network.clone(),
        },
        NetworkCommand::Leave { network } => NetworkRequest::Leave {
            network: network.clone(),
        },
        NetworkCommand::Accept { network } => NetworkRequest::Accept {
            network: network.clone(),
        },
        NetworkCommand::Reject { network } => NetworkRequest::Reject {
            network: network.clone(),
        },
        NetworkCommand::Delete { network } => NetworkRequest::Delete {
            network: network.clone(),
        },
        NetworkCommand::Invite { network, target } => {
            super::client::check_target(target)?;
            NetworkRequest::Invite {
                network: network.clone(),
                target: target.clone(),
            }
        }
        NetworkCommand::Remove { network, target } => {
            super::client::check_target(target)?;
            NetworkRequest::Remove {
                network: network.clone(),
                target: target.clone(),
            }
        }
    };
    if let NetworkRequest::Join { network }
    | NetworkRequest::Leave { network }
    | NetworkRequest::Accept { network }
    | NetworkRequest::Reject { network }
    | NetworkRequest::Delete { network }
    | NetworkRequest::Invite { network, .. }
    | NetworkRequest::Remove { network, .. } = &op
    {
        check_network_arg(network)?;
    }
    let d = net_call(cli, op).await?;
    print_ok(cli.json, &d, || change_line(&d));
    Ok(())
}

/// `pilotctl set-tags TAG...` (and `clear-tags` with no tags).
pub(super) async fn set_tags(cli: &Cli, tags: &[String]) -> Result<(), CliError> {
    validate_tags(tags).map_err(|e| err(ErrorCode::InvalidArgument, e))?;
    let d = net_call(
        cli,
        NetworkRequest::SetTags {
            tags: tags.to_vec(),
        },
    )
    .await?;
    print_ok(cli.json, &d, || {
        let t: Vec<String> = d["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect();
        if t.is_empty() {
            "tags cleared".into()
        } else {
            kv(&[("Tags", t.join(", "))])
        }
    });
    Ok(())
}

/// `pilotctl find --tag T [--tag T2] [--network N]` and
/// `pilotctl peers --search Q`.
pub(super) async fn discover(
    cli: &Cli,
    tags: &[String],
    query: Option<&str>,
    network: Option<&str>,
) -> Result<(), CliError> {
    if tags.len() > crate::wire::networks::MAX_TAGS {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!(
                "too many tags ({}, a search names at most {})",
                tags.len(),
                crate::wire::networks::MAX_TAGS
            ),
        ));
    }
    for t in tags {
        validate_tag(t).map_err(|e| err(ErrorCode::InvalidArgument, e))?;
    }
    if let Some(q) = query {
        if q.is_empty() || q.len() > crate::rendezvous::networks::MAX_QUERY_LEN {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!(
                    "invalid search text: 1-{} bytes",
                    crate::rendezvous::networks::MAX_QUERY_LEN
                ),
            ));
        }
    }
    if let Some(n) = network {
        check_network_arg(n)?;
    }
    let d = net_call(
        cli,
        NetworkRequest::Find {
            tags: tags.to_vec(),
            query: query.map(str::to_string),
            network: network.map(str::to_string),
            limit: None,
        },
    )
    .await?;
    print_ok(cli.json, &d, || nodes_table(&d, "no matching nodes"));
    Ok(())
}

/// `pilotctl broadcast NETWORK --data D`.
pub(super) async fn broadcast(cli: &Cli, a: &BroadcastArgs) -> Result<(), CliError> {
    let n = a.network.trim();
    if n == "0" || n == "backbone" {
        return Err(err(
            ErrorCode::InvalidArgument,
            "broadcast on the backbone (network 0) is refused; broadcast to a network you are a member of (`pilotctl network list`)",
        ));
    }
    check_network_arg(n)?;
    let d = net_call(
        cli,
        NetworkRequest::Broadcast {
            network: n.to_string(),
            port: a.port,
            data: a.data.clone(),
        },
    )
    .await?;
    print_ok(cli.json, &d, || {
        let count = |k: &str| d[k].as_array().map_or(0, Vec::len);
        let mut line = format!(
            "broadcast {} bytes to {} member(s) of network {} on port {}",
            text(&d, "bytes"),
            count("sent"),
            text(&d, "network_id"),
            text(&d, "port")
        );
        if count("offline") > 0 {
            line.push_str(&format!(", {} offline", count("offline")));
        }
        if count("failed") > 0 {
            line.push_str(&format!(", {} failed", count("failed")));
        }
        line
    });
    Ok(())
}
