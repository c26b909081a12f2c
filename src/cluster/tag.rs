//! Point an ImageStream tag at an image by digest, the way `oc tag
//! --source=docker` does (openshift/oc pkg/cli/tag/tag.go, `TagOptions.Run`):
//! `PUT` the ImageStreamTag `STREAM:TAG` without a resourceVersion (the
//! server writes the stream's spec tag, creating stream and tag as needed);
//! on 404, 405 or 403 `POST` it; where the server still forbids (403) or does
//! not allow (405) ImageStreamTag writes, edit the ImageStream's `spec.tags`.
//! The tag is `from: {kind: DockerImage, name: REG/NS/NAME@sha256:...}` with
//! `referencePolicy: Source` and generation 0 (the server sets a new
//! generation and its import controller records the image).

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use serde_json::{Value, json};

/// A tag or stream could not be written.
#[derive(Debug, thiserror::Error)]
pub enum TagError {
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{what}: gave up after {attempts} conflicting writes")]
    Contended { what: String, attempts: u32 },
}

/// Optimistic-update attempts before giving up on a contended tag.
const ATTEMPTS: u32 = 10;

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("image.openshift.io", "v1", kind), plural)
}

fn api(client: &kube::Client, namespace: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, &resource(kind, plural))
}

/// The `tag` object both ImageStreamTag and `ImageStream.spec.tags[]` carry,
/// as `oc tag` builds it for a DockerImage source.
fn tag_reference(tag: &str, image: &str) -> Value {
    json!({
        "name": tag,
        "from": { "kind": "DockerImage", "name": image },
        "generation": 0,
        "importPolicy": {},
        "referencePolicy": { "type": "Source" },
    })
}

fn code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// Make `namespace/stream:tag` point at `image` (`REG/NS/NAME@sha256:...`).
/// Repeating it is harmless: the same spec tag is written again.
pub async fn point_tag(
    client: &kube::Client,
    namespace: &str,
    stream: &str,
    tag: &str,
    image: &str,
) -> Result<(), TagError> {
    let istags = api(client, namespace, "ImageStreamTag", "imagestreamtags");
    let name = format!("{stream}:{tag}");
    let err = |source: kube::Error| TagError::Api { what: format!("ImageStreamTag {namespace}/{name}"), source };
    let mut obj = DynamicObject::new(&name, &resource("ImageStreamTag", "imagestreamtags")).within(namespace);
    obj.data = json!({ "tag": tag_reference(tag, image) });
    for _ in 0..ATTEMPTS {
        let refused = match istags.replace(&name, &PostParams::default(), &obj).await {
            Ok(_) => return Ok(()),
            // The server retries its own conflicts; one that still reaches
            // us is worth another try.
            Err(e) if code(&e) == Some(409) => continue,
            Err(e) if matches!(code(&e), Some(403..=405)) => e,
            Err(e) => return Err(err(e)),
        };
        match istags.create(&PostParams::default(), &obj).await {
            Ok(_) => return Ok(()),
            // Created by someone else between our PUT and POST: PUT again.
            Err(e) if code(&e) == Some(409) => continue,
            Err(e) if matches!(code(&e), Some(403 | 405)) => {
                tracing::info!(
                    namespace,
                    stream,
                    tag,
                    "ImageStreamTag writes refused ({}, then {}); editing the ImageStream's spec.tags",
                    code(&refused).unwrap_or(0),
                    code(&e).unwrap_or(0)
                );
                return match edit_stream(client, namespace, stream, tag, image).await {
                    // Refused both ways: the ImageStreamTag refusal is the one
                    // to act on (the fallback is for servers without them).
                    Err(TagError::Api { source, .. }) if code(&source) == Some(403) && code(&refused) == Some(403) => {
                        Err(err(refused))
                    }
                    other => other,
                };
            }
            Err(e) => return Err(err(e)),
        }
    }
    Err(TagError::Contended { what: format!("ImageStreamTag {namespace}/{name}"), attempts: ATTEMPTS })
}

/// The fallback: set (or add) `spec.tags[name == tag]` on the ImageStream,
/// creating the stream if it does not exist.
async fn edit_stream(
    client: &kube::Client,
    namespace: &str,
    stream: &str,
    tag: &str,
    image: &str,
) -> Result<(), TagError> {
    let streams = api(client, namespace, "ImageStream", "imagestreams");
    let err = |source: kube::Error| TagError::Api { what: format!("ImageStream {namespace}/{stream}"), source };
    for _ in 0..ATTEMPTS {
        let result = match streams.get_opt(stream).await.map_err(err)? {
            Some(mut obj) => {
                let tags = obj.data.pointer_mut("/spec/tags").and_then(Value::as_array_mut);
                let wanted = tag_reference(tag, image);
                match tags {
                    Some(tags) => match tags.iter_mut().find(|t| t["name"] == tag) {
                        Some(t) if t.pointer("/from/name").and_then(Value::as_str) == Some(image) => return Ok(()),
                        Some(t) => *t = wanted,
                        None => tags.push(wanted),
                    },
                    None => {
                        if !obj.data["spec"].is_object() {
                            obj.data["spec"] = json!({});
                        }
                        obj.data["spec"]["tags"] = json!([wanted]);
                    }
                }
                streams.replace(stream, &PostParams::default(), &obj).await.map(|_| ())
            }
            None => {
                let mut obj = DynamicObject::new(stream, &resource("ImageStream", "imagestreams")).within(namespace);
                obj.data = json!({ "spec": { "tags": [tag_reference(tag, image)] } });
                streams.create(&PostParams::default(), &obj).await.map(|_| ())
            }
        };
        match result {
            Ok(()) => return Ok(()),
            Err(e) if matches!(code(&e), Some(409)) => continue,
            Err(e) => return Err(err(e)),
        }
    }
    Err(TagError::Contended { what: format!("ImageStream {namespace}/{stream}"), attempts: ATTEMPTS })
}

/// `status.publicDockerImageRepository` of the stream: where clients outside
/// the cluster reach its integrated registry. openshift-apiserver fills it on
/// every ImageStream it returns when the registry is exposed (the ImageStream
/// REST decorator), so for a stream that does not exist yet a dry-run create
/// answers it without writing anything. `None`: the cluster does not expose
/// its registry (or serves no image.openshift.io).
pub async fn public_repository(
    client: &kube::Client,
    namespace: &str,
    stream: &str,
) -> Result<Option<String>, TagError> {
    let streams = api(client, namespace, "ImageStream", "imagestreams");
    let err = |source: kube::Error| TagError::Api { what: format!("ImageStream {namespace}/{stream}"), source };
    let obj = match streams.get_opt(stream).await {
        Ok(Some(obj)) => obj,
        Ok(None) => {
            let mut new = DynamicObject::new(stream, &resource("ImageStream", "imagestreams"));
            new.data = json!({ "spec": {} });
            streams.create(&PostParams { dry_run: true, ..Default::default() }, &new).await.map_err(err)?
        }
        // No image.openshift.io on this cluster.
        Err(e) if code(&e) == Some(404) => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    Ok(obj.data.pointer("/status/publicDockerImageRepository").and_then(Value::as_str).map(str::to_string))
}
