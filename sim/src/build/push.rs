//! The image a build makes: its config from the Dockerfile's instructions,
//! and the push of layer, config and manifest to the sim's registry.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::super::SimApi;
use super::super::dockerfile::Instruction;
use super::layer::Layer;
use super::now;

/// The image config the Dockerfile's instructions describe.
#[derive(Debug, Default)]
pub(super) struct ImageSpec {
    pub(super) base: String,
    pub(super) env: Vec<(String, String)>,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) cmd: Option<Vec<String>>,
    pub(super) entrypoint: Option<Vec<String>>,
    pub(super) user: Option<String>,
    pub(super) workdir: String,
    pub(super) exposed: BTreeSet<String>,
    /// `(sources, absolute destination)` in order.
    pub(super) copies: Vec<(Vec<String>, String)>,
    pub(super) history: Vec<String>,
}

impl ImageSpec {
    pub(super) fn apply(&mut self, ins: &Instruction) {
        match ins {
            Instruction::Env(pairs) => {
                for (k, v) in pairs {
                    self.env.retain(|(ek, _)| ek != k);
                    self.env.push((k.clone(), v.clone()));
                }
            }
            Instruction::Label(pairs) => self.labels.extend(pairs.iter().cloned()),
            Instruction::Cmd(c) => self.cmd = Some(c.clone()),
            Instruction::Entrypoint(e) => {
                self.entrypoint = Some(e.clone());
                // Docker resets CMD inherited from an earlier ENTRYPOINT.
            }
            Instruction::User(u) => self.user = Some(u.clone()),
            Instruction::Workdir(w) => self.workdir = join_abs(&self.workdir, w),
            Instruction::Expose(ports) => self.exposed.extend(ports.iter().cloned()),
            Instruction::Copy { sources, dest } => {
                let mut abs = join_abs(&self.workdir, dest);
                if dest.ends_with('/') && !abs.ends_with('/') {
                    abs.push('/');
                }
                self.copies.push((sources.clone(), abs));
            }
            _ => {}
        }
        if !matches!(ins, Instruction::Arg { .. }) {
            self.history.push(format!("{ins:?}"));
        }
    }
}

fn join_abs(base: &str, p: &str) -> String {
    if p.starts_with('/') {
        p.to_string()
    } else if base.is_empty() {
        format!("/{p}")
    } else {
        format!("{}/{p}", base.trim_end_matches('/'))
    }
}

/// Push layer, config and manifest; the manifest digest and the config's
/// `config` section.
pub(super) async fn push(
    api: &SimApi,
    repo: &str,
    layer_path: &Path,
    layer: &Layer,
    image: &ImageSpec,
    build: &str,
) -> Result<(String, Value), String> {
    let (digest, size) = api.registry.put_blob_from_file(repo, layer_path).await.map_err(|e| e.to_string())?;
    if digest != layer.digest || size != layer.size {
        return Err(format!(
            "layer changed while pushing: wrote {} ({} bytes), stored {digest} ({size})",
            layer.digest, layer.size
        ));
    }
    let mut config = json!({
        "Env": image.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "Labels": image.labels,
    });
    if let Some(c) = &image.cmd {
        config["Cmd"] = json!(c);
    }
    if let Some(e) = &image.entrypoint {
        config["Entrypoint"] = json!(e);
    }
    if let Some(u) = &image.user {
        config["User"] = json!(u);
    }
    if !image.workdir.is_empty() {
        config["WorkingDir"] = json!(image.workdir);
    }
    if !image.exposed.is_empty() {
        config["ExposedPorts"] = Value::Object(image.exposed.iter().map(|p| (p.clone(), json!({}))).collect());
    }
    let created = now();
    let mut history: Vec<Value> =
        image.history.iter().map(|h| json!({ "created": created, "created_by": h, "empty_layer": true })).collect();
    history.push(json!({
        "created": created,
        "created_by": format!("modelship sim build {build}: build context layer"),
        "comment": format!("simulated build: base image {} not included, RUN steps not executed", image.base),
    }));
    let blob = json!({
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": [layer.diff_id] },
        "history": history,
    });
    let config_bytes = serde_json::to_vec(&blob).map_err(|e| e.to_string())?;
    let config_digest = api.registry.put_blob(repo, &config_bytes).await.map_err(|e| e.to_string())?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_bytes.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer.digest,
            "size": layer.size,
        }],
        "annotations": {
            "io.openshift.build.name": build,
            "io.modelship.sim.base-image": image.base,
            "io.modelship.sim.note": "simulated build: base image layers not included",
        },
    });
    let bytes = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    api.registry
        .put_manifest(repo, &digest, "application/vnd.oci.image.manifest.v1+json", &bytes)
        .await
        .map_err(|e| e.to_string())?;
    Ok((digest, config))
}
