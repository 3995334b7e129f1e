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
