//! The simulated OpenShift: an HTTP server speaking the real Kubernetes and
//! OpenShift REST API for the resources modelship uses, with controllers that
//! move builds and deployments through their real phases, and an OCI registry
//! under `/v2/`. State persists in a data directory. It is a simulation and
//! says so: a build does not execute the Dockerfile's RUN steps.
//!
//! The runner never imports this module; it reaches the sim over HTTP like a
//! real cluster. One file per simulated API group or controller.
//!
//! # Layout
//!
//! - [`resource`]: the resource table ([`ResourceType`]: group, version,
//!   kind, plural, short names, scope, verbs, subresources, table columns,
//!   kind-specific validation).
//! - [`store`]: the generic object store: objects as JSON, one global
//!   resourceVersion, write-through files under `DATA/objects/`, and a
//!   change feed (broadcast + bounded history) for watches and controllers.
//! - [`server`]: request resolution and the generic verbs (get, list, watch,
//!   create, update, patch, delete, deletecollection, `status`), Tables for
//!   kubectl; [`discovery`]: `/version`, `/api`, `/apis`, OpenAPI v3.
//! - [`status`]: `kind: Status` failures shaped like the API server's.
//! - [`managed`]: `managedFields` and server-side apply (field ownership,
//!   conflicts, removal of fields an applier stops sending).
//! - [`faults`]: the fault-injection middleware (403 for configured
//!   resources; 500/503/429, dropped or lost answers, delays, cut watches,
//!   409s on every Nth matching request, counted at `/sim/faults`).
//! - API groups, each registering its kinds: [`core`] (namespaces,
//!   configmaps, secrets), [`coordination`] (leases), [`apps`]
//!   (Deployments), [`route`] (Routes, admitted by the Seldon controller),
//!   [`seldon`] (SeldonDeployments and the controller that runs them with
//!   [`runtime`]: image unpack, venv, process supervision), [`build`]
//!   (buildconfigs, builds, instantiatebinary, log; the build controller),
//!   [`image`] (imagestreams, images, imagestreamtags as views of streams,
//!   the image import controller); [`dockerfile`] parses what
//!   the build controller builds.
//!
//! # Adding a kind
//!
//! 1. In the group's file (a new `src/sim/<group>.rs` for a new group), add
//!    a `const` [`ResourceType`] built with [`ResourceType::namespaced`] and
//!    struct update syntax for what differs (`short_names`, `subresources:
//!    &["status"]`, `generation: true` for spec/status kinds, `columns`,
//!    `validate`), and `table.add(..)` it in the file's `register`.
//! 2. Call that `register` from [`build_table`]. Discovery, OpenAPI, CRUD,
//!    watch, selectors, Tables and persistence then work for the kind.
//! 3. A custom subresource (`buildconfigs/instantiatebinary`, `builds/log`)
//!    is listed in `subresources` and served by a handler registered with
//!    [`ResourceTable::subresource`]; it gets the [`SimApi`] and the request.
//!    A kind the API server computes instead of storing (ImageStreamTags,
//!    views of ImageStreams) serves all its verbs through one handler
//!    registered with [`ResourceTable::resource_handler`].
//!
//! # Adding a controller
//!
//! A controller is a task started in [`start`] with a clone of the
//! [`SimApi`]: it reads `api.store.events()` (every committed change, in
//! order), and writes through `api.store` (`create`, `update`, `modify` for
//! an atomic read-modify-write, `Scope::Status` for status), so clients see
//! its changes as watch events with new resourceVersions. It stops when
//! `api.shutdown` is cancelled; it must keep no state the store does not
//! hold, so a restarted sim resumes from the persisted objects.

pub mod apps;
pub mod build;
pub mod coordination;
pub mod core;
pub mod discovery;
pub mod dockerfile;
pub mod faults;
pub mod image;
pub mod managed;
pub mod protobuf;
pub mod registry;
pub mod resource;
pub mod route;
pub mod runtime;
pub mod seldon;
pub mod selector;
pub mod server;
pub mod status;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

pub use faults::{FaultKind, FaultRule, Faults, ForbiddenRule};
pub use resource::{ResourceTable, ResourceType};
pub use store::Store;

#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Objects, registry blobs and controller work dirs live here.
    pub data_dir: PathBuf,
    /// `127.0.0.1:0` picks a free port.
    pub listen: SocketAddr,
    /// The cluster/context name written into the kubeconfig.
    pub name: String,
    /// Injected failures (403 for named resources, ...).
    pub faults: Faults,
    /// Roughly how long a simulated build takes from Pending to Complete.
    pub build_duration: Duration,
    /// How long `instantiatebinary` waits for its Build to run before it
    /// answers 504 and cancels the Build (openshift-apiserver: 5 minutes).
    pub build_start_timeout: Duration,
}

impl SimConfig {
    /// A sim on a free loopback port, no faults.
    pub fn new(data_dir: impl Into<PathBuf>, name: impl Into<String>) -> Self {
        SimConfig {
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            name: name.into(),
            faults: Faults::default(),
            build_duration: Duration::from_secs(1),
            build_start_timeout: build::BUILD_START_TIMEOUT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sim data in {path} is not valid: {message}")]
    Corrupt { path: PathBuf, message: String },
}

impl crate::HasExitClass for SimError {
    fn exit_class(&self) -> crate::ExitClass {
        crate::ExitClass::Failed
    }
}

/// What the HTTP handlers, subresource handlers and controllers share: the
/// resource table, the object store, the faults and the shutdown signal.
#[derive(Clone)]
pub struct SimApi {
    pub table: Arc<ResourceTable>,
    pub store: Arc<Store>,
    pub faults: Arc<Faults>,
    /// What the fault rules matched and injected so far.
    pub fault_counters: Arc<faults::FaultCounters>,
    /// The internal registry's storage (served under `/v2/`); controllers
    /// push and pull images through it in-process.
    pub registry: registry::RegistryStore,
    /// The data directory (controllers keep work files under it).
    pub data_dir: PathBuf,
    /// [`SimConfig::build_start_timeout`].
    pub build_start_timeout: Duration,
    /// Cancelled when the sim stops; long-running work (watches,
    /// controllers) ends on it.
    pub shutdown: CancellationToken,
}

impl std::fmt::Debug for SimApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimApi").field("store", &self.store).finish_non_exhaustive()
    }
}

/// Every kind the sim serves.
pub fn build_table() -> ResourceTable {
    let mut table = ResourceTable::default();
    core::register(&mut table);
    coordination::register(&mut table);
    apps::register(&mut table);
    route::register(&mut table);
    seldon::register(&mut table);
    build::register(&mut table);
    image::register(&mut table);
    table
}

/// A running sim. Dropping it does not stop it; call [`SimServer::shutdown`].
pub struct SimServer {
    pub addr: SocketAddr,
    pub name: String,
    api: SimApi,
    task: tokio::task::JoinHandle<()>,
    /// Controllers that own processes; awaited at shutdown so none outlives the sim.
    controllers: Vec<tokio::task::JoinHandle<()>>,
}

impl SimServer {
    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Registry host for image references: `127.0.0.1:PORT`.
    pub fn registry_host(&self) -> String {
        self.addr.to_string()
    }

    /// The in-process API (store and resource table), for controllers and
    /// tests that inspect the sim's state directly.
    pub fn api(&self) -> &SimApi {
        &self.api
    }

    /// This sim's kubeconfig (one context, named after the sim).
    pub fn kubeconfig(&self) -> String {
        kubeconfig_yaml(&[(self.name.clone(), self.url())])
    }

    /// Stop serving, stop controllers and their processes, flush state.
    /// Open watches end; in-flight requests get a few seconds to finish.
    /// Every write is already on disk when it is acknowledged.
    pub async fn shutdown(self) {
        self.api.shutdown.cancel();
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(5), &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
        }
        for c in self.controllers {
            // Each stops its processes on the cancelled token, then returns.
            let _ = c.await;
        }
        self.api.store.release();
    }
}

/// Start a sim in this process.
pub async fn start(config: SimConfig) -> Result<SimServer, SimError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| SimError::Io { path: config.data_dir.clone(), source })?;
    let store = Arc::new(Store::open(&config.data_dir)?);
    let table = Arc::new(build_table());
    // The namespaces every cluster has.
    for ns in ["default", "kube-system", "kube-public"] {
        if !store.namespace_exists(ns) {
            store
                .create(&core::NAMESPACES, "", json!({ "metadata": { "name": ns } }), false)
                .map_err(|e| SimError::Corrupt { path: config.data_dir.clone(), message: e.to_string() })?;
        }
    }
    let registry = registry::RegistryStore::new(config.data_dir.join("registry"));
    let api = SimApi {
        table,
        store,
        faults: Arc::new(config.faults.clone()),
        fault_counters: Arc::new(faults::FaultCounters::new(&config.faults)),
        registry: registry.clone(),
        data_dir: config.data_dir.clone(),
        build_start_timeout: config.build_start_timeout,
        shutdown: CancellationToken::new(),
    };
    let listener = bind(&config).await?;
    let addr = listener.local_addr().map_err(|source| SimError::Bind { addr: config.listen, source })?;
    let address_file = config.data_dir.join(ADDRESS_FILE);
    std::fs::write(&address_file, addr.to_string()).map_err(|source| SimError::Io { path: address_file, source })?;
    let app = server::router(api.clone())
        .layer(axum::middleware::from_fn_with_state(api.clone(), faults::layer))
        .merge(registry::router(registry));
    let task = tokio::spawn(serve(listener, app, api.shutdown.clone()));
    let controllers = vec![
        tokio::spawn(build::controller(api.clone(), addr.to_string(), config.build_duration)),
        tokio::spawn(seldon::controller(api.clone(), config.data_dir.clone())),
        tokio::spawn(image::import_controller(api.clone(), addr.to_string())),
    ];
    tracing::info!(url = %format!("http://{addr}"), data = %config.data_dir.display(), "sim started");
    Ok(SimServer { addr, name: config.name, api, task, controllers })
}

/// The accept loop (axum's `serve` cannot close a connection without an
/// answer): each connection is served by hyper; a response marked
/// [`faults::DropConnection`] makes the service fail, and hyper then closes
/// the connection without writing anything. On shutdown, stop accepting and
/// let open connections finish their current request.
async fn serve(listener: tokio::net::TcpListener, app: axum::Router, shutdown: CancellationToken) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tower::ServiceExt;
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!(error = %e, "sim: cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let shutdown = shutdown.clone();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let app = app.clone();
                async move {
                    let resp = app.oneshot(req.map(axum::body::Body::new)).await.unwrap_or_else(|e| match e {});
                    if resp.extensions().get::<faults::DropConnection>().is_some() {
                        return Err(faults::DroppedByFault);
                    }
                    Ok(resp)
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
        // Reap finished connections so the set does not grow.
        while conns.try_join_next().is_some() {}
    }
    while conns.join_next().await.is_some() {}
}

/// Where a sim records the address it listens on.
const ADDRESS_FILE: &str = "address";

/// Bind `config.listen`; for port 0, first the address this data directory
/// had last time. A restarted sim must come back where it was: its address
/// is also its registry's host, recorded in image references (build
/// outputs, the ledger, SeldonDeployments) that a resumed run goes on using,
/// as a real cluster's registry host never changes. If that port is taken
/// now, a free one (with a warning: recorded references to the old one fail).
async fn bind(config: &SimConfig) -> Result<tokio::net::TcpListener, SimError> {
    if config.listen.port() == 0
        && let Ok(text) = std::fs::read_to_string(config.data_dir.join(ADDRESS_FILE))
        && let Ok(previous) = text.trim().parse::<SocketAddr>()
        && previous.ip() == config.listen.ip()
    {
        match tokio::net::TcpListener::bind(previous).await {
            Ok(l) => return Ok(l),
            Err(e) => tracing::warn!(
                address = %previous, data = %config.data_dir.display(),
                "cannot listen where this sim listened before ({e}); image references to {previous} will not resolve"
            ),
        }
    }
    tokio::net::TcpListener::bind(config.listen).await.map_err(|source| SimError::Bind { addr: config.listen, source })
}

/// A kubeconfig with one cluster/context/user per `(name, url)`; the current
/// context is the first. The sim accepts any bearer token.
pub fn kubeconfig_yaml(clusters: &[(String, String)]) -> String {
    let mut s = String::from("apiVersion: v1\nkind: Config\npreferences: {}\n");
    s.push_str(&format!("current-context: {}\nclusters:\n", clusters.first().map(|c| c.0.as_str()).unwrap_or("sim")));
    for (name, url) in clusters {
        s.push_str(&format!("- name: {name}\n  cluster:\n    server: {url}\n"));
    }
    s.push_str("contexts:\n");
    for (name, _) in clusters {
        s.push_str(&format!("- name: {name}\n  context:\n    cluster: {name}\n    user: {name}\n"));
    }
    s.push_str("users:\n");
    for (name, _) in clusters {
        s.push_str(&format!("- name: {name}\n  user:\n    token: sim-{name}\n"));
    }
    s
}
