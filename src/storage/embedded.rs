//! An S3 endpoint served in-process from a directory (the `s3s` protocol
//! layer over the `s3s-fs` file-system backend): each top-level directory of
//! `root` is a bucket, each file below it an object. `modelship run --sim`
//! serves the fixture model this way, so the real aws-sdk-s3 path is used
//! end to end without an external server.

use std::net::SocketAddr;
use std::path::Path;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::{S3Options, StaticCredentials, StorageError};
use crate::secret::Secret;

/// Fixed credentials of the embedded endpoint (registered as secrets, so
/// they are masked like any other).
pub const ACCESS_KEY_ID: &str = "modelship-embedded";
pub const SECRET_ACCESS_KEY: &str = "modelship-embedded-secret-key";

/// A running endpoint. Dropping it stops the server.
pub struct EmbeddedS3 {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl EmbeddedS3 {
    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn credentials(&self) -> StaticCredentials {
        StaticCredentials {
            access_key_id: Secret::new(ACCESS_KEY_ID),
            secret_access_key: Secret::new(SECRET_ACCESS_KEY),
            session_token: None,
        }
    }

    /// Client options for this endpoint (plain HTTP on loopback, so `insecure`).
    pub fn s3_options(&self) -> S3Options {
        S3Options {
            endpoint: Some(self.endpoint()),
            region: Some(super::DEFAULT_REGION.into()),
            credentials: Some(self.credentials()),
            insecure: true,
        }
    }

    /// Stop accepting, close open connections and wait for the server task.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for EmbeddedS3 {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Serve `root` as an S3 endpoint on `addr` (port 0 picks a free one).
pub async fn serve(root: &Path, addr: SocketAddr) -> Result<EmbeddedS3, StorageError> {
    crate::secret::register(ACCESS_KEY_ID);
    crate::secret::register(SECRET_ACCESS_KEY);
    let serve_err = |source: std::io::Error| StorageError::Serve { addr: addr.to_string(), source };
    std::fs::create_dir_all(root).map_err(|e| StorageError::io("create directory", root, e))?;
    let fs = s3s_fs::FileSystem::new(root).map_err(|e| serve_err(std::io::Error::other(format!("{e:?}"))))?;
    let service = {
        let mut b = S3ServiceBuilder::new(fs);
        b.set_auth(SimpleAuth::from_single(ACCESS_KEY_ID, SECRET_ACCESS_KEY));
        b.build()
    };
    let listener = TcpListener::bind(addr).await.map_err(serve_err)?;
    let addr = listener.local_addr().map_err(serve_err)?;
    let (tx, mut rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let http = ConnBuilder::new(TokioExecutor::new());
        // Connections live in this set so shutdown ends them too.
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                _ = &mut rx => break,
                accepted = listener.accept() => match accepted {
                    Ok((socket, _)) => {
                        let conn = http.serve_connection(TokioIo::new(socket), service.clone()).into_owned();
                        conns.spawn(async move {
                            let _ = conn.await;
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "embedded S3: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        conns.shutdown().await;
    });
    tracing::info!(endpoint = %format!("http://{addr}"), root = %root.display(), "embedded S3 endpoint serving");
    Ok(EmbeddedS3 { addr, shutdown: Some(tx), task: Some(task) })
}
