//! Two in-process sims, `dev` and `prod`, under a temp dir, and a kubeconfig
//! with a context for each (shared by the promotion, signing, race and
//! integrity tests). Its user is the ServiceAccount `default/modelship` by
//! token, which the integrated registry needs (it takes no client
//! certificates), bound to `cluster-admin`: these library-level tests
//! exercise promotion logic, not the Role (`tests/sim_rbac.rs` runs the CLI
//! with exactly the shipped one).

use std::path::{Path, PathBuf};
use std::time::Duration;

use modelship::cluster::Clusters;
use modelship::promotion::{self, PromoteRequest};
use modelship::registry::AuthStore;
use modelship::spec::Pipeline;
use openshift_sim::{SimConfig, SimServer};
use serde_json::json;

use super::registry::{OCI_CONFIG, OCI_LAYER, OCI_MANIFEST};

pub const MODEL: &str = "weather";

/// `dev` and `prod` sims under `dir` (data in `dir/dev`, `dir/prod`) and
/// the kubeconfig `dir/kubeconfig` for both.
pub async fn dev_and_prod(dir: &Path) -> (SimServer, SimServer, PathBuf) {
    let dev = openshift_sim::start(SimConfig::new(dir.join("dev"), "dev")).await.unwrap();
    let prod = openshift_sim::start(SimConfig::new(dir.join("prod"), "prod")).await.unwrap();
    let kubeconfig = dir.join("kubeconfig");
    let entry = |sim: &SimServer| {
        sim.ensure_service_account("default", "modelship", Some("cluster-admin")).unwrap();
        sim.service_account_entry("default", "modelship", 24 * 3600).unwrap()
    };
    std::fs::write(&kubeconfig, openshift_sim::kubeconfig_yaml(&[entry(&dev), entry(&prod)])).unwrap();
    (dev, prod, kubeconfig)
}

/// The pipeline `weather` with environments `dev` (namespace `models-dev`)
/// and `prod` (`models-prod`) on contexts of the same names, and one stage
/// `promote` from dev to prod.
pub fn promote_pipeline() -> Pipeline {
    modelship::spec::yaml::from_str(&format!(
        r#"
apiVersion: modelship.io/v1alpha1
kind: Pipeline
metadata: {{ name: weather }}
spec:
  model: {{ name: {MODEL}, source: "file://model" }}
  environments:
    dev: {{ context: dev, namespace: models-dev }}
    prod: {{ context: prod, namespace: models-prod }}
  stages:
    - {{ name: promote, uses: promote, with: {{ from: dev, to: prod }} }}
"#
    ))
    .unwrap()
}

/// Both sims, their namespaces `models-dev` and `models-prod` made, and
/// `Clusters` for a pipeline's environments. Stop with [`DevProd::stop`].
/// A test adds its own helpers with an `impl DevProd` block of its own
/// (the test crate is the type's crate), or wraps it when it keeps more.
pub struct DevProd {
    pub dir: tempfile::TempDir,
    pub dev: SimServer,
    pub prod: SimServer,
    pub kubeconfig: PathBuf,
    pub clusters: Clusters,
}

impl DevProd {
    /// With `Clusters` for `pipeline`'s environments (which must be on
    /// the contexts `dev` and `prod`).
    pub async fn new(pipeline: &Pipeline) -> DevProd {
        DevProd::new_in(tempfile::tempdir().unwrap(), pipeline).await
    }

    /// In `dir` (which may already hold files the pipeline names).
    pub async fn new_in(dir: tempfile::TempDir, pipeline: &Pipeline) -> DevProd {
        let (dev, prod, kubeconfig) = dev_and_prod(dir.path()).await;
        let clusters = Clusters::new(pipeline.spec.environments.clone(), Some(kubeconfig.clone()));
        for (env, ns) in [("dev", "models-dev"), ("prod", "models-prod")] {
            let api: kube::Api<k8s_openapi::api::core::v1::Namespace> =
                kube::Api::all(clusters.client(env).await.unwrap());
            let obj = serde_json::from_value(json!({ "metadata": { "name": ns } })).unwrap();
            api.create(&Default::default(), &obj).await.unwrap();
        }
        DevProd { dir, dev, prod, kubeconfig, clusters }
    }

    pub fn dev(&self) -> &SimServer {
        &self.dev
    }

    pub fn prod(&self) -> &SimServer {
        &self.prod
    }

    /// A fresh `Clusters` (own clients) for the same environments, as a
    /// separate runner would have.
    pub fn runner_clusters(&self) -> Clusters {
        Clusters::new(self.clusters.environments().clone(), Some(self.kubeconfig.clone()))
    }

    pub async fn stop(self) {
        self.dev.shutdown().await;
        self.prod.shutdown().await;
    }
}

/// Promote the latest tag of [`MODEL`] from dev to prod as run `run_id`,
/// by `alice`, without waiting for the lock, anonymously, without the
/// ImageStream tag; set the fields a test is about.
pub fn promote_request(run_id: &str) -> PromoteRequest {
    PromoteRequest {
        model: MODEL.into(),
        from: "dev".into(),
        to: "prod".into(),
        digest: None,
        tag: "latest".into(),
        run_id: run_id.into(),
        by: "alice".into(),
        comment: None,
        force: false,
        lock_wait: Duration::ZERO,
        lock_ttl: promotion::LOCK_TTL,
        image_stream: false,
        state_dir: None,
        auth: AuthStore::anonymous(),
        pipeline_dir: None,
    }
}

/// Put a small OCI image (`layers` and a `config` blob) into `repo` of a
/// sim's registry as `tag`; its manifest digest.
pub async fn push_image(sim: &SimServer, repo: &str, tag: &str, layers: &[Vec<u8>], config: &[u8]) -> String {
    let reg = &sim.api().registry;
    let mut descs = Vec::new();
    for bytes in layers {
        let digest = reg.put_blob(repo, bytes).await.unwrap();
        descs.push(json!({ "mediaType": OCI_LAYER, "digest": digest, "size": bytes.len() }));
    }
    let config_digest = reg.put_blob(repo, config).await.unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len() },
        "layers": descs,
    }))
    .unwrap();
    reg.put_manifest(repo, tag, OCI_MANIFEST, &manifest).await.unwrap()
}

/// A stand-in model server on loopback answering every prediction with
/// `weather_state` (the weather model says `mild` for 55°F); its URL.
pub async fn model_server(weather_state: &'static str) -> (String, tokio::task::JoinHandle<()>) {
    use axum::routing::{get, post};
    let answer = move || async move {
        axum::Json(
            json!({ "meta": { "tags": { "weather_state": weather_state } }, "data": { "ndarray": [weather_state] } }),
        )
    };
    let app = axum::Router::new()
        .route("/health/ping", get(|| async { "pong" }))
        .route("/ready", get(|| async { "ok" }))
        .route("/api/v1.0/predictions", post(answer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (url, tokio::spawn(async move { axum::serve(listener, app).await.unwrap() }))
}
