//! Two in-process sims, `dev` and `prod`, under `dir`, and a kubeconfig with
//! a context for each (shared by the promotion, race and integrity tests).
//! Its user is the ServiceAccount `default/modelship` by token, which the
//! integrated registry needs (it takes no client certificates), bound to
//! `cluster-admin` for now.

use std::path::{Path, PathBuf};

use modelship::sim::{SimConfig, SimServer};

pub async fn dev_and_prod(dir: &Path) -> (SimServer, SimServer, PathBuf) {
    let dev = modelship::sim::start(SimConfig::new(dir.join("dev"), "dev")).await.unwrap();
    let prod = modelship::sim::start(SimConfig::new(dir.join("prod"), "prod")).await.unwrap();
    let kubeconfig = dir.join("kubeconfig");
    let entry = |sim: &SimServer| {
        sim.ensure_service_account("default", "modelship", Some("cluster-admin")).unwrap();
        sim.service_account_entry("default", "modelship", 24 * 3600).unwrap()
    };
    std::fs::write(&kubeconfig, modelship::sim::kubeconfig_yaml(&[entry(&dev), entry(&prod)])).unwrap();
    (dev, prod, kubeconfig)
}
