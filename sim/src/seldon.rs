//! `machinelearning.seldon.io/v1`: SeldonDeployments, and the controller
//! that really serves them.
//!
//! On a create or a spec change the controller sets `status.state:
//! Creating`, writes the predictor's Deployment (apps/v1, named as the
//! Seldon operator names it: `<sdep>-<predictor>-0-<container>`), pulls the
//! container's image by digest from the sim registry, unpacks it under
//! `DATA/seldon/<ns>/<name>/<digest>/`, prepares the venv and starts the
//! image's command ([`super::runtime`]) with free ports in seldon-core's
//! `PREDICTIVE_UNIT_{HTTP,GRPC,METRICS}_SERVICE_PORT`. When `GET
//! /health/ping` answers it sets `Available` with `status.address.url =
//! http://127.0.0.1:PORT/api/v1.0/predictions` and marks the Deployment
//! rolled out; if the process exits first (or later) it sets `Failed` with
//! the process's last output lines in `status.description`.
//!
//! A spec change or delete stops the old process group; sim shutdown stops
//! them all before [`super::SimServer::shutdown`] returns. A restarted sim
//! starts every stored SeldonDeployment again (the processes are the only
//! state not in the store). Only the first predictor and its first
//! container are run; one process stands for all replicas.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::SimApi;
use super::apps::DEPLOYMENTS;
use super::reference::Reference;
use super::resource::{Column, ResourceTable, ResourceType};
use super::runtime::{self, Launch, Process};
use super::status::Cause;
use super::store::{EventType, Scope, WriteOptions};

pub const SELDON_DEPLOYMENTS: ResourceType = ResourceType {
    short_names: &["sdep"],
    categories: &["all"],
    subresources: &["status"],
    generation: true,
    columns: &[
        Column::Path { name: "State", path: "status.state" },
        Column::Path { name: "Description", path: "status.description" },
    ],
    validate: Some(validate_sdep),
    ..ResourceType::namespaced(
        "machinelearning.seldon.io",
        "v1",
        "SeldonDeployment",
        "seldondeployments",
        "seldondeployment",
    )
};

pub fn register(table: &mut ResourceTable) {
    table.add(SELDON_DEPLOYMENTS);
}

/// The CRD's required fields the controller relies on.
fn validate_sdep(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    match obj.pointer("/spec/predictors").and_then(Value::as_array) {
        None => causes.push(Cause::required("spec.predictors")),
        Some(ps) => {
            for (i, p) in ps.iter().enumerate() {
                if p.get("name").and_then(Value::as_str).is_none() {
                    causes.push(Cause::required(format!("spec.predictors[{i}].name")));
                }
                if p.pointer("/graph/name").and_then(Value::as_str).is_none() {
                    causes.push(Cause::required(format!("spec.predictors[{i}].graph.name")));
                }
            }
        }
    }
    causes
}

/// What the controller runs for one SeldonDeployment.
#[derive(Debug, Clone)]
struct Desired {
    predictor: String,
    container: String,
    image: String,
    replicas: i64,
    env: Vec<(String, String)>,
    generation: i64,
    /// Hash of `spec`: a status write does not restart anything.
    spec_hash: String,
}

impl Desired {
    fn of(obj: &Value) -> Result<Desired, String> {
        let p = obj.pointer("/spec/predictors/0").ok_or("spec.predictors is empty")?;
        let predictor = p.get("name").and_then(Value::as_str).unwrap_or("default").to_string();
        let c = p.pointer("/componentSpecs/0/spec/containers/0").ok_or(
            "spec.predictors[0].componentSpecs[0].spec.containers is empty (prepackaged servers are not simulated)",
        )?;
        let container = c.get("name").and_then(Value::as_str).unwrap_or("model").to_string();
        let image = c.get("image").and_then(Value::as_str).ok_or("the model container has no image")?.to_string();
        let env = c
            .get("env")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|e| {
                        Some((
                            e.get("name")?.as_str()?.to_string(),
                            e.get("value").and_then(Value::as_str)?.to_string(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let replicas = p.get("replicas").and_then(Value::as_i64).unwrap_or(1);
        let generation = obj.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
        let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
        let spec_hash = hex::encode(Sha256::digest(spec.to_string()));
        Ok(Desired { predictor, container, image, replicas, env, generation, spec_hash })
    }

    fn deployment_name(&self, sdep: &str) -> String {
        operator_name(format!("{sdep}-{}-0-{}", self.predictor, self.container))
    }

    /// The predictor's Service (`GetPredictorKey`).
    fn service_name(&self, sdep: &str) -> String {
        predictor_service(sdep, &self.predictor)
    }
}

/// How seldon-core 1.17.1 keeps generated names within the 63 characters
/// of a label: a longer name becomes `seldon-<md5 hex of the name>`
/// (operator/apis/machinelearning.seldon.io/v1/seldondeployment_types.go:
/// `GetDeploymentName` with `DeploymentNamePrefix`, `getPredictorKeyAutoGenerated`,
/// `hash`; the operator's `DEPLOYMENT_NAME_AS_PREFIX` option is off by default).
fn operator_name(name: String) -> String {
    use md5::Digest as _;
    if name.len() > 63 { format!("seldon-{}", hex::encode(md5::Md5::digest(name.as_bytes()))) } else { name }
}

/// The Service the operator makes for predictor `predictor` of `sdep`.
pub fn predictor_service(sdep: &str, predictor: &str) -> String {
    operator_name(format!("{sdep}-{predictor}"))
}

/// A predictor being started or served.
struct Running {
    spec_hash: String,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// The controller task; returns after sim shutdown once every process it
/// started is gone.
pub async fn controller(api: SimApi, data_dir: PathBuf) {
    let mut events = api.store.events();
    let mut running: HashMap<(String, String), Running> = HashMap::new();
    // A sim that was SIGKILLed (a runner killed mid-run) could not stop its
    // model processes: stop them before starting their successors.
    let stale = runtime::kill_recorded_groups(&data_dir.join("seldon"));
    if !stale.is_empty() {
        tracing::info!(groups = ?stale, "sim seldon: stopped model processes a killed sim left running");
    }
    resync(&api, &data_dir, &mut running).await;
    loop {
        let event = tokio::select! {
            _ = api.shutdown.cancelled() => break,
            e = events.recv() => e,
        };
        match event {
            Ok(e) if e.resource == SELDON_DEPLOYMENTS.key() => {
                let name = e.object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
                let ns = e.namespace.clone();
                if e.kind == EventType::Deleted {
                    if let Some(r) = running.remove(&(ns.clone(), name.clone())) {
                        r.stop().await;
                    }
                    let _ = api.store.delete(
                        &DEPLOYMENTS,
                        &ns,
                        &owned_deployment(&e.object, &name),
                        &Default::default(),
                        false,
                    );
                } else {
                    reconcile(&api, &data_dir, &mut running, &ns, &name).await;
                }
                super::route::reconcile_namespace(&api, &ns);
            }
            Ok(e) if e.resource == super::route::ROUTES.key() => super::route::reconcile_namespace(&api, &e.namespace),
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => resync(&api, &data_dir, &mut running).await,
            Err(RecvError::Closed) => break,
        }
    }
    for (_, r) in running.drain() {
        r.stop().await;
    }
}

fn owned_deployment(obj: &Value, name: &str) -> String {
    Desired::of(obj).map(|d| d.deployment_name(name)).unwrap_or_default()
}

async fn resync(api: &SimApi, data_dir: &std::path::Path, running: &mut HashMap<(String, String), Running>) {
    let (items, _) = api.store.list(&SELDON_DEPLOYMENTS, None);
    let present: Vec<(String, String)> = items
        .iter()
        .filter_map(|o| {
            Some((
                o.pointer("/metadata/namespace")?.as_str()?.to_string(),
                o.pointer("/metadata/name")?.as_str()?.to_string(),
            ))
        })
        .collect();
    let gone: Vec<_> = running.keys().filter(|k| !present.contains(k)).cloned().collect();
    for k in gone {
        if let Some(r) = running.remove(&k) {
            r.stop().await;
        }
    }
    for (ns, name) in present {
        reconcile(api, data_dir, running, &ns, &name).await;
        super::route::reconcile_namespace(api, &ns);
    }
}

async fn reconcile(
    api: &SimApi,
    data_dir: &std::path::Path,
    running: &mut HashMap<(String, String), Running>,
    ns: &str,
    name: &str,
) {
    let key = (ns.to_string(), name.to_string());
    let Some(obj) = api.store.get(&SELDON_DEPLOYMENTS, ns, name) else {
        if let Some(r) = running.remove(&key) {
            r.stop().await;
        }
        return;
    };
    let desired = match Desired::of(&obj) {
        Ok(d) => d,
        Err(reason) => {
            if let Some(r) = running.remove(&key) {
                r.stop().await;
            }
            set_status(api, ns, name, json!({ "state": "Failed", "description": reason }));
            return;
        }
    };
    if running.get(&key).is_some_and(|r| r.spec_hash == desired.spec_hash) {
        return;
    }
    if let Some(r) = running.remove(&key) {
        r.stop().await;
    }
    let cancel = api.shutdown.child_token();
    let task = tokio::spawn(serve_predictor(
        api.clone(),
        data_dir.join("seldon").join(ns).join(name),
        ns.to_string(),
        name.to_string(),
        desired.clone(),
        cancel.clone(),
    ));
    running.insert(key, Running { spec_hash: desired.spec_hash, cancel, task });
}

fn set_status(api: &SimApi, ns: &str, name: &str, status: Value) {
    let opts = WriteOptions { scope: Scope::Status, ..Default::default() };
    let r = api.store.modify(&SELDON_DEPLOYMENTS, ns, name, &opts, |old| {
        let mut new = old.clone();
        new["status"] = status.clone();
        Ok(new)
    });
    if let Err(e) = r {
        tracing::debug!(namespace = ns, name, error = %e.body(), "sim seldon: status not written");
    }
}

/// Create or update the predictor's Deployment spec; returns its generation.
fn write_deployment(api: &SimApi, ns: &str, sdep: &str, d: &Desired) -> Option<i64> {
    let dname = d.deployment_name(sdep);
    // Label values are names too (`GetSeldonDeploymentName`, `GetPredictorKey`).
    let (seldon_id, app) = (operator_name(sdep.to_string()), d.service_name(sdep));
    let labels = json!({
        "seldon-deployment-id": seldon_id,
        "seldon-app": app,
        "app.kubernetes.io/managed-by": "seldon-core",
    });
    let env: Vec<Value> = d.env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect();
    let spec = json!({
        "replicas": d.replicas,
        "selector": { "matchLabels": { "seldon-deployment-id": seldon_id, "seldon-app": app } },
        "template": {
            "metadata": { "labels": labels },
            "spec": { "containers": [{ "name": d.container, "image": d.image, "env": env }] },
        },
    });
    let written = match api.store.get(&DEPLOYMENTS, ns, &dname) {
        None => api.store.create(
            &DEPLOYMENTS,
            ns,
            json!({ "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": dname, "labels": labels }, "spec": spec }),
            false,
        ),
        Some(_) => api.store.modify(&DEPLOYMENTS, ns, &dname, &WriteOptions::default(), |old| {
            let mut new = old.clone();
            new["spec"] = spec.clone();
            Ok(new)
        }),
    };
    match written {
        Ok(obj) => obj.pointer("/metadata/generation").and_then(Value::as_i64),
        Err(e) => {
            tracing::warn!(namespace = ns, deployment = %dname, error = %e.body(), "sim seldon: cannot write the Deployment");
            None
        }
    }
}

fn deployment_status(api: &SimApi, ns: &str, dname: &str, generation: i64, replicas: i64, ready: bool) {
    let n = if ready { replicas } else { 0 };
    let status = json!({
        "observedGeneration": generation,
        "replicas": replicas,
        "updatedReplicas": n,
        "readyReplicas": n,
        "availableReplicas": n,
        "conditions": [{ "type": "Available", "status": if ready { "True" } else { "False" } }],
    });
    let opts = WriteOptions { scope: Scope::Status, ..Default::default() };
    let _ = api.store.modify(&DEPLOYMENTS, ns, dname, &opts, |old| {
        let mut new = old.clone();
        new["status"] = status.clone();
        Ok(new)
    });
}

/// Where a predictor's ports are kept (`DATA/seldon/<ns>/<name>/ports`).
const PORTS_FILE: &str = "ports";

/// The predictor's HTTP, gRPC and metrics ports: the ones it had before
/// while they are free, as a Service's address outlives its pods (a run
/// resumed after the sim restarted goes on using the recorded endpoint);
/// otherwise free ones, recorded for next time.
fn predictor_ports(dir: &std::path::Path) -> std::io::Result<(u16, u16, u16)> {
    let file = dir.join(PORTS_FILE);
    if let Ok(text) = std::fs::read_to_string(&file) {
        let p: Vec<u16> = text.split_whitespace().filter_map(|s| s.parse().ok()).collect();
        if let [h, g, m] = p[..]
            && [h, g, m].into_iter().all(port_free)
        {
            return Ok((h, g, m));
        }
    }
    let ports = (free_port()?, free_port()?, free_port()?);
    std::fs::create_dir_all(dir)?;
    std::fs::write(&file, format!("{} {} {}", ports.0, ports.1, ports.2))?;
    Ok(ports)
}

/// Whether a server could listen on `port` now (with SO_REUSEADDR, as the
/// model server does: connections of a killed predecessor in TIME_WAIT do
/// not count).
fn port_free(port: u16) -> bool {
    let Ok(socket) = tokio::net::TcpSocket::new_v4() else { return false };
    socket.set_reuseaddr(true).is_ok()
        && socket.bind(std::net::SocketAddr::from(([127, 0, 0, 1], port))).is_ok()
        && socket.listen(1).is_ok()
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Bring one predictor up and keep it supervised until `cancel`.
async fn serve_predictor(api: SimApi, dir: PathBuf, ns: String, name: String, d: Desired, cancel: CancellationToken) {
    let fail = |description: String| {
        tracing::info!(namespace = %ns, name = %name, %description, "sim seldon: Failed");
        set_status(&api, &ns, &name, json!({ "state": "Failed", "description": description, "replicas": d.replicas }));
    };
    set_status(&api, &ns, &name, json!({ "state": "Creating", "description": "", "replicas": d.replicas }));
    let dname = d.deployment_name(&name);
    let Some(dgen) = write_deployment(&api, &ns, &name, &d) else { return };
    deployment_status(&api, &ns, &dname, dgen, d.replicas, false);

    let image = match Reference::parse_normalized(&d.image) {
        Ok(i) if i.digest.is_some() => i,
        Ok(_) => return fail(format!("image {} is not pinned by digest (the sim pulls by digest only)", d.image)),
        Err(e) => return fail(format!("image {}: {e}", d.image)),
    };
    let digest_hex = image.digest.as_deref().unwrap_or("").trim_start_matches("sha256:").to_string();
    let dir = dir.join(&digest_hex);
    let unpacked = tokio::select! {
        _ = cancel.cancelled() => return,
        r = runtime::unpack(&api.registry, &image, &dir) => r,
    };
    let img = match unpacked {
        Ok(i) => i,
        Err(e) => return fail(format!("pulling image: {e}")),
    };
    let venv = match img.requirements() {
        None => None,
        Some(reqs) => {
            let prepared = tokio::select! {
                _ = cancel.cancelled() => return,
                r = tokio::task::spawn_blocking(move || runtime::prepare_venv(&reqs)) => r,
            };
            match prepared {
                Ok(Ok(v)) => Some(v),
                Ok(Err(e)) => return fail(e.to_string()),
                Err(e) => return fail(format!("preparing the venv panicked: {e}")),
            }
        }
    };
    // Per SeldonDeployment, not per image: the address survives a rollout.
    let ports = match predictor_ports(dir.parent().unwrap_or(&dir)) {
        Ok(p) => p,
        Err(e) => return fail(format!("no free port on 127.0.0.1: {e}")),
    };
    let mut env = d.env.clone();
    env.extend([
        ("PREDICTIVE_UNIT_HTTP_SERVICE_PORT".to_string(), ports.0.to_string()),
        ("PREDICTIVE_UNIT_GRPC_SERVICE_PORT".to_string(), ports.1.to_string()),
        ("PREDICTIVE_UNIT_METRICS_SERVICE_PORT".to_string(), ports.2.to_string()),
        ("PREDICTIVE_UNIT_ID".to_string(), d.container.clone()),
        ("PREDICTOR_ID".to_string(), d.predictor.clone()),
        ("SELDON_DEPLOYMENT_ID".to_string(), name.clone()),
    ]);
    let launch = Launch { env, venv, log: dir.join("output.log") };
    let mut process = match Process::spawn(&img, &launch) {
        Ok(p) => p,
        Err(e) => return fail(e.to_string()),
    };
    // Recorded for a sim restarted after being SIGKILLed (see resync).
    let _ = std::fs::write(dir.join(runtime::PGID_FILE), process.pid.to_string());
    tracing::info!(namespace = %ns, name = %name, pid = process.pid, port = ports.0, image = %d.image, "sim seldon: model process started");
    let health = format!("http://127.0.0.1:{}/health/ping", ports.0);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("a plain HTTP client");
    // Not ready until the health check answers; a real pod stays unready
    // forever, and so does this (the deploying client times out).
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return process.kill().await,
            exit = process.wait() => {
                let code = exit.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                let tail = process.output_tail(20);
                process.kill().await;
                return fail(format!("the model process exited ({code}) before it became ready; last output:\n{tail}"));
            }
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        if client.get(&health).send().await.is_ok_and(|r| r.status().is_success()) {
            break;
        }
    }
    deployment_status(&api, &ns, &dname, dgen, d.replicas, true);
    set_status(
        &api,
        &ns,
        &name,
        json!({
            "state": "Available",
            "description": "",
            "replicas": d.replicas,
            "address": { "url": format!("http://127.0.0.1:{}/api/v1.0/predictions", ports.0) },
            "deploymentStatus": { dname.clone(): { "replicas": d.replicas, "availableReplicas": d.replicas } },
            "serviceStatus": { d.service_name(&name): {
                "svcName": d.service_name(&name),
                "httpEndpoint": format!("127.0.0.1:{}", ports.0),
            } },
        }),
    );
    tracing::info!(namespace = %ns, name = %name, generation = d.generation, "sim seldon: Available");
    tokio::select! {
        _ = cancel.cancelled() => process.kill().await,
        exit = process.wait() => {
            let code = exit.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            let tail = process.output_tail(20);
            process.kill().await;
            deployment_status(&api, &ns, &dname, dgen, d.replicas, false);
            fail(format!("the model process exited ({code}); last output:\n{tail}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_is_named_like_the_operator_names_it() {
        let obj = json!({"metadata": {"generation": 2}, "spec": {"predictors": [{"name": "default", "replicas": 2,
            "componentSpecs": [{"spec": {"containers": [{"name": "model", "image": "r/x@sha256:00",
            "env": [{"name": "A", "value": "1"}]}]}}], "graph": {"name": "model"}}]}});
        let d = Desired::of(&obj).unwrap();
        assert_eq!(d.deployment_name("weather"), "weather-default-0-model");
        assert_eq!(d.service_name("weather"), "weather-default");
        // Over 63 characters: `seldon-` and the md5 of the whole name.
        let long = "a".repeat(50);
        assert_eq!(d.deployment_name(&long), "seldon-464a05fc2317914c504f41d5827babe8");
        assert_eq!(d.service_name(&"b".repeat(60)).len(), "seldon-".len() + 32);
        assert_eq!((d.replicas, d.generation), (2, 2));
        assert_eq!(d.env, vec![("A".to_string(), "1".to_string())]);
        assert_eq!(validate_sdep(&json!({"spec": {}}))[0].field, "spec.predictors");
    }
}
