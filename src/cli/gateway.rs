//! The `pilot-gateway` command line (also reached as `pilotctl gateway ...`,
//! which execs this binary): `start`, `stop`, `map`, `unmap`, `list`.
//!
//! `start` runs the gateway in the background (a `start --foreground` child,
//! logging to `~/.pilot/gateway.log`) and returns once its control socket
//! answers, printing the table; `--foreground` runs it in place. The other
//! commands talk to the running gateway over its owner-only control socket,
//! so they change and show the live table.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

use super::output::{print_error, print_ok, table};
use super::{parse_duration, CliError};
use crate::config::{Config, Paths};
use crate::gateway::control::{self, ControlRequest, StatusData};
use crate::gateway::table::{Mapping, Subnet};
use crate::gateway::{GatewayConfig, DEFAULT_DEVICE, DEFAULT_MTU, DEFAULT_SUBNET};
use crate::ipc::ErrorCode;

/// pilot-gateway: reach remote agents at local IPv4 addresses (needs root
/// or CAP_NET_ADMIN).
///
/// `sudo pilot-gateway start --ports 80 agent-alpha` maps agent-alpha to
/// 10.4.0.1; then `curl http://10.4.0.1/` reaches its port 80.
#[derive(Debug, Parser)]
#[command(name = "pilot-gateway", version = crate::VERSION)]
pub struct GatewayCli {
    /// Print machine-readable JSON ({"status":"ok","data":...}).
    #[arg(long, global = true)]
    pub json: bool,

    /// The daemon's IPC socket [env: PILOT_SOCKET; config "socket"; default /tmp/pilot.sock].
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// The gateway's control socket [env: PILOT_GATEWAY_SOCKET; default ~/.pilot/gateway.sock].
    #[arg(long, global = true, value_name = "PATH")]
    pub control: Option<PathBuf>,

    /// The command.
    #[command(subcommand)]
    pub command: GatewayCommand,
}

/// pilot-gateway's commands.
#[derive(Debug, Subcommand)]
pub enum GatewayCommand {
    /// Start the gateway, mapping the given nodes (addresses or hostnames).
    Start(GwStartArgs),
    /// Stop the running gateway (its TUN device and route go with it).
    Stop,
    /// Map a node to a local address (the next free one, or IP).
    Map {
        /// Address, node id or hostname.
        target: String,
        /// The local address wanted, inside the gateway's subnet.
        ip: Option<Ipv4Addr>,
    },
    /// Remove a mapping, by local IP, address or hostname.
    Unmap {
        /// IP, address or hostname.
        key: String,
    },
    /// Show the running gateway and its table.
    List,
}

/// Options of `start`.
#[derive(Debug, Clone, Args)]
pub struct GwStartArgs {
    /// Nodes to map at start (addresses, node ids or hostnames).
    pub targets: Vec<String>,
    /// The subnet routed to the gateway.
    #[arg(long, default_value = DEFAULT_SUBNET)]
    pub subnet: String,
    /// Allowed destination ports, e.g. 80,443,8000-8100 [default: every port].
    #[arg(long, value_name = "LIST")]
    pub ports: Option<String>,
    /// TUN device name.
    #[arg(long, default_value = DEFAULT_DEVICE)]
    pub device: String,
    /// TUN MTU (the device never leaves this host, so large is fast).
    #[arg(long, default_value_t = DEFAULT_MTU)]
    pub mtu: u16,
    /// Answer DNS A queries for HOSTNAME.pilot on the gateway address
    /// (the subnet's last usable address, e.g. 10.4.255.254).
    #[arg(long)]
    pub dns: bool,
    /// DNS port.
    #[arg(long, default_value_t = 53)]
    pub dns_port: u16,
    /// The state file keeping the table across restarts [default ~/.pilot/gateway.json].
    #[arg(long, value_name = "PATH")]
    pub state: Option<PathBuf>,
    /// How long an overlay dial may take before the TCP client is reset.
    #[arg(long, default_value = "15s")]
    pub dial_timeout: String,
    /// Run in the foreground instead of in the background.
    #[arg(long)]
    pub foreground: bool,
    /// How long to wait for a background gateway to come up.
    #[arg(long, default_value = "15s")]
    pub wait: String,
}

/// Parses `80,443,8000-8100`.
pub fn parse_ports(s: &str) -> Result<Vec<u16>, CliError> {
    let bad = |p: &str| {
        CliError::new(
            ErrorCode::InvalidArgument,
            format!("invalid port {p:?} in --ports (expected e.g. 80,443,8000-8100)"),
        )
    };
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let a: u16 = a.trim().parse().map_err(|_| bad(part))?;
        let b: u16 = b.trim().parse().map_err(|_| bad(part))?;
        if a == 0 || b < a {
            return Err(bad(part));
        }
        if out.len() + usize::from(b - a) > 65_535 {
            return Err(bad(part));
        }
        out.extend(a..=b);
    }
    if out.is_empty() {
        return Err(bad(s));
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

struct GwPaths {
    home: PathBuf,
    daemon_socket: PathBuf,
    control: PathBuf,
}

/// The home directory of the user who ran `sudo`, if any: a gateway started
/// with sudo uses that user's daemon.
fn sudo_user_home() -> Option<PathBuf> {
    let user = std::env::var("SUDO_USER").ok()?;
    let c = std::ffi::CString::new(user).ok()?;
    // SAFETY: getpwnam returns a pointer into static storage or null; we copy
    // the directory string out before any other call.
    unsafe {
        let pw = libc::getpwnam(c.as_ptr());
        if pw.is_null() || (*pw).pw_dir.is_null() {
            return None;
        }
        let dir = std::ffi::CStr::from_ptr((*pw).pw_dir);
        Some(PathBuf::from(dir.to_string_lossy().into_owned()))
    }
}

fn paths(cli: &GatewayCli) -> GwPaths {
    let p = Paths::from_env();
    let mut config = Config::load(&p.config()).unwrap_or_default();
    if config.socket.is_none() {
        if let Some(h) = sudo_user_home() {
            let user = Paths {
                home: h.join(".pilot"),
            };
            if let Ok(c) = Config::load(&user.config()) {
                config.socket = c.socket;
            }
        }
    }
    let daemon_socket = p.socket(cli.socket.as_deref(), &config);
    let control = cli
        .control
        .clone()
        .or_else(|| {
            std::env::var_os("PILOT_GATEWAY_SOCKET")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| p.home.join("gateway.sock"));
    GwPaths {
        home: p.home,
        daemon_socket,
        control,
    }
}

fn human_table(maps: &[Mapping]) -> String {
    if maps.is_empty() {
        return "no mappings".into();
    }
    let rows: Vec<Vec<String>> = maps
        .iter()
        .map(|m| {
            vec![
                m.ip.to_string(),
                m.addr.clone(),
                m.hostname.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(&["IP", "ADDRESS", "HOSTNAME"], &rows)
}

fn human_status(s: &StatusData) -> String {
    let ports = if s.ports.is_empty() {
        "all".to_string()
    } else {
        compact_ports(&s.ports)
    };
    format!(
        "gateway on {} ({}, gateway {}{}), ports {}, pid {}, {} connections\n{}",
        s.device,
        s.subnet,
        s.gateway_ip,
        if s.dns { ", DNS on" } else { "" },
        ports,
        s.pid,
        s.connections,
        human_table(&s.mappings)
    )
}

fn compact_ports(p: &[u16]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < p.len() {
        let mut j = i;
        while j + 1 < p.len() && p[j + 1] == p[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            p[i].to_string()
        } else {
            format!("{}-{}", p[i], p[j])
        });
        i = j + 1;
    }
    out.join(",")
}

fn ctl_err(e: control::ControlError) -> CliError {
    CliError::new(e.code(), e.to_string())
}

const CONTROL_TIMEOUT: Duration = Duration::from_secs(20);

async fn run(cli: &GatewayCli) -> Result<(), CliError> {
    let p = paths(cli);
    match &cli.command {
        GatewayCommand::Start(a) => start(cli, &p, a).await,
        GatewayCommand::Stop => {
            let v = control::call(&p.control, &ControlRequest::Stop, CONTROL_TIMEOUT)
                .await
                .map_err(ctl_err)?;
            let pid = v.get("pid").and_then(|v| v.as_u64()).unwrap_or(0) as i32;
            let end = Instant::now() + Duration::from_secs(10);
            while pid > 0 && Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < end {
                if is_zombie(pid) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            print_ok(
                cli.json,
                &serde_json::json!({"stopped": true, "pid": pid}),
                || format!("gateway (pid {pid}) stopped"),
            );
            Ok(())
        }
        GatewayCommand::Map { target, ip } => {
            let v = control::call(
                &p.control,
                &ControlRequest::Map {
                    target: target.clone(),
                    ip: *ip,
                },
                CONTROL_TIMEOUT,
            )
            .await
            .map_err(ctl_err)?;
            let m: Mapping = serde_json::from_value(v).map_err(|e| {
                CliError::new(ErrorCode::Internal, format!("unexpected reply: {e}"))
            })?;
            print_ok(cli.json, &m, || {
                format!(
                    "{} -> {}{}",
                    m.ip,
                    m.addr,
                    m.hostname
                        .as_deref()
                        .map(|h| format!(" ({h})"))
                        .unwrap_or_default()
                )
            });
            Ok(())
        }
        GatewayCommand::Unmap { key } => {
            let v = control::call(
                &p.control,
                &ControlRequest::Unmap { key: key.clone() },
                CONTROL_TIMEOUT,
            )
            .await
            .map_err(ctl_err)?;
            let m: Mapping = serde_json::from_value(v).map_err(|e| {
                CliError::new(ErrorCode::Internal, format!("unexpected reply: {e}"))
            })?;
            print_ok(cli.json, &m, || format!("unmapped {} ({})", m.ip, m.addr));
            Ok(())
        }
        GatewayCommand::List => {
            let s = status(&p.control).await?;
            print_ok(cli.json, &s, || human_status(&s));
            Ok(())
        }
    }
}

async fn status(control_path: &Path) -> Result<StatusData, CliError> {
    let v = control::call(control_path, &ControlRequest::List, CONTROL_TIMEOUT)
        .await
        .map_err(ctl_err)?;
    serde_json::from_value(v)
        .map_err(|e| CliError::new(ErrorCode::Internal, format!("unexpected reply: {e}")))
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

fn config_of(p: &GwPaths, a: &GwStartArgs) -> Result<GatewayConfig, CliError> {
    let subnet = Subnet::parse(&a.subnet)
        .map_err(|e| CliError::new(ErrorCode::InvalidArgument, e.to_string()))?;
    let ports = match &a.ports {
        Some(s) => parse_ports(s)?,
        None => Vec::new(),
    };
    if a.mtu < 1280 {
        return Err(CliError::new(
            ErrorCode::InvalidArgument,
            "--mtu must be at least 1280",
        ));
    }
    crate::gateway::tun::check_name(&a.device)
        .map_err(|e| CliError::new(ErrorCode::InvalidArgument, e.to_string()))?;
    for t in &a.targets {
        super::client::check_target(t)?;
    }
    Ok(GatewayConfig {
        subnet,
        ports,
        device: a.device.clone(),
        mtu: a.mtu,
        dns: a.dns,
        dns_port: a.dns_port,
        daemon_socket: p.daemon_socket.clone(),
        control_socket: p.control.clone(),
        state_file: a
            .state
            .clone()
            .unwrap_or_else(|| p.home.join("gateway.json")),
        pid_file: p.home.join("gateway.pid"),
        initial: a.targets.clone(),
        dial_timeout: parse_duration(&a.dial_timeout)?,
    })
}

async fn start(cli: &GatewayCli, p: &GwPaths, a: &GwStartArgs) -> Result<(), CliError> {
    let cfg = config_of(p, a)?;
    if a.foreground {
        let _ = crate::config::create_private_dir(&p.home);
        return crate::gateway::run(cfg)
            .await
            .map_err(|e| CliError::new(e.code(), e.to_string()));
    }
    if control::call(&p.control, &ControlRequest::List, Duration::from_secs(2))
        .await
        .is_ok()
    {
        return Err(CliError::new(
            ErrorCode::AlreadyRunning,
            format!(
                "a gateway is already running on {} (pilot-gateway stop)",
                p.control.display()
            ),
        ));
    }
    let wait = parse_duration(&a.wait)?;
    crate::config::create_private_dir(&p.home).map_err(|e| {
        CliError::new(
            ErrorCode::StartFailed,
            format!("cannot create {}: {e}", p.home.display()),
        )
    })?;
    let log_path = p.home.join("gateway.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| {
            CliError::new(
                ErrorCode::StartFailed,
                format!("cannot open {}: {e}", log_path.display()),
            )
        })?;
    let log_len = log.metadata().map(|m| m.len()).unwrap_or(0);
    let exe = std::env::current_exe()
        .map_err(|e| CliError::new(ErrorCode::StartFailed, format!("cannot find myself: {e}")))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--socket")
        .arg(&cfg.daemon_socket)
        .arg("--control")
        .arg(&cfg.control_socket)
        .arg("start")
        .arg("--foreground")
        .args(["--subnet", &a.subnet, "--device", &a.device])
        .args([
            "--mtu",
            &a.mtu.to_string(),
            "--dns-port",
            &a.dns_port.to_string(),
        ])
        .args(["--dial-timeout", &a.dial_timeout])
        .arg("--state")
        .arg(&cfg.state_file);
    if let Some(ports) = &a.ports {
        cmd.args(["--ports", ports]);
    }
    if a.dns {
        cmd.arg("--dns");
    }
    cmd.arg("--").args(&a.targets);
    use std::os::unix::process::CommandExt;
    cmd.stdin(std::process::Stdio::null())
        .stdout(
            log.try_clone()
                .map_err(|e| CliError::new(ErrorCode::StartFailed, format!("log file: {e}")))?,
        )
        .stderr(log)
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| {
        CliError::new(
            ErrorCode::StartFailed,
            format!("cannot start pilot-gateway: {e}"),
        )
    })?;
    let end = Instant::now() + wait;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let new = text.get(log_len as usize..).unwrap_or("");
            let line = new
                .lines()
                .rev()
                .find(|l| l.starts_with("error: "))
                .map(|l| l.trim_start_matches("error: ").to_string())
                .unwrap_or_else(|| {
                    format!("pilot-gateway exited with {st}; see {}", log_path.display())
                });
            let code = if line.contains("CAP_NET_ADMIN") {
                ErrorCode::StartFailed
            } else if line.contains("not found") || line.contains("unknown") {
                ErrorCode::NotFound
            } else {
                ErrorCode::StartFailed
            };
            return Err(CliError::new(code, line));
        }
        if let Ok(s) = status(&p.control).await {
            if s.pid == child.id() {
                print_ok(cli.json, &s, || human_status(&s));
                return Ok(());
            }
        }
        if Instant::now() > end {
            return Err(CliError::new(
                ErrorCode::Timeout,
                format!(
                    "the gateway did not come up within {wait:?}; see {}",
                    log_path.display()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs pilot-gateway with the process arguments; returns the exit code.
pub fn gateway_main() -> i32 {
    let args: Vec<String> = std::env::args().collect();
    let json = args.iter().any(|a| a == "--json");
    let cli = match GatewayCli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return 0;
            }
            if json {
                let first = e.to_string();
                let line = first.lines().next().unwrap_or("invalid arguments");
                let line = line.trim_start_matches("error: ");
                print_error(true, &CliError::new(ErrorCode::InvalidArgument, line));
                return 2;
            }
            let _ = e.print();
            return 2;
        }
    };
    let foreground = matches!(&cli.command, GatewayCommand::Start(a) if a.foreground);
    if foreground {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("PILOT_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init();
    }
    let rt = if foreground {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            print_error(
                json,
                &CliError::new(ErrorCode::Internal, format!("cannot start runtime: {e}")),
            );
            return 1;
        }
    };
    match rt.block_on(run(&cli)) {
        Ok(()) => 0,
        Err(e) => {
            print_error(cli.json && !foreground, &e);
            1
        }
    }
}

/// `pilotctl gateway ARGS`: execs `pilot-gateway` (next to pilotctl, else
/// on PATH) with the same arguments and pilotctl's global options.
pub(super) fn passthrough(json: bool, socket: Option<&Path>, args: &[String]) -> CliError {
    let exe = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("pilot-gateway")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("pilot-gateway"));
    let mut cmd = std::process::Command::new(&exe);
    if json {
        cmd.arg("--json");
    }
    if let Some(s) = socket {
        cmd.arg("--socket").arg(s);
    }
    cmd.args(args);
    use std::os::unix::process::CommandExt;
    let e = cmd.exec();
    CliError::new(
        ErrorCode::Internal,
        format!("cannot run {}: {e}", exe.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_lists() {
        assert_eq!(parse_ports("80").unwrap(), vec![80]);
        assert_eq!(
            parse_ports("443, 80,8000-8002").unwrap(),
            vec![80, 443, 8000, 8001, 8002]
        );
        for bad in ["", "0", "x", "90-80", "70000", "1-2-3"] {
            assert!(parse_ports(bad).is_err(), "{bad}");
        }
        assert_eq!(
            compact_ports(&[80, 443, 8000, 8001, 8002]),
            "80,443,8000-8002"
        );
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        GatewayCli::command().debug_assert();
    }
}
