//! pilotctl's stream and datagram commands: `connect`, `listen`, `send`,
//! `recv`, `bench`, `connections`, `disconnect` (echo pings live in `ping`).
//!
//! A stream command sends one IPC request (`dial` or `attach`); after the
//! daemon's reply the same Unix connection carries the stream's raw bytes,
//! so these commands are plain byte pumps.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client::{call, check_target, dial, io_err, remote_addr, socket_path};
use super::output::{print_ok, sanitize, table};
use super::{
    parse_duration, BenchArgs, Cli, CliError, ConnectArgs, ListenArgs, RecvArgs, SendArgs,
};
use crate::ipc::proto::{ConnectionsData, DatagramData, ListenEvent, StreamData};
use crate::ipc::{read_message, Client, ErrorCode, Request};

/// Echo service port (spec §8.3).
const ECHO_PORT: u16 = 7;
const CHUNK: usize = 256 * 1024;
/// Block size for reading stdin in `connect`.
const STDIN_BLOCK: usize = 256 * 1024;

/// `connect`: stdin goes to the stream and the stream to stdout, each
/// direction pumped by its own thread with plain blocking calls, so neither
/// ever waits for the other. (An earlier loop awaited the write of a stdin
/// block inside the `select!` that read the stream: once an echo filled the
/// return path, nobody read it and both directions stopped for good.)
pub(super) async fn connect(cli: &Cli, a: &ConnectArgs) -> Result<(), CliError> {
    check_target(&a.target)?;
    let timeout = parse_duration(&a.timeout)?;
    let linger = parse_duration(&a.linger)?;
    let (stream, info) = dial(cli, &a.target, a.port, timeout).await?;
    let stream = stream
        .into_std()
        .and_then(|s| s.set_nonblocking(false).map(|()| s))
        .map_err(|e| io_err("stream", e))?;
    // Bytes written to the daemon that it never took: checked once the
    // stream ended, before the socket closes.
    let probe = stream.try_clone().map_err(|e| io_err("stream", e))?;
    // Nothing else runs on this runtime: blocking here holds up no task.
    let pumped = pump_stdio(stream, a.message.clone(), linger, cli.json);
    let unread_input = unread_by_peer(&probe);
    drop(probe);
    // End of stream: a reset (e.g. the peer stopped trusting us, or its
    // application died with our bytes unread) is the error, also when it
    // broke a write of ours first.
    if let Ok(v) = call::<serde_json::Value>(
        cli,
        &Request::StreamEnded {
            conn_id: info.conn_id,
        },
    )
    .await
    {
        if v["reset"].as_bool() == Some(true) {
            return Err(CliError::new(
                ErrorCode::Refused,
                format!("connection to {} reset by the peer", info.remote),
            ));
        }
    }
    let (sent, got, received) = pumped?;
    if unread_input > 0 {
        return Err(CliError::new(
            ErrorCode::Refused,
            format!(
                "the stream to {} ended before all of the input was sent ({unread_input} of the {sent} bytes written were not sent)",
                info.remote
            ),
        ));
    }
    if cli.json {
        let (text, encoding) = data_text(&received);
        let data = serde_json::json!({
            "conn_id": info.conn_id,
            "remote": info.remote,
            "bytes_sent": sent,
            "bytes_received": got,
            "data": text,
            "encoding": encoding,
        });
        print_ok(true, &data, String::new);
    } else if a.message.is_some() && got > 0 {
        outln!();
    }
    Ok(())
}

/// Received bytes as JSON text and how they are written: as they are
/// (`"utf-8"`) when they are UTF-8, else in base64 (`"base64"`; a lossy
/// conversion would replace every invalid byte and lose the data).
fn data_text(bytes: &[u8]) -> (String, &'static str) {
    use base64::Engine as _;
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_string(), "utf-8"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(bytes),
            "base64",
        ),
    }
}

/// Bytes written into a Unix socket that its peer has not read
/// (`SIOCOUTQ`, which on Linux is the same request as `TIOCOUTQ`, the name
/// `libc` exports); 0 when unknown.
fn unread_by_peer(sock: &std::os::unix::net::UnixStream) -> usize {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: the request writes one int through the pointer it is given.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if r == 0 {
        n.max(0) as usize
    } else {
        0
    }
}

/// What the stdin thread reports to the stream reader.
#[derive(Default)]
struct InputState {
    /// Bytes written to the stream so far.
    sent: u64,
    /// When the input ended (all of it written).
    done: Option<Instant>,
    /// Writing to the stream failed.
    error: Option<std::io::Error>,
}

/// The two pumps of `connect`. Returns (bytes sent, bytes received, the
/// received bytes when `keep`). Ends when the stream ends, or `linger` after
/// both the input ended and the last byte arrived (no half-close in Pilot
/// v1, spec §7.10: the peer cannot tell us it is done replying).
fn pump_stdio(
    stream: std::os::unix::net::UnixStream,
    message: Option<String>,
    linger: Duration,
    keep: bool,
) -> Result<(u64, u64, Vec<u8>), CliError> {
    use std::io::{ErrorKind, Read, Write};
    use std::sync::{Arc, Mutex};
    crate::ipc::set_send_buffer(&stream, crate::ipc::STREAM_SOCKET_BUFFER);
    let mut wr = stream.try_clone().map_err(|e| io_err("stream", e))?;
    let mut rd = stream;
    let input = Arc::new(Mutex::new(InputState::default()));
    let state = input.clone();
    // Not joined: when the stream ends first, this thread may sit in a read
    // of stdin that never returns; process exit ends it.
    std::thread::spawn(move || {
        let report = |f: &dyn Fn(&mut InputState)| {
            if let Ok(mut s) = state.lock() {
                f(&mut s);
            }
        };
        let result = (|| -> std::io::Result<()> {
            if let Some(m) = message {
                wr.write_all(m.as_bytes())?;
                report(&|s| s.sent += m.len() as u64);
                return Ok(());
            }
            let mut stdin = std::io::stdin().lock();
            // Spliced when stdin allows (super::splice): the bytes then
            // never enter pilotctl.
            {
                use std::os::fd::AsFd;
                let copied = super::splice::copy(stdin.as_fd(), wr.as_fd(), |n| {
                    report(&|s| s.sent += n);
                    Ok(())
                });
                match copied {
                    Ok(super::splice::Copied::Done(_)) => return Ok(()),
                    Ok(super::splice::Copied::Unsupported) => {}
                    // As below: an unreadable stdin ends the input like
                    // EOF, a failed stream write is the error. Splice does
                    // not say which side failed; the stream is the one
                    // that can (stdin was readable when it began).
                    Err(e) => return Err(e),
                }
            }
            let mut buf = crate::iobuf::PageBuf::new(STDIN_BLOCK);
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    // An unreadable stdin ends the input like EOF.
                    Err(_) => return Ok(()),
                };
                wr.write_all(&buf[..n])?;
                report(&|s| s.sent += n as u64);
            }
        })();
        let now = Instant::now();
        if let Ok(mut s) = state.lock() {
            s.done = Some(now);
            s.error = result.err();
        }
    });
    // Wake up at least every 100 ms (or per linger) to check the linger.
    let tick = linger.clamp(Duration::from_millis(1), Duration::from_millis(100));
    rd.set_read_timeout(Some(tick))
        .map_err(|e| io_err("stream", e))?;
    let mut stdout = std::io::stdout().lock();
    let mut buf = crate::iobuf::PageBuf::new(CHUNK);
    let mut received = Vec::new();
    let mut got = 0u64;
    let mut last = Instant::now();
    loop {
        match rd.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got += n as u64;
                pass_on(&buf[..n], keep.then_some(&mut received), &mut stdout)?;
                last = Instant::now();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err("stream", e)),
        }
        // The linger runs once the input is written and the daemon has
        // taken all of it from the socket: with a short linger, leaving
        // while the socket still held input made a stream that was fine
        // look cut short ("ended before all of the input was sent").
        let done = input.lock().ok().and_then(|s| s.done);
        if done.is_some_and(|d| Instant::now() >= d.max(last) + linger) && unread_by_peer(&rd) == 0
        {
            break;
        }
    }
    stdout.flush().map_err(|e| io_err("stdout", e))?;
    let mut s = input
        .lock()
        .map_err(|_| CliError::new(ErrorCode::Internal, "the stdin thread failed"))?;
    if let Some(e) = s.error.take() {
        return Err(io_err("stream", e));
    }
    Ok((s.sent, got, received))
}

/// `listen`.
pub(super) async fn listen(cli: &Cli, a: &ListenArgs) -> Result<(), CliError> {
    let sock = socket_path(cli);
    let mut client = Client::connect(&sock).await?;
    client
        .request(&Request::Listen { port: a.port }, Duration::from_secs(15))
        .await?;
    let mut events = client.into_stream();
    if !cli.json {
        errln!("listening on port {}", a.port);
    }
    let mut buf = crate::iobuf::PageBuf::new(CHUNK);
    loop {
        let ev: ListenEvent = match read_message(&mut events).await {
            Ok(Some(ev)) => ev,
            Ok(None) => {
                return Err(CliError::new(
                    ErrorCode::Internal,
                    "the daemon closed the listener",
                ))
            }
            Err(e) => return Err(CliError::new(ErrorCode::Internal, e.to_string())),
        };
        let ListenEvent::Accept { conn_id, remote } = ev;
        let mut c = Client::connect(&sock).await?;
        if let Err(e) = c
            .request(&Request::Attach { conn_id }, Duration::from_secs(15))
            .await
        {
            if !cli.json {
                errln!("stream from {remote} lost: {e}");
            }
            continue;
        }
        if !cli.json {
            errln!("accepted stream {conn_id} from {remote}");
        }
        let s = c
            .into_stream()
            .into_std()
            .and_then(|s| s.set_nonblocking(false).map(|()| s))
            .map_err(|e| io_err("stream", e))?;
        // Nothing else runs on this runtime: blocking here holds up no task
        // (accept events wait in their socket).
        let (total, text) = stream_to_stdout(s, cli.json, &mut buf)?;
        if cli.json {
            let (text, encoding) = data_text(&text);
            let data = serde_json::json!({
                "conn_id": conn_id,
                "remote": remote,
                "bytes": total,
                "data": text,
                "encoding": encoding,
            });
            print_ok(true, &data, String::new);
        } else {
            errln!("stream {conn_id} from {remote} closed after {total} bytes");
        }
        if !a.keep {
            return Ok(());
        }
    }
}

/// Copies one accepted stream to stdout (or, with `keep`, into the returned
/// vector) until it ends; returns the byte count. Spliced when stdout
/// allows ([`super::splice`]): the bytes then never enter pilotctl.
fn stream_to_stdout(
    mut s: std::os::unix::net::UnixStream,
    keep: bool,
    buf: &mut [u8],
) -> Result<(u64, Vec<u8>), CliError> {
    use std::io::{IsTerminal, Read, Write};
    use std::os::fd::AsFd;
    let mut stdout = std::io::stdout();
    let mut total = 0u64;
    if !keep && !stdout.is_terminal() {
        // Flush what the line buffer holds first, to keep the order.
        stdout.flush().map_err(|e| io_err("stdout", e))?;
        let copied = super::splice::copy(s.as_fd(), stdout.as_fd(), |n| {
            total += n;
            Ok(())
        });
        match copied {
            Ok(super::splice::Copied::Done(n)) => return Ok((n, Vec::new())),
            Ok(super::splice::Copied::Unsupported) => {}
            // Which side failed is not told apart: both are named.
            Err(e) => return Err(io_err("stream to stdout", e)),
        }
    }
    let mut text = Vec::new();
    loop {
        let n = match s.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("stream", e)),
        };
        total += n as u64;
        pass_on(&buf[..n], keep.then_some(&mut text), &mut stdout)?;
    }
    stdout.flush().map_err(|e| io_err("stdout", e))?;
    Ok((total, text))
}

/// `send`.
pub(super) async fn send(cli: &Cli, a: &SendArgs) -> Result<(), CliError> {
    check_target(&a.target)?;
    let v: serde_json::Value = call(
        cli,
        &Request::SendDatagram {
            target: a.target.clone(),
            port: a.port,
            data: a.data.clone(),
        },
    )
    .await?;
    print_ok(cli.json, &v, || {
        format!(
            "sent {} bytes to {}",
            v["bytes"],
            v["to"].as_str().unwrap_or_default()
        )
    });
    Ok(())
}

/// `recv`.
pub(super) async fn recv(cli: &Cli, a: &RecvArgs) -> Result<(), CliError> {
    let idle = a.timeout.as_deref().map(parse_duration).transpose()?;
    let mut client = Client::connect(&socket_path(cli)).await?;
    client
        .request(
            &Request::RecvDatagrams { port: a.port },
            Duration::from_secs(15),
        )
        .await?;
    let mut s = client.into_stream();
    if !cli.json {
        errln!("waiting for datagrams on port {}", a.port);
    }
    let mut n = 0u64;
    while a.count.is_none_or(|c| n < c) {
        let next = read_message::<_, DatagramData>(&mut s);
        let d = match idle {
            Some(t) => match tokio::time::timeout(t, next).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(CliError::new(
                        ErrorCode::Timeout,
                        format!("no datagram on port {} within {t:?} ({n} received)", a.port),
                    ))
                }
            },
            None => next.await,
        };
        let d = match d {
            Ok(Some(d)) => d,
            Ok(None) => {
                return Err(CliError::new(
                    ErrorCode::Internal,
                    "the daemon closed the receiver",
                ))
            }
            Err(e) => return Err(CliError::new(ErrorCode::Internal, e.to_string())),
        };
        n += 1;
        print_ok(cli.json, &d, || {
            let data = if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                sanitize(d.data.as_bytes())
            } else {
                d.data.clone()
            };
            format!("from {} ({} bytes): {}", d.from, d.bytes, data)
        });
    }
    Ok(())
}

/// Writes a peer's bytes to stdout: raw when piped (files, `tar`), sanitized
/// when stdout is a terminal.
fn write_remote<W: std::io::Write + std::io::IsTerminal>(
    out: &mut W,
    bytes: &[u8],
) -> std::io::Result<()> {
    if out.is_terminal() {
        out.write_all(sanitize(bytes).as_bytes())
    } else {
        out.write_all(bytes)
    }
}

/// Hands bytes received from a stream on: into `kept` (for a JSON answer),
/// or to stdout at once. Flushed at once: stdout is line-buffered, and a
/// reply that does not end in a newline must not wait for the linger (a
/// request/response peer waits for it).
fn pass_on<W: std::io::Write + std::io::IsTerminal>(
    bytes: &[u8],
    kept: Option<&mut Vec<u8>>,
    stdout: &mut W,
) -> Result<(), CliError> {
    match kept {
        Some(v) => v.extend_from_slice(bytes),
        None => write_remote(stdout, bytes)
            .and_then(|()| stdout.flush())
            .map_err(|e| io_err("stdout", e))?,
    }
    Ok(())
}

/// Deterministic bench payload: a cheap xorshift stream.
fn fill(buf: &mut [u8], state: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let b = state.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// `bench`: sends SIZE MiB to the echo service and reads them back,
/// checking the SHA-256 of both directions.
pub(super) async fn bench(cli: &Cli, a: &BenchArgs) -> Result<(), CliError> {
    check_target(&a.target)?;
    if a.size_mb == 0 || a.size_mb > 1 << 20 {
        return Err(CliError::new(
            ErrorCode::InvalidArgument,
            "the size must be between 1 and 1048576 MiB",
        ));
    }
    let timeout = parse_duration(&a.timeout)?;
    let total = a.size_mb << 20;
    let (stream, info) = dial(cli, &a.target, ECHO_PORT, timeout).await?;
    let (mut rd, mut wr) = stream.into_split();
    let start = Instant::now();
    let writer = async move {
        let mut h = Sha256::new();
        let mut buf = crate::iobuf::PageBuf::new(CHUNK);
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut left = total;
        while left > 0 {
            let n = (left as usize).min(CHUNK);
            fill(&mut buf[..n], &mut state);
            h.update(&buf[..n]);
            wr.write_all(&buf[..n]).await?;
            left -= n as u64;
        }
        Ok::<_, std::io::Error>((h.finalize(), wr))
    };
    let show = !cli.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let reader = async move {
        let mut h = Sha256::new();
        let mut buf = crate::iobuf::PageBuf::new(CHUNK);
        let mut got = 0u64;
        let mut last_draw = Instant::now();
        while got < total {
            let n = rd.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("stream ended after {got} of {total} bytes"),
                ));
            }
            h.update(&buf[..n]);
            got += n as u64;
            if show && last_draw.elapsed() > Duration::from_millis(100) {
                last_draw = Instant::now();
                let frac = got as f64 / total as f64;
                let width = 30;
                let filled = (frac * width as f64) as usize;
                let rate = got as f64 / start.elapsed().as_secs_f64() / 1e6;
                errprint!(
                    "\r[{}{}] {:5.1}%  {:8.1} MB/s",
                    "#".repeat(filled),
                    " ".repeat(width - filled),
                    frac * 100.0,
                    rate
                );
            }
        }
        if show {
            errprint!("\r{}\r", " ".repeat(60));
        }
        Ok::<_, std::io::Error>(h.finalize())
    };
    let (w, r) = tokio::join!(writer, reader);
    let (sent_hash, _wr) = w.map_err(|e| io_err("bench stream", e))?;
    let got_hash = r.map_err(|e| io_err("bench stream", e))?;
    let secs = start.elapsed().as_secs_f64();
    if sent_hash != got_hash {
        return Err(CliError::new(
            ErrorCode::Internal,
            "the echoed bytes differ from the sent bytes",
        ));
    }
    let mbps = total as f64 / secs / 1e6;
    let data = serde_json::json!({
        "remote": info.remote,
        "bytes": total,
        "seconds": secs,
        "mb_per_s": mbps,
        "sha256": hex_string(&sent_hash),
        "verified": true,
    });
    print_ok(cli.json, &data, || {
        format!(
            "{} MiB to {} and back in {:.2} s: {:.1} MB/s each way (echo verified, sha256 {})",
            a.size_mb,
            remote_addr(&info),
            secs,
            mbps,
            &hex_string(&sent_hash)[..16]
        )
    });
    Ok(())
}

fn hex_string(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `connections`.
pub(super) async fn connections(cli: &Cli) -> Result<(), CliError> {
    let d: ConnectionsData = call(cli, &Request::Connections).await?;
    print_ok(cli.json, &d, || {
        if d.connections.is_empty() {
            return "no open streams".into();
        }
        let rows: Vec<Vec<String>> = d
            .connections
            .iter()
            .map(|c| {
                vec![
                    c.conn_id.to_string(),
                    c.local.clone(),
                    c.remote.clone(),
                    c.state.clone(),
                    c.path.clone(),
                    c.bytes_in.to_string(),
                    c.bytes_out.to_string(),
                ]
            })
            .collect();
        table(
            &["ID", "LOCAL", "REMOTE", "STATE", "PATH", "IN", "OUT"],
            &rows,
        )
    });
    Ok(())
}

/// `disconnect`.
pub(super) async fn disconnect(cli: &Cli, id: u64, force: bool) -> Result<(), CliError> {
    let d: StreamData = call(cli, &Request::Disconnect { conn_id: id, force }).await?;
    print_ok(cli.json, &d, || {
        format!(
            "{} stream {} to {}",
            if force { "reset" } else { "closing" },
            d.conn_id,
            d.remote
        )
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::output::sanitize;

    #[test]
    fn escape_sequences_are_neutralised_for_terminals() {
        assert_eq!(sanitize(b"ok\n\tx"), "ok\n\tx");
        let s = sanitize(b"\x1b]0;pwned\x07\x1b[2J");
        assert!(!s.contains('\u{1b}') && !s.contains('\u{7}'), "{s}");
        assert!(s.contains("\\u{1b}"), "{s}");
    }
}
