//! The sim's internal registry: the OCI distribution API under `/v2/` (blob
//! HEAD/GET/upload incl. chunked and cross-repo mount; manifest
//! GET/HEAD/PUT by tag and digest), blobs stored by digest in the data dir.

use std::path::PathBuf;

/// Content-addressed storage shared by the registry routes and the build
/// controller (which pushes the images it builds).
#[derive(Debug, Clone)]
pub struct RegistryStore {
    pub root: PathBuf,
}

/// The `/v2/` routes, to be nested by the sim server.
pub fn router(_store: RegistryStore) -> axum::Router {
    todo!("registry helper")
}
