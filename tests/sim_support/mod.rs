//! Two in-process sims, `dev` and `prod`, under `dir`, and a kubeconfig with
//! a context for each (shared by the promotion, race and integrity tests).

use std::path::{Path, PathBuf};

use modelship::sim::{SimConfig, SimServer};

pub async fn dev_and_prod(dir: &Path) -> (SimServer, SimServer, PathBuf) {
    let dev = modelship::sim::start(SimConfig::new(dir.join("dev"), "dev")).await.unwrap();
    let prod = modelship::sim::start(SimConfig::new(dir.join("prod"), "prod")).await.unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        modelship::sim::kubeconfig_yaml(&[("dev".into(), dev.url()), ("prod".into(), prod.url())]),
    )
    .unwrap();
    (dev, prod, kubeconfig)
}
