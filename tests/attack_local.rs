//! Local attacks of issue 10 (items 7-9): another user posing as the daemon
//! through its socket, another user driving the daemon, one identity run by
//! two daemons, and files readable by everyone. The tests that switch users
//! need root (they say so and skip otherwise).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{wait_until, Node, Rendezvous, PILOTCTL};

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn attack_socket_planted_by_another_user() {
    if !is_root() {
        eprintln!("skipped: needs root to create a socket owned by another user");
        return;
    }
    // Another user created the socket name first (as in /tmp/pilot.sock).
    let dir = tempfile::tempdir().unwrap();
    let planted = dir.path().join("pilot.sock");
    let listener = std::os::unix::net::UnixListener::bind(&planted).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::os::unix::fs::chown(&planted, Some(NOBODY), Some(NOBODY)).unwrap();

    let home = tempfile::tempdir().unwrap();
    let out = Command::new(PILOTCTL)
        .args(["--json", "--socket"])
        .arg(&planted)
        .args(["send", "0:0000.0000.0001", "1000", "--data", "secret"])
        .env("HOME", home.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr.contains("owned by uid 65534"), "{stderr}");
    assert!(
        listener.accept().is_err(),
        "pilotctl connected to a socket owned by another user"
    );
}

#[test]
fn attack_another_user_drives_the_daemon() {
    if !is_root() {
        eprintln!("skipped: needs root to run a client as another user");
        return;
    }
    let rdv = Rendezvous::start();
    let a = Node::new("alpha");
    a.start(&rdv, &[]);
    // Loosen every permission on the way, as a careless admin might.
    for p in [a.home.path(), &a.pilot_dir()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&a.socket, std::fs::Permissions::from_mode(0o777)).unwrap();
    let other_home = tempfile::tempdir().unwrap();
    std::fs::set_permissions(other_home.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = Command::new(PILOTCTL)
        .args(["--json", "--socket"])
        .arg(&a.socket)
        .arg("info")
        .env("HOME", other_home.path())
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ne!(
        out.status.code(),
        Some(0),
        "another user drove the daemon: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        wait_until(Duration::from_secs(2), || a
            .log()
            .contains("refused a client")),
        "{}",
        a.log()
    );
    // Its owner still can.
    assert_eq!(a.json(&["info"])["registered"], true);
}

#[test]
fn default_socket_is_in_the_users_own_directory() {
    let rdv = Rendezvous::start();
    let mut a = Node::new("alpha");
    a.socket = a.pilot_dir().join("pilot.sock");
    let out = Command::new(PILOTCTL)
        .args(["--json", "daemon", "start", "--registry", &rdv.registry])
        .args(["--beacon", &rdv.beacon, "--heartbeat", "1s"])
        .env("HOME", a.home.path())
        .env_remove("PILOT_SOCKET")
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: serde_json::Value =
        serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(
        v["data"]["socket"].as_str().unwrap(),
        a.socket.display().to_string()
    );
    assert_eq!(mode(&a.socket), 0o600);
}

#[test]
fn attack_one_identity_two_daemons() {
    let rdv = Rendezvous::start();
    let a = Node::new("alpha");
    let info = a.start(&rdv, &["--public"]);
    let pid = a.pid().unwrap();
    // A second daemon with the same ~/.pilot but its own socket.
    let errf = a.home.path().join("second.err");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pilot-daemon"))
        .args(["--registry", &rdv.registry, "--beacon", &rdv.beacon])
        .arg("--socket")
        .arg(a.home.path().join("second.sock"))
        .env("HOME", a.home.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&errf).unwrap())
        .spawn()
        .unwrap();
    let exited = wait_until(Duration::from_secs(10), || {
        child.try_wait().unwrap().is_some()
    });
    if !exited {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    let stderr = std::fs::read_to_string(&errf).unwrap_or_default();
    assert!(
        exited,
        "a second daemon with the same identity came up: {stderr}"
    );
    assert_ne!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("already uses the identity") && stderr.contains(&format!("pid {pid}")),
        "{stderr}"
    );
    // The first one keeps its registration (its heartbeats are 1 s).
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(a.json(&["info"])["registered"], true);
    let look = a.json(&["lookup", info["address"].as_str().unwrap()]);
    assert_eq!(look["node_id"], info["node_id"]);
}

#[test]
fn attack_world_readable_files() {
    let rdv = Rendezvous::start();
    let a = Node::new("alpha");
    a.start(&rdv, &["--hostname", "alpha"]);
    let dir = a.pilot_dir();
    assert_eq!(mode(&dir), 0o700);
    for f in [
        "config.json",
        "identity.json",
        "pilot.log",
        "pilot.pid",
        "daemon.lock",
    ] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    assert!(wait_until(Duration::from_secs(5), || rdv.store().exists()));
    assert_eq!(mode(&rdv.store()), 0o600, "rendezvous store");
}
