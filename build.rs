//! Build script: stamps the git commit into every binary's `--version`
//! (`pilotctl 0.1.0 (commit 1a2b3c4d5e6f)`), as the packaging issue asks.
//!
//! The commit comes from `PILOT_GIT_COMMIT` when set (a source tarball, as
//! Homebrew builds, has no `.git`: the packager passes it), else from
//! `git rev-parse`, else it is `unknown`. Only HEAD and the branch ref are
//! watched, so a commit re-stamps but editing a file does not re-run this.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=PILOT_GIT_COMMIT");
    let commit = match std::env::var("PILOT_GIT_COMMIT") {
        Ok(c) if !c.is_empty() => c,
        _ => {
            // Re-run when HEAD moves: HEAD itself (branch switch), the
            // branch's ref file and packed-refs (new commit).
            for path in [
                git(&["rev-parse", "--git-path", "HEAD"]),
                git(&["rev-parse", "--symbolic-full-name", "HEAD"])
                    .and_then(|r| git(&["rev-parse", "--git-path", &r])),
                git(&["rev-parse", "--git-path", "packed-refs"]),
            ]
            .into_iter()
            .flatten()
            {
                // A path that does not exist (packed-refs in a fresh clone)
                // would make cargo re-run this, and rebuild, every time.
                if std::path::Path::new(&path).exists() {
                    println!("cargo:rerun-if-changed={path}");
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
    };
    println!("cargo:rustc-env=PILOT_GIT_COMMIT={commit}");
}
