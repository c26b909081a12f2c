//! `run --sim` as the `modelship` service account with exactly the shipped
//! Role: the weather pipeline passes with no refusal in either cluster's
//! audit log, and every rule of the Role is needed (a run without it fails
//! with exit 1 and one line naming the refused verb and resource). This is
//! what keeps `.tekton/rbac/modelship.yaml` true to what the code calls on a
//! real cluster.

mod support;

use std::path::Path;

use serde_json::Value;
use support::cli::{modelship, weather_fixture};

const ROLE: &str = include_str!("../.tekton/rbac/modelship.yaml");

fn audit(sim: &Path, env: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(sim.join(env).join("audit.log"))
        .unwrap_or_else(|e| panic!("{}/{env}/audit.log: {e}", sim.display()));
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}"))).collect()
}

fn user(e: &Value) -> &str {
    e.pointer("/user/username").and_then(Value::as_str).unwrap_or_default()
}

fn code(e: &Value) -> u64 {
    e.pointer("/responseStatus/code").and_then(Value::as_u64).unwrap_or_default()
}

fn is_runner(e: &Value) -> bool {
    let u = user(e);
    u.starts_with("system:serviceaccount:") && u.ends_with(":modelship")
}

#[test]
fn the_weather_pipeline_runs_as_the_service_account_with_no_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = weather_fixture(dir.path(), |y| y);
    let sim = dir.path().join("sim");
    let out = modelship().arg("run").arg(&pipeline).arg("--sim").arg(&sim).output().unwrap();
    assert!(
        out.status.success(),
        "run --sim failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let kubeconfig = std::fs::read_to_string(sim.join("kubeconfig")).unwrap();
    assert!(kubeconfig.contains("certificate-authority-data"), "{kubeconfig}");
    assert!(!kubeconfig.contains("insecure-skip-tls-verify"), "{kubeconfig}");
    assert!(!kubeconfig.contains("client-key-data"), "the run's kubeconfig must hold only the service account token");
    for env in ["dev", "prod"] {
        let events = audit(&sim, env);
        let runner: Vec<&Value> = events.iter().filter(|e| is_runner(e)).collect();
        assert!(runner.len() > 5, "{env}: only {} requests by the service account", runner.len());
        let refused: Vec<String> = runner
            .iter()
            .filter(|e| matches!(code(e), 401 | 403))
            .map(|e| format!("{} {} -> {}", e["verb"], e["requestURI"], code(e)))
            .collect();
        assert!(refused.is_empty(), "{env}: the service account was refused:\n{}", refused.join("\n"));
        // Setup is the administrator's; from the first runner request on,
        // every request is the runner's (the sim's controllers work in-process).
        let first = events.iter().position(is_runner).unwrap();
        // (An anonymous registry request answered 401 is a client learning
        // the auth challenge, as docker clients do.)
        let others: Vec<String> = events[first..]
            .iter()
            .filter(|e| !(is_runner(e) || (user(e) == "system:anonymous" && code(e) == 401)))
            .map(|e| format!("{} {} -> {}", user(e), e["requestURI"], code(e)))
            .collect();
        assert!(others.is_empty(), "{env}: requests by another identity during the run:\n{}", others.join("\n"));
        // The registry was used with the token too (promotion copies dev -> prod).
        assert!(
            runner.iter().any(|e| e["requestURI"].as_str().is_some_and(|u| u.starts_with("/v2/"))),
            "{env}: no registry request by the service account"
        );
    }
}

/// The Role's rules, as YAML text blocks (`- apiGroups: ...` up to the next),
/// so each can be cut out of the file while the rest stays byte-for-byte.
fn rule_blocks(doc: &str) -> Vec<(usize, usize)> {
    let rules = doc.find("rules:\n").expect("the Role has rules") + "rules:\n".len();
    let end = doc[rules..].find("\n---").map(|i| rules + i + 1).unwrap_or(doc.len());
    let (mut starts, mut comment, mut at) = (Vec::new(), None, rules);
    for line in doc[rules..end].split_inclusive('\n') {
        let t = line.trim_start();
        if t.starts_with('#') {
            // Comments above a rule go with it.
            comment.get_or_insert(at);
        } else if t.starts_with("- apiGroups:") {
            starts.push(comment.take().unwrap_or(at));
        } else {
            comment = None;
        }
        at += line.len();
    }
    starts.push(end);
    starts.windows(2).map(|w| (w[0], w[1])).collect()
}

fn field<'a>(block: &'a str, key: &str) -> Vec<&'a str> {
    let line = block.lines().find(|l| l.trim_start().trim_start_matches("- ").starts_with(key)).unwrap_or("");
    let list = line.split_once('[').and_then(|(_, r)| r.split_once(']')).map(|(l, _)| l).unwrap_or("");
    list.split(',').map(|s| s.trim().trim_matches('"')).filter(|s| !s.is_empty()).collect()
}

#[test]
fn every_rule_of_the_shipped_role_is_needed() {
    let blocks = rule_blocks(ROLE);
    assert!(blocks.len() >= 10, "found {} rules in the Role", blocks.len());
    let dir = tempfile::tempdir().unwrap();
    // With a Route, so the routes rule has a caller.
    // With a Route, so the routes rule has a caller; keeping one run, so a
    // second run deletes the first's record (the configmaps delete rule).
    let pipeline = weather_fixture(dir.path(), |y| {
        let with_route = y.replace(
            "uses: seldon-deploy\n      with: { environment: dev }",
            "uses: seldon-deploy\n      with: { environment: dev, route: true }",
        );
        assert_ne!(with_route, y, "the weather pipeline's deploy stage changed shape");
        let keep_one = with_route.replacen("  stages:\n", "  state: { keepRuns: 1 }\n  stages:\n", 1);
        assert_ne!(keep_one, with_route, "the weather pipeline has no stages: line");
        keep_one
    });
    let mut report = Vec::new();
    for (i, &(s, e)) in blocks.iter().enumerate() {
        let rule = &ROLE[s..e];
        let resources = field(rule, "resources:");
        let rbac = dir.path().join(format!("rbac-{i}.yaml"));
        std::fs::write(&rbac, format!("{}{}", &ROLE[..s], &ROLE[e..])).unwrap();
        let sim = dir.path().join(format!("sim-{i}"));
        let deletes_runs = resources == ["configmaps"] && field(rule, "verbs:") == ["delete"];
        if deletes_runs {
            // A finished run for the next one to delete.
            let first = modelship()
                .args(["run"])
                .arg(&pipeline)
                .arg("--sim")
                .arg(&sim)
                .arg("--sim-rbac")
                .arg(&rbac)
                .args(["--until", "render"])
                .output()
                .unwrap();
            assert!(first.status.success(), "run --until render: {}", String::from_utf8_lossy(&first.stderr));
        }
        let out = modelship()
            .args(["--log-format", "text", "run"])
            .arg(&pipeline)
            .arg("--sim")
            .arg(&sim)
            .arg("--sim-rbac")
            .arg(&rbac)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let names = |l: &&str| {
            resources.iter().any(|r| {
                l.contains(&format!("resource \"{r}\""))
                    // The registry answers 401 for a token that may not pull.
                    || (*r == "imagestreams/layers" && l.contains("401") && l.contains("imagestreams/layers"))
            })
        };
        let error = stderr.lines().find(|l| l.starts_with("error: ") && names(l));
        let warning = stderr.lines().find(|l| l.contains("cannot stream the build log") && names(l));
        let prune_warning = stderr.lines().find(|l| {
            l.contains("cannot delete old run records") && l.contains("cannot delete resource \"configmaps\"")
        });
        let ok = match (resources.as_slice(), out.status.code()) {
            // Without its log the build goes on, and the run says why.
            (["builds/log"], Some(0)) => warning.is_some(),
            // The run is over when old records are deleted: it succeeded, and says what it could not delete.
            (["configmaps"], Some(0)) if deletes_runs => prune_warning.is_some(),
            (_, Some(1)) => error.is_some_and(|l| {
                assert!(l.len() < 1000, "rule {resources:?}: the refusal is not one short line: {l}");
                l.contains("modelship")
            }),
            _ => false,
        };
        if !ok {
            report.push(format!(
                "without rule {i} {resources:?}: exit {:?}, no line naming it\nstdout:\n{stdout}\nstderr:\n{stderr}",
                out.status.code()
            ));
        }
    }
    assert!(report.is_empty(), "{}", report.join("\n\n"));
}

#[test]
fn rule_blocks_cut_the_role_at_each_rule() {
    let blocks = rule_blocks(ROLE);
    let first = &ROLE[blocks[0].0..blocks[0].1];
    assert!(first.contains("configmaps"), "{first}");
    let joined: String = blocks.iter().map(|&(s, e)| &ROLE[s..e]).collect();
    assert_eq!(joined.matches("- apiGroups:").count(), blocks.len());
    assert_eq!(field("  - apiGroups: [\"\"]\n    resources: [configmaps]\n", "resources:"), vec!["configmaps"]);
}

/// `--sim` is only a setup: the same clusters work through `--kubeconfig`
/// like real ones, as the administrator (client certificate, what the
/// installer's `system:admin` kubeconfig holds) and as the service account
/// (token), with the same environment overrides a user can pass.
#[test]
fn the_sims_work_through_kubeconfig_with_a_certificate_and_with_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = weather_fixture(dir.path(), |y| y);
    let sim = dir.path().join("sim");
    let out =
        modelship().arg("run").arg(&pipeline).arg("--sim").arg(&sim).arg("--until").arg("render").output().unwrap();
    assert!(out.status.success(), "run --sim --until render: {}", String::from_utf8_lossy(&out.stderr));
    let _dev = support::sim::ServedSim::start(&sim.join("dev"), "dev");
    let _prod = support::sim::ServedSim::start(&sim.join("prod"), "prod");
    // The model from files, so no S3 endpoint is needed.
    let model = dir.path().join("fixtures/weather-model");
    let local = dir.path().join("pipelines/weather-local.yaml");
    let yaml = std::fs::read_to_string(&pipeline).unwrap();
    std::fs::write(&local, yaml.replace("s3://models/weather/", &format!("file://{}/", model.display()))).unwrap();
    let run = |kubeconfig: &str, until: Option<&str>| {
        let mut cmd = modelship();
        cmd.arg("run").arg(&local).arg("--kubeconfig").arg(sim.join(kubeconfig));
        for env in ["dev", "prod"] {
            cmd.args(["--context", &format!("{env}={env}"), "--registry", &format!("{env}=cluster")]);
        }
        if let Some(stage) = until {
            cmd.args(["--until", stage]);
        }
        cmd.output().unwrap()
    };
    let out = run("admin.kubeconfig", Some("build"));
    assert!(
        out.status.success(),
        "as system:admin by client certificate, through the build upload:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run("kubeconfig", None);
    assert!(
        out.status.success(),
        "as the service account by token, the whole pipeline:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("promoted sha256:"), "{stdout}");
    let users: std::collections::BTreeSet<String> =
        audit(&sim, "dev").iter().filter(|e| code(e) < 400).map(|e| user(e).to_string()).collect();
    assert!(
        users.contains("system:admin") && users.contains("system:serviceaccount:models-dev:modelship"),
        "{users:?}"
    );
}
