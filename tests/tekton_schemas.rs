//! `.tekton/` validated against the upstream schemas in fixtures/reference
//! (Tekton Pipelines v1, Triggers v1beta1, Kubernetes 1.36 RBAC, OpenShift
//! Route), plus the Containerfile linted with hadolint and parsed with
//! BuildKit's own Dockerfile parser.
//!
//! The OpenAPI v2 bundles do not forbid unknown fields, so a misspelt key
//! would pass them; [`unknown_fields`] walks each object against the same
//! definitions and reports keys no definition declares.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use support::schema::{Bundle, tekton};

mod support;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The upstream reference schemas kept in `fixtures/reference/` (its README
/// names each file's upstream source and licence).
fn reference() -> PathBuf {
    root().join("fixtures/reference")
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn docs(rel: &str) -> Vec<Value> {
    let path = root().join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    modelship::spec::yaml::from_str_multi::<Value>(&text)
        .unwrap_or_else(|e| panic!("{rel}: {e:?}"))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn triggers() -> Bundle {
    Bundle::load("tekton/triggers-v1beta1-resolved.schema.json")
}
fn k8s() -> Bundle {
    Bundle::load("kubernetes/k8s-1.36-openapi-v2-subset.json")
}

fn tekton_def(kind: &str) -> &'static str {
    match kind {
        "Task" => "v1.Task",
        "Pipeline" => "v1.Pipeline",
        "PipelineRun" => "v1.PipelineRun",
        other => panic!("unexpected Tekton kind {other}"),
    }
}

fn assert_valid(file: &str, kind: &str, errors: Vec<String>) {
    assert!(errors.is_empty(), "{file} ({kind}) is invalid:\n  {}", errors.join("\n  "));
}

#[test]
fn tekton_pipeline_objects_validate() {
    let bundle = tekton();
    let mut kinds = Vec::new();
    for file in [".tekton/task.yaml", ".tekton/task-trigger.yaml", ".tekton/pipeline.yaml", ".tekton/push.yaml"] {
        for doc in docs(file) {
            assert_eq!(doc["apiVersion"], "tekton.dev/v1", "{file}");
            let kind = doc["kind"].as_str().unwrap().to_string();
            assert_valid(file, &kind, bundle.check(tekton_def(&kind), &doc));
            kinds.push(format!("{kind}/{}", doc["metadata"]["name"].as_str().unwrap()));
        }
    }
    assert_eq!(
        kinds,
        [
            "Task/modelship-run",
            "Task/modelship-trigger",
            "Pipeline/modelship",
            "Pipeline/modelship-push",
            "PipelineRun/modelship-weather-on-push"
        ]
    );
}

/// The README's `tkn pipeline start ... volumeClaimTemplateFile=` names this
/// file; Tekton puts it in the PipelineRun's workspace binding, so it is
/// checked there, against the PipelineRun schema.
#[test]
fn the_workspace_claim_template_validates_inside_a_pipelinerun() {
    let claim = docs(".tekton/workspace-pvc.yaml").remove(0);
    assert_eq!((claim["apiVersion"].as_str(), claim["kind"].as_str()), (Some("v1"), Some("PersistentVolumeClaim")));
    let run = serde_json::json!({
        "apiVersion": "tekton.dev/v1",
        "kind": "PipelineRun",
        "metadata": {"generateName": "modelship-"},
        "spec": {
            "pipelineRef": {"name": "modelship"},
            "workspaces": [{"name": "source", "volumeClaimTemplate": claim}]
        }
    });
    assert_valid(".tekton/workspace-pvc.yaml", "PipelineRun", tekton().check(tekton_def("PipelineRun"), &run));
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(readme.contains("volumeClaimTemplateFile=.tekton/workspace-pvc.yaml"));
}

#[test]
fn task_declares_the_results_chains_and_users_read() {
    let task = &docs(".tekton/task.yaml")[0];
    let results: BTreeSet<&str> =
        task["spec"]["results"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    let want: BTreeSet<&str> = ["run-id", "image-digest", "status", "IMAGE_URL", "IMAGE_DIGEST"].into();
    assert_eq!(results, want);
    let step = &task["spec"]["steps"][0];
    let env: Vec<(&str, &str)> = step["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
        .collect();
    // Results go beside Tekton's own result paths (/tekton/results in a pod).
    assert!(env.contains(&("RUN_ID_RESULT", "$(results.run-id.path)")), "{env:?}");
    let script = step["script"].as_str().unwrap();
    assert!(script.contains("export MODELSHIP_RESULTS_DIR=\"${RUN_ID_RESULT%/*}\""), "{script}");
    // The commit reaches the run (and its build's revision) as a label.
    assert!(env.contains(&("COMMIT", "$(params.commit)")), "{env:?}");
    assert!(script.contains("--label \"commit=$COMMIT\""), "{script}");
    // exec, so SIGTERM at the task timeout reaches modelship, not bash.
    assert!(script.contains("exec modelship"), "{script}");
    // Params reach the script through env, never spliced into its text.
    assert!(!script.contains("$(params."), "{script}");
    assert_eq!(step["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(step["securityContext"]["runAsNonRoot"], true);
}

#[test]
fn pipelines_as_code_run_fires_on_push_to_main_with_path_filter() {
    let run = &docs(".tekton/push.yaml")[0];
    let cel = run["metadata"]["annotations"]["pipelinesascode.tekton.dev/on-cel-expression"].as_str().unwrap();
    assert!(cel.contains("event == \"push\""), "{cel}");
    assert!(cel.contains("target_branch == \"main\""), "{cel}");
    assert!(cel.contains(".pathChanged()"), "{cel}");
    assert_eq!(run["spec"]["pipelineRef"]["name"], "modelship");
    assert_eq!(run["spec"]["taskRunTemplate"]["serviceAccountName"], "modelship");
}

#[test]
fn triggers_objects_validate() {
    let bundle = triggers();
    let pipeline_bundle = tekton();
    let defs = [
        ("EventListener", ".tekton/triggers/eventlistener.yaml"),
        ("TriggerBinding", ".tekton/triggers/triggerbinding.yaml"),
        ("TriggerTemplate", ".tekton/triggers/triggertemplate.yaml"),
    ];
    for (kind, file) in defs {
        for doc in docs(file) {
            assert_eq!(doc["apiVersion"], "triggers.tekton.dev/v1beta1");
            assert_eq!(doc["kind"], kind);
            let def = format!("com.github.tektoncd.triggers.pkg.apis.triggers.v1beta1.{kind}");
            assert_valid(file, kind, bundle.check(&def, &doc));
        }
    }
    // The template's PipelineRun is an opaque RawExtension to the Triggers
    // schema: check it against Tekton's.
    let template = &docs(".tekton/triggers/triggertemplate.yaml")[0];
    for rt in template["spec"]["resourcetemplates"].as_array().unwrap() {
        assert_valid("triggertemplate resourcetemplates", "PipelineRun", pipeline_bundle.check("v1.PipelineRun", rt));
        assert_eq!(rt["spec"]["pipelineRef"]["name"], "modelship-push");
    }
    // Every param the template uses is declared and bound.
    let declared: BTreeSet<&str> =
        template["spec"]["params"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    let bindings = docs(".tekton/triggers/triggerbinding.yaml");
    let names: Vec<&str> = bindings.iter().map(|b| b["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["modelship-push", "modelship-push-gitlab"]);
    for binding in &bindings {
        let bound: BTreeSet<&str> =
            binding["spec"]["params"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(declared, bound, "{}", binding["metadata"]["name"]);
    }
}

#[test]
fn event_listener_verifies_signatures_and_event_types() {
    let el = &docs(".tekton/triggers/eventlistener.yaml")[0];
    let triggers = el["spec"]["triggers"].as_array().unwrap();
    for (trigger, interceptor, event, binding) in
        [(0, "github", "push", "modelship-push"), (1, "gitlab", "Push Hook", "modelship-push-gitlab")]
    {
        let t = &triggers[trigger];
        let interceptors = t["interceptors"].as_array().unwrap();
        // The signature is checked before anything else looks at the body.
        let first = &interceptors[0];
        assert_eq!(first["ref"]["name"], interceptor);
        let param = |name: &str| first["params"].as_array().unwrap().iter().find(|p| p["name"] == name).cloned();
        let secret = param("secretRef").expect("secretRef");
        assert_eq!(secret["value"], json!({"secretName": "modelship-webhook", "secretKey": "secret"}));
        assert_eq!(param("eventTypes").expect("eventTypes")["value"], json!([event]));
        assert_eq!(t["bindings"][0]["ref"], binding);
        assert_eq!(t["template"]["ref"], "modelship-push");
    }
}

#[test]
fn route_validates_against_the_strict_openshift_schema() {
    let schema = read_json(&reference().join("openshift/schemas-4.15-strict/route_route.openshift.io_v1.json"));
    let validator = jsonschema::draft7::new(&schema).expect("schema compiles");
    for doc in docs(".tekton/triggers/route.yaml") {
        let errors: Vec<String> = validator.iter_errors(&doc).map(|e| format!("{}: {e}", e.instance_path())).collect();
        assert_valid("route.yaml", "Route", errors);
    }
}

/// The Role as reviewed: a change to the file must change this list too.
/// That the Role covers every call and holds no rule a run can do without is
/// proved against the strict sim in `tests/sim_rbac.rs` (every `--sim` run is
/// the service account with this Role; the ablation removes each rule).
const RBAC: &[(&str, &str, &[&str])] = &[
    ("", "configmaps", &["get", "list", "watch", "create", "update"]),
    ("", "configmaps", &["delete"]),
    ("", "secrets", &["get"]),
    ("coordination.k8s.io", "leases", &["get", "create", "update", "delete"]),
    ("build.openshift.io", "buildconfigs", &["get", "create", "patch"]),
    ("build.openshift.io", "buildconfigs/instantiatebinary", &["create"]),
    ("build.openshift.io", "builds", &["get", "list", "watch", "patch"]),
    ("build.openshift.io", "builds/log", &["get"]),
    ("image.openshift.io", "imagestreams", &["get", "create", "patch"]),
    ("image.openshift.io", "imagestreams/layers", &["get", "update"]),
    ("image.openshift.io", "imagestreamtags", &["create", "update"]),
    ("machinelearning.seldon.io", "seldondeployments", &["get", "list", "watch", "patch"]),
    ("route.openshift.io", "routes", &["list", "watch", "patch"]),
    ("apps", "deployments", &["list", "watch"]),
];

#[test]
fn rbac_validates_and_is_least_privilege() {
    let bundle = k8s();
    let mut seen = Vec::new();
    for file in [".tekton/rbac/modelship.yaml", ".tekton/rbac/triggers.yaml", ".tekton/rbac/serve.yaml"] {
        for doc in docs(file) {
            let kind = doc["kind"].as_str().unwrap();
            // The subset has no ClusterRoleBinding; its wire shape is RoleBinding's.
            let def = match kind {
                "ServiceAccount" => "io.k8s.api.core.v1.ServiceAccount",
                "Role" => "io.k8s.api.rbac.v1.Role",
                "RoleBinding" | "ClusterRoleBinding" => "io.k8s.api.rbac.v1.RoleBinding",
                other => panic!("{file}: unexpected kind {other}"),
            };
            assert_valid(file, kind, bundle.check(def, &doc));
            seen.push(format!("{kind}/{}", doc["metadata"]["name"].as_str().unwrap()));
        }
    }
    assert_eq!(
        seen,
        [
            "ServiceAccount/modelship",
            "Role/modelship",
            "RoleBinding/modelship",
            "ServiceAccount/modelship-triggers",
            "RoleBinding/modelship-triggers-eventlistener",
            "ClusterRoleBinding/modelship-triggers-eventlistener-clusterroles",
            "ServiceAccount/modelship-serve",
            "Role/modelship-serve",
            "RoleBinding/modelship-serve"
        ]
    );
    // serve --dispatch tekton: look a delivery's PipelineRun up, create one;
    // tests/tekton_dispatch.rs proves each verb is needed.
    let serve = docs(".tekton/rbac/serve.yaml").into_iter().find(|d| d["kind"] == "Role").unwrap();
    assert_eq!(
        serve["rules"],
        json!([{"apiGroups": ["tekton.dev"], "resources": ["pipelineruns"], "verbs": ["list", "create"]}])
    );
    let role = docs(".tekton/rbac/modelship.yaml").into_iter().find(|d| d["kind"] == "Role").unwrap();
    let mut rules = Vec::new();
    for rule in role["rules"].as_array().unwrap() {
        let strs = |k: &str| -> Vec<String> {
            rule[k].as_array().map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect()).unwrap_or_default()
        };
        let (groups, resources, verbs) = (strs("apiGroups"), strs("resources"), strs("verbs"));
        for list in [&groups, &resources, &verbs] {
            assert!(!list.iter().any(|s| s.contains('*')), "wildcard in {rule}");
        }
        assert!(rule.get("nonResourceURLs").is_none() && rule.get("resourceNames").is_none());
        for g in &groups {
            for r in &resources {
                rules.push((g.clone(), r.clone(), verbs.clone()));
            }
        }
    }
    let want: Vec<(String, String, Vec<String>)> = RBAC
        .iter()
        .map(|(g, r, v)| (g.to_string(), r.to_string(), v.iter().map(|s| s.to_string()).collect()))
        .collect();
    assert_eq!(rules, want);
    let binding = docs(".tekton/rbac/modelship.yaml").into_iter().find(|d| d["kind"] == "RoleBinding").unwrap();
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "modelship"})
    );
    assert_eq!(binding["subjects"], json!([{"kind": "ServiceAccount", "name": "modelship"}]));
}

/// Guards that the checks above can fail: a misspelt key and a wrong shape
/// are both reported.
#[test]
fn validation_rejects_misspelt_and_misshapen_objects() {
    let bundle = tekton();
    let mut task = docs(".tekton/task.yaml").remove(0);
    task["spec"]["steps"][0]["workingdir"] = json!("/x");
    let errors = bundle.check("v1.Task", &task);
    assert!(errors.iter().any(|e| e.contains("unknown field `workingdir`")), "{errors:?}");
    let mut task = docs(".tekton/task.yaml").remove(0);
    task["spec"]["steps"] = json!({ "run": { "image": "x" } });
    assert!(!bundle.check("v1.Task", &task).is_empty());
    let mut role = docs(".tekton/rbac/modelship.yaml").remove(1);
    role["rules"][0]["verbs"] = json!("get");
    assert!(!k8s().check("io.k8s.api.rbac.v1.Role", &role).is_empty());
}

fn lint_tool(name: &str) -> PathBuf {
    let tools = std::env::var_os("MODELSHIP_TEST_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| dirs::home_dir().expect("HOME").join(".cache/modelship-test-tools"));
    let path = tools.join("lint/bin").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/test.sh (it runs scripts/setup.d/50-lint.sh, which installs it)",
        path.display()
    );
    path
}

#[test]
fn containerfile_passes_hadolint() {
    let out = Command::new(lint_tool("hadolint"))
        .args(["--no-color", "--format", "tty"])
        .arg(root().join("Containerfile"))
        .output()
        .expect("run hadolint");
    assert!(
        out.status.success(),
        "hadolint found problems:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn containerfile_is_multi_stage_ubi_minimal_non_root() {
    // BuildKit's own parser (the `dockerfile` Python binding of it), as JSON.
    let script = "import dockerfile, json, sys\n\
        print(json.dumps([{'cmd': c.cmd, 'flags': list(c.flags), 'value': list(c.value)} for c in dockerfile.parse_file(sys.argv[1])]))";
    let out =
        Command::new(lint_tool("python")).args(["-c", script]).arg(root().join("Containerfile")).output().unwrap();
    assert!(out.status.success(), "parse failed: {}", String::from_utf8_lossy(&out.stderr));
    let cmds: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let of = |cmd: &str| -> Vec<&Value> { cmds.iter().filter(|c| c["cmd"] == cmd).collect() };
    let froms = of("FROM");
    assert_eq!(froms.len(), 2, "builder + runtime");
    assert_eq!(froms[0]["value"][2], "builder");
    let runtime = froms[1]["value"][0].as_str().unwrap();
    assert!(runtime.starts_with("registry.access.redhat.com/ubi9/ubi-minimal:"), "{runtime}");
    let last_from = cmds.iter().rposition(|c| c["cmd"] == "FROM").unwrap();
    let runtime_stage = &cmds[last_from..];
    let users: Vec<&Value> = runtime_stage.iter().filter(|c| c["cmd"] == "USER").collect();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0]["value"][0], "1001");
    let user_at = runtime_stage.iter().position(|c| c["cmd"] == "USER").unwrap();
    assert!(runtime_stage[user_at..].iter().all(|c| c["cmd"] != "RUN"), "nothing runs as root after USER");
    assert!(
        runtime_stage.iter().any(|c| c["cmd"] == "COPY" && c["flags"] == json!(["--from=builder"])),
        "binary comes from the builder stage"
    );
    let runs: String = runtime_stage
        .iter()
        .filter(|c| c["cmd"] == "RUN")
        .map(|c| c["value"][0].as_str().unwrap().to_string())
        .collect();
    assert!(runs.contains("chgrp -R 0") && runs.contains("chmod -R g=u"), "arbitrary-UID safe: {runs}");
    assert_eq!(of("ENTRYPOINT").last().unwrap()["value"], json!(["/usr/local/bin/modelship"]));
}
