//! `pilotctl expose`, `unexpose` and `forward`: the two ends of plain TCP
//! over the overlay that need no root.
//!
//! - `expose PORT --to HOST:PORT` asks the daemon to serve a virtual port by
//!   forwarding each stream to a local TCP service; the daemon keeps it
//!   after pilotctl exits (`expose --list`, `unexpose PORT`).
//! - `forward [IP:]LPORT <addr|host>:PORT` listens on a local TCP port and
//!   forwards each connection to a remote virtual port: the gateway's job
//!   for users who cannot be root (containers). A dial that fails, or a far
//!   side that closes without sending a byte (a refused service behind
//!   `expose`), resets the local connection at once.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::client::{call, check_target, socket_path};
use super::output::{print_ok, table};
use super::{parse_duration, Cli, CliError, ExposeArgs, ForwardArgs};
use crate::ipc::proto::{ExposeData, ExposeListData};
use crate::ipc::{Client, ErrorCode, Request};

/// `expose`.
pub(super) async fn expose(cli: &Cli, a: &ExposeArgs) -> Result<(), CliError> {
    if a.list {
        let d: ExposeListData = call(cli, &Request::ExposeList).await?;
        print_ok(cli.json, &d, || {
            if d.exposed.is_empty() {
                return "no exposed ports".into();
            }
            let rows: Vec<Vec<String>> = d
                .exposed
                .iter()
                .map(|e| vec![e.port.to_string(), e.to.clone(), e.streams.to_string()])
                .collect();
            table(&["PORT", "TO", "STREAMS"], &rows)
        });
        return Ok(());
    }
    let (Some(port), Some(to)) = (a.port, a.to.as_ref()) else {
        return Err(CliError::new(
            ErrorCode::InvalidArgument,
            "expose needs PORT and --to HOST:PORT (or --list)",
        ));
    };
    let d: ExposeData = call(
        cli,
        &Request::Expose {
            port,
            to: to.clone(),
        },
    )
    .await?;
    print_ok(cli.json, &d, || {
        format!(
            "port {} now forwards to {} (kept by the daemon)",
            d.port, d.to
        )
    });
    Ok(())
}

/// `unexpose`.
pub(super) async fn unexpose(cli: &Cli, port: u16) -> Result<(), CliError> {
    let d: ExposeData = call(cli, &Request::Unexpose { port }).await?;
    print_ok(cli.json, &d, || {
        format!("port {} no longer forwards to {}", d.port, d.to)
    });
    Ok(())
}

/// Splits `<addr|host>:PORT` (addresses contain ':' themselves).
fn split_target(s: &str) -> Result<(String, u16), CliError> {
    let bad = || {
        CliError::new(
            ErrorCode::InvalidAddress,
            format!("invalid target {s:?} (expected ADDRESS:PORT or HOSTNAME:PORT, e.g. beta:80)"),
        )
    };
    let (t, p) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = p.parse().map_err(|_| bad())?;
    if t.is_empty() {
        return Err(bad());
    }
    check_target(t)?;
    Ok((t.to_string(), port))
}

/// Parses `[IP:]LPORT` (default IP 127.0.0.1).
fn listen_addr(s: &str) -> Result<SocketAddr, CliError> {
    if let Ok(p) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], p)));
    }
    s.parse().map_err(|_| {
        CliError::new(
            ErrorCode::InvalidArgument,
            format!("invalid listen address {s:?} (expected [IP:]PORT, e.g. 127.0.0.1:8080)"),
        )
    })
}

/// `forward`.
pub(super) async fn forward(cli: &Cli, a: &ForwardArgs) -> Result<(), CliError> {
    let (target, port) = split_target(&a.target)?;
    let listen = listen_addr(&a.listen)?;
    let timeout = parse_duration(&a.timeout)?;
    let socket = socket_path(cli);
    // Fail now, not at the first connection, when there is no daemon.
    Client::connect(&socket).await?;
    let l = TcpListener::bind(listen).await.map_err(|e| {
        CliError::new(
            ErrorCode::InvalidArgument,
            format!("cannot listen on {listen}: {e}"),
        )
    })?;
    let local = l.local_addr().unwrap_or(listen);
    let data = serde_json::json!({
        "listen": local.to_string(),
        "target": target,
        "port": port,
    });
    print_ok(cli.json, &data, || {
        format!("forwarding {local} -> {target}:{port} (Ctrl-C to stop)")
    });
    // A refusal (nothing listens on the port there) is said at most every
    // REFUSED_EVERY, so a client that retries fast does not flood the
    // terminal; the client itself sees each connection reset.
    let last_refused = std::sync::Arc::new(std::sync::Mutex::new(None::<std::time::Instant>));
    loop {
        let (tcp, _) = tokio::select! {
            r = l.accept() => match r {
                Ok(c) => c,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let socket = socket.clone();
        let target = target.clone();
        let last_refused = last_refused.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let dial = async {
                let mut c = Client::connect(&socket).await?;
                let req = Request::Dial {
                    target: target.clone(),
                    port,
                    timeout_ms: timeout.as_millis() as u64,
                };
                c.request(&req, timeout + Duration::from_secs(5)).await?;
                Ok::<_, crate::ipc::ClientError>(c.into_stream())
            };
            match dial.await {
                Ok(s) => bridge(tcp, s).await,
                Err(e) => {
                    let say = !matches!(e.code(), ErrorCode::Refused) || {
                        let now = std::time::Instant::now();
                        let mut last = last_refused.lock().unwrap_or_else(|p| p.into_inner());
                        let due = last.is_none_or(|t| now.duration_since(t) >= REFUSED_EVERY);
                        if due {
                            *last = Some(now);
                        }
                        due
                    };
                    if say {
                        errln!("forward: {target}:{port}: {e}");
                    }
                    reset(tcp);
                }
            }
        });
    }
}

/// Least time between two "refused" lines of `forward`.
const REFUSED_EVERY: Duration = Duration::from_secs(5);

/// Drops the connection with a RST (SO_LINGER 0).
fn reset(tcp: TcpStream) {
    let _ = tcp.set_zero_linger();
    drop(tcp);
}

async fn bridge(tcp: TcpStream, stream: tokio::net::UnixStream) {
    let (mut trd, mut twr) = tcp.into_split();
    let (mut srd, mut swr) = stream.into_split();
    let got = {
        let up = async {
            let mut buf = crate::iobuf::PageBuf::new(64 * 1024);
            loop {
                match trd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if swr.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            // The client is done sending: end our side of the stream.
            let _ = swr.shutdown().await;
        };
        let down = async {
            let mut buf = crate::iobuf::PageBuf::new(256 * 1024);
            let mut got = 0u64;
            loop {
                match srd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        got += n as u64;
                        if twr.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            got
        };
        tokio::pin!(up, down);
        let mut up_done = false;
        // The stream's end ends the connection, whatever the client still
        // sends (Pilot v1 has no half-close).
        loop {
            tokio::select! {
                _ = &mut up, if !up_done => up_done = true,
                g = &mut down => break g,
            }
        }
    };
    match trd.reunite(twr) {
        Ok(tcp) if got == 0 => reset(tcp),
        Ok(mut tcp) => {
            let _ = tcp.shutdown().await;
        }
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_listen_addresses() {
        assert_eq!(split_target("beta:80").unwrap(), ("beta".into(), 80));
        assert_eq!(
            split_target("0:0000.0000.0002:8080").unwrap(),
            ("0:0000.0000.0002".into(), 8080)
        );
        for bad in ["beta", ":80", "beta:x", "beta:70000"] {
            assert!(split_target(bad).is_err(), "{bad}");
        }
        assert_eq!(
            listen_addr("8080").unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            listen_addr("0.0.0.0:81").unwrap(),
            "0.0.0.0:81".parse().unwrap()
        );
        assert!(listen_addr("x").is_err());
    }
}
