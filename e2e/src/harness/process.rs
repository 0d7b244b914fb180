//! Processes on this machine: free loopback ports, waiting for a listener, running a
//! binary as another user, stopping a child by PID, and scratch directories removed on
//! drop. Every harness module starts its processes with these.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// A free TCP port on 127.0.0.1 for a listener the test starts next (bound and released
/// here; the caller binds it later).
///
/// Picked at random below the kernel's ephemeral range, never twice in one test process.
/// A port the kernel hands out for `:0` is also what it gives outgoing connections
/// (clients, Redis links): between the pick and the bind one of those could take it,
/// which once failed a node's start with "address already in use".
pub fn free_port() -> Result<u16> {
    Ok(free_ports(1)?[0])
}

/// `n` distinct free ports on 127.0.0.1, picked as [`free_port`] picks one.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    use rand::Rng;
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(Default::default);
    let mut handed_out = handed_out.lock().unwrap_or_else(|e| e.into_inner());
    let below = ephemeral_low().clamp(LISTENER_PORTS_FROM + 1_000, u16::MAX);
    let mut rng = rand::rng();
    let mut ports = Vec::with_capacity(n);
    let mut tries = 0;
    while ports.len() < n {
        tries += 1;
        if tries > 10_000 {
            bail!("no free port on 127.0.0.1 between {LISTENER_PORTS_FROM} and {below}");
        }
        let port = rng.random_range(LISTENER_PORTS_FROM..below);
        if !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            ports.push(port);
        }
    }
    Ok(ports)
}

/// The lowest port [`free_ports`] picks: above the registered services most machines run.
const LISTENER_PORTS_FROM: u16 = 10_000;

/// The first port of the kernel's ephemeral range (read, never written), Linux's default
/// when it cannot be read.
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_listening(addr: SocketAddr, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listening on {addr} after {within:?}")
}

/// A command that runs `binary` as `uid:gid` (through `setpriv`, which execs it, so the
/// child's PID is the binary's; the caller must be root), or as the caller when `None`.
pub fn command_as(binary: &Path, run_as: Option<(u32, u32)>) -> Command {
    match run_as {
        Some((uid, gid)) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .args(["--clear-groups", "--"])
                .arg(binary);
            c
        }
        None => Command::new(binary),
    }
}

/// SIGTERM to `child`, then its exit status; SIGKILL (and `None`) if it has not exited
/// within `within`.
pub fn terminate(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    // SAFETY: kill(2) on the PID of a child the caller owns and has not reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A scratch directory for config files, removed on drop.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new(tag: &str) -> Result<ScratchDir> {
        let dir = std::env::temp_dir().join(format!(
            "chatcluster-{tag}-{}-{}",
            std::process::id(),
            free_port()?
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends signal `sig` (a name: `TERM`, `KILL`, ...) to `pid` with `kill(1)`.
pub fn signal(pid: u32, sig: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()?;
    if !status.success() {
        bail!("kill -{sig} {pid} failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let ports = free_ports(200).expect("ports");
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
        let more = free_ports(50).expect("more ports");
        assert!(
            more.iter().all(|p| !distinct.contains(p)),
            "a later call handed out an earlier port"
        );
        let below = ephemeral_low();
        for port in ports.iter().chain(&more) {
            assert!(
                (LISTENER_PORTS_FROM..below).contains(port),
                "{port} is outside {LISTENER_PORTS_FROM}..{below}"
            );
            TcpListener::bind(("127.0.0.1", *port)).expect("the port is free");
        }
    }
}
