//! `pilotctl ping`: control pings (protocol 3, port 0, answered by the
//! daemon itself) and echo-port pings (a stream to port 7 and back, so the
//! stream engine and both IPC hops are in the measurement).

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::client::{check_target, dial, io_err, preflight, remote_addr, socket_path, IPC_TIMEOUT};
use super::output::print_ok;
use super::{parse_duration, Cli, CliError, PingArgs};
use crate::ipc::proto::PingData;
use crate::ipc::{Client, ErrorCode, Request};

/// Echo service port (spec §8.3).
const ECHO_PORT: u16 = 7;

#[derive(Debug, Serialize)]
struct PingSummary {
    target: String,
    address: Option<String>,
    sent: u32,
    received: u32,
    replies: Vec<PingData>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    avg_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_us: Option<u64>,
}

/// Where pings go: the daemon's control ping, or an echo stream.
enum Pinger {
    /// Control pings (protocol 3, port 0): one series request, which the
    /// daemon paces and answers with one response per ping. `req` is the
    /// request until it has been sent; `wait` bounds each response.
    Control {
        client: Client,
        req: Option<Request>,
        wait: Duration,
    },
    /// An open stream to the echo port.
    Echo(EchoStream),
}

impl Pinger {
    async fn once(&mut self, seq: u32, timeout: Duration) -> Result<PingData, CliError> {
        match self {
            Pinger::Control { client, req, wait } => {
                let v = match req.take() {
                    Some(r) => client.request(&r, *wait).await,
                    None => client.response(*wait).await,
                };
                let v = v.map_err(|e| match e {
                    // The daemon answers each ping within its timeout; if it
                    // has not, the series is out of step: stop here.
                    crate::ipc::ClientError::Timeout(_) => CliError::new(
                        ErrorCode::Internal,
                        "the daemon stopped answering the ping series",
                    ),
                    e => e.into(),
                })?;
                serde_json::from_value(v).map_err(|e| {
                    CliError::new(ErrorCode::Internal, format!("unexpected ping reply: {e}"))
                })
            }
            Pinger::Echo(e) => e.ping(seq, timeout).await,
        }
    }

    /// Whether the caller waits the interval between pings (a control
    /// series is paced by the daemon).
    fn paced_here(&self) -> bool {
        matches!(self, Pinger::Echo(_))
    }
}

/// Default wait for each ping reply.
const PING_REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// Default wait for the tunnel and stream before the first ping: the
/// protocol's SYN timeline gives up after ~29 s (relay fallback included).
const PING_DIAL_TIMEOUT: Duration = Duration::from_secs(30);

/// Checks `ping`'s options: (interval, per-reply timeout, dial timeout).
/// An explicit `--timeout` bounds the dial too.
fn ping_options(a: &PingArgs) -> Result<(Duration, Duration, Duration), CliError> {
    check_target(&a.target)?;
    if a.count == 0 {
        return Err(CliError::new(
            ErrorCode::InvalidArgument,
            "--count must be at least 1",
        ));
    }
    if a.size > 1024 {
        return Err(CliError::new(
            ErrorCode::InvalidArgument,
            "--size must be at most 1024 bytes",
        ));
    }
    let interval = parse_duration(&a.interval)?;
    match &a.timeout {
        Some(t) => {
            let t = parse_duration(t)?;
            if t.is_zero() {
                return Err(CliError::new(
                    ErrorCode::InvalidArgument,
                    "--timeout must be positive",
                ));
            }
            Ok((interval, t, t))
        }
        None => Ok((interval, PING_REPLY_TIMEOUT, PING_DIAL_TIMEOUT)),
    }
}

/// `ping --control`: control pings (protocol 3, port 0) through the daemon.
pub(super) async fn control_ping(cli: &Cli, a: &PingArgs) -> Result<(), CliError> {
    let (interval, timeout, _) = ping_options(a)?;
    preflight(cli, &a.target).await?;
    let client = Client::connect(&socket_path(cli)).await?;
    let req = Request::Ping {
        target: a.target.clone(),
        size: a.size,
        timeout_ms: timeout.as_millis() as u64,
        count: a.count,
        interval_us: interval.as_micros().min(u128::from(u64::MAX)) as u64,
    };
    let pinger = Pinger::Control {
        client,
        req: Some(req),
        wait: timeout + interval + IPC_TIMEOUT,
    };
    run_pings(cli, a, pinger, interval, timeout).await
}

/// Sends `a.count` pings, one line per reply, then the summary.
async fn run_pings(
    cli: &Cli,
    a: &PingArgs,
    mut pinger: Pinger,
    interval: Duration,
    timeout: Duration,
) -> Result<(), CliError> {
    let mut s = PingSummary {
        target: a.target.clone(),
        address: None,
        sent: 0,
        received: 0,
        replies: Vec::new(),
        min_us: None,
        avg_us: None,
        max_us: None,
    };
    let mut last_err = None;
    for seq in 1..=a.count {
        if seq > 1 && pinger.paced_here() {
            tokio::time::sleep(interval).await;
        }
        s.sent += 1;
        match pinger.once(seq, timeout).await {
            Ok(d) => {
                if !cli.json {
                    outln!(
                        "{} bytes from {}: seq={seq} time={:.3} ms ({})",
                        d.bytes,
                        d.address,
                        d.rtt_us as f64 / 1000.0,
                        d.path
                    );
                }
                s.address = Some(d.address.clone());
                s.received += 1;
                s.replies.push(d);
            }
            // Per-ping losses are reported and the run goes on.
            Err(e) if e.code == ErrorCode::Timeout => {
                if !cli.json {
                    outln!("no reply from {}: seq={seq} (timeout)", a.target);
                }
                last_err = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    if s.received == 0 {
        return Err(last_err.unwrap_or_else(|| CliError::new(ErrorCode::Timeout, "no replies")));
    }
    let rtts: Vec<u64> = s.replies.iter().map(|r| r.rtt_us).collect();
    s.min_us = rtts.iter().min().copied();
    s.max_us = rtts.iter().max().copied();
    s.avg_us = Some(rtts.iter().sum::<u64>() / rtts.len() as u64);
    let loss = 100.0 * f64::from(s.sent - s.received) / f64::from(s.sent);
    print_ok(cli.json, &s, || {
        format!(
            "--- {} ping statistics ---\n{} sent, {} received, {:.0}% loss, rtt min/avg/max = {:.3}/{:.3}/{:.3} ms",
            s.address.as_deref().unwrap_or(&s.target),
            s.sent,
            s.received,
            loss,
            s.min_us.unwrap_or(0) as f64 / 1000.0,
            s.avg_us.unwrap_or(0) as f64 / 1000.0,
            s.max_us.unwrap_or(0) as f64 / 1000.0,
        )
    });
    Ok(())
}

/// An open stream to a node's echo service, for `ping`.
struct EchoStream {
    stream: UnixStream,
    address: String,
    size: usize,
}

impl EchoStream {
    /// One round trip: `size` bytes out, the same bytes back.
    async fn ping(&mut self, seq: u32, timeout: Duration) -> Result<PingData, CliError> {
        let mut msg = format!("ping-{seq}-").into_bytes();
        msg.resize(self.size.max(msg.len()), b'.');
        let start = Instant::now();
        let work = async {
            self.stream.write_all(&msg).await?;
            let mut back = vec![0u8; msg.len()];
            self.stream.read_exact(&mut back).await?;
            Ok::<_, std::io::Error>(back)
        };
        let back = match tokio::time::timeout(timeout, work).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return Err(io_err("echo stream", e)),
            Err(_) => {
                return Err(CliError::new(
                    ErrorCode::Timeout,
                    format!("no echo from {} within {timeout:?}", self.address),
                ))
            }
        };
        if back != msg {
            return Err(CliError::new(
                ErrorCode::Internal,
                "the echo differs from what was sent",
            ));
        }
        Ok(PingData {
            address: self.address.clone(),
            bytes: msg.len(),
            rtt_us: start.elapsed().as_micros() as u64,
            path: "echo".into(),
        })
    }
}

/// `ping` over the echo port.
pub(super) async fn echo_ping(cli: &Cli, a: &PingArgs) -> Result<(), CliError> {
    let (interval, timeout, dial_timeout) = ping_options(a)?;
    preflight(cli, &a.target).await?;
    let (stream, info) = dial(cli, &a.target, ECHO_PORT, dial_timeout).await?;
    let echo = EchoStream {
        stream,
        address: remote_addr(&info),
        size: a.size.max(1),
    };
    run_pings(cli, a, Pinger::Echo(echo), interval, timeout).await
}
