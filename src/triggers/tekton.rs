//! `serve --dispatch tekton`: each selected pipeline becomes a
//! `tekton.dev/v1` PipelineRun of the repository's `modelship` Pipeline
//! (`.tekton/pipeline.yaml`) instead of an in-process run. The PipelineRun
//! carries the commit (`revision`), the pipeline file and the delivery id as
//! params and labels; the checkout is a fresh claim per run
//! (`.tekton/workspace-pvc.yaml`). One PipelineRun per delivery and
//! pipeline: a redelivery finds the first by label and creates nothing.
//! The service account needs `create` and `list` on `pipelineruns`
//! (`.tekton/rbac/serve.yaml`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::runner::{PipelineRunner, RunOutcome, RunRequest};
use crate::state::Status;
use crate::state::configmap::{LABEL_MODEL, LABEL_PIPELINE, label_value};

pub const LABEL_COMMIT: &str = "modelship.io/commit";
pub const LABEL_DELIVERY: &str = "modelship.io/delivery";
pub const LABEL_TRIGGER: &str = "modelship.io/trigger";
const WORKSPACE_CLAIM: &str = include_str!("../../.tekton/workspace-pvc.yaml");
/// The name of the client's one "environment", in errors about its kubeconfig.
const TARGET: &str = "tekton-dispatch";

/// What `--dispatch tekton` was told.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// `None`: the kubeconfig context's namespace, or the pod's.
    pub namespace: Option<String>,
    pub kubeconfig: Option<PathBuf>,
    /// The checkout the pipeline files are in (their params are relative to it).
    pub repo: PathBuf,
    /// The `repo-url` param: what git-clone clones.
    pub repo_url: String,
    /// The Pipeline the runs reference.
    pub pipeline: String,
    /// `taskRunTemplate.serviceAccountName`: who the Tasks run as.
    pub service_account: String,
    /// A Secret (key `config`) bound to the `kubeconfig` workspace.
    pub kubeconfig_secret: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error(
        "the cluster at {server} serves no tekton.dev/v1 PipelineRuns (GET /apis/tekton.dev/v1: {detail}); install OpenShift Pipelines (or Tekton Pipelines) there, or run in-process without --dispatch"
    )]
    NoTekton { server: String, detail: String },
    #[error("{verb} pipelineruns.tekton.dev in namespace {namespace}: {message}{hint}")]
    Api { verb: &'static str, namespace: String, message: String, hint: &'static str },
    #[error("pipeline file {file}: not inside the checkout {repo}; the PipelineRun's `pipeline` param is a path in the repository", file = file.display(), repo = repo.display())]
    OutsideRepo { file: PathBuf, repo: PathBuf },
}

pub fn pipelinerun_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("tekton.dev", "v1", "PipelineRun"), "pipelineruns")
}

/// Creates PipelineRuns in one namespace.
pub struct TektonRunner {
    api: Api<DynamicObject>,
    pub namespace: String,
    config: DispatchConfig,
    repo: PathBuf,
}

impl TektonRunner {
    /// Connect and check that the cluster serves PipelineRuns, so a missing
    /// Tekton is an error at start rather than at the first push.
    pub async fn connect(config: DispatchConfig) -> Result<TektonRunner, DispatchError> {
        let env = crate::spec::Environment {
            context: None,
            namespace: String::new(),
            registry: None,
            insecure_registry: false,
            registry_secret: None,
            verify: None,
        };
        let clusters =
            crate::cluster::Clusters::new([(TARGET.to_string(), env)].into_iter().collect(), config.kubeconfig.clone());
        let kube_config = clusters.config(TARGET).await?;
        let namespace = config.namespace.clone().unwrap_or_else(|| kube_config.default_namespace.clone());
        let server = kube_config.cluster_url.to_string();
        let client = clusters.client(TARGET).await?;
        match client.list_api_group_resources("tekton.dev/v1").await {
            Ok(list) if list.resources.iter().any(|r| r.name == "pipelineruns") => {}
            Ok(_) => return Err(DispatchError::NoTekton { server, detail: "no pipelineruns resource".into() }),
            Err(kube::Error::Api(s)) => {
                return Err(DispatchError::NoTekton { server, detail: format!("{} {}", s.code, s.message) });
            }
            Err(e) => return Err(DispatchError::NoTekton { server, detail: e.to_string() }),
        }
        let repo = config.repo.canonicalize().unwrap_or_else(|_| config.repo.clone());
        let api = Api::namespaced_with(client, &namespace, &pipelinerun_resource());
        Ok(TektonRunner { api, namespace, config, repo })
    }

    /// The labels that identify the PipelineRun of `req`.
    pub fn labels(req: &RunRequest) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([
            ("app.kubernetes.io/name".to_string(), "modelship".to_string()),
            ("app.kubernetes.io/managed-by".to_string(), "modelship".to_string()),
            (LABEL_PIPELINE.to_string(), label_value(&req.pipeline)),
            (LABEL_MODEL.to_string(), label_value(&req.model)),
            (LABEL_COMMIT.to_string(), label_value(&req.commit)),
            (LABEL_TRIGGER.to_string(), label_value(&req.source)),
        ]);
        if let Some(d) = &req.delivery {
            labels.insert(LABEL_DELIVERY.to_string(), label_value(d));
        }
        labels
    }

    /// The PipelineRun for `req`.
    pub fn pipeline_run(&self, req: &RunRequest) -> Result<Value, DispatchError> {
        build_pipeline_run(&self.config, &self.repo, req)
    }

    /// The name of the PipelineRun of `req`: the one made for its delivery
    /// before, else a new one. `true` when it was created now.
    pub async fn dispatch(&self, req: &RunRequest) -> Result<(String, bool), DispatchError> {
        let ns = self.namespace.clone();
        let api_err = |verb: &'static str, e: kube::Error| {
            let (message, hint) = match &e {
                kube::Error::Api(s) if s.code == 403 => {
                    (s.message.clone(), "; grant the role in .tekton/rbac/serve.yaml to the account serve runs as")
                }
                kube::Error::Api(s) if s.code == 404 => (s.message.clone(), "; is OpenShift Pipelines installed?"),
                kube::Error::Api(s) => (s.message.clone(), ""),
                other => (other.to_string(), ""),
            };
            DispatchError::Api { verb, namespace: ns.clone(), message: crate::secret::mask(&message), hint }
        };
        let run = self.pipeline_run(req)?;
        if req.delivery.is_some() {
            let labels = Self::labels(req);
            let selector = [LABEL_DELIVERY, LABEL_PIPELINE]
                .iter()
                .map(|k| format!("{k}={}", labels[*k]))
                .collect::<Vec<_>>()
                .join(",");
            let found =
                self.api.list(&ListParams::default().labels(&selector)).await.map_err(|e| api_err("list", e))?;
            if let Some(name) = found.items.iter().find_map(|o| o.metadata.name.clone()) {
                return Ok((name, false));
            }
        }
        let obj: DynamicObject = serde_json::from_value(run).map_err(|e| DispatchError::Api {
            verb: "create",
            namespace: ns.clone(),
            message: e.to_string(),
            hint: "",
        })?;
        let created = self.api.create(&PostParams::default(), &obj).await.map_err(|e| api_err("create", e))?;
        Ok((created.metadata.name.unwrap_or_default(), true))
    }
}

/// The PipelineRun of `req` as `config` says to make it.
pub fn build_pipeline_run(config: &DispatchConfig, repo: &Path, req: &RunRequest) -> Result<Value, DispatchError> {
    let file = req.file.canonicalize().unwrap_or_else(|_| req.file.clone());
    let rel = file
        .strip_prefix(repo)
        .map_err(|_| DispatchError::OutsideRepo { file: req.file.clone(), repo: repo.to_path_buf() })?;
    let mut params = vec![
        json!({ "name": "repo-url", "value": config.repo_url }),
        json!({ "name": "revision", "value": req.commit }),
        json!({ "name": "pipeline", "value": rel.to_string_lossy() }),
    ];
    if req.set_commit {
        params.push(json!({ "name": "sets", "value": [format!("commit={}", req.commit)] }));
    }
    if let Some(d) = &req.delivery {
        params.push(json!({ "name": "delivery", "value": d }));
    }
    let claim: Value = crate::spec::yaml::from_str(WORKSPACE_CLAIM).expect("the shipped workspace claim parses");
    let mut workspaces = vec![json!({ "name": "source", "volumeClaimTemplate": { "spec": claim["spec"] } })];
    if let Some(secret) = &config.kubeconfig_secret {
        workspaces.push(json!({ "name": "kubeconfig", "secret": { "secretName": secret } }));
    }
    // A DNS label, room left for the API server's 5-character suffix.
    let mut prefix: String = format!("modelship-{}", dns_label(&req.pipeline));
    prefix.truncate(57);
    let prefix = format!("{}-", prefix.trim_end_matches('-'));
    Ok(json!({
        "apiVersion": "tekton.dev/v1",
        "kind": "PipelineRun",
        "metadata": { "generateName": prefix, "labels": TektonRunner::labels(req) },
        "spec": {
            "pipelineRef": { "name": config.pipeline },
            "params": params,
            "taskRunTemplate": { "serviceAccountName": config.service_account },
            "workspaces": workspaces,
        },
    }))
}

/// Lowercase, other characters as one `-`.
fn dns_label(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars().map(|c| c.to_ascii_lowercase()) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

impl crate::error::HasExitClass for DispatchError {
    fn exit_class(&self) -> crate::error::ExitClass {
        match self {
            DispatchError::Cluster(e) => e.exit_class(),
            DispatchError::OutsideRepo { .. } => crate::error::ExitClass::BadInput,
            DispatchError::NoTekton { .. } | DispatchError::Api { .. } => crate::error::ExitClass::Failed,
        }
    }
}

#[async_trait]
impl PipelineRunner for TektonRunner {
    async fn run(&self, req: &RunRequest, _cancel: CancellationToken) -> RunOutcome {
        match self.dispatch(req).await {
            Ok((name, created)) => {
                if created {
                    tracing::info!(namespace = %self.namespace, pipelinerun = %name, "created PipelineRun");
                } else {
                    tracing::info!(namespace = %self.namespace, pipelinerun = %name, "this delivery's PipelineRun exists already; created none");
                }
                RunOutcome {
                    run_id: Some(name.clone()),
                    dispatched: Some(name),
                    ..RunOutcome::without_run(Status::Succeeded, None, false)
                }
            }
            Err(e) => {
                let bad_input = matches!(e, DispatchError::OutsideRepo { .. });
                RunOutcome::without_run(Status::Failed, Some(e.to_string()), bad_input)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipeline_run_carries_commit_file_and_delivery() {
        let config = DispatchConfig {
            namespace: Some("ci".into()),
            kubeconfig: None,
            repo: "/src".into(),
            repo_url: "https://github.com/acme/models.git".into(),
            pipeline: "modelship".into(),
            service_account: "modelship".into(),
            kubeconfig_secret: Some("modelship-kubeconfig".into()),
        };
        let req = RunRequest {
            pipeline: "Weather_Forecast".into(),
            model: "weather".into(),
            file: "/src/pipelines/weather.yaml".into(),
            commit: "ef75c7db8a921a8c0adaabe2e309f2f9d7ce5bd4".into(),
            branch: "main".into(),
            source: "github".into(),
            set_commit: true,
            delivery: Some("72d3162e-cc78-11e3-81ab-4c9367dc0958".into()),
            pushed_by: None,
        };
        let run = build_pipeline_run(&config, Path::new("/src"), &req).unwrap();
        assert_eq!(run["metadata"]["generateName"], "modelship-weather-forecast-");
        assert_eq!(run["metadata"]["labels"][LABEL_DELIVERY], "72d3162e-cc78-11e3-81ab-4c9367dc0958");
        assert_eq!(run["metadata"]["labels"][LABEL_COMMIT], req.commit);
        assert_eq!(run["metadata"]["labels"][LABEL_PIPELINE], "Weather_Forecast");
        let params = &run["spec"]["params"];
        assert_eq!(params[1], json!({ "name": "revision", "value": req.commit }));
        assert_eq!(params[2], json!({ "name": "pipeline", "value": "pipelines/weather.yaml" }));
        assert_eq!(params[3], json!({ "name": "sets", "value": [format!("commit={}", req.commit)] }));
        assert_eq!(params[4]["value"], "72d3162e-cc78-11e3-81ab-4c9367dc0958");
        assert_eq!(
            run["spec"]["workspaces"][0]["volumeClaimTemplate"]["spec"]["accessModes"],
            json!(["ReadWriteOnce"])
        );
        assert_eq!(run["spec"]["workspaces"][1]["secret"]["secretName"], "modelship-kubeconfig");
        let outside = RunRequest { file: "/elsewhere/p.yaml".into(), ..req };
        assert!(matches!(
            build_pipeline_run(&config, Path::new("/src"), &outside),
            Err(DispatchError::OutsideRepo { .. })
        ));
    }
}
