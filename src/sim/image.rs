//! `image.openshift.io/v1`: ImageStreams (status tags filled by the build
//! controller) and ImageStreamTags (`NAME:TAG`, one object per tag the
//! controller has pushed, read-only for clients as far as the sim goes).

use serde_json::{Value, json};

use super::SimApi;
use super::resource::{Column, ResourceTable, ResourceType};
use super::status::ApiError;
use super::store::{Scope, WriteOptions};

pub const GROUP: &str = "image.openshift.io";
/// Items kept per tag in `status.tags[].items` (OpenShift keeps history).
const TAG_HISTORY: usize = 10;

pub const IMAGESTREAMS: ResourceType = ResourceType {
    short_names: &["is"],
    categories: &["all"],
    subresources: &["status"],
    generation: true,
    columns: &[
        Column::Path { name: "Image Repository", path: "status.publicDockerImageRepository" },
        Column::Path { name: "Tags", path: "status.tags.0.tag" },
    ],
    ..ResourceType::namespaced(GROUP, "v1", "ImageStream", "imagestreams", "imagestream")
};

pub const IMAGESTREAMTAGS: ResourceType = ResourceType {
    short_names: &["istag"],
    verbs: &["delete", "get", "list", "watch"],
    columns: &[
        Column::Path { name: "Image Reference", path: "image.dockerImageReference" },
        Column::Path { name: "Updated", path: "metadata.creationTimestamp" },
    ],
    ..ResourceType::namespaced(GROUP, "v1", "ImageStreamTag", "imagestreamtags", "imagestreamtag")
};

pub fn register(table: &mut ResourceTable) {
    table.add(IMAGESTREAMS);
    table.add(IMAGESTREAMTAGS);
}

/// What the build controller pushed, to be recorded on the stream.
pub struct PushedImage<'a> {
    /// `127.0.0.1:PORT/NS/NAME`
    pub repository: &'a str,
    pub digest: &'a str,
    /// The image config (`config` section of the OCI config blob).
    pub config: &'a Value,
    pub layer_size: u64,
}

/// Record `image` as the newest item of `stream:tag`, set the stream's
/// repository fields, and write the ImageStreamTag, as OpenShift's image
/// registry does after a push.
pub fn record_push(api: &SimApi, ns: &str, stream: &str, tag: &str, image: &PushedImage<'_>) -> Result<(), ApiError> {
    let now = jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or_else(|_| jiff::Timestamp::now()).to_string();
    let reference = format!("{}@{}", image.repository, image.digest);
    let opts = WriteOptions { scope: Scope::Status, ..WriteOptions::default() };
    let updated = api.store.modify(&IMAGESTREAMS, ns, stream, &opts, |old| {
        let mut obj = old.clone();
        let generation = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
        let mut tags: Vec<Value> = old.pointer("/status/tags").and_then(Value::as_array).cloned().unwrap_or_default();
        let item = json!({
            "created": now,
            "dockerImageReference": reference,
            "image": image.digest,
            "generation": generation,
        });
        match tags.iter_mut().find(|t| t.get("tag").and_then(Value::as_str) == Some(tag)) {
            Some(t) => {
                let mut items: Vec<Value> = t.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
                items.retain(|i| i.get("image").and_then(Value::as_str) != Some(image.digest));
                items.insert(0, item);
                items.truncate(TAG_HISTORY);
                t["items"] = json!(items);
            }
            None => tags.push(json!({ "tag": tag, "items": [item] })),
        }
        obj["status"] = json!({
            "dockerImageRepository": image.repository,
            "publicDockerImageRepository": image.repository,
            "tags": tags,
        });
        Ok(obj)
    })?;
    let generation = updated.pointer("/metadata/generation").cloned().unwrap_or(json!(1));
    let istag = json!({
        "apiVersion": format!("{GROUP}/v1"),
        "kind": "ImageStreamTag",
        "metadata": { "name": format!("{stream}:{tag}"), "namespace": ns },
        "generation": generation,
        "lookupPolicy": { "local": false },
        // Strict schemas want the spec tag; a push-only tag gets a minimal one.
        "tag": { "name": tag, "referencePolicy": { "type": "Source" } },
        "image": {
            "metadata": { "name": image.digest, "creationTimestamp": now },
            "dockerImageReference": reference,
            "dockerImageManifestMediaType": "application/vnd.oci.image.manifest.v1+json",
            "dockerImageMetadata": {
                "kind": "DockerImage",
                "apiVersion": "image.openshift.io/1.0",
                "Architecture": "amd64",
                "Size": image.layer_size,
                "Config": image.config,
            },
        },
    });
    let name = format!("{stream}:{tag}");
    match api.store.get(&IMAGESTREAMTAGS, ns, &name) {
        Some(_) => api.store.modify(&IMAGESTREAMTAGS, ns, &name, &WriteOptions::default(), |_| Ok(istag)).map(|_| ()),
        None => api.store.create(&IMAGESTREAMTAGS, ns, istag, false).map(|_| ()),
    }
}
