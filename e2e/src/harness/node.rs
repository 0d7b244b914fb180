//! What a node agent does on the real node the data-plane suite runs on (the test runs
//! on the node, as such an agent would): failures below kubelet.

/// Kills, with SIGKILL, the containerd shim that runs `pod`'s chat-server: a node-level
/// failure below kubelet. The chat-server process is found on this node by the pod's UID
/// (`uid`) in its cgroup path; its parent is the shim.
pub fn kill_container_shim(pod: &str, uid: &str) {
    let needle = format!("pod{uid}");
    let servers: Vec<i32> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            cgroup.contains(&needle) && exe.ends_with("chat-server")
        })
        .collect();
    assert_eq!(
        servers.len(),
        1,
        "one chat-server process of pod {pod} ({needle}) on this node"
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", servers[0])).expect("status");
    let shim: i32 = status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("the chat-server's parent");
    let exe = std::fs::read_link(format!("/proc/{shim}/exe")).unwrap_or_default();
    assert!(
        exe.ends_with("containerd-shim-runc-v2"),
        "the chat-server's parent is its shim, not {}",
        exe.display()
    );
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &shim.to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success(), "kill -KILL {shim}");
}
