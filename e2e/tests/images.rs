//! The container images, checked on a machine without a Docker engine.
//!
//! `e2e/images/build.sh` reproduces both Dockerfiles: BuildKit's parser reads them,
//! Docker's .dockerignore matcher picks the build context, the build stage's RUN runs on
//! the host in a copy of that context, and the runtime stage is assembled as a root
//! filesystem plus its image config (USER, EXPOSE, ENTRYPOINT). These tests check what
//! the runtime images promise and what the operator's pods rely on, by running the
//! assembled binaries the way a pod would: as the image's user, with the environment
//! the operator gives them, on loopback.
//!
//! Not covered here (no registry, no engine): that the base images resolve, and that
//! the binaries find their libraries in them. The ELF check below narrows the second to
//! glibc and libgcc_s, which distroless/cc ships.

// A heavy suite: compiled only with CHATCLUSTER_HEAVY_TESTS=1 (e2e/build.rs).
#![cfg(chatcluster_heavy)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use chatcluster_e2e::harness::binaries::{path_from_env_or_script, repo_root};
use chatcluster_e2e::harness::http;
use chatcluster_e2e::harness::k8s::cluster::{shared_cluster, TestNamespace};
use chatcluster_e2e::harness::k8s::operator::{OperatorOptions, OperatorProcess};
use chatcluster_e2e::harness::process::{command_as, free_port, terminate, ScratchDir};
use chatcluster_e2e::harness::redis::RedisProcess;
use chatcluster_e2e::wait::eventually;
use chatcluster_operator::build::{ADMIN_PORT, PUBLIC_PORT};
use serde::Deserialize;

mod common;

/// What `imagebuild` records of a runtime stage (e2e/images/main.go, `imageConfig`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImageConfig {
    dockerfile: String,
    base: String,
    user: String,
    exposed_ports: Vec<String>,
    entrypoint: Vec<String>,
    env: Vec<String>,
    files: Vec<String>,
}

struct Image {
    name: &'static str,
    config: ImageConfig,
    rootfs: PathBuf,
}

impl Image {
    fn load(name: &'static str) -> Image {
        let dir = images_dir().join(name);
        let text = std::fs::read_to_string(dir.join("config.json"))
            .unwrap_or_else(|e| panic!("{name}: no image config in {}: {e}", dir.display()));
        Image {
            name,
            config: serde_json::from_str(&text).unwrap(),
            rootfs: dir.join("rootfs"),
        }
    }

    /// The entrypoint binary inside the assembled root filesystem.
    fn entrypoint_file(&self) -> PathBuf {
        let path = self.config.entrypoint.first().expect("an entrypoint");
        self.rootfs.join(path.trim_start_matches('/'))
    }

    /// USER as numbers (`uid:gid`); a name would need the base image's /etc/passwd.
    fn uid_gid(&self) -> (u32, u32) {
        let (uid, gid) = self
            .config
            .user
            .split_once(':')
            .unwrap_or_else(|| panic!("{}: USER must be uid:gid", self.name));
        (
            uid.parse().expect("numeric uid"),
            gid.parse().expect("numeric gid"),
        )
    }

    /// A copy of the entrypoint in a directory the image's user can reach (the checkout
    /// may be under a directory only root may enter).
    fn entrypoint_copy(&self, scratch: &ScratchDir) -> PathBuf {
        let copy = scratch.0.join(self.name);
        std::fs::copy(self.entrypoint_file(), &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        copy
    }
}

const IMAGES: [&str; 2] = ["chat-server", "chatcluster-operator"];

/// The assembled images: `CHATCLUSTER_IMAGE_DIR` from the README's test command, or
/// built here once per test process.
fn images_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = repo_root().join("target/image-build");
        path_from_env_or_script("CHATCLUSTER_IMAGE_DIR", "e2e/images/build.sh", &[&out])
            .expect("the assembled images")
    })
}

/// The uid a running process has (first field of `Uid:` in /proc/PID/status).
fn process_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The user the test can start the image's processes as: the image's own through
/// `setpriv` when running as root (CI and this machine), else the test's user.
fn run_as(image: &Image) -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    (unsafe { libc::geteuid() } == 0).then(|| image.uid_gid())
}

#[test]
fn images_are_multi_stage_non_root_and_start_their_binary_directly() {
    for name in IMAGES {
        let image = Image::load(name);
        let c = &image.config;
        assert!(
            !c.base.is_empty() && c.base.contains(':') && !c.base.ends_with(":latest"),
            "{name}: the runtime base is pinned to a tag: {}",
            c.base
        );
        let (uid, gid) = image.uid_gid();
        assert!(uid != 0 && gid != 0, "{name}: runs as root ({})", c.user);
        assert_eq!(
            c.entrypoint.len(),
            1,
            "{name}: exec-form ENTRYPOINT, no shell"
        );
        assert!(
            c.files.contains(&c.entrypoint[0]),
            "{name}: the entrypoint {:?} is the binary copied from the build stage {:?}",
            c.entrypoint,
            c.files
        );
        assert_eq!(
            c.files.len(),
            1,
            "{name}: only the binary goes into the runtime image"
        );
        let mode = std::fs::metadata(image.entrypoint_file())
            .unwrap()
            .permissions()
            .mode();
        assert!(
            mode & 0o001 != 0,
            "{name}: entrypoint not executable by others"
        );
        assert!(
            c.env.is_empty(),
            "{name}: configuration comes from the pod, not the image"
        );
        assert!(c.dockerfile.ends_with("Dockerfile"));
    }
}

#[test]
fn image_binaries_need_only_glibc_and_libgcc() {
    // What distroless/cc provides (glibc, libgcc_s) and nothing that would have to be
    // added to the image, such as libssl.
    let provided: BTreeSet<&str> = [
        "libc.so.6",
        "libm.so.6",
        "libgcc_s.so.1",
        "libdl.so.2",
        "libpthread.so.0",
        "librt.so.1",
        "ld-linux-x86-64.so.2",
        "ld-linux-aarch64.so.1",
    ]
    .into();
    for name in IMAGES {
        let image = Image::load(name);
        let out = Command::new("readelf")
            .arg("--dynamic")
            .arg(image.entrypoint_file())
            .output()
            .expect("readelf (binutils)");
        assert!(out.status.success(), "{name}: readelf failed");
        let dynamic = String::from_utf8_lossy(&out.stdout);
        let needed: Vec<&str> = dynamic
            .lines()
            .filter(|l| l.contains("(NEEDED)"))
            .filter_map(|l| l.split('[').nth(1)?.split(']').next())
            .collect();
        assert!(!needed.is_empty(), "{name}: expected a dynamic binary");
        for lib in &needed {
            assert!(
                provided.contains(lib),
                "{name} needs {lib}, which the runtime base does not provide ({needed:?})"
            );
        }
        assert!(
            !dynamic.contains("(RPATH)") && !dynamic.contains("(RUNPATH)"),
            "{name}: no build-machine library paths"
        );
    }
}

#[test]
fn image_ports_and_users_are_the_ones_the_pods_use() {
    let server = Image::load("chat-server");
    assert_eq!(
        server.config.exposed_ports,
        [PUBLIC_PORT.to_string(), ADMIN_PORT.to_string()],
        "chat-server EXPOSE matches the ports the operator wires"
    );
    let pod = common::pod_spec(&common::desired_for_example("minimal.yaml"));
    let security = pod.security_context.expect("pod securityContext");
    let (uid, gid) = server.uid_gid();
    assert_eq!(security.run_as_user, Some(i64::from(uid)));
    assert_eq!(security.run_as_group, Some(i64::from(gid)));

    let operator = Image::load("chatcluster-operator");
    let values: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo_root().join("charts/chatcluster-operator/values.yaml"))
            .unwrap(),
    )
    .unwrap();
    let metrics_port = values["metrics"]["port"].as_u64().expect("metrics.port");
    assert_eq!(
        operator.config.exposed_ports,
        [metrics_port.to_string()],
        "operator EXPOSE matches the chart's metrics port"
    );
    let deployment = std::fs::read_to_string(
        repo_root().join("charts/chatcluster-operator/templates/deployment.yaml"),
    )
    .unwrap();
    let (uid, gid) = operator.uid_gid();
    assert!(
        deployment.contains(&format!("runAsUser: {uid}"))
            && deployment.contains(&format!("runAsGroup: {gid}")),
        "the chart's Deployment runs the operator as the image's user {uid}:{gid}"
    );
}

/// Waits for `path` on `addr` to answer 200.
fn wait_http_ok(addr: SocketAddr, path: &str, within: Duration, child: &mut Child) {
    let deadline = Instant::now() + within;
    loop {
        if http::status_of(addr, path).0 == 200 {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("exited ({status}) before {path} answered 200");
        }
        assert!(Instant::now() < deadline, "{path} on {addr}: no 200");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn chat_server_image_runs_as_its_user_with_the_pods_environment() {
    let image = Image::load("chat-server");
    let scratch = ScratchDir::new("image-server").unwrap();
    let binary = image.entrypoint_copy(&scratch);
    // The pods' environment carries the managed Redis' password: Redis requires it.
    let pod_env = common::pod_environment("minimal.yaml");
    let mut redis = RedisProcess::start_with_password(
        free_port().unwrap(),
        &scratch.0,
        pod_env.get("CHAT_REDIS_PASSWORD").map(String::as_str),
    )
    .unwrap();

    let container = common::pod_spec(&common::desired_for_example("minimal.yaml"))
        .containers
        .remove(0);
    let probe_path = |p: Option<k8s_openapi::api::core::v1::Probe>| {
        p.and_then(|p| p.http_get)
            .and_then(|h| h.path)
            .expect("an HTTP probe")
    };
    let readiness = probe_path(container.readiness_probe);
    let liveness = probe_path(container.liveness_probe);

    let public = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let mut env = pod_env;
    env.insert("CHAT_LISTEN".into(), public.to_string());
    env.insert("CHAT_ADMIN_LISTEN".into(), admin.to_string());
    env.insert("CHAT_REDIS_URL".into(), redis.url());

    let mut command = command_as(&binary, run_as(&image));
    let log = scratch.0.join("server.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = command
        .current_dir("/")
        .env_clear()
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_http_ok(admin, &readiness, Duration::from_secs(30), &mut child);
        assert_eq!(http::status_of(admin, &liveness).0, 200, "liveness");
        if let Some((uid, _)) = run_as(&image) {
            assert_eq!(
                process_uid(child.id()),
                Some(uid),
                "runs as the image's user"
            );
        }
    }));
    let status = terminate(&mut child, Duration::from_secs(60));
    redis.stop();
    if let Err(panic) = result {
        eprintln!("chat-server log:\n{}", log_text());
        std::panic::resume_unwind(panic);
    }
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM drains and exits 0 ({status:?}); log:\n{}",
        log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_image_runs_as_its_user_and_reconciles() {
    let image = Image::load("chatcluster-operator");
    let scratch = ScratchDir::new("image-operator").unwrap();
    let binary = image.entrypoint_copy(&scratch);
    let cluster = shared_cluster().expect("cluster");
    cluster.install_crds().expect("CRDs");
    let client = cluster.client().await.expect("client");
    let ns = TestNamespace::create(cluster, &client, "image")
        .await
        .expect("namespace");

    // The admin kubeconfig with its certificates inlined, readable by the image's user.
    let kubeconfig = scratch.0.join("kubeconfig");
    let flat = cluster
        .kubectl_ok(&["config", "view", "--raw", "--flatten", "--minify"], None)
        .expect("kubectl config view");
    std::fs::write(&kubeconfig, flat).unwrap();
    std::fs::set_permissions(&kubeconfig, std::fs::Permissions::from_mode(0o644)).unwrap();

    let run_as = run_as(&image);
    let mut operator = OperatorProcess::start(
        &binary,
        cluster,
        &OperatorOptions {
            watch_namespace: &ns.name,
            lease_namespace: &ns.name,
            lease_name: "chatcluster-operator",
            lease_seconds: 15,
            identity: "image-check",
            kubeconfig: Some(&kubeconfig),
            run_as,
        },
    )
    .expect("operator");
    let fail = |what: &str, e: anyhow::Error, op: &OperatorProcess| -> ! {
        panic!("{what}: {e:#}\noperator log:\n{}", op.log_text())
    };

    if let Err(e) = eventually("the operator leads", Duration::from_secs(30), || {
        let leads = operator.is_leader();
        async move { Ok(leads.then_some(())) }
    })
    .await
    {
        fail("leader", e, &operator);
    }
    if let Some((uid, _)) = run_as {
        assert_eq!(
            operator.pid().and_then(process_uid),
            Some(uid),
            "runs as the image's user"
        );
    }
    let manifest = std::fs::read_to_string(repo_root().join("examples/minimal.yaml")).unwrap();
    cluster
        .kubectl_ok(&["apply", "-n", &ns.name, "-f", "-"], Some(&manifest))
        .expect("apply examples/minimal.yaml");
    let observed = eventually(
        "the ChatCluster is reconciled",
        Duration::from_secs(60),
        || {
            let out = cluster.kubectl_ok(
                &[
                    "get",
                    "chatcluster",
                    "chat",
                    "-n",
                    &ns.name,
                    "-o",
                    "jsonpath={.status.observedGeneration}",
                ],
                None,
            );
            async move { Ok(out.ok().filter(|g| g == "1")) }
        },
    )
    .await;
    if let Err(e) = observed {
        fail("reconcile", e, &operator);
    }
    let status = operator.stop();
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM: graceful exit 0 ({status:?}); log:\n{}",
        operator.log_text()
    );
}
