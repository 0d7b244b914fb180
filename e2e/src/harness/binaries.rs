//! Where the suites find their binaries: the workspace's own (`chat-server`, the
//! operator) from the same build as the test, and pinned tools (helm, Prometheus,
//! Toxiproxy, the optional CRDs) from an environment variable or the script that builds
//! them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// The repository root (the e2e crate's parent directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// A path the README's test command passes in `var`, or else the one that `script`
/// (relative to the repository root; it builds what is missing) prints on stdout.
pub fn path_from_env_or_script(var: &str, script: &str, args: &[&Path]) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(var) {
        return Ok(path.into());
    }
    let out = Command::new("bash")
        .arg(repo_root().join(script))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {script}"))?;
    if !out.status.success() {
        bail!("{script} failed ({})", out.status);
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The workspace's built `chat-server` binary next to `sibling` (another binary of the
/// same build, e.g. `env!("CARGO_BIN_EXE_chat-loadgen")`).
pub fn chat_server_binary(sibling: &str) -> Result<PathBuf> {
    workspace_binary(sibling, "chat-server")
}

/// A binary of another workspace crate (`chat-server`, `chatcluster-operator`) from the
/// same build as `sibling`.
pub fn workspace_binary(sibling: &str, name: &str) -> Result<PathBuf> {
    let dir = Path::new(sibling).parent().context("binary directory")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} not found: build it first with `cargo build --workspace` (the README's test command does)",
            path.display()
        );
    }
    Ok(path)
}
