//! Shipping, checked as a user would meet it: the .deb installs (into a
//! private dpkg root, so the test never touches the machine's own package
//! database), its binaries and systemd units work from the installed paths,
//! and `dpkg -r` removes every file; the .rpm lists the expected files; the
//! Homebrew formula and the launchd plists parse; shellcheck passes on every
//! script; install.sh run twice leaves one working install; the quickstart
//! runs (the parts of it that exist in this build) and cleans up after
//! itself, also on Ctrl-C.
//!
//! Tools (cargo-deb, cargo-generate-rpm, shellcheck, rpm, ruby) come from
//! scripts/test.sh; a test whose tool is missing fails under CI (CI=true)
//! and otherwise skips with the reason.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The directory holding the binaries this test run built.
fn bin_dir() -> PathBuf {
    Path::new(PILOTCTL).parent().unwrap().to_path_buf()
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True when every tool is there; otherwise fails under CI, or prints why
/// the test skips.
fn tools(names: &[&str]) -> bool {
    let missing: Vec<&str> = names.iter().copied().filter(|t| !have(t)).collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "missing {} (scripts/test.sh installs them)",
        missing.join(", ")
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}");
    }
    eprintln!("SKIP: {why}");
    false
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The [[bin]] names of Cargo.toml.
fn cargo_bins() -> Vec<String> {
    let toml = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let mut bins = Vec::new();
    let mut in_bin = false;
    for line in toml.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_bin = l == "[[bin]]";
        } else if in_bin {
            if let Some(v) = l.strip_prefix("name = ") {
                bins.push(v.trim_matches('"').to_string());
            }
        }
    }
    assert!(bins.len() >= 3, "{bins:?}");
    bins
}

#[test]
fn deb_installs_runs_and_removes_cleanly_and_rpm_lists_the_same_files() {
    if !tools(&["cargo-deb", "cargo-generate-rpm", "dpkg", "rpm"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("dist");
    run(Command::new("bash")
        .arg(root().join("scripts/package.sh"))
        .arg("--bin-dir")
        .arg(bin_dir())
        .arg("--out")
        .arg(&out)
        .current_dir(root()));
    let find = |ext: &str| {
        std::fs::read_dir(&out)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == ext))
            .unwrap_or_else(|| panic!("no .{ext} in {}", out.display()))
    };
    let (deb, rpm) = (find("deb"), find("rpm"));

    // What both packages must hold: every binary, its man page, the units,
    // the completions.
    let bins = cargo_bins();
    let mut expected: Vec<String> = Vec::new();
    for b in &bins {
        expected.push(format!("/usr/bin/{b}"));
        expected.push(format!("/usr/share/man/man1/{b}.1.gz"));
    }
    expected.extend(
        [
            "/usr/lib/systemd/system/pilot-rendezvous.service",
            "/usr/lib/systemd/system/pilot-gateway.service",
            "/usr/lib/systemd/user/pilot-daemon.service",
            "/usr/share/bash-completion/completions/pilotctl",
            "/usr/share/fish/vendor_completions.d/pilotctl.fish",
        ]
        .map(String::from),
    );

    // rpm -qpl
    let listed = run(Command::new("rpm").arg("-qpl").arg(&rpm));
    for f in &expected {
        assert!(
            listed.lines().any(|l| l == f),
            "{f} not in the rpm:\n{listed}"
        );
    }
    assert!(listed.contains("/usr/share/zsh/site-functions/_pilotctl"));

    // dpkg -i into a private root and admin dir
    let inst = tmp.path().join("root");
    let admin = tmp.path().join("admin");
    std::fs::create_dir_all(admin.join("updates")).unwrap();
    std::fs::create_dir_all(admin.join("info")).unwrap();
    std::fs::create_dir_all(&inst).unwrap();
    std::fs::write(admin.join("status"), "").unwrap();
    let dpkg = |args: &[&str]| {
        let mut c = Command::new("dpkg");
        c.arg(format!("--instdir={}", inst.display()))
            .arg(format!("--admindir={}", admin.display()))
            // libc6 is not in the private database
            .arg("--force-depends")
            .arg("--force-script-chrootless")
            .args(args);
        c
    };
    run(&mut dpkg(&["-i", deb.to_str().unwrap()]));
    let installed: Vec<String> = files_under(&inst)
        .iter()
        .map(|p| format!("/{}", p.strip_prefix(&inst).unwrap().display()))
        .collect();
    for f in &expected {
        assert!(installed.contains(f), "{f} not installed: {installed:?}");
    }
    assert!(installed.contains(&"/usr/share/zsh/vendor-completions/_pilotctl".to_string()));

    // the installed binaries run
    let ubin = inst.join("usr/bin");
    let v = run(Command::new(ubin.join("pilotctl")).arg("--version"));
    assert!(v.contains("(commit "), "{v}");
    let h = run(Command::new(ubin.join("pilot-rendezvous")).arg("--help"));
    assert!(h.contains("--registry-addr"), "{h}");
    for b in &bins {
        run(Command::new(ubin.join(b)).arg("--version"));
    }
    // the completions are real scripts
    let bash = std::fs::read_to_string(inst.join("usr/share/bash-completion/completions/pilotctl"))
        .unwrap();
    assert!(bash.contains("complete -F"), "not a bash completion script");

    // systemd accepts the units, with ExecStart pointing at the installed
    // binaries (the private root has no systemd of its own to verify with)
    if have("systemd-analyze") {
        let vdir = tmp.path().join("units");
        std::fs::create_dir_all(&vdir).unwrap();
        let mut units = Vec::new();
        for sub in ["usr/lib/systemd/system", "usr/lib/systemd/user"] {
            for f in files_under(&inst.join(sub)) {
                let name = f.file_name().unwrap().to_owned();
                // the gateway's unit is checked once its binary is packaged
                if name == "pilot-gateway.service" && !bins.iter().any(|b| b == "pilot-gateway") {
                    continue;
                }
                let text = std::fs::read_to_string(&f)
                    .unwrap()
                    .replace("/usr/bin/", &format!("{}/", ubin.display()));
                std::fs::write(vdir.join(&name), text).unwrap();
                units.push(vdir.join(&name));
            }
        }
        assert!(units.len() >= 2, "{units:?}");
        run(Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .args(&units));
    } else {
        eprintln!("note: no systemd-analyze here; units not verified");
    }

    // dpkg -r removes every file it installed
    run(&mut dpkg(&["-r", "pilot-protocol"]));
    let left = files_under(&inst);
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn shellcheck_passes_on_every_script() {
    if !tools(&["shellcheck"]) {
        return;
    }
    let mut scripts = Vec::new();
    for dir in ["scripts", ".ci"] {
        for f in files_under(&root().join(dir)) {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let is_shell = f.extension().is_some_and(|e| e == "sh")
                || text.starts_with("#!/usr/bin/env bash")
                || text.starts_with("#!/bin/bash")
                || text.starts_with("#!/bin/sh");
            if is_shell {
                scripts.push(f);
            }
        }
    }
    assert!(scripts.len() >= 5, "{scripts:?}");
    run(Command::new("shellcheck").args(&scripts));
}

#[test]
fn homebrew_formula_and_launchd_plists_parse() {
    if !tools(&["ruby", "python3"]) {
        return;
    }
    let formula = root().join("packaging/homebrew/pilot.rb");
    let ok = run(Command::new("ruby").arg("-c").arg(&formula));
    assert!(ok.contains("Syntax OK"), "{ok}");
    let text = std::fs::read_to_string(&formula).unwrap();
    assert!(text.contains("service do"), "no brew services block");
    assert!(text.contains("\"completions\""), "no completions");
    for plist in files_under(&root().join("platform/macos")) {
        let label = run(Command::new("python3")
            .arg("-c")
            .arg("import plistlib,sys; print(plistlib.load(open(sys.argv[1],'rb'))['Label'])")
            .arg(&plist));
        assert!(label.trim().starts_with("com.pilotprotocol."), "{label}");
    }
}

#[test]
fn install_sh_twice_leaves_one_working_install() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("prefix");
    let home = tmp.path().join("home");
    let install = || {
        run(Command::new("bash")
            .arg(root().join("scripts/install.sh"))
            .arg("--prefix")
            .arg(&prefix)
            .arg("--no-build")
            .arg("--profile")
            .arg("dev")
            .env("CARGO_TARGET_DIR", bin_dir().parent().unwrap())
            .env("HOME", &home)
            .env_remove("XDG_CONFIG_HOME")
            .current_dir(root()))
    };
    let first = install();
    let files1 = files_under(tmp.path());
    let second = install();
    let files2 = files_under(tmp.path());
    assert_eq!(files1, files2, "the second run changed the set of files");
    assert!(second.contains("installed: pilotctl"), "{first}\n{second}");
    for b in cargo_bins() {
        let v = run(Command::new(prefix.join("bin").join(&b)).arg("--version"));
        assert!(v.contains("(commit "), "{b}: {v}");
    }
    // the user unit runs the installed pilotctl, once
    let unit =
        std::fs::read_to_string(home.join(".config/systemd/user/pilot-daemon.service")).unwrap();
    let exec: Vec<&str> = unit
        .lines()
        .filter(|l| l.starts_with("ExecStart="))
        .collect();
    assert_eq!(
        exec,
        [format!(
            "ExecStart={}/bin/pilotctl daemon start --foreground",
            prefix.display()
        )
        .as_str()]
    );
    // no temporary files left behind
    assert!(
        !files2.iter().any(|f| f.to_string_lossy().contains(".tmp.")),
        "{files2:?}"
    );
}

/// Runs scripts/quickstart.sh with this run's binaries.
fn quickstart(args: &[&str], allow_missing: bool, tmpdir: &Path) -> std::process::Child {
    Command::new("bash")
        .arg(root().join("scripts/quickstart.sh"))
        .args(args)
        .env("PILOT_BIN_DIR", bin_dir())
        .env(
            "PILOT_QUICKSTART_ALLOW_MISSING",
            if allow_missing { "1" } else { "0" },
        )
        .env("TMPDIR", tmpdir)
        .env_remove("PILOT_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs the quickstart to the end; returns its output and its pid (its
/// namespaces are named after it).
fn quickstart_output(args: &[&str], allow_missing: bool) -> (String, u32) {
    let tmp = tempfile::tempdir().unwrap();
    let child = quickstart(args, allow_missing, tmp.path());
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "quickstart failed:\n{text}");
    // it cleaned up after itself: no files, and no process it started
    let left = files_under(tmp.path());
    assert!(left.is_empty(), "left behind: {left:?}\n{text}");
    let procs = processes_using(tmp.path());
    for (p, _) in &procs {
        // SAFETY: kill(2); do not leak them into the rest of the run.
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
    assert!(
        procs.is_empty(),
        "processes left running: {procs:?}\n{text}"
    );
    (text, pid)
}

/// Processes whose command line or standard descriptors name a path under
/// `dir` (what the quickstart starts: its rendezvous and web server log
/// into its work directory, `forward` names a socket in it).
fn processes_using(dir: &Path) -> Vec<(i32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let fds = (0..3)
            .filter_map(|fd| std::fs::read_link(e.path().join(format!("fd/{fd}"))).ok())
            .map(|l| l.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        if cmdline.contains(&needle) || fds.contains(&needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

/// The checks every quickstart run must pass; the steps that wait for other
/// issues are checked when they ran.
fn check_quickstart(text: &str) {
    assert!(text.contains("3 sent, 3 received"), "{text}");
    assert!(text.contains("quickstart complete"), "{text}");
    if text.contains("through Pilot Protocol") && text.contains("curl http") {
        assert!(
            text.contains("hello from beta, through Pilot Protocol"),
            "{text}"
        );
    } else {
        // the echo fallback
        assert!(
            text.contains("hello from alpha, through Pilot Protocol"),
            "{text}"
        );
    }
    if !text.contains("SKIPPED: pilotctl send-message") {
        assert!(text.contains("hi beta, this is alpha"), "{text}");
    }
}

#[test]
fn quickstart_loopback_runs_what_exists_and_cleans_up() {
    let (text, _) = quickstart_output(&["--loopback"], true);
    check_quickstart(&text);
}

#[test]
fn quickstart_netns_runs_what_exists_and_cleans_up() {
    if !nix_root() {
        eprintln!("SKIP: the network-namespace quickstart needs root");
        return;
    }
    if !tools(&["ip", "nft"]) {
        return;
    }
    let (text, pid) = quickstart_output(&["--netns"], true);
    check_quickstart(&text);
    assert!(text.contains("behind NAT"), "{text}");
    let left = run(Command::new("ip").args(["netns", "list"]));
    assert!(
        !left.contains(&format!("pq{pid}")),
        "namespaces left: {left}"
    );
}

#[test]
fn quickstart_loopback_full_curl_and_inbox() {
    let (text, _) = quickstart_output(&["--loopback"], false);
    assert!(
        text.contains("hello from beta, through Pilot Protocol"),
        "{text}"
    );
    assert!(text.contains("hi beta, this is alpha"), "{text}");
    assert!(!text.contains("SKIPPED"), "{text}");
}

#[test]
fn quickstart_netns_full_gateway_curl_and_inbox() {
    if !nix_root() {
        eprintln!("SKIP: the network-namespace quickstart needs root");
        return;
    }
    let (text, _) = quickstart_output(&["--netns"], false);
    assert!(text.contains("curl http://10.4.0.1/"), "{text}");
    assert!(
        text.contains("hello from beta, through Pilot Protocol"),
        "{text}"
    );
    assert!(text.contains("hi beta, this is alpha"), "{text}");
}

#[test]
fn quickstart_cleans_up_on_ctrl_c() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = quickstart(&["--loopback", "--keep"], true, tmp.path());
    // Read its output until it is up, then interrupt it as Ctrl-C would.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            all.push_str(&line);
            all.push('\n');
            if line.contains("Ctrl-C cleans up") {
                let _ = tx.send(all.clone());
            }
        }
        let _ = tx.send(all);
    });
    let text = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("quickstart never came up");
    assert!(text.contains("Ctrl-C cleans up"), "{text}");
    // the daemons it started
    let work: Vec<PathBuf> = files_under(tmp.path());
    let pids: Vec<i32> = work
        .iter()
        .filter(|p| p.ends_with(".pilot/pilot.pid"))
        .filter_map(|p| std::fs::read_to_string(p).ok()?.trim().parse().ok())
        .collect();
    assert_eq!(pids.len(), 2, "{work:?}");
    // SIGINT to the script (bash runs its INT trap, then the EXIT cleanup)
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "quickstart did not exit on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success());
    for pid in pids {
        assert!(
            wait_until(Duration::from_secs(5), || !Path::new(&format!(
                "/proc/{pid}"
            ))
            .exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z"))),
            "daemon {pid} still running"
        );
    }
    let left = files_under(tmp.path());
    assert!(left.is_empty(), "left behind: {left:?}");
    let procs = processes_using(tmp.path());
    for (p, _) in &procs {
        // SAFETY: kill(2); do not leak them into the rest of the run.
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
    assert!(procs.is_empty(), "processes left running: {procs:?}");
}

fn nix_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
