//! What a user reads when the cluster refuses a call (403): one line with
//! the identity, verb, resource and namespace the API server named, the
//! stage, and the Role file to fix it with; no `Debug` dump of the Status,
//! no cause twice. Run through the real binary against `sim serve --forbid`.

mod support;

use std::process::Stdio;

use support::cli::modelship;
use support::sim::ServedSim;
use support::{copy_tree, repo, text};

const PIPELINE: &str = r#"apiVersion: modelship.io/v1alpha1
kind: Pipeline
metadata: { name: weather }
spec:
  model: { name: weather, source: "file://model" }
  environments:
    dev: { context: dev, namespace: models-dev }
  stages:
    - { name: fetch, uses: fetch-model }
    - { name: render, uses: render, with: { modelClass: MyModel } }
    - { name: build, uses: openshift-build, with: { environment: dev } }
"#;

/// Regression: one 403 printed 7.5 KB (kube's `Display` of an API error
/// embeds a `Debug` dump of the Status, and the cause chain printed the
/// server's message three times).
#[test]
fn a_refused_cluster_call_prints_one_line_naming_who_what_where_and_the_role() {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&repo().join("fixtures/weather-model"), &dir.path().join("model"));
    std::fs::write(dir.path().join("pipeline.yaml"), PIPELINE).unwrap();
    let served =
        ServedSim::start_with(&dir.path().join("sim"), "dev", &["--forbid", "buildconfigs.build.openshift.io:create"]);
    served.kubectl(&["create", "namespace", "models-dev"]);

    let out = modelship()
        .args(["run", "pipeline.yaml", "--workspace", "ws", "--kubeconfig"])
        .arg(&served.kubeconfig)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    let line = errors[0];
    for part in [
        "stage `build`",
        r#"User ""#,
        r#"cannot create resource "buildconfigs" in API group "build.openshift.io""#,
        r#"in the namespace "models-dev""#,
        ".tekton/rbac/modelship.yaml",
    ] {
        assert!(line.contains(part), "`{part}` missing from: {line}");
    }
    assert_eq!(line.matches("cannot create resource").count(), 1, "the cause once: {line}");
    assert!(line.len() < 600, "{} bytes: {line}", line.len());
    for output in [&stdout, &stderr] {
        assert!(!output.contains("Status {") && !output.contains("ApiError"), "a Debug dump:\n{output}");
    }
    insta::with_settings!({ filters => vec![(r#"User "[^"]*""#, r#"User "[USER]""#)] }, {
        insta::assert_snapshot!(line);
    });
}
