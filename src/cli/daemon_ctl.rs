//! `pilotctl daemon start|stop|status`: spawning `pilot-daemon` in the
//! background, waiting until it has an address, and stopping it.
//!
//! A crashed daemon leaves a pid file and a socket behind; neither may block
//! the next start: liveness is decided by whether the socket answers, never by
//! the files' presence.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::output::{kv, print_ok};
use super::{config_cmd, parse_duration, Cli, CliError, StartArgs};
use crate::config::{create_private_dir, Config, Paths};
use crate::ipc::proto::InfoData;
use crate::ipc::{Client, ClientError, ErrorCode, Request};

const IPC_TIMEOUT: Duration = Duration::from_secs(5);

/// Asks the daemon on `socket` for `info`; `Ok(None)` when none runs. A
/// daemon that is exiting (killed a moment ago) resets the connection: we
/// wait for it to go, up to [`crate::ipc::DYING_WAIT`].
pub(super) async fn probe(socket: &Path) -> Result<Option<InfoData>, CliError> {
    let deadline = Instant::now() + crate::ipc::DYING_WAIT;
    let v = loop {
        let mut c = match Client::connect(socket).await {
            Ok(c) => c,
            Err(ClientError::NotRunning { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match c.request(&Request::Info, IPC_TIMEOUT).await {
            Err(ClientError::Frame(e)) if crate::ipc::is_dying(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            r => break r?,
        }
    };
    serde_json::from_value(v)
        .map(Some)
        .map_err(|e| CliError::new(ErrorCode::Internal, format!("unexpected info reply: {e}")))
}

/// What `daemon start` and `daemon status` print.
#[derive(Debug, Serialize)]
struct RunningData {
    pid: u32,
    address: String,
    node_id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    hostname: Option<String>,
    socket: String,
    logs: String,
}

fn running_block(d: &RunningData) -> String {
    let rows = [
        ("Address", d.address.clone()),
        ("Hostname", d.hostname.clone().unwrap_or_else(|| "-".into())),
        ("Socket", d.socket.clone()),
        ("Logs", d.logs.clone()),
    ];
    format!("Daemon running (pid {})\n{}", d.pid, indent(&kv(&rows)))
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

fn daemon_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PILOT_DAEMON_BIN") {
        return PathBuf::from(p);
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let p = dir.join("pilot-daemon");
            if p.exists() {
                return p;
            }
        }
    }
    PathBuf::from("pilot-daemon")
}

/// `daemon start`.
///
/// The flags are merged over the saved settings, checked (a registry or
/// beacon that does not resolve is refused here, naming the flag), and saved
/// to config.json only once the daemon is up: a start that fails leaves the
/// file as it was, so one bad `--registry` cannot poison later starts.
pub(super) async fn start(cli: &Cli, args: &StartArgs) -> Result<(), CliError> {
    let paths = Paths::from_env();
    let saved = config_cmd::load(&paths)?;
    let mut config = saved.clone();
    let wait = parse_duration(&args.wait)?;

    // Flags win over the config file.
    for (flag, slot) in [
        (&args.registry, &mut config.registry),
        (&args.beacon, &mut config.beacon),
        (&args.hostname, &mut config.hostname),
        (&args.email, &mut config.email),
        (&args.listen, &mut config.listen),
        (&args.log_level, &mut config.log_level),
    ] {
        if flag.is_some() {
            *slot = flag.clone();
        }
    }
    if args.public {
        config.public = Some(true);
    }
    if args.private {
        config.public = Some(false);
    }
    if let Some(sock) = &cli.socket {
        config.socket = Some(sock.display().to_string());
    }
    config_cmd::check_all(&config).await?;
    let socket = paths.socket(cli.socket.as_deref(), &config);

    if let Some(info) = probe(&socket).await? {
        return Err(CliError::new(
            ErrorCode::AlreadyRunning,
            format!(
                "a daemon is already running on {} (pid {}, address {})",
                socket.display(),
                info.pid,
                info.address
            ),
        ));
    }
    create_private_dir(&paths.home).map_err(|e| {
        CliError::new(
            ErrorCode::StartFailed,
            format!("{}: {e}", paths.home.display()),
        )
    })?;
    let save = |config: &Config| -> Result<(), CliError> {
        if *config != saved {
            config
                .save(&paths.config())
                .map_err(config_cmd::config_error)?;
        }
        Ok(())
    };

    let mut cmd = std::process::Command::new(daemon_binary());
    cmd.arg("--socket").arg(&socket);
    cmd.arg("--identity").arg(paths.identity());
    for (flag, value) in [
        ("--registry", &config.registry),
        ("--beacon", &config.beacon),
        ("--hostname", &config.hostname),
        ("--email", &config.email),
        ("--listen", &config.listen),
        ("--log-level", &config.log_level),
        ("--heartbeat", &args.heartbeat),
    ] {
        if let Some(v) = value {
            cmd.arg(flag).arg(v);
        }
    }
    if config.public == Some(true) {
        cmd.arg("--public");
    }
    if args.trust_auto_approve {
        cmd.arg("--trust-auto-approve");
    }
    if let Some(q) = &args.quota {
        cmd.arg("--quota").arg(q);
    }
    if let Some(m) = &args.metrics {
        cmd.arg("--metrics").arg(m.to_string());
    }
    cmd.args(&args.daemon_arg);

    if args.foreground {
        // Nothing is saved: the daemon's own errors go to the terminal.
        use std::os::unix::process::CommandExt;
        let err = cmd.exec();
        return Err(CliError::new(
            ErrorCode::StartFailed,
            format!("cannot run {}: {err}", daemon_binary().display()),
        ));
    }

    let log_path = paths.log();
    crate::config::rotate_if_large(&log_path);
    let log = crate::config::open_private_append(&log_path).map_err(|e| {
        CliError::new(
            ErrorCode::StartFailed,
            format!("{}: {e}", log_path.display()),
        )
    })?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let log2 = log.try_clone().map_err(|e| {
        CliError::new(
            ErrorCode::StartFailed,
            format!("{}: {e}", log_path.display()),
        )
    })?;
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
    let mut child = cmd.spawn().map_err(|e| {
        CliError::new(
            ErrorCode::StartFailed,
            format!("cannot run {}: {e}", daemon_binary().display()),
        )
    })?;
    let pid = child.id();
    let _ = crate::config::write_private(&paths.pid(), format!("{pid}\n").as_bytes());

    if wait.is_zero() {
        // Asked not to wait: the options are taken as given.
        save(&config)?;
        #[derive(Serialize)]
        struct Starting {
            pid: u32,
            socket: String,
            logs: String,
        }
        let d = Starting {
            pid,
            socket: socket.display().to_string(),
            logs: log_path.display().to_string(),
        };
        print_ok(cli.json, &d, || {
            format!(
                "Daemon starting (pid {pid}); `pilotctl daemon status` tells when it is up\n  Logs  {}",
                d.logs
            )
        });
        return Ok(());
    }

    let deadline = Instant::now() + wait;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let _ = std::fs::remove_file(paths.pid());
            let why = last_error_line(&log_path, log_start).unwrap_or_else(|| {
                format!(
                    "pilot-daemon exited with {status}; see {}",
                    log_path.display()
                )
            });
            return Err(CliError::new(
                ErrorCode::StartFailed,
                format!("{why} (nothing saved to {})", paths.config().display()),
            ));
        }
        if let Ok(Some(info)) = probe(&socket).await {
            save(&config)?;
            let data = RunningData {
                pid,
                address: info.address,
                node_id: info.node_id,
                hostname: info.hostname,
                socket: socket.display().to_string(),
                logs: log_path.display().to_string(),
            };
            print_ok(cli.json, &data, || running_block(&data));
            return Ok(());
        }
        if Instant::now() >= deadline {
            // A start that did not succeed leaves nothing running.
            terminate(&mut child).await;
            let _ = std::fs::remove_file(paths.pid());
            let last = last_log_line(&log_path, log_start)
                .map(|l| format!("; its last log line: {l}"))
                .unwrap_or_default();
            return Err(CliError::new(
                ErrorCode::Timeout,
                format!(
                    "pilot-daemon (pid {pid}) had no address after {wait:?}, so it was stopped and nothing was saved{last} (log: {}; more time: --wait 60s)",
                    log_path.display()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM, then SIGKILL after 3 s; reaps the child.
async fn terminate(child: &mut std::process::Child) {
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The last non-empty line the daemon logged since `from`.
fn last_log_line(log: &Path, from: u64) -> Option<String> {
    let text = std::fs::read(log).ok()?;
    let text = String::from_utf8_lossy(text.get(from as usize..)?);
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
}

/// Where the daemon `pid` writes its log: its stderr, as the kernel sees it
/// (`/proc/PID/fd/2`), so `status` shows the daemon's log even when asked
/// from another HOME; `None` when that cannot be read.
fn daemon_log_path(pid: u32) -> Option<String> {
    let p = std::fs::read_link(format!("/proc/{pid}/fd/2")).ok()?;
    // pipes, sockets and terminals are not files to look at
    p.is_absolute()
        .then(|| p.display().to_string())
        .filter(|s| !s.starts_with("/dev/") && !s.contains(':'))
}

/// The daemon's fatal error line (it prints `error: ...` last), from the
/// part of the log written since `from`.
fn last_error_line(log: &Path, from: u64) -> Option<String> {
    let text = std::fs::read(log).ok()?;
    let text = String::from_utf8_lossy(text.get(from as usize..)?);
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix("error: "))
        .map(str::to_string)
}

/// `daemon stop`.
pub(super) async fn stop(cli: &Cli) -> Result<(), CliError> {
    let paths = Paths::from_env();
    let socket = super::client::socket_path(cli);
    let Some(info) = probe(&socket).await? else {
        let _ = std::fs::remove_file(paths.pid());
        return Err(CliError::from(ClientError::NotRunning { socket }));
    };
    let mut c = Client::connect(&socket).await?;
    c.request(&Request::Shutdown, IPC_TIMEOUT).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_alive(info.pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if pid_alive(info.pid) {
        return Err(CliError::new(
            ErrorCode::Timeout,
            format!("daemon (pid {}) did not exit within 10s", info.pid),
        ));
    }
    let _ = std::fs::remove_file(paths.pid());
    #[derive(Serialize)]
    struct Stopped {
        pid: u32,
        address: String,
    }
    let d = Stopped {
        pid: info.pid,
        address: info.address,
    };
    print_ok(cli.json, &d, || format!("Daemon stopped (pid {})", d.pid));
    Ok(())
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence; no signal is sent.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    if r != 0 {
        return false;
    }
    // A zombie (exited, not yet reaped by its parent) counts as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => true,
    }
}

/// `daemon status`.
pub(super) async fn status(cli: &Cli) -> Result<(), CliError> {
    let socket = super::client::socket_path(cli);
    match probe(&socket).await? {
        Some(info) => {
            let data = RunningData {
                pid: info.pid,
                address: info.address,
                node_id: info.node_id,
                hostname: info.hostname,
                socket: socket.display().to_string(),
                logs: daemon_log_path(info.pid).unwrap_or_else(|| "-".into()),
            };
            print_ok(cli.json, &data, || running_block(&data));
            Ok(())
        }
        None => Err(CliError::from(ClientError::NotRunning { socket })),
    }
}
