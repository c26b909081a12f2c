//! The build controller: starts `New` builds as their BuildConfig's run
//! policy allows and takes each through the Dockerfile to a pushed image.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::super::SimApi;
use super::super::dockerfile::{self, Instruction};
use super::super::image::{IMAGESTREAMS, PushedImage, record_push};
use super::super::store::WriteOptions;
use super::layer::{read_dockerfile, write_layer};
use super::log::append_log;
use super::push::{ImageSpec, push};
use super::{BUILDS, build_dir, end_build, is_terminal, now, phase_of, set_status};

/// The build controller. `registry_host` is the sim's own `127.0.0.1:PORT`
/// (known only after bind); `duration` is roughly how long a build takes.
///
/// A `New` Build starts when its BuildConfig's run policy lets it
/// (openshift-controller-manager pkg/build/controller/policy: `Serial`, the
/// default, runs one build of a BuildConfig at a time, oldest first, and a
/// later one stays `New` until the earlier ones are done; `Parallel` builds
/// start at once; `SerialLatestOnly` is treated as `Serial`). It goes
/// `Pending` (the pod is created), `Running` (the pod waits for the binary
/// input `instantiatebinary` streams), then through the Dockerfile.
pub async fn controller(api: SimApi, registry_host: String, duration: Duration) {
    let mut rx = api.store.events();
    let active: Arc<Mutex<HashSet<(String, String)>>> = Arc::default();
    let key = BUILDS.key();
    // Left by a stopped sim: a build whose input was received runs again
    // from it; one still waiting for its input cannot get it any more (the
    // upload ended with the server), as a build pod whose attach broke.
    for b in api.store.list(&BUILDS, None).0 {
        let (ns, name) = ns_name(&b);
        if !is_terminal(phase_of(&b)) && !build_dir(&api, &ns, &name).join("context").exists() {
            append_log(&build_dir(&api, &ns, &name), "error: the binary input was not received\n");
            end_build(&api, &ns, &name, "Failed", "FetchSourceFailed", "Failed to fetch the input source.");
        }
    }
    let consider = |ns: &str| {
        let builds = api.store.list(&BUILDS, Some(ns)).0;
        for b in &builds {
            let (ns, name) = ns_name(b);
            let phase = phase_of(b);
            if b.pointer("/status/cancelled").and_then(Value::as_bool) == Some(true) && !is_terminal(phase) {
                append_log(&build_dir(&api, &ns, &name), "Build cancelled\n");
                end_build(&api, &ns, &name, "Cancelled", "CancelledBuild", "The build was cancelled by the user.");
                continue;
            }
            let startable = match phase {
                "New" => runnable(b, &builds),
                // Interrupted by a sim restart: run it again from its input.
                "Pending" | "Running" => true,
                _ => false,
            };
            if !startable || !active.lock().unwrap_or_else(|e| e.into_inner()).insert((ns.clone(), name.clone())) {
                continue;
            }
            let (api, host, active) = (api.clone(), registry_host.clone(), active.clone());
            tokio::spawn(async move {
                run_build(&api, &ns, &name, &host, duration).await;
                active.lock().unwrap_or_else(|e| e.into_inner()).remove(&(ns, name));
            });
        }
    };
    let namespaces = |api: &SimApi| {
        let mut v: Vec<String> = api.store.list(&BUILDS, None).0.iter().map(|b| ns_name(b).0).collect();
        v.dedup();
        v
    };
    for ns in namespaces(&api) {
        consider(&ns);
    }
    loop {
        tokio::select! {
            _ = api.shutdown.cancelled() => return,
            ev = rx.recv() => match ev {
                Ok(e) if e.resource == key => consider(&e.namespace),
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    for ns in namespaces(&api) {
                        consider(&ns);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

fn ns_name(obj: &Value) -> (String, String) {
    let get = |k: &str| obj.pointer(&format!("/metadata/{k}")).and_then(Value::as_str).unwrap_or("").to_string();
    (get("namespace"), get("name"))
}

fn build_number_of(b: &Value) -> i64 {
    b.pointer("/metadata/annotations/openshift.io~1build.number")
        .and_then(Value::as_str)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Whether the run policy lets the `New` build `b` start now, among the
/// Builds of its namespace (`IsRunnable` and `GetNextConfigBuild` of
/// openshift-controller-manager pkg/build/controller/policy).
fn runnable(b: &Value, builds: &[Value]) -> bool {
    let config = |x: &Value| {
        x.pointer("/metadata/labels/openshift.io~1build-config.name").and_then(Value::as_str).map(str::to_string)
    };
    let policy = |x: &Value| {
        x.pointer("/metadata/labels/openshift.io~1build.start-policy")
            .and_then(Value::as_str)
            .unwrap_or("Serial")
            .to_string()
    };
    let Some(bc) = config(b) else { return true };
    let same: Vec<&Value> = builds.iter().filter(|x| config(x).as_deref() == Some(bc.as_str())).collect();
    let next = same.iter().filter(|x| phase_of(x) == "New").min_by_key(|x| build_number_of(x));
    match next {
        Some(n) if policy(n) == "Parallel" => policy(b) == "Parallel",
        Some(n) => {
            let running = same.iter().any(|x| matches!(phase_of(x), "Pending" | "Running"));
            !running && ns_name(n) == ns_name(b)
        }
        None => false,
    }
}

/// Move the build from one of `from` to `to` unless it was cancelled or
/// moved on meanwhile; whether it moved.
fn advance(api: &SimApi, ns: &str, name: &str, from: &[&str], to: &str) -> bool {
    let mut moved = false;
    let _ = api.store.modify(&BUILDS, ns, name, &WriteOptions::default(), |old| {
        let mut obj = old.clone();
        if from.contains(&phase_of(old)) && old.pointer("/status/cancelled").and_then(Value::as_bool) != Some(true) {
            obj["status"]["phase"] = json!(to);
            if to == "Running" {
                obj["status"]["startTimestamp"] = json!(now());
            }
            moved = true;
        }
        Ok(obj)
    });
    moved
}

enum Outcome {
    Complete { digest: String, reference: String },
    Failed { reason: &'static str, message: String },
    Cancelled,
}

async fn run_build(api: &SimApi, ns: &str, name: &str, host: &str, duration: Duration) {
    let dir = build_dir(api, ns, name);
    let outcome = tokio::select! {
        o = async {
            // The pod is scheduled, then starts and waits for its input.
            tokio::time::sleep(duration / 8).await;
            advance(api, ns, name, &["New"], "Pending");
            tokio::time::sleep(duration / 8).await;
            advance(api, ns, name, &["New", "Pending"], "Running");
            loop {
                if cancelled(api, ns, name) {
                    return Outcome::Cancelled;
                }
                if dir.join("context").exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            build_steps(api, ns, name, host, duration, &dir).await
        } => o,
        _ = api.shutdown.cancelled() => return,
    };
    let _ = set_status(api, ns, name, |s| {
        let started = s.get("startTimestamp").and_then(Value::as_str).and_then(|t| t.parse::<jiff::Timestamp>().ok());
        match &outcome {
            Outcome::Complete { digest, reference } => {
                s["phase"] = json!("Complete");
                s["output"] = json!({ "to": { "imageDigest": digest } });
                s["outputDockerImageReference"] = json!(reference);
            }
            Outcome::Failed { reason, message } => {
                s["phase"] = json!("Failed");
                s["reason"] = json!(reason);
                s["message"] = json!(message);
            }
            Outcome::Cancelled => return,
        }
        s["completionTimestamp"] = json!(now());
        if let Some(t) = started {
            let nanos = jiff::Timestamp::now().duration_since(t).as_nanos();
            s["duration"] = json!(nanos as i64);
        }
    });
    let _ = tokio::fs::remove_file(dir.join("context")).await;
}

fn cancelled(api: &SimApi, ns: &str, name: &str) -> bool {
    api.store.get(&BUILDS, ns, name).is_none_or(|b| {
        b.pointer("/status/cancelled").and_then(Value::as_bool) == Some(true) || phase_of(&b) == "Cancelled"
    })
}

/// The LABEL the builder appends to the Dockerfile (openshift/builder
/// pkg/build/builder/common.go, `addBuildParameters` and `buildLabels`):
/// `io.openshift.build.name` and `.namespace` (`addBuildLabels`, util.go),
/// then the Build's `spec.output.imageLabels` in order, which override both
/// them and the Dockerfile's own. The source-info labels come from a Git
/// clone, which a binary build does not have.
fn build_labels(build: &Value) -> Vec<(String, String)> {
    let (ns, name) = ns_name(build);
    let mut labels =
        vec![("io.openshift.build.name".to_string(), name), ("io.openshift.build.namespace".to_string(), ns)];
    for l in build.pointer("/spec/output/imageLabels").and_then(Value::as_array).into_iter().flatten() {
        if let Some(key) = l.get("name").and_then(Value::as_str).filter(|k| !k.is_empty()) {
            let value = l.get("value").and_then(Value::as_str).unwrap_or_default();
            labels.push((key.to_string(), value.to_string()));
        }
    }
    labels
}

async fn build_steps(api: &SimApi, ns: &str, name: &str, host: &str, duration: Duration, dir: &Path) -> Outcome {
    let Some(build) = api.store.get(&BUILDS, ns, name) else {
        return Outcome::Cancelled;
    };
    let _ = std::fs::remove_file(dir.join("build.log"));
    let log = |line: &str| append_log(dir, &format!("{line}\n"));
    log("Receiving source from STDIN as archive ...");
    log("This is a simulated OpenShift build: RUN steps are not executed and the base image is not pulled.");
    let dockerfile_path = build
        .pointer("/spec/strategy/dockerStrategy/dockerfilePath")
        .and_then(Value::as_str)
        .unwrap_or("Dockerfile")
        .trim_start_matches("./")
        .to_string();
    let archive = dir.join("context");
    let read = {
        let (archive, path) = (archive.clone(), dockerfile_path.clone());
        tokio::task::spawn_blocking(move || read_dockerfile(&archive, &path)).await
    };
    let text = match read {
        Ok(Ok(Some(t))) => t,
        Ok(Ok(None)) => {
            log(&format!("error: no {dockerfile_path} in the build input"));
            return Outcome::Failed {
                reason: "DockerBuildFailed",
                message: "Docker build strategy has failed.".into(),
            };
        }
        Ok(Err(e)) => {
            log(&format!("error: cannot read the build input: {e}"));
            return Outcome::Failed {
                reason: "FetchSourceFailed",
                message: "Failed to fetch the input source.".into(),
            };
        }
        Err(e) => {
            log(&format!("error: {e}"));
            return Outcome::Failed {
                reason: "GenericBuildFailed",
                message: "Generic Build failure - check logs for details.".into(),
            };
        }
    };
    let steps = match dockerfile::parse(&text) {
        Ok(s) => s,
        Err(e) => {
            log(&format!("error: {dockerfile_path}: {e}"));
            return Outcome::Failed {
                reason: "DockerBuildFailed",
                message: "Docker build strategy has failed.".into(),
            };
        }
    };
    let per_step = (duration / 2) / (steps.len().max(1) as u32);
    let mut image = ImageSpec::default();
    for (i, step) in steps.iter().enumerate() {
        log(&format!("STEP {}/{}: {}", i + 1, steps.len(), step.text));
        match &step.instruction {
            Instruction::Run(_) => log("--> RUN not executed in the simulation"),
            Instruction::From { image: base } => {
                log(&format!(
                    "--> base image {base} is not pulled in the simulation: the image holds the context layer only"
                ));
                image.base = base.clone();
            }
            _ => {}
        }
        image.apply(&step.instruction);
        if cancelled(api, ns, name) {
            return Outcome::Cancelled;
        }
        tokio::time::sleep(per_step).await;
    }
    image.apply(&Instruction::Label(build_labels(&build)));
    let Some(to) = build.pointer("/spec/output/to/name").and_then(Value::as_str) else {
        log("error: the build has no output");
        return Outcome::Failed {
            reason: "InvalidOutputReference",
            message: "Output image could not be resolved.".into(),
        };
    };
    let (stream, tag) = to.split_once(':').unwrap_or((to, "latest"));
    if api.store.get(&IMAGESTREAMS, ns, stream).is_none() {
        log(&format!("error: imagestreams.image.openshift.io \"{stream}\" not found in namespace {ns}"));
        return Outcome::Failed {
            reason: "InvalidOutputReference",
            message: "Output image could not be resolved.".into(),
        };
    }
    log("COMMIT");
    let layer_path = dir.join("layer.tar.gz");
    let layer = {
        let (archive, out, copies) = (archive.clone(), layer_path.clone(), image.copies.clone());
        tokio::task::spawn_blocking(move || write_layer(&archive, &out, &copies)).await
    };
    let layer = match layer {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => {
            log(&format!("error: building the layer: {e}"));
            return Outcome::Failed {
                reason: "DockerBuildFailed",
                message: "Docker build strategy has failed.".into(),
            };
        }
        Err(e) => {
            log(&format!("error: {e}"));
            return Outcome::Failed {
                reason: "GenericBuildFailed",
                message: "Generic Build failure - check logs for details.".into(),
            };
        }
    };
    let repo = format!("{ns}/{stream}");
    let repository = format!("{host}/{repo}");
    let pushed = push(api, &repo, &layer_path, &layer, &image, name).await;
    let _ = tokio::fs::remove_file(&layer_path).await;
    let (digest, config) = match pushed {
        Ok(d) => d,
        Err(e) => {
            log(&format!("error: pushing to {repository}:{tag}: {e}"));
            return Outcome::Failed {
                reason: "PushImageToRegistryFailed",
                message: "Failed to push the image to the registry.".into(),
            };
        }
    };
    log(&format!("Pushing image {repository}:{tag} ..."));
    log(&format!("Successfully pushed {repository}@{digest}"));
    if cancelled(api, ns, name) {
        return Outcome::Cancelled;
    }
    let recorded = record_push(
        api,
        ns,
        stream,
        tag,
        &PushedImage { repository: &repository, digest: &digest, config: &config, layer_size: layer.size },
    );
    if let Err(e) = recorded {
        log(&format!("error: updating imagestream {ns}/{stream}: {}", e.message));
        return Outcome::Failed {
            reason: "PushImageToRegistryFailed",
            message: "Failed to push the image to the registry.".into(),
        };
    }
    log("Push successful");
    tokio::time::sleep(duration / 4).await;
    Outcome::Complete { digest, reference: format!("{repository}:{tag}") }
}
