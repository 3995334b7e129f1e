//! `pilotctl send-message | inbox | send-file | received | publish |
//! subscribe`: messages to a node's inbox (port 1001) and events through a
//! node's broker (port 1002), spec §10.
//!
//! The sending side lives here, in the client: it opens a stream through
//! the daemon, speaks the frames of `wire::dataexchange` and prints what
//! the receiver answered (`ACK …` / `ERR …`). Frames are pipelined (all
//! written, replies read as they come), so a batch over one stream costs
//! one round trip, not one per message. `inbox` and `received` ask the
//! daemon, which owns the files (it may run as another user).

use std::io::{IsTerminal, Read};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::client::{call, check_target, dial, io_err, remote_addr};
use super::output::{print_ok, sanitize, table};
use super::{parse_duration, Cli, CliError, SendFileArgs, SendMessageArgs};
use crate::ipc::{ErrorCode, Request};
use crate::wire::dataexchange::{self as dx, DataFrame, Event, FilePart, FrameType};

/// Largest reply the service sends (`ERR … quota …` lines are ~200 bytes;
/// anything far larger is not a data-exchange service).
const MAX_REPLY: usize = 64 * 1024;
/// Piece size of a large file (FILE-PART): a quarter of the frame limit, so
/// the receiver buffers little per connection.
const PIECE: usize = 4 << 20;
/// How long `publish` waits for the broker to close after the event.
const PUBLISH_LINGER: Duration = Duration::from_secs(5);

fn too_large(n: usize) -> CliError {
    CliError::new(
        ErrorCode::TooLarge,
        format!(
            "the message is {n} bytes; one message is at most {} bytes (16 MiB): use send-file for larger data",
            dx::MAX_BODY_LEN
        ),
    )
}

fn read_stdin() -> Result<Vec<u8>, CliError> {
    let mut v = Vec::new();
    std::io::stdin()
        .read_to_end(&mut v)
        .map_err(|e| io_err("cannot read stdin", e))?;
    Ok(v)
}

/// Reads one reply frame; `None` if the stream ended first.
async fn read_reply<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<String>, CliError> {
    let mut head = [0u8; dx::HEADER_LEN];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(io_err("reading the reply", e)),
    }
    let p = dx::Packet::new_unchecked(&head[..]);
    let len = p.body_len() as usize;
    if len > MAX_REPLY {
        return Err(CliError::new(
            ErrorCode::PeerError,
            format!("the peer answered with a {len}-byte frame: port 1001 there is not a data-exchange service"),
        ));
    }
    let mut body = vec![0u8; len];
    match r.read_exact(&mut body).await {
        Ok(_) => Ok(Some(String::from_utf8_lossy(&body).into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(io_err("reading the reply", e)),
    }
}

fn peer_refused(to: &str, reply: &str) -> CliError {
    let code = if reply.contains("quota") || reply.contains("too large") {
        ErrorCode::TooLarge
    } else {
        ErrorCode::PeerError
    };
    CliError::new(
        code,
        format!("{to} refused it: {}", sanitize(reply.as_bytes())),
    )
}

fn ended_early(to: &str, got: usize, want: usize) -> CliError {
    CliError::new(
        ErrorCode::PeerError,
        format!("the stream to {to} ended after {got} of {want} answers (the peer closed it; it may have refused the data)"),
    )
}

/// `send-message`.
pub(super) async fn send_message(cli: &Cli, a: &SendMessageArgs) -> Result<(), CliError> {
    check_target(&a.target)?;
    let timeout = parse_duration(&a.timeout)?;
    let body = match (&a.data, &a.file) {
        (Some(d), _) if d == "-" => read_stdin()?,
        (Some(d), _) => d.clone().into_bytes(),
        (None, Some(f)) => {
            std::fs::read(f).map_err(|e| io_err(&format!("cannot read {}", f.display()), e))?
        }
        (None, None) => {
            return Err(CliError::new(
                ErrorCode::InvalidArgument,
                "nothing to send: give --data TEXT, --data - (stdin) or --file PATH",
            ))
        }
    };
    let ft = match a.kind.as_str() {
        "json" => FrameType::Json,
        "binary" => FrameType::Binary,
        _ => FrameType::Text,
    };
    let messages: Vec<&[u8]> = if a.each_line {
        body.split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .filter(|l| !l.is_empty())
            .collect()
    } else {
        vec![&body[..]]
    };
    if messages.is_empty() {
        return Err(CliError::new(
            ErrorCode::InvalidArgument,
            "nothing to send: the input has no lines",
        ));
    }
    let mut frames = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let which = if a.each_line {
            format!("line {}", i + 1)
        } else {
            "the message".into()
        };
        if m.len() > dx::MAX_BODY_LEN {
            return Err(too_large(m.len()));
        }
        match ft {
            FrameType::Json => {
                serde_json::from_slice::<serde::de::IgnoredAny>(m).map_err(|e| {
                    CliError::new(
                        ErrorCode::InvalidArgument,
                        format!("--type json: {which} is not valid JSON: {e}"),
                    )
                })?;
            }
            FrameType::Text if std::str::from_utf8(m).is_err() => {
                return Err(CliError::new(
                    ErrorCode::InvalidArgument,
                    format!("{which} is not UTF-8 text: send it with --type binary"),
                ))
            }
            _ => {}
        }
        frames.push(
            DataFrame::new(ft, m)
                .to_vec()
                .map_err(|_| too_large(m.len()))?,
        );
    }
    let (stream, info) = dial(cli, &a.target, dx::DATA_EXCHANGE_PORT, timeout).await?;
    let to = remote_addr(&info);
    let (mut rd, mut wr) = stream.into_split();
    let start = Instant::now();
    let n = frames.len();
    let writer = async move {
        for f in &frames {
            wr.write_all(f).await?;
        }
        Ok::<_, std::io::Error>(wr)
    };
    let reader = async {
        let mut replies = Vec::with_capacity(n);
        while replies.len() < n {
            match read_reply(&mut rd).await? {
                Some(r) => replies.push(r),
                None => break,
            }
        }
        Ok::<_, CliError>(replies)
    };
    let (w, replies) = tokio::join!(writer, reader);
    let replies = replies?;
    let secs = start.elapsed().as_secs_f64();
    if let Some(bad) = replies.iter().find(|r| !r.starts_with("ACK")) {
        return Err(peer_refused(&to, bad));
    }
    if replies.len() < n {
        if let Err(e) = w {
            return Err(io_err(&format!("sending to {to}"), e));
        }
        return Err(ended_early(&to, replies.len(), n));
    }
    drop(w);
    let bytes: usize = messages.iter().map(|m| m.len()).sum();
    let data = serde_json::json!({
        "to": to,
        "type": ft.to_string(),
        "messages": n,
        "bytes": bytes,
        "reply": replies.last(),
        "seconds": secs,
    });
    print_ok(cli.json, &data, || {
        if n == 1 {
            format!("sent to {to}: {}", sanitize(replies[0].as_bytes()))
        } else {
            format!(
                "sent {n} messages ({bytes} bytes) to {to} in {secs:.2} s: all acknowledged ({:.0} messages/s)",
                n as f64 / secs.max(1e-9)
            )
        }
    });
    Ok(())
}

/// Draws a progress line on stderr.
fn draw_progress(done: u64, total: u64, start: Instant) {
    let frac = if total == 0 {
        1.0
    } else {
        done as f64 / total as f64
    };
    let width = 30;
    let filled = ((frac * width as f64) as usize).min(width);
    let rate = done as f64 / start.elapsed().as_secs_f64().max(1e-9) / 1e6;
    errprint!(
        "\r[{}{}] {:5.1}%  {:8.1} MB/s",
        "#".repeat(filled),
        " ".repeat(width - filled),
        frac * 100.0,
        rate
    );
}

/// `send-file`.
pub(super) async fn send_file(cli: &Cli, a: &SendFileArgs) -> Result<(), CliError> {
    check_target(&a.target)?;
    let timeout = parse_duration(&a.timeout)?;
    let name = match &a.name {
        Some(n) => n.clone(),
        None => a
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    if name.is_empty() {
        return Err(CliError::new(
            ErrorCode::InvalidArgument,
            format!(
                "{} has no file name; give one with --name",
                a.path.display()
            ),
        ));
    }
    if name.len() > dx::MAX_FILENAME_LEN || name.contains("..") || name.contains(['/', '\\']) {
        return Err(CliError::new(
            ErrorCode::InvalidArgument,
            format!("--name {name:?}: a file name is at most 255 bytes, without '/', '\\' or '..'"),
        ));
    }
    let path_text = a.path.display().to_string();
    let mut file = tokio::fs::File::open(&a.path)
        .await
        .map_err(|e| io_err(&format!("cannot read {path_text}"), e))?;
    let meta = file
        .metadata()
        .await
        .map_err(|e| io_err(&format!("cannot read {path_text}"), e))?;
    if !meta.is_file() {
        return Err(CliError::new(
            ErrorCode::InvalidArgument,
            format!("{path_text} is not a regular file"),
        ));
    }
    let total = meta.len();
    let single = 2 + name.len() as u64 + total <= dx::MAX_BODY_LEN as u64;
    let (stream, info) = dial(cli, &a.target, dx::DATA_EXCHANGE_PORT, timeout).await?;
    let to = remote_addr(&info);
    let (mut rd, mut wr) = stream.into_split();
    let show = !cli.json && std::io::stderr().is_terminal();
    let start = Instant::now();
    let mut hash = Sha256::new();
    let reply: String;
    if single {
        let mut content = Vec::with_capacity(total as usize);
        file.read_to_end(&mut content)
            .await
            .map_err(|e| io_err(&format!("cannot read {path_text}"), e))?;
        hash.update(&content);
        let body = dx::file_body(&name, &content).map_err(|e| {
            CliError::new(ErrorCode::InvalidArgument, format!("--name {name:?}: {e}"))
        })?;
        let frame = DataFrame::new(FrameType::File, &body)
            .to_vec()
            .map_err(|_| too_large(body.len()))?;
        let (w, r) = tokio::join!(wr.write_all(&frame), read_reply(&mut rd));
        reply = match r? {
            Some(r) => r,
            None => {
                w.map_err(|e| io_err(&format!("sending to {to}"), e))?;
                return Err(ended_early(&to, 0, 1));
            }
        };
        if !reply.starts_with("ACK") {
            return Err(peer_refused(&to, &reply));
        }
    } else {
        // Pieces: the first alone (a node without FILE-PART says so in
        // its answer), then the rest pipelined against the answers.
        let pieces = total.div_ceil(PIECE as u64) as usize;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let name2 = name.clone();
        let path2 = path_text.clone();
        let reader_task = async move {
            let mut off = 0u64;
            let mut buf = crate::iobuf::PageBuf::new(PIECE);
            while off < total {
                let want = ((total - off) as usize).min(PIECE);
                file.read_exact(&mut buf[..want])
                    .await
                    .map_err(|e| io_err(&format!("cannot read {path2}"), e))?;
                let frame = FilePart {
                    name: name2.as_bytes(),
                    offset: off,
                    total,
                    content: &buf[..want],
                }
                .to_frame()
                .map_err(|e| CliError::new(ErrorCode::InvalidArgument, e.to_string()))?;
                if tx.send(frame).await.is_err() {
                    break;
                }
                off += want as u64;
            }
            Ok::<_, CliError>(())
        };
        let to2 = to.clone();
        let skip = dx::HEADER_LEN + 2 + name.len() + 16;
        let exchange = async move {
            let mut acked = 0usize;
            let mut sent = 0usize;
            let mut last;
            // First piece, alone.
            let first = rx
                .recv()
                .await
                .ok_or_else(|| ended_early(&to2, 0, pieces))?;
            hash.update(&first[skip..]);
            wr.write_all(&first)
                .await
                .map_err(|e| io_err(&format!("sending to {to2}"), e))?;
            sent += 1;
            let r = read_reply(&mut rd)
                .await?
                .ok_or_else(|| ended_early(&to2, 0, pieces))?;
            if r.starts_with("ACK UNKNOWN") {
                return Err(CliError::new(
                    ErrorCode::PeerError,
                    format!(
                        "{to2} cannot take files over 16 MiB (it does not know FILE-PART pieces; it is probably a reference node): nothing was stored"
                    ),
                ));
            }
            if !r.starts_with("ACK") {
                return Err(peer_refused(&to2, &r));
            }
            acked += 1;
            last = r;
            // The rest: keep writing while answers come back.
            let mut rx_open = true;
            while acked < pieces {
                tokio::select! {
                    f = rx.recv(), if rx_open && sent < pieces && sent - acked < 8 => {
                        match f {
                            Some(f) => {
                                hash.update(&f[skip..]);
                                wr.write_all(&f).await.map_err(|e| io_err(&format!("sending to {to2}"), e))?;
                                sent += 1;
                            }
                            None => rx_open = false,
                        }
                    }
                    r = read_reply(&mut rd) => {
                        let r = r?.ok_or_else(|| ended_early(&to2, acked, pieces))?;
                        if !r.starts_with("ACK") {
                            return Err(peer_refused(&to2, &r));
                        }
                        acked += 1;
                        last = r;
                        if show {
                            draw_progress((acked as u64 * PIECE as u64).min(total), total, start);
                        }
                    }
                }
                if !rx_open && sent < pieces {
                    return Err(ended_early(&to2, acked, pieces));
                }
            }
            Ok::<_, CliError>((last, hash))
        };
        let (rt, ex) = tokio::join!(reader_task, exchange);
        if show {
            errprint!("\r{}\r", " ".repeat(60));
        }
        let (last, h) = ex?;
        rt?;
        hash = h;
        reply = last;
    }
    let secs = start.elapsed().as_secs_f64();
    let sha: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let data = serde_json::json!({
        "to": to,
        "name": name,
        "bytes": total,
        "sha256": sha,
        "reply": reply,
        "seconds": secs,
        "mb_per_s": total as f64 / secs.max(1e-9) / 1e6,
    });
    print_ok(cli.json, &data, || {
        format!(
            "sent {name} ({total} bytes) to {to} in {secs:.2} s: {}",
            sanitize(reply.as_bytes())
        )
    });
    Ok(())
}

/// `inbox` / `received`.
pub(super) async fn mailbox(
    cli: &Cli,
    which: &str,
    clear: bool,
    from: Option<&str>,
    limit: Option<usize>,
) -> Result<(), CliError> {
    let d: serde_json::Value = call(
        cli,
        &Request::Mailbox {
            which: which.into(),
            clear,
            from: from.map(str::to_string),
            limit,
        },
    )
    .await?;
    print_ok(cli.json, &d, || {
        let s = |v: &serde_json::Value, k: &str| {
            v.get(k)
                .map(|x| match x {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .unwrap_or_default()
        };
        let items: Vec<&serde_json::Value> = d[which].as_array().into_iter().flatten().collect();
        let dir = s(&d, "dir");
        let mut out = if items.is_empty() {
            format!("{which} is empty ({dir})")
        } else if which == "inbox" {
            items
                .iter()
                .map(|m| {
                    format!(
                        "{}  from {}  {} ({} bytes): {}",
                        s(m, "received_at"),
                        s(m, "from"),
                        s(m, "type"),
                        s(m, "bytes"),
                        sanitize(s(m, "data").as_bytes())
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|f| vec![s(f, "name"), s(f, "size"), s(f, "modified")])
                .collect();
            format!(
                "{}\n(in {dir})",
                table(&["FILE", "BYTES", "RECEIVED"], &rows).trim_end()
            )
        };
        if d["more"] == true {
            out.push_str(&format!(
                "\n({} of {} shown; --clear and list again, or --json for paths)",
                items.len(),
                s(&d, "total")
            ));
        }
        if clear {
            out.push_str(&format!("\ncleared {}", s(&d, "cleared")));
        }
        out
    });
    Ok(())
}

fn check_topic(topic: &str) -> Result<(), CliError> {
    if topic.is_empty() || topic.len() > dx::MAX_TOPIC_LEN {
        return Err(CliError::new(
            ErrorCode::InvalidArgument,
            format!(
                "a topic is 1 to {} bytes (got {})",
                dx::MAX_TOPIC_LEN,
                topic.len()
            ),
        ));
    }
    Ok(())
}

/// `publish`.
pub(super) async fn publish(
    cli: &Cli,
    target: &str,
    topic: &str,
    data: &str,
) -> Result<(), CliError> {
    check_target(target)?;
    check_topic(topic)?;
    let payload = if data == "-" {
        read_stdin()?
    } else {
        data.as_bytes().to_vec()
    };
    if payload.len() > dx::MAX_EVENT_PAYLOAD_LEN {
        return Err(too_large(payload.len()));
    }
    let (stream, info) = dial(cli, target, dx::EVENT_STREAM_PORT, Duration::from_secs(30)).await?;
    let to = remote_addr(&info);
    let (mut rd, mut wr) = stream.into_split();
    // §10.4: the first frame subscribes; ours names the same topic (we
    // leave before anything could arrive), the second is the event.
    let sub = Event::new(topic.as_bytes(), b"")
        .to_vec()
        .map_err(|e| CliError::new(ErrorCode::InvalidArgument, e.to_string()))?;
    let ev = Event::new(topic.as_bytes(), &payload)
        .to_vec()
        .map_err(|e| CliError::new(ErrorCode::InvalidArgument, e.to_string()))?;
    wr.write_all(&sub)
        .await
        .and(wr.write_all(&ev).await)
        .map_err(|e| io_err(&format!("publishing to {to}"), e))?;
    let _ = wr.shutdown().await;
    // The broker closes once it has read our frames: wait for that, so the
    // event is delivered before we exit.
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(PUBLISH_LINGER, async {
        while let Ok(n) = rd.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    let d = serde_json::json!({"to": to, "topic": topic, "bytes": payload.len()});
    print_ok(cli.json, &d, || {
        format!("published {} bytes on {topic:?} at {to}", payload.len())
    });
    Ok(())
}

/// `subscribe`.
pub(super) async fn subscribe(
    cli: &Cli,
    target: &str,
    topic: &str,
    count: Option<u64>,
    timeout: Option<&str>,
) -> Result<(), CliError> {
    check_target(target)?;
    check_topic(topic)?;
    let idle = timeout.map(parse_duration).transpose()?;
    if count == Some(0) {
        return Ok(());
    }
    let (stream, info) = dial(cli, target, dx::EVENT_STREAM_PORT, Duration::from_secs(30)).await?;
    let to = remote_addr(&info);
    let (mut rd, mut wr) = stream.into_split();
    let sub = Event::new(topic.as_bytes(), b"")
        .to_vec()
        .map_err(|e| CliError::new(ErrorCode::InvalidArgument, e.to_string()))?;
    wr.write_all(&sub)
        .await
        .map_err(|e| io_err(&format!("subscribing at {to}"), e))?;
    if !cli.json {
        errln!("subscribed to {topic:?} at {to}");
    }
    let tty = std::io::stdout().is_terminal();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    loop {
        while let Some((ev, used)) = dx::decode_event(&buf)
            .map_err(|e| CliError::new(ErrorCode::PeerError, format!("bad event from {to}: {e}")))?
        {
            got += 1;
            let topic = String::from_utf8_lossy(ev.topic).into_owned();
            let data = String::from_utf8_lossy(ev.payload).into_owned();
            let d = serde_json::json!({"topic": topic, "data": data, "bytes": ev.payload.len()});
            print_ok(cli.json, &d, || {
                if tty {
                    format!(
                        "{} {}",
                        sanitize(topic.as_bytes()),
                        sanitize(data.as_bytes())
                    )
                } else {
                    format!("{topic} {data}")
                }
            });
            buf.drain(..used);
            if count.is_some_and(|c| got >= c) {
                return Ok(());
            }
        }
        let read = rd.read(&mut chunk);
        let n = match idle {
            Some(t) => match tokio::time::timeout(t, read).await {
                Ok(r) => r,
                Err(_) if count.is_none() => return Ok(()),
                Err(_) => {
                    return Err(CliError::new(
                        ErrorCode::Timeout,
                        format!(
                            "{got} of {} events within {t:?} of each other",
                            count.unwrap_or(0)
                        ),
                    ))
                }
            },
            None => read.await,
        }
        .map_err(|e| io_err(&format!("reading events from {to}"), e))?;
        if n == 0 {
            return Err(CliError::new(
                ErrorCode::PeerError,
                format!("{to} closed the subscription after {got} events"),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
