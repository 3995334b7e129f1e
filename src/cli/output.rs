//! Rendering of command results: aligned `key  value` lines for people, the
//! IPC envelope for `--json`.

use std::sync::OnceLock;

use serde::Serialize;

use super::CliError;

/// The subcommand being run (`ping`, `daemon start`), for the hint of a bad
/// argument; set once by `main`.
static COMMAND: OnceLock<String> = OnceLock::new();

/// Records the subcommand being run (first call wins).
pub fn set_command(name: String) {
    let _ = COMMAND.set(name);
}

/// Prints a success: `data` as the JSON envelope, or `human` lines.
pub fn print_ok<T: Serialize>(json: bool, data: &T, human: impl FnOnce() -> String) {
    if json {
        let v = serde_json::json!({"status": "ok", "data": data});
        outln!("{v}");
    } else {
        let text = human();
        if !text.is_empty() {
            outln!("{}", text.trim_end_matches('\n'));
        }
    }
}

/// The next thing to try after an error, for people and agents: a command
/// quoted in the message itself (`run \`pilotctl handshake 5\``) when there
/// is one, else the usual remedy for the error's class.
pub fn hint(e: &CliError) -> String {
    if let Some(cmd) = e.message.split('`').skip(1).step_by(2).find(|q| {
        q.starts_with("pilotctl ")
            || q.starts_with("sudo ")
            || (q.starts_with("pilot-") && q.contains(' '))
    }) {
        return cmd.to_string();
    }
    use crate::ipc::ErrorCode as C;
    match e.code {
        C::DaemonNotRunning => "pilotctl daemon start",
        C::AlreadyRunning => "pilotctl daemon status (or pass --socket for a second daemon)",
        C::InvalidAddress => {
            "give an address like 0:0000.0000.002A, a node id like 42, or a lower-case hostname"
        }
        C::InvalidArgument => {
            return match COMMAND.get() {
                Some(c) => format!("pilotctl {c} --help"),
                None => "pilotctl --help".into(),
            }
        }
        C::NotFound => "pilotctl find <hostname> or pilotctl lookup <node id>; a private node's owner can give you its address",
        C::RegistryUnavailable => "start a rendezvous (pilot-rendezvous) or point at one: pilotctl daemon start --registry HOST:PORT; pilotctl daemon status shows the address in use",
        C::RegistryError => "pilotctl info (registration state); pilotctl daemon status",
        C::Timeout => "pilotctl ping <target> (is it online?); pilotctl peers (path and endpoint)",
        C::Refused => "nothing listens on that port at the peer: ask its owner (pilotctl listen / expose there)",
        C::Unreachable => "pilotctl lookup <target> (is it registered and online?)",
        C::StartFailed => "pilotctl daemon status; the log is ~/.pilot/pilot.log",
        C::Internal => "rerun with RUST_LOG=debug and report it with the log",
        C::NotTrusted => "pilotctl handshake <target>, then wait for its owner to approve",
        C::PeerError => "the peer's answer is in the message; pilotctl inbox/received on its side",
        C::TooLarge => "send data over 16 MiB with send-file; the receiver can raise its limit with pilotctl daemon start --quota",
    }
    .to_string()
}

/// Prints an error line (stderr), as JSON under `--json` (with a `hint`).
pub fn print_error(json: bool, e: &CliError) {
    if json {
        let v = serde_json::json!({"status": "error", "code": e.code, "message": e.message, "hint": hint(e)});
        errln!("{v}");
    } else {
        errln!("error: {}", e.message);
    }
}

/// An error and its causes on one line, each cause once: many errors
/// already quote their source in their own message (`cannot bind X: Not a
/// directory (os error 20)`), so a cause whose text is already in the line
/// is not repeated (anyhow's `{:#}` would print it twice).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

/// Formats `(key, value)` rows with the values aligned in one column.
pub fn kv(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{k:<width$}  {v}\n"));
    }
    out
}

/// Formats a table with a header row; columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.len());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// Remote bytes for a terminal: control characters (escape sequences could
/// move the cursor, rewrite the title, or worse) are shown as `\u{..}`
/// escapes; newlines and tabs pass (issue 10 item 10).
pub fn sanitize(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_prints_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot bind /x: {0}")]
        struct Bind(#[source] std::io::Error);
        let io = std::io::Error::from_raw_os_error(20);
        let e = anyhow::Error::new(Bind(io)).context("starting");
        let line = error_chain(e.as_ref());
        assert_eq!(line.matches("os error 20").count(), 1, "{line}");
        assert!(line.starts_with("starting: cannot bind /x: "), "{line}");
    }

    #[test]
    fn kv_aligns_values() {
        let s = kv(&[("Address", "0:0000.0000.0001".into()), ("Id", "1".into())]);
        assert_eq!(s, "Address  0:0000.0000.0001\nId       1\n");
    }

    #[test]
    fn table_pads_columns() {
        let s = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(s, "A    BB\nxxx  y\n");
    }
}
