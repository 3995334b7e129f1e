//! Rendering of command results: aligned `key  value` lines for people, the
//! IPC envelope for `--json`.

use serde::Serialize;

use super::CliError;

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

/// Prints an error line (stderr), as JSON under `--json`.
pub fn print_error(json: bool, e: &CliError) {
    if json {
        let v = serde_json::json!({"status": "error", "code": e.code, "message": e.message});
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
