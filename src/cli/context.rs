//! `pilotctl context`: one JSON document that teaches an agent the whole
//! CLI in one call: every command with its arguments (taken from clap's own
//! definition, so it cannot drift from `--help`), what its `--json` output
//! holds, the error codes with the hint that comes with each, and the
//! conventions (addresses, envelopes, exit codes).
//!
//! The output descriptions are the one hand-kept part: clap knows the
//! arguments, not the replies. [`outputs`] names the fields a program
//! reads; a unit test checks every command has one.

use clap::CommandFactory;
use serde_json::{json, Value};

use super::output::{hint, print_ok};
use super::{Cli, CliError};
use crate::ipc::ErrorCode;

/// What `--json` prints under `data` for each command.
fn outputs(cmd: &str) -> &'static str {
    match cmd {
        "daemon" => "start and status: {address, node_id, hostname, pid, socket, logs}; stop: {address, pid}",
        "info" => "{address, node_id, hostname, public, public_key, endpoint, registry, beacon, registered, peers, streams, uptime_secs, metrics (when --metrics), stats{...}}",
        "lookup" => "{node_id, address, hostname, public, public_key, networks}",
        "peers" => "{peers: [{node_id, address, endpoint?, path: direct|relay, encrypted, last_seen_ms?, rtt_ms?, bytes_in, bytes_out, path_changes, path_since_ms?, segment}]}; --search: {nodes: [{node_id, address, hostname?, tags, public, online, real_addr?}], total}",
        "set-hostname" | "clear-hostname" => "{address, hostname}",
        "find" => "hostname: {hostname, address, node_id}; --tag/--network: {nodes: [{node_id, address, hostname?, tags, public, online, real_addr?}], total}",
        "network" => "create: {id, name, members, join_rule, owner, created}; list: {networks: [{id, name, members, join_rule: open|invite, owner, member, created}]}; members: {network_id, member, nodes: [{node_id, address, hostname?, tags, public, online}], total}; invites: {invites: [{network_id, name, inviter_id, timestamp}]}; join|leave|invite|accept|reject|delete|remove: {network_id, name, node_id, address, action}",
        "set-tags" | "clear-tags" => "{node_id, tags}",
        "broadcast" => "{network_id, port, bytes, sent: [address], offline: [address], failed: [{address, error}]}",
        "ping" => "{target, address, sent, received, min_us, avg_us, max_us, replies: [{address, bytes, path, rtt_us}]}",
        "connect" => "raw bytes on stdout; with --json one object when the stream ends: {conn_id, remote, bytes_sent, bytes_received, data, encoding} (encoding \"utf-8\", or \"base64\" when the bytes are not UTF-8)",
        "listen" => "raw bytes on stdout; with --json one object per stream when it ends: {conn_id, remote, bytes, data, encoding} (encoding \"utf-8\", or \"base64\" when the bytes are not UTF-8)",
        "send" => "{to, bytes}",
        "recv" => "one object per datagram: {from, port, data, bytes}",
        "bench" => "{remote, bytes, seconds, mb_per_s, sha256, verified}",
        "connections" => "{connections: [{conn_id, local, remote, state, path, endpoint, rtt_ms, bytes_in, bytes_out, path_since_ms}]}",
        "disconnect" => "the stream: {conn_id, local, remote, ...}",
        "handshake" => "{node_id, address, status: requested|trusted, message}",
        "pending" => "{pending: [{node_id, address, justification, received_at}]}",
        "approve" | "reject" | "untrust" => "{node_id, address, status}",
        "trust" => "{trusted: [{node_id, address, via: mutual|approved|network|auto, approved_at, public_key}], outstanding: [{node_id, address, sent_at}], rejected_by, pending (count), auto_approve, dropped{malformed, stale, replay, bad_signature, wrong_key, node_mismatch, unsolicited, pending_full, accepted_messages}}",
        "send-message" => "{to, type, messages, bytes, reply: \"ACK TEXT 5 bytes\", seconds}",
        "inbox" => "{dir, count, total, more, cleared, inbox: [{name, path, size, type, from, bytes, data, truncated?, received_at}]}",
        "send-file" => "{to, name, bytes, sha256, reply, seconds, mb_per_s}",
        "received" => "{dir, count, total, more, cleared, received: [{name, path, size, modified}]}",
        "publish" => "{to, topic, bytes}",
        "subscribe" => "one object per event: {topic, data, bytes}",
        "expose" => "{port, to, streams} (with --list: {exposed: [{port, to, streams}]})",
        "unexpose" => "{port, to, streams}",
        "forward" => "{listen, target, port} once listening; runs until interrupted",
        "gateway" => "pilot-gateway's own --json output (see `pilot-gateway --help`): map/list show the table of ip -> address",
        "config" => "{path, exists, settings{registry, beacon, socket, hostname, email, public, log_level}}",
        "completions" => "a shell script on stdout (no JSON)",
        "context" => "this document",
        _ => "",
    }
}

fn error_meaning(c: ErrorCode) -> &'static str {
    match c {
        ErrorCode::DaemonNotRunning => "no daemon answers on the socket",
        ErrorCode::AlreadyRunning => "a daemon already serves this socket",
        ErrorCode::InvalidAddress => "an address, node id or hostname that does not parse",
        ErrorCode::InvalidArgument => "any other bad argument or saved setting",
        ErrorCode::NotFound => {
            "the registry does not know the node or hostname (or may not tell: private nodes)"
        }
        ErrorCode::RegistryUnavailable => "the rendezvous cannot be reached",
        ErrorCode::RegistryError => "the rendezvous refused the request",
        ErrorCode::Timeout => "no answer in time",
        ErrorCode::Refused => "the peer refused the stream (no listener, limits)",
        ErrorCode::Unreachable => "the peer cannot be reached (offline, no endpoint)",
        ErrorCode::StartFailed => "the daemon failed to start",
        ErrorCode::Internal => "a local failure or a bug",
        ErrorCode::NotTrusted => "the peer is private and does not trust this node yet",
        ErrorCode::PeerError => "the peer answered with an error (ERR …) or closed early",
        ErrorCode::TooLarge => {
            "over a size limit: 16 MiB per message, or the receiver's disk quota"
        }
    }
}

/// Every error code, in the README's order.
pub const ALL_CODES: [ErrorCode; 15] = [
    ErrorCode::DaemonNotRunning,
    ErrorCode::AlreadyRunning,
    ErrorCode::InvalidAddress,
    ErrorCode::InvalidArgument,
    ErrorCode::NotFound,
    ErrorCode::RegistryUnavailable,
    ErrorCode::RegistryError,
    ErrorCode::Timeout,
    ErrorCode::Refused,
    ErrorCode::Unreachable,
    ErrorCode::StartFailed,
    ErrorCode::Internal,
    ErrorCode::NotTrusted,
    ErrorCode::PeerError,
    ErrorCode::TooLarge,
];

fn describe(cmd: &clap::Command, path: &str) -> Value {
    let args: Vec<Value> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !a.is_global_set())
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
        .map(|a| {
            let takes_value = a.get_num_args().is_some_and(|n| n.takes_values());
            json!({
                "name": a.get_id().as_str(),
                "long": a.get_long().map(|l| format!("--{l}")),
                "short": a.get_short().map(|s| format!("-{s}")),
                "positional": a.is_positional(),
                "required": a.is_required_set(),
                "takes_value": takes_value || a.is_positional(),
                "default": a.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect::<Vec<_>>(),
                "values": a.get_possible_values().iter().map(|v| v.get_name().to_string()).collect::<Vec<_>>(),
                "help": a.get_help().map(|h| h.to_string()).unwrap_or_default(),
            })
        })
        .collect();
    let subs: Vec<Value> = cmd
        .get_subcommands()
        .filter(|s| s.get_name() != "help")
        .map(|s| describe(s, &format!("{path} {}", s.get_name())))
        .collect();
    let mut v = json!({
        "command": path,
        "about": cmd.get_about().map(|s| s.to_string()).unwrap_or_default(),
        "details": cmd.get_long_about().map(|s| s.to_string()),
        "args": args,
    });
    if !subs.is_empty() {
        v["subcommands"] = Value::Array(subs);
    }
    v
}

/// The whole document.
pub fn document() -> Value {
    let mut root = Cli::command();
    root.build();
    let commands: Vec<Value> = root
        .get_subcommands()
        .filter(|s| s.get_name() != "help")
        .map(|s| {
            let mut d = describe(s, &format!("pilotctl {}", s.get_name()));
            d["json_output"] = json!(outputs(s.get_name()));
            d
        })
        .collect();
    let errors: Vec<Value> = ALL_CODES
        .iter()
        .map(|&c| {
            json!({
                "code": c,
                "meaning": error_meaning(c),
                "hint": hint(&CliError::new(c, "")),
            })
        })
        .collect();
    json!({
        "name": "pilotctl",
        "version": crate::VERSION,
        "about": "Control a Pilot Protocol node: a permanent virtual address for an agent, reachable through NATs, encrypted end to end.",
        "conventions": {
            "addresses": "a full address 0:0000.0000.002A, a bare node id 42, or a lower-case hostname",
            "json": "--json on any command: success is {\"status\":\"ok\",\"data\":{...}} on stdout; failure is {\"status\":\"error\",\"code\":...,\"message\":...,\"hint\":...} on stderr",
            "exit_codes": "0 success; 1 any error (see code); 2 a command line that does not parse",
            "socket": "--socket PATH or PILOT_SOCKET selects the daemon (default /tmp/pilot.sock, or config \"socket\")",
            "trust": "nodes are private by default: `pilotctl handshake <node>` and the other side's `approve` (or --trust-auto-approve) before streams, messages or pings",
    "networks": "members of a shared network resolve each other and pass each other's trust gate with no handshake: `pilotctl network create NAME [--join-rule invite]`, `network join|leave|members|invite|invites|accept|reject|remove|delete`; a network is named by id or name",
            "discovery": "`pilotctl set-tags TAG...` advertises capabilities; `pilotctl find --tag T [--tag T2] [--network N]` or `peers --search TEXT` lists matching nodes with address and online state (private nodes only to members and trusted peers); `pilotctl broadcast NETWORK --data D` sends one datagram to every online member",
            "first_steps": [
                "pilotctl daemon start --registry HOST:PORT --hostname NAME",
                "pilotctl info",
                "pilotctl find OTHER-HOSTNAME",
                "pilotctl handshake OTHER \"why\"",
                "pilotctl send-message OTHER --data hello",
                "pilotctl inbox"
            ],
        },
        "global_options": [
            {"long": "--json", "help": "machine-readable output"},
            {"long": "--socket", "takes_value": true, "help": "the daemon's IPC socket"}
        ],
        "commands": commands,
        "errors": errors,
    })
}

/// `context`.
pub(super) fn run(cli: &Cli) -> Result<(), CliError> {
    let doc = document();
    if cli.json {
        print_ok(true, &doc, String::new);
    } else {
        outln!(
            "{}",
            serde_json::to_string_pretty(&doc).unwrap_or_else(|_| doc.to_string())
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_is_described_with_its_output() {
        let doc = document();
        let cmds = doc["commands"].as_array().unwrap();
        assert!(cmds.len() > 25);
        for c in cmds {
            assert!(
                !c["json_output"].as_str().unwrap().is_empty(),
                "no output description for {}",
                c["command"]
            );
            assert!(!c["about"].as_str().unwrap().is_empty(), "{}", c["command"]);
        }
        let sm = cmds
            .iter()
            .find(|c| c["command"] == "pilotctl send-message")
            .unwrap();
        let names: Vec<&str> = sm["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"target") && names.contains(&"data"),
            "{names:?}"
        );
        assert_eq!(doc["errors"].as_array().unwrap().len(), ALL_CODES.len());
        assert!(doc["errors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| !e["hint"].as_str().unwrap().is_empty()));
    }
}
