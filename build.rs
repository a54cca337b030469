//! Build script: the git commit the binary was built from, for `--version` and the status page
//! (`palette_gateway::build::COMMIT`). `PALETTE_GATEWAY_COMMIT` overrides it (a container build
//! without `.git` passes it as a build argument); outside a git checkout, or without git, it is
//! "unknown". Never fails the build.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PALETTE_GATEWAY_COMMIT");
    // Rebuild when HEAD moves: HEAD itself (a checkout), the branch it names (a commit) and
    // packed-refs. In a worktree `.git` is a file, so the paths come from git itself.
    match git(&["rev-parse", "--git-path", "HEAD"]) {
        Some(head) => {
            println!("cargo:rerun-if-changed={head}");
            // Only files that exist: cargo reruns the script on every build for a missing one
            // (a packed branch has no file of its own).
            let branch = git(&["symbolic-ref", "-q", "HEAD"]);
            let refs = [
                branch.and_then(|b| git(&["rev-parse", "--git-path", &b])),
                git(&["rev-parse", "--git-path", "packed-refs"]),
            ];
            for r in refs.into_iter().flatten() {
                if PathBuf::from(&r).exists() {
                    println!("cargo:rerun-if-changed={r}");
                }
            }
        }
        None => {
            if PathBuf::from(".git/HEAD").exists() {
                println!("cargo:rerun-if-changed=.git/HEAD");
            }
        }
    }
    let commit = std::env::var("PALETTE_GATEWAY_COMMIT")
        .ok()
        .filter(|c| !c.is_empty() && c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .or_else(|| git(&["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=PALETTE_GATEWAY_COMMIT={commit}");
}
