//! The heavy suites (a Kubernetes control plane, helm, Prometheus, container images, a
//! real node) build tools that take many minutes on a fresh machine. They compile only
//! when `CHATCLUSTER_HEAVY_TESTS=1`, which `e2e/run-tests.sh` sets for the tiers that
//! need them; plain `cargo test --workspace` leaves them out instead of building those
//! tools or failing for want of real pods.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(chatcluster_heavy)");
    println!("cargo::rerun-if-env-changed=CHATCLUSTER_HEAVY_TESTS");
    if std::env::var("CHATCLUSTER_HEAVY_TESTS").is_ok_and(|v| v == "1") {
        println!("cargo::rustc-cfg=chatcluster_heavy");
    }
}
