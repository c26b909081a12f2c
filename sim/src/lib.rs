//! The simulated OpenShift: an HTTP server speaking the real Kubernetes and
//! OpenShift REST API for the resources modelship uses, with controllers that
//! move builds and deployments through their real phases, and an OCI registry
//! under `/v2/`. State persists in a data directory. It is a simulation and
//! says so: a build does not execute the Dockerfile's RUN steps.
//!
//! A crate of its own that depends on nothing of modelship: the judge shares
//! no code with what it judges. Where it needs a rule the runner also has
//! (image references, names, YAML), it has its own copy written from the
//! upstream source ([`reference`], [`validation`], [`yaml`]). The runner
//! reaches it over HTTP like a real cluster; only the process that embeds it
//! (`modelship sim`, `--sim`, tests) calls [`start`]. One file per simulated
//! API group or controller.
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
//! - Security, outside in: [`audit`] (`DATA/audit.log`, one
//!   `audit.k8s.io/v1` Event a request), [`tls`] (the CA kept in
//!   `DATA/pki`, the serving and client certificates; HTTPS only),
//!   [`authn`] (client certificates, ServiceAccount tokens and the
//!   TokenRequest API, 401s, `kubectl auth whoami`; the request entry path
//!   that authorizes before dispatch) and [`rbac`] (the RBAC kinds, the
//!   authorizer, the bootstrap policy, 403 wording, `kubectl auth can-i`).
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
//!   [`image`] (imagestreams, imagestreamtags); [`dockerfile`] parses what
//!   the build controller builds; [`registry`] is the OCI registry under
//!   `/v2/`, behind the integrated registry's access controller (token
//!   auth, `imagestreams/layers` RBAC).
//!   [`tekton`] (PipelineRuns, with Tekton's webhooks' defaults and checks);
//!   [`image`] (imagestreams, images, imagestreamtags as views of streams,
//!   the image import controller); [`dockerfile`] parses what
//!   the build controller builds.
//!
//! # Adding a kind
//!
//! 1. In the group's file (a new `sim/src/<group>.rs` for a new group), add
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
pub mod audit;
pub mod authn;
pub mod build;
pub mod coordination;
pub mod core;
pub mod discovery;
pub mod dockerfile;
pub mod faults;
pub mod image;
pub mod managed;
pub mod protobuf;
pub mod rbac;
pub mod reference;
pub mod registry;
pub mod resource;
pub mod route;
pub mod runtime;
pub mod seldon;
pub mod selector;
pub mod server;
pub mod status;
pub mod store;
pub mod tekton;
pub mod tls;
pub mod validation;
pub mod yaml;

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
    /// Run the controllers (builds, Seldon model processes, image imports).
    /// Off: the API server alone, as strict as ever, for a client that only
    /// reads, like a cluster whose controller manager is down.
    pub controllers: bool,
    /// Told every credential the sim mints (ServiceAccount tokens), so the
    /// process that embeds it can mask them in its own logs.
    pub on_secret: SecretSink,
}

/// A callback that learns each credential the sim issues. The sim itself
/// never logs one; the host process (a runner embedding the sim) registers
/// them with its own masking.
#[derive(Clone, Default)]
pub struct SecretSink(Option<Arc<OnSecret>>);

type OnSecret = dyn Fn(&str) + Send + Sync;

impl SecretSink {
    pub fn new(f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        SecretSink(Some(Arc::new(f)))
    }

    pub(crate) fn issued(&self, secret: &str) {
        if let Some(f) = &self.0 {
            f(secret);
        }
    }
}

impl std::fmt::Debug for SecretSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "SecretSink(..)" } else { "SecretSink(none)" })
    }
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
            controllers: true,
            on_secret: SecretSink::default(),
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
    /// `127.0.0.1:PORT`: the registry's host, inside the cluster and out.
    pub registry_host: String,
    /// The cluster's CA (serving and client certificates).
    pub pki: Arc<tls::Pki>,
    /// Signs and verifies ServiceAccount tokens.
    pub tokens: Arc<authn::TokenIssuer>,
    /// [`SimConfig::build_start_timeout`].
    pub build_start_timeout: Duration,
    /// [`SimConfig::on_secret`].
    pub on_secret: SecretSink,
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
    rbac::register(&mut table);
    authn::register(&mut table);
    tekton::register(&mut table);
    table
}

/// A running sim. Dropping it does not stop it; call [`SimServer::shutdown`].
pub struct SimServer {
    pub addr: SocketAddr,
    pub name: String,
    api: SimApi,
    /// `system:admin`'s client certificate, made at start.
    admin: tls::CertPair,
    task: tokio::task::JoinHandle<()>,
    /// Controllers that own processes; awaited at shutdown so none outlives the sim.
    controllers: Vec<tokio::task::JoinHandle<()>>,
}

impl SimServer {
    /// `https://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The cluster CA, PEM: what clients verify the sim's certificate with.
    pub fn ca_pem(&self) -> &str {
        self.api.pki.ca_pem()
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

    /// This sim's admin kubeconfig (one context, named after the sim):
    /// `system:admin` in `system:masters` by client certificate.
    pub fn kubeconfig(&self) -> String {
        kubeconfig_yaml(&[self.admin_entry()])
    }

    /// The admin's kubeconfig entry, to combine several sims in one file.
    pub fn admin_entry(&self) -> KubeconfigEntry {
        KubeconfigEntry {
            name: self.name.clone(),
            server: self.url(),
            ca_pem: self.ca_pem().to_string(),
            user: KubeUser::ClientCertificate(self.admin.clone()),
        }
    }

    /// A kubeconfig entry for ServiceAccount `namespace/name` with a token
    /// valid for `seconds` (it must exist; see [`SimServer::service_account_token`]).
    pub fn service_account_entry(
        &self,
        namespace: &str,
        name: &str,
        seconds: i64,
    ) -> Result<KubeconfigEntry, status::ApiError> {
        let token = self.service_account_token(namespace, name, seconds)?;
        Ok(KubeconfigEntry {
            name: self.name.clone(),
            server: self.url(),
            ca_pem: self.ca_pem().to_string(),
            user: KubeUser::Token(token),
        })
    }

    /// Set up ServiceAccount `namespace/name` in-process, as an
    /// administrator would: the namespace and the account when missing and,
    /// with `cluster_role`, a ClusterRoleBinding `NAMESPACE-NAME-ROLE` to it.
    pub fn ensure_service_account(
        &self,
        namespace: &str,
        name: &str,
        cluster_role: Option<&str>,
    ) -> Result<(), status::ApiError> {
        let store = &self.api.store;
        let ignore_exists = |r: Result<serde_json::Value, status::ApiError>| match r {
            Err(e) if e.code != 409 => Err(e),
            _ => Ok(()),
        };
        if !store.namespace_exists(namespace) {
            ignore_exists(store.create(&core::NAMESPACES, "", json!({ "metadata": { "name": namespace } }), false))?;
        }
        if store.get(&core::SERVICEACCOUNTS, namespace, name).is_none() {
            ignore_exists(store.create(
                &core::SERVICEACCOUNTS,
                namespace,
                json!({ "metadata": { "name": name } }),
                false,
            ))?;
        }
        if let Some(role) = cluster_role {
            let binding = format!("{namespace}-{name}-{}", role.replace(':', "-"));
            if store.get(&rbac::CLUSTERROLEBINDINGS, "", &binding).is_none() {
                let obj = json!({
                    "metadata": { "name": binding },
                    "roleRef": { "apiGroup": rbac::GROUP, "kind": "ClusterRole", "name": role },
                    "subjects": [{ "kind": "ServiceAccount", "name": name, "namespace": namespace }],
                });
                ignore_exists(store.create(&rbac::CLUSTERROLEBINDINGS, "", obj, false))?;
            }
        }
        Ok(())
    }

    /// Mint a token for ServiceAccount `namespace/name` as the TokenRequest
    /// API would (audience: the API server), without a request. The
    /// ServiceAccount must exist; the token dies with it.
    pub fn service_account_token(&self, namespace: &str, name: &str, seconds: i64) -> Result<String, status::ApiError> {
        let sa = self
            .api
            .store
            .get(&core::SERVICEACCOUNTS, namespace, name)
            .ok_or_else(|| status::ApiError::not_found(&core::SERVICEACCOUNTS, name))?;
        let uid = sa.pointer("/metadata/uid").and_then(serde_json::Value::as_str).unwrap_or("");
        let (token, _) = self.api.tokens.issue(namespace, name, uid, &[authn::ISSUER.to_string()], seconds)?;
        self.api.on_secret.issued(&token);
        Ok(token)
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
    let pki = Arc::new(tls::Pki::load_or_create(&config.data_dir)?);
    let tokens = Arc::new(authn::TokenIssuer::load_or_create(&config.data_dir)?);
    let audit_log = Arc::new(audit::AuditLog::open(&config.data_dir)?);
    let tls_config = pki.server_config()?;
    let admin = pki.issue_client("system:admin", &["system:masters"])?;
    // The namespaces every cluster has.
    for ns in ["default", "kube-system", "kube-public"] {
        if !store.namespace_exists(ns) {
            store
                .create(&core::NAMESPACES, "", json!({ "metadata": { "name": ns } }), false)
                .map_err(|e| SimError::Corrupt { path: config.data_dir.clone(), message: e.to_string() })?;
        }
    }
    rbac::bootstrap(&store).map_err(|e| SimError::Corrupt { path: config.data_dir.clone(), message: e.to_string() })?;
    let registry = registry::RegistryStore::new(config.data_dir.join("registry"));
    let listener = bind(&config).await?;
    let addr = listener.local_addr().map_err(|source| SimError::Bind { addr: config.listen, source })?;
    let address_file = config.data_dir.join(ADDRESS_FILE);
    std::fs::write(&address_file, addr.to_string()).map_err(|source| SimError::Io { path: address_file, source })?;
    let api = SimApi {
        table,
        registry_host: addr.to_string(),
        store,
        faults: Arc::new(config.faults.clone()),
        fault_counters: Arc::new(faults::FaultCounters::new(&config.faults)),
        registry: registry.clone(),
        data_dir: config.data_dir.clone(),
        pki,
        tokens,
        build_start_timeout: config.build_start_timeout,
        on_secret: config.on_secret.clone(),
        shutdown: CancellationToken::new(),
    };
    // Outside in: audit, authentication and authorization, faults, then the
    // API; the registry has its own access controller.
    let app = server::router(api.clone())
        .layer(axum::middleware::from_fn_with_state(api.clone(), faults::layer))
        .layer(axum::middleware::from_fn_with_state(api.clone(), authn::layer))
        .merge(registry::authorized_router(api.clone(), registry))
        .layer(axum::middleware::from_fn_with_state(audit_log, audit::layer));
    let acceptor = tokio_rustls::TlsAcceptor::from(tls_config);
    let task = tokio::spawn(serve(listener, app, acceptor, api.shutdown.clone()));
    let controllers = if config.controllers {
        vec![
            tokio::spawn(build::controller(api.clone(), addr.to_string(), config.build_duration)),
            tokio::spawn(seldon::controller(api.clone(), config.data_dir.clone())),
            tokio::spawn(image::import_controller(api.clone(), addr.to_string())),
        ]
    } else {
        Vec::new()
    };
    tracing::info!(url = %format!("https://{addr}"), data = %config.data_dir.display(), "sim started");
    Ok(SimServer { addr, name: config.name, api, admin, task, controllers })
}

/// The accept loop (axum's `serve` cannot close a connection without an
/// answer): each connection does its TLS handshake, then is served by
/// hyper, every request carrying the verified client certificate's user
/// ([`authn::PeerUser`]) when there is one; a response marked
/// [`faults::DropConnection`] makes the service fail, and hyper then closes
/// the connection without writing anything. On shutdown, stop accepting and
/// let open connections finish their current request.
async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    acceptor: tokio_rustls::TlsAcceptor,
    shutdown: CancellationToken,
) {
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
        let acceptor = acceptor.clone();
        conns.spawn(async move {
            let stream = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "sim: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let peer = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(tls::certificate_user)
                .map(|(name, groups)| authn::PeerUser { name, groups });
            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let app = app.clone();
                let peer = peer.clone();
                async move {
                    let mut req = req.map(axum::body::Body::new);
                    if let Some(p) = peer {
                        req.extensions_mut().insert(p);
                    }
                    let resp = app.oneshot(req).await.unwrap_or_else(|e| match e {});
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
pub const ADDRESS_FILE: &str = "address";

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

/// One cluster, its context and its user in a kubeconfig.
#[derive(Debug, Clone)]
pub struct KubeconfigEntry {
    /// Cluster, context and user name.
    pub name: String,
    /// `https://127.0.0.1:PORT`
    pub server: String,
    /// The CA the server's certificate is verified with.
    pub ca_pem: String,
    pub user: KubeUser,
}

/// How a kubeconfig user authenticates.
#[derive(Clone)]
pub enum KubeUser {
    ClientCertificate(tls::CertPair),
    Token(String),
}

impl std::fmt::Debug for KubeUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KubeUser::ClientCertificate(_) => "ClientCertificate(..)",
            KubeUser::Token(_) => "Token(****)",
        })
    }
}

/// A kubeconfig with one cluster/context/user per entry, each cluster with
/// its `certificate-authority-data` (TLS verified, never skipped); the
/// current context is the first.
pub fn kubeconfig_yaml(entries: &[KubeconfigEntry]) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut s = String::from("apiVersion: v1\nkind: Config\npreferences: {}\n");
    s.push_str(&format!("current-context: {}\nclusters:\n", entries.first().map(|c| c.name.as_str()).unwrap_or("sim")));
    for e in entries {
        s.push_str(&format!(
            "- name: {}\n  cluster:\n    server: {}\n    certificate-authority-data: {}\n",
            e.name,
            e.server,
            b64(&e.ca_pem)
        ));
    }
    s.push_str("contexts:\n");
    for e in entries {
        s.push_str(&format!("- name: {0}\n  context:\n    cluster: {0}\n    user: {0}\n", e.name));
    }
    s.push_str("users:\n");
    for e in entries {
        match &e.user {
            KubeUser::ClientCertificate(pair) => s.push_str(&format!(
                "- name: {}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
                e.name,
                b64(&pair.cert_pem),
                b64(&pair.key_pem)
            )),
            KubeUser::Token(token) => s.push_str(&format!("- name: {}\n  user:\n    token: {token}\n", e.name)),
        }
    }
    s
}
