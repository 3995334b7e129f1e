//! `pilotctl handshake | pending | approve | reject | untrust | trust`: the
//! zero-trust handshake from the command line (spec §9). The daemon does
//! the work (`node::trust`); these commands render its answers.

use serde_json::Value;

use super::client::{call, check_target};
use super::output::{print_ok, table};
use super::{Cli, CliError};
use crate::ipc::proto::TrustRequest;
use crate::ipc::Request;

async fn trust_call(cli: &Cli, op: TrustRequest) -> Result<Value, CliError> {
    call(cli, &Request::Trust(op)).await
}

fn text(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("").to_string()
}

/// `handshake <target> [justification]`.
pub(super) async fn handshake(
    cli: &Cli,
    target: &str,
    justification: &str,
) -> Result<(), CliError> {
    check_target(target)?;
    let d = trust_call(
        cli,
        TrustRequest::Handshake {
            target: target.into(),
            justification: justification.into(),
        },
    )
    .await?;
    print_ok(cli.json, &d, || text(&d, "message"));
    Ok(())
}

/// `pending`.
pub(super) async fn pending(cli: &Cli) -> Result<(), CliError> {
    let d = trust_call(cli, TrustRequest::Pending).await?;
    print_ok(cli.json, &d, || {
        let rows: Vec<Vec<String>> = d["pending"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                vec![
                    text(p, "address"),
                    text(p, "received_at"),
                    text(p, "justification"),
                ]
            })
            .collect();
        if rows.is_empty() {
            "no pending handshake requests".into()
        } else {
            table(&["FROM", "RECEIVED", "JUSTIFICATION"], &rows)
        }
    });
    Ok(())
}

/// `approve <node>`.
pub(super) async fn approve(cli: &Cli, target: &str) -> Result<(), CliError> {
    check_target(target)?;
    let d = trust_call(
        cli,
        TrustRequest::Approve {
            target: target.into(),
        },
    )
    .await?;
    print_ok(cli.json, &d, || {
        format!("approved: {} is now trusted", text(&d, "address"))
    });
    Ok(())
}

/// `reject <node> [reason]`.
pub(super) async fn reject(cli: &Cli, target: &str, reason: &str) -> Result<(), CliError> {
    check_target(target)?;
    let d = trust_call(
        cli,
        TrustRequest::Reject {
            target: target.into(),
            reason: reason.into(),
        },
    )
    .await?;
    print_ok(cli.json, &d, || {
        format!("rejected the request of {}", text(&d, "address"))
    });
    Ok(())
}

/// `untrust <node>`.
pub(super) async fn untrust(cli: &Cli, target: &str) -> Result<(), CliError> {
    check_target(target)?;
    let d = trust_call(
        cli,
        TrustRequest::Untrust {
            target: target.into(),
        },
    )
    .await?;
    print_ok(cli.json, &d, || {
        format!(
            "{} is no longer trusted; its streams were closed",
            text(&d, "address")
        )
    });
    Ok(())
}

/// `trust`: the trusted peers.
pub(super) async fn list(cli: &Cli) -> Result<(), CliError> {
    let d = trust_call(cli, TrustRequest::List).await?;
    print_ok(cli.json, &d, || {
        let rows: Vec<Vec<String>> = d["trusted"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| vec![text(p, "address"), text(p, "via"), text(p, "approved_at")])
            .collect();
        let mut out = if rows.is_empty() {
            "no trusted peers (ask one with `pilotctl handshake <address>`)\n".to_string()
        } else {
            table(&["PEER", "HOW", "SINCE"], &rows)
        };
        for o in d["outstanding"].as_array().into_iter().flatten() {
            out.push_str(&format!("waiting for {} to approve\n", text(o, "address")));
        }
        let n = d["pending"].as_u64().unwrap_or(0);
        if n > 0 {
            out.push_str(&format!("{n} request(s) pending: `pilotctl pending`\n"));
        }
        out
    });
    Ok(())
}
