//! The data-exchange service (port 1001, spec §10.1–10.3): every frame a
//! peer sends is stored in `inbox/` (TEXT, JSON, BINARY) or `received/`
//! (FILE) beside the identity, and answered `ACK …` or `ERR …` (§10.2).
//!
//! Shaped by what can go wrong with a hostile or unlucky peer:
//! - **Nothing half-written, nothing overwritten.** Every message is written
//!   to a `.tmp-` file, `fsync`ed and hard-linked to a free name
//!   ([`files::publish_unique`]), so a crash leaves either nothing or a
//!   whole message, and two messages of one millisecond get two names
//!   (the reference overwrites, §12). Temporaries are swept at start.
//! - **Names from the peer are never paths.** [`safe_file_name`] keeps a
//!   base name of printable characters without leading dots, cut to 100
//!   characters; `../../etc/passwd` lands as `passwd-<time>` in `received/`.
//! - **Bounded.** At most [`MAX_CONNS`] connections; frame bodies are
//!   buffered against one shared [`BUFFER_BUDGET`]; a disk budget (the
//!   daemon's `--quota`) covers `inbox/` + `received/`, and a message past
//!   it is answered `ERR <TYPE> save failed: quota …` instead of stored.
//! - **Files over 16 MiB** travel as FILE-PART frames
//!   ([`dx::FILE_PART_TYPE`], our extension), written straight to a
//!   temporary file and published when the last piece arrives; a
//!   connection that ends early leaves nothing.
//!
//! File I/O runs on tokio's blocking pool, never on the event loop.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};

use super::engine::Cmd;
use super::files;
use super::svc::{NodeStream, ServiceListener};
use crate::ipc::{ErrorCode, Response};
use crate::wire::dataexchange::{self as dx, FrameType};

/// Connections served at once; more wait in the listener's accept queue.
pub const MAX_CONNS: usize = 64;
/// Bytes of frame bodies buffered at once over all connections (16 full
/// frames of the spec's 16 MiB limit).
pub const BUFFER_BUDGET: u32 = 256 << 20;
/// Longest stored file name base, in characters (a readable name; the
/// time stamp and extension are added to it).
const MAX_NAME_CHARS: usize = 100;
/// Longest extension kept from a sent name (`.tar.gz`-like suffixes fit).
const MAX_EXT_CHARS: usize = 16;
/// Longest `data` shown per message by `inbox` (the file keeps all).
const MAX_LISTED_DATA: usize = 64 * 1024;
/// Size of one `inbox`/`received` listing, under the IPC limit (1 MiB).
const MAX_LISTING_BYTES: usize = 900 * 1024;
/// Frames stored in one blocking call (one directory sync) at most.
const MAX_BATCH: usize = 256;
/// How long a reply write may wait for a peer that does not read.
const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Where messages go and how much room is left.
#[derive(Debug)]
pub struct Store {
    inbox: PathBuf,
    received: PathBuf,
    quota: u64,
    used: AtomicU64,
    /// Messages stored (any type) since start.
    pub stored: AtomicU64,
    /// Messages refused (quota, write errors, malformed) since start.
    pub refused: AtomicU64,
}

impl Store {
    /// The store under `state_dir` (creating `inbox/` and `received/`
    /// owner-only, sweeping temporaries, measuring what is there).
    pub fn open(state_dir: &Path, quota: u64) -> std::io::Result<Store> {
        let inbox = state_dir.join("inbox");
        let received = state_dir.join("received");
        files::private_dir(&inbox)?;
        files::private_dir(&received)?;
        files::sweep_tmp(&inbox);
        files::sweep_tmp(&received);
        let used = dir_bytes(&inbox) + dir_bytes(&received);
        Ok(Store {
            inbox,
            received,
            quota,
            used: AtomicU64::new(used),
            stored: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// Reserves `n` bytes of the disk budget.
    fn reserve(&self, n: u64) -> Result<(), String> {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            if cur.saturating_add(n) > self.quota {
                return Err(format!(
                    "quota exceeded: inbox and received hold {cur} bytes, this needs {n} more, the limit is {} (pilot-daemon --quota)",
                    self.quota
                ));
            }
            match self
                .used
                .compare_exchange_weak(cur, cur + n, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(v) => cur = v,
            }
        }
    }

    fn release(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }

    /// Stores one TEXT/JSON/BINARY message from `from`.
    fn store_message(&self, t: FrameType, body: &[u8], from: &str) -> Result<(), String> {
        let doc = serde_json::json!({
            "bytes": body.len(),
            "data": String::from_utf8_lossy(body),
            "from": from,
            "received_at": files::rfc3339_local(unix_ms() / 1000),
            "type": t.to_string(),
        });
        let bytes = serde_json::to_vec(&doc).map_err(|e| e.to_string())?;
        self.reserve(bytes.len() as u64)?;
        let name = format!("{t}-{}.json", files::stamp_local(unix_ms()));
        files::create_unique_unsynced(&self.inbox, &name, &bytes).map_err(|e| {
            self.release(bytes.len() as u64);
            e.to_string()
        })?;
        Ok(())
    }

    /// Stores one whole FILE.
    fn store_file(&self, name: &[u8], content: &[u8]) -> Result<(), String> {
        self.reserve(content.len() as u64)?;
        let target = stored_name(name);
        files::create_unique_unsynced(&self.received, &target, content).map_err(|e| {
            self.release(content.len() as u64);
            e.to_string()
        })?;
        Ok(())
    }

    /// Handles one frame; the reply text, and whether to close after it.
    fn handle(
        self: &Arc<Self>,
        t: u32,
        body: &[u8],
        from: &str,
        part: &mut Option<Part>,
    ) -> (String, bool) {
        let ft = FrameType::from(t);
        let res = match ft {
            FrameType::Text | FrameType::Json | FrameType::Binary => {
                self.store_message(ft, body, from).map(|()| body.len())
            }
            FrameType::File => {
                // §10.1: a name that does not fit is no name; the whole
                // body is the content, acknowledged and not stored.
                let (name, content) = split_name(body);
                if name.is_empty() {
                    Ok(content.len())
                } else {
                    self.store_file(name, content).map(|()| content.len())
                }
            }
            FrameType::Unknown(dx::FILE_PART_TYPE) => {
                return match self.file_part(body, part) {
                    Ok(Some(total)) => (format!("ACK FILE {total} bytes"), false),
                    Ok(None) => (format!("ACK FILE-PART {} bytes", body.len()), false),
                    Err(e) => {
                        self.refused.fetch_add(1, Ordering::Relaxed);
                        (format!("ERR FILE save failed: {e}"), true)
                    }
                };
            }
            FrameType::Unknown(_) => return (dx::ack_text(ft, body.len()), false),
        };
        match res {
            Ok(n) => {
                self.stored.fetch_add(1, Ordering::Relaxed);
                (dx::ack_text(ft, n), false)
            }
            Err(e) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                (dx::err_text(ft, &e), false)
            }
        }
    }

    /// One FILE-PART piece; `Some(total)` when it completed the file.
    fn file_part(
        self: &Arc<Self>,
        body: &[u8],
        part: &mut Option<Part>,
    ) -> Result<Option<u64>, String> {
        let p = dx::FilePart::parse(body).map_err(|e| e.to_string())?;
        if p.offset == 0 {
            // A new file: whatever was in progress is abandoned.
            *part = None;
            self.reserve(p.total)?;
            let tmp = files::tmp_path(&self.received);
            let file = files::create_private(&tmp).map_err(|e| {
                self.release(p.total);
                e.to_string()
            })?;
            *part = Some(Part {
                store: self.clone(),
                tmp,
                file: Some(file),
                name: stored_name(p.name),
                next: 0,
                total: p.total,
            });
        }
        let cur = part
            .as_mut()
            .ok_or("a file piece without its first piece")?;
        if p.offset != cur.next || p.total != cur.total {
            return Err(format!(
                "file piece at {} of {}, expected {} of {}",
                p.offset, p.total, cur.next, cur.total
            ));
        }
        let f = cur.file.as_mut().ok_or("file already finished")?;
        f.write_all(p.content).map_err(|e| e.to_string())?;
        cur.next += p.content.len() as u64;
        if !p.is_last() {
            return Ok(None);
        }
        let mut done = part.take().ok_or("file piece state lost")?;
        let f = done.file.take().ok_or("file already finished")?;
        f.sync_all().map_err(|e| e.to_string())?;
        drop(f);
        files::publish_unique(&done.tmp, &self.received, &done.name).map_err(|e| e.to_string())?;
        done.total = 0; // published: nothing to release on drop
        self.stored.fetch_add(1, Ordering::Relaxed);
        Ok(Some(p.total))
    }
}

/// A file arriving in pieces; removed (and its reservation released) if
/// dropped before the last piece.
struct Part {
    store: Arc<Store>,
    tmp: PathBuf,
    file: Option<File>,
    name: String,
    next: u64,
    total: u64,
}

impl Drop for Part {
    fn drop(&mut self) {
        if self.total > 0 {
            let _ = fs::remove_file(&self.tmp);
            self.store.release(self.total);
        }
    }
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// A FILE body's name and content (§10.1: a name that does not fit the
/// body means no name). Unlike the reference, long or path-like names are
/// not errors: [`safe_file_name`] makes them safe.
fn split_name(body: &[u8]) -> (&[u8], &[u8]) {
    let (Some(&hi), Some(&lo)) = (body.first(), body.get(1)) else {
        return (&[], body);
    };
    let n = usize::from(u16::from_be_bytes([hi, lo]));
    match body.get(2..2 + n) {
        Some(name) => (name, &body[2 + n..]),
        None => (&[], body),
    }
}

/// A name from a peer made safe to use as a file name inside one
/// directory: the part after the last `/` or `\`, control characters and
/// invalid UTF-8 replaced by `_`, leading dots and spaces removed, at most
/// 100 characters; `file` if nothing is left.
pub fn safe_file_name(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let base = text.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base
        .chars()
        .map(|c| {
            if c.is_control() || c == '\u{FFFD}' {
                '_'
            } else {
                c
            }
        })
        .collect();
    let trimmed = cleaned.trim_start_matches(['.', ' ']);
    let cut: String = trimmed.chars().take(MAX_NAME_CHARS).collect();
    let cut = cut.trim_end().to_string();
    if cut.is_empty() {
        "file".into()
    } else {
        cut
    }
}

/// `<base>-<YYYYMMDD-HHMMSS.mmm><ext>` (§10.3) from a sent name.
fn stored_name(raw: &[u8]) -> String {
    let safe = safe_file_name(raw);
    let (stem, ext) = match safe.rfind('.') {
        Some(i) if i > 0 && safe[i..].chars().count() <= MAX_EXT_CHARS => (&safe[..i], &safe[i..]),
        _ => (safe.as_str(), ""),
    };
    format!("{stem}-{}{ext}", files::stamp_local(unix_ms()))
}

/// Starts the service on port 1001 with `inbox/` and `received/` under
/// `state_dir`. A failure is logged; the daemon runs on without it.
pub async fn start(cmds: &mpsc::Sender<Cmd>, state_dir: PathBuf, quota: u64) {
    let store = match tokio::task::spawn_blocking(move || Store::open(&state_dir, quota)).await {
        Ok(Ok(s)) => Arc::new(s),
        Ok(Err(e)) => {
            tracing::warn!("data exchange disabled: cannot prepare inbox/received: {e}");
            return;
        }
        Err(_) => return,
    };
    let mut listener = match ServiceListener::bind(cmds, dx::DATA_EXCHANGE_PORT).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("data exchange disabled: cannot listen on port 1001: {e:?}");
            return;
        }
    };
    let conns = Arc::new(Semaphore::new(MAX_CONNS));
    let budget = Arc::new(Semaphore::new(BUFFER_BUDGET as usize));
    tokio::spawn(async move {
        while let Some(s) = listener.accept().await {
            let Ok(permit) = conns.clone().acquire_owned().await else {
                return;
            };
            let (store, budget) = (store.clone(), budget.clone());
            tokio::spawn(async move {
                serve(s, store, budget).await;
                drop(permit);
            });
        }
    });
}

/// Serves one connection: frames in, replies out, until the peer closes.
async fn serve(mut s: NodeStream, store: Arc<Store>, budget: Arc<Semaphore>) {
    let from = s.remote.addr.to_string();
    let mut buf: Vec<u8> = Vec::new();
    let mut part: Option<Part> = None;
    loop {
        if !s.fill(&mut buf, dx::HEADER_LEN).await {
            break;
        }
        let head = dx::Packet::new_unchecked(&buf[..dx::HEADER_LEN]);
        let (t, len) = (u32::from(head.frame_type()), head.body_len());
        if len as usize > dx::MAX_BODY_LEN {
            // §10.1: the reader fails and closes; we say why first.
            store.refused.fetch_add(1, Ordering::Relaxed);
            let text = dx::err_text(
                FrameType::from(t),
                &format!("too large: {len} bytes (the limit is 16777216 per message)"),
            );
            let _ = tokio::time::timeout(REPLY_TIMEOUT, s.write_all(&dx::reply_frame(&text))).await;
            s.close().await;
            return;
        }
        let Ok(permit) = budget.acquire_many(len.max(1)).await else {
            return;
        };
        let end = dx::HEADER_LEN + len as usize;
        if !s.fill(&mut buf, end).await {
            break;
        }
        // Take this frame and every further whole frame already buffered
        // (at most one read chunk beyond this frame, so no more memory than
        // before): stored in one blocking call with one directory sync,
        // then answered in order.
        let mut frames = vec![(t, buf[dx::HEADER_LEN..end].to_vec())];
        let mut used = end;
        while frames.len() < MAX_BATCH {
            let Some(head) = buf.get(used..used + dx::HEADER_LEN) else {
                break;
            };
            let p = dx::Packet::new_unchecked(head);
            let (t2, l2) = (u32::from(p.frame_type()), p.body_len() as usize);
            if l2 > dx::MAX_BODY_LEN {
                break; // answered (and closed) in the next round
            }
            let e2 = used + dx::HEADER_LEN + l2;
            let Some(body) = buf.get(used + dx::HEADER_LEN..e2) else {
                break;
            };
            frames.push((t2, body.to_vec()));
            used = e2;
        }
        buf.drain(..used);
        let st = store.clone();
        let from2 = from.clone();
        let mut p = part.take();
        let joined = tokio::task::spawn_blocking(move || {
            let replies: Vec<(String, bool)> = frames
                .iter()
                .map(|(t, body)| st.handle(*t, body, &from2, &mut p))
                .collect();
            files::sync_dir(&st.inbox);
            files::sync_dir(&st.received);
            (replies, p)
        })
        .await;
        drop(permit);
        let Ok((replies, p)) = joined else {
            return;
        };
        part = p;
        let mut out = Vec::new();
        let mut close = false;
        for (reply, c) in replies {
            out.extend_from_slice(&dx::reply_frame(&reply));
            if c {
                close = true;
                break;
            }
        }
        let sent = tokio::time::timeout(REPLY_TIMEOUT, s.write_all(&out)).await;
        if close || !matches!(sent, Ok(true)) {
            break;
        }
    }
    drop(part);
    s.close().await;
}

/// One listed inbox message or received file.
#[derive(Debug, Serialize)]
struct Entry {
    /// The file name inside `inbox/` or `received/`.
    name: String,
    /// Full path.
    path: String,
    /// Size on disk.
    size: u64,
    /// The message (inbox only): `type`, `from`, `bytes`, `data`,
    /// `received_at`, as stored.
    #[serde(skip_serializing_if = "Option::is_none", flatten)]
    message: Option<serde_json::Map<String, serde_json::Value>>,
    /// Modification time, RFC 3339 (received only).
    #[serde(skip_serializing_if = "Option::is_none")]
    modified: Option<String>,
}

/// IPC `inbox` / `received`: lists (oldest first) and optionally deletes
/// what it listed. `from` filters inbox messages by sender (address or
/// node id).
pub fn mailbox(
    shared: &super::Shared,
    which: &str,
    clear: bool,
    from: Option<&str>,
    limit: Option<usize>,
) -> Response {
    let state_dir = shared
        .config
        .identity
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let dir = match which {
        "inbox" => state_dir.join("inbox"),
        "received" => state_dir.join("received"),
        other => {
            return Response::error(
                ErrorCode::InvalidArgument,
                format!("unknown mailbox {other:?}: inbox or received"),
            )
        }
    };
    let want = match from.map(sender_filter).transpose() {
        Ok(w) => w,
        Err(e) => return Response::error(ErrorCode::InvalidAddress, e),
    };
    let mut names: Vec<(std::time::SystemTime, String)> = match fs::read_dir(&dir) {
        Ok(rd) => rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let m = e.metadata().ok()?;
                (m.is_file() && !name.starts_with(files::TMP_PREFIX))
                    .then(|| (m.modified().unwrap_or(std::time::UNIX_EPOCH), name))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Response::error(
                ErrorCode::Internal,
                format!("cannot read {}: {e}", dir.display()),
            )
        }
    };
    names.sort();
    let total = names.len();
    let mut entries = Vec::new();
    let mut reply_bytes = 0usize;
    let mut more = false;
    for (mtime, name) in names {
        let path = dir.join(&name);
        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let mut message = if which == "inbox" {
            fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Map<_, _>>(&b).ok())
        } else {
            None
        };
        if let Some(w) = &want {
            let sender = message
                .as_ref()
                .and_then(|m| m.get("from"))
                .and_then(|v| v.as_str())
                .and_then(|s| s.parse::<crate::wire::address::Addr>().ok());
            if sender.map(|a| a.node) != Some(*w) {
                continue;
            }
        }
        // A listing is one IPC reply (at most 1 MiB): long messages are
        // cut (the file at `path` holds all of it), and the listing stops
        // with `more` when it is full; `--clear` removes what was listed.
        if let Some(m) = message.as_mut() {
            if let Some(serde_json::Value::String(d)) = m.get_mut("data") {
                if d.len() > MAX_LISTED_DATA {
                    let mut cut = MAX_LISTED_DATA;
                    while !d.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    d.truncate(cut);
                    m.insert("truncated".into(), serde_json::Value::Bool(true));
                }
            }
        }
        let modified = (which == "received").then(|| {
            let secs = mtime
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            files::rfc3339_local(secs)
        });
        let e = Entry {
            name,
            path: path.display().to_string(),
            size,
            message,
            modified,
        };
        reply_bytes += serde_json::to_string(&e).map(|t| t.len()).unwrap_or(0) + 1;
        if reply_bytes > MAX_LISTING_BYTES || limit.is_some_and(|l| entries.len() >= l) {
            more = true;
            break;
        }
        entries.push(e);
    }
    let mut cleared = 0usize;
    if clear {
        for e in &entries {
            if fs::remove_file(&e.path).is_ok() {
                cleared += 1;
            }
        }
    }
    Response::ok(&serde_json::json!({
        "dir": dir.display().to_string(),
        which: entries,
        "count": entries.len(),
        "total": total,
        "more": more,
        "cleared": cleared,
    }))
}

/// A `--from` value as a node id: an address (`0:0000.0000.0005`) or a
/// decimal node id.
fn sender_filter(s: &str) -> Result<u32, String> {
    if let Ok(n) = s.parse::<u32>() {
        return Ok(n);
    }
    s.parse::<crate::wire::address::Addr>()
        .map(|a| a.node)
        .map_err(|e| {
            format!("--from {s:?}: {e}; give an address like 0:0000.0000.0005 or a node id")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_become_safe_base_names() {
        assert_eq!(safe_file_name(b"../../etc/passwd"), "passwd");
        assert_eq!(safe_file_name(b"/etc/shadow"), "shadow");
        assert_eq!(safe_file_name(b"..\\..\\win.ini"), "win.ini");
        assert_eq!(safe_file_name(b".bashrc"), "bashrc");
        assert_eq!(safe_file_name(b".."), "file");
        assert_eq!(safe_file_name(b""), "file");
        assert_eq!(safe_file_name(b"a\0b\x1bc\n"), "a_b_c_");
        assert_eq!(safe_file_name(&[0xff, b'x']), "_x");
        let long = "x".repeat(10_000);
        assert_eq!(safe_file_name(long.as_bytes()).len(), MAX_NAME_CHARS);
        let n = stored_name(b"notes.txt");
        assert!(n.starts_with("notes-") && n.ends_with(".txt"), "{n}");
        let n = stored_name(format!("a.{}", "e".repeat(40)).as_bytes());
        // Too long to be an extension: the stamp goes after the whole name.
        assert!(n.starts_with(&format!("a.{}-", "e".repeat(40))), "{n}");
    }

    #[test]
    fn quota_refuses_and_parts_clean_up() {
        let d = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(d.path(), 1000).unwrap());
        let mut part = None;
        let (r, close) = store.handle(1, b"hello", "0:0000.0000.0005", &mut part);
        assert_eq!((r.as_str(), close), ("ACK TEXT 5 bytes", false));
        let big = vec![b'x'; 2000];
        let (r, _) = store.handle(2, &big, "0:0000.0000.0005", &mut part);
        assert!(
            r.starts_with("ERR BINARY save failed: quota exceeded"),
            "{r}"
        );
        // A part that is abandoned leaves no file and returns its room.
        let p = dx::FilePart {
            name: b"big.bin",
            offset: 0,
            total: 600,
            content: &[1u8; 300],
        };
        let f = p.to_frame().unwrap();
        let (r, _) = store.handle(dx::FILE_PART_TYPE, &f[8..], "x", &mut part);
        assert!(r.starts_with("ACK FILE-PART"), "{r}");
        drop(part.take());
        let left: Vec<_> = fs::read_dir(d.path().join("received")).unwrap().collect();
        assert!(left.is_empty());
        // The whole file in two pieces is published under a safe name.
        for (off, total) in [(0u64, 600u64), (300, 600)] {
            let p = dx::FilePart {
                name: b"../big.bin",
                offset: off,
                total,
                content: &[2u8; 300],
            };
            let f = p.to_frame().unwrap();
            let (r, _) = store.handle(dx::FILE_PART_TYPE, &f[8..], "x", &mut part);
            assert!(r.starts_with("ACK FILE"), "{r}");
        }
        let names: Vec<String> = fs::read_dir(d.path().join("received"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1);
        assert!(names[0].starts_with("big-") && names[0].ends_with(".bin"));
        // Out-of-order piece: refused and the connection closes.
        let p = dx::FilePart {
            name: b"x",
            offset: 5,
            total: 10,
            content: b"abc",
        };
        let f = p.to_frame().unwrap();
        let (r, close) = store.handle(dx::FILE_PART_TYPE, &f[8..], "x", &mut part);
        assert!(r.starts_with("ERR FILE") && close, "{r}");
    }
}
