//! `image.openshift.io/v1`: ImageStreams, Images, ImageStreamTags and the
//! image import controller, as openshift-apiserver and
//! openshift-controller-manager serve them.
//!
//! - An ImageStream's `status.tags` is written by pushes (the build
//!   controller, [`record_push`]) and by imports; a pushed image is also
//!   recorded as a cluster-scoped Image named by its digest.
//! - ImageStreamTags are not stored: they are views of a stream's tag
//!   (pkg/image/apiserver/registry/imagestreamtag/rest.go). `GET STREAM:TAG`
//!   needs an image in the status tag (404 otherwise); its resourceVersion
//!   is the stream's. `POST` adds a spec tag (409 AlreadyExists if the spec
//!   tag exists), `PUT` sets or adds it (creating the stream when missing;
//!   a `resourceVersion` is a precondition on the stream, none means "write
//!   anyway"), `PATCH` is a merge patch of the view, `DELETE` removes the
//!   spec and status tag. No watch.
//! - The import controller imports every spec tag `from: {kind:
//!   DockerImage}` whose generation has neither an image nor a failed
//!   condition yet: an image in the sim's own registry becomes the tag's
//!   newest item; anything else a condition `ImportSuccess: "False"`, the
//!   tag keeping its items (`items: null` when it never had one). The sim
//!   imports only from its own registry (it has no network access to
//!   others; a real cluster would pull from there).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::SimApi;
use super::resource::{Column, ResourceTable, ResourceType};
use super::server::SubresourceRequest;
use super::status::{ApiError, Cause, delete_success};
use super::store::{Scope, WriteOptions, labels_of, resource_version_of};

pub const GROUP: &str = "image.openshift.io";
/// Items kept per tag in `status.tags[].items` (OpenShift keeps history).
const TAG_HISTORY: usize = 10;
/// Bodies of ImageStreamTag writes above this are refused.
const MAX_BODY: usize = 3 * 1024 * 1024;

pub const IMAGESTREAMS: ResourceType = ResourceType {
    short_names: &["is"],
    categories: &["all"],
    subresources: &["status"],
    generation: true,
    columns: &[
        Column::Path { name: "Image Repository", path: "status.publicDockerImageRepository" },
        Column::Path { name: "Tags", path: "status.tags.0.tag" },
    ],
    decorate: Some(decorate_stream),
    ..ResourceType::namespaced(GROUP, "v1", "ImageStream", "imagestreams", "imagestream")
};

/// openshift-apiserver's ImageStream strategy `Decorate` sets
/// `status.dockerImageRepository` from the registry's internal hostname and
/// `status.publicDockerImageRepository` from its external one on every stream
/// it returns, created or read (origin
/// pkg/image/apiserver/registry/imagestream/strategy.go). The sim's registry
/// is reached at the sim's own address from inside and outside alike.
fn decorate_stream(api: &SimApi, obj: &mut Value) {
    let meta = |k: &str| obj.pointer(&format!("/metadata/{k}")).and_then(Value::as_str).unwrap_or("").to_string();
    let repository = format!("{}/{}/{}", api.registry_host, meta("namespace"), meta("name"));
    if !obj.get("status").is_some_and(Value::is_object) {
        obj["status"] = json!({});
    }
    obj["status"]["dockerImageRepository"] = json!(repository);
    obj["status"]["publicDockerImageRepository"] = json!(repository);
}

/// Served by [`istag_request`], never stored.
pub const IMAGESTREAMTAGS: ResourceType = ResourceType {
    short_names: &["istag"],
    verbs: &["create", "delete", "get", "list", "patch", "update"],
    columns: &[
        Column::Path { name: "Image Reference", path: "image.dockerImageReference" },
        Column::Path { name: "Updated", path: "metadata.creationTimestamp" },
    ],
    ..ResourceType::namespaced(GROUP, "v1", "ImageStreamTag", "imagestreamtags", "imagestreamtag")
};

pub const IMAGES: ResourceType = ResourceType {
    namespaced: false,
    columns: &[Column::Path { name: "Image Reference", path: "dockerImageReference" }],
    ..ResourceType::namespaced(GROUP, "v1", "Image", "images", "image")
};

pub fn register(table: &mut ResourceTable) {
    table.add(IMAGESTREAMS);
    table.add(IMAGESTREAMTAGS);
    table.add(IMAGES);
    table.resource_handler(GROUP, "imagestreamtags", Arc::new(|api, req| Box::pin(istag_request(api, req))));
}

fn now() -> String {
    jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or_else(|_| jiff::Timestamp::now()).to_string()
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

/// The cluster-scoped Image `digest`, as the registry records a pushed or
/// imported image (kept if it exists: images are immutable).
fn record_image(api: &SimApi, digest: &str, reference: &str, media_type: &str, config: &Value, size: u64) {
    if api.store.get(&IMAGES, "", digest).is_some() {
        return;
    }
    let image = json!({
        "apiVersion": format!("{GROUP}/v1"),
        "kind": "Image",
        "metadata": { "name": digest, "annotations": { "image.openshift.io/dockerLayersOrder": "ascending" } },
        "dockerImageReference": reference,
        "dockerImageManifestMediaType": media_type,
        "dockerImageMetadataVersion": "1.0",
        "dockerImageMetadata": {
            "kind": "DockerImage",
            "apiVersion": "image.openshift.io/1.0",
            "Architecture": config.get("architecture").cloned().unwrap_or(json!("amd64")),
            "Size": size,
            "Config": config.get("config").cloned().unwrap_or(json!({})),
        },
    });
    if let Err(e) = api.store.create(&IMAGES, "", image, false)
        && e.code != 409
    {
        tracing::warn!(image = digest, error = %e, "sim: cannot record the image");
    }
}

/// Put `event` first in `tag`'s status items (an older event of the same
/// image goes), clearing the tag's conditions.
fn add_tag_event(status_tags: &mut Vec<Value>, tag: &str, event: Value) {
    let image = event.get("image").cloned();
    let entry = match status_tags.iter_mut().position(|t| t.get("tag").and_then(Value::as_str) == Some(tag)) {
        Some(i) => &mut status_tags[i],
        None => {
            status_tags.push(json!({ "tag": tag, "items": null }));
            status_tags.last_mut().expect("just pushed")
        }
    };
    let mut items: Vec<Value> = entry.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
    items.retain(|i| i.get("image") != image.as_ref());
    items.insert(0, event);
    items.truncate(TAG_HISTORY);
    entry["items"] = json!(items);
    entry.as_object_mut().map(|o| o.remove("conditions"));
}

/// Record `image` as the newest item of `stream:tag`, set the stream's
/// repository fields, and record the Image, as OpenShift's image registry
/// does after a push.
pub fn record_push(api: &SimApi, ns: &str, stream: &str, tag: &str, image: &PushedImage<'_>) -> Result<(), ApiError> {
    let reference = format!("{}@{}", image.repository, image.digest);
    record_image(
        api,
        image.digest,
        &reference,
        "application/vnd.oci.image.manifest.v1+json",
        &json!({ "architecture": "amd64", "config": image.config }),
        image.layer_size,
    );
    let opts = WriteOptions { scope: Scope::Status, ..WriteOptions::default() };
    api.store.modify(&IMAGESTREAMS, ns, stream, &opts, |old| {
        let mut obj = old.clone();
        let generation = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
        let mut tags: Vec<Value> = old.pointer("/status/tags").and_then(Value::as_array).cloned().unwrap_or_default();
        let event = json!({ "created": now(), "dockerImageReference": reference, "image": image.digest, "generation": generation });
        add_tag_event(&mut tags, tag, event);
        obj["status"] = json!({
            "dockerImageRepository": image.repository,
            "publicDockerImageRepository": image.repository,
            "tags": tags,
        });
        Ok(obj)
    })?;
    Ok(())
}

/// `STREAM:TAG` split, or the API server's 400.
fn name_and_tag(id: &str) -> Result<(&str, &str), ApiError> {
    match id.split_once(':') {
        Some((s, t)) if !s.is_empty() && !t.is_empty() && !t.contains(':') => Ok((s, t)),
        _ => Err(ApiError::bad_request("ImageStreamTags must be retrieved with <name>:<tag>")),
    }
}

fn status_tag<'a>(is: &'a Value, tag: &str) -> Option<&'a Value> {
    is.pointer("/status/tags")?.as_array()?.iter().find(|t| t.get("tag").and_then(Value::as_str) == Some(tag))
}

fn spec_tag<'a>(is: &'a Value, tag: &str) -> Option<&'a Value> {
    is.pointer("/spec/tags")?.as_array()?.iter().find(|t| t.get("name").and_then(Value::as_str) == Some(tag))
}

/// The newest event of `tag` that names an image (`LatestTaggedImage`).
fn latest_event<'a>(is: &'a Value, tag: &str) -> Option<&'a Value> {
    status_tag(is, tag)?
        .get("items")?
        .as_array()?
        .first()
        .filter(|e| e.get("image").and_then(Value::as_str).is_some_and(|i| !i.is_empty()))
}

fn istag_not_found(id: &str) -> ApiError {
    ApiError::not_found(&IMAGESTREAMTAGS, id)
}

/// The ImageStreamTag view of `tag` in `is` (`newISTag`); without an image
/// it is a 404 unless `allow_empty` (the answer to a write).
fn view(api: &SimApi, is: &Value, tag: &str, allow_empty: bool) -> Result<Value, ApiError> {
    let stream = is.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    let id = format!("{stream}:{tag}");
    let event = latest_event(is, tag);
    if event.is_none() && !allow_empty {
        return Err(istag_not_found(&id));
    }
    let image = match event.and_then(|e| e.get("image")).and_then(Value::as_str) {
        Some(digest) => match api.store.get(&IMAGES, "", digest) {
            Some(mut i) => {
                i.as_object_mut().map(|o| {
                    o.remove("dockerImageManifest");
                    o.remove("dockerImageConfig")
                });
                i
            }
            None if allow_empty => json!({ "metadata": { "name": digest } }),
            None => return Err(ApiError::not_found(&IMAGES, digest)),
        },
        None => json!({ "metadata": {} }),
    };
    let spec = spec_tag(is, tag).cloned();
    let mut annotations = serde_json::Map::new();
    if let Some(a) = spec.as_ref().and_then(|t| t.get("annotations")).and_then(Value::as_object) {
        annotations.extend(a.clone());
    }
    let created = event
        .and_then(|e| e.get("created"))
        .or_else(|| is.pointer("/metadata/creationTimestamp"))
        .cloned()
        .unwrap_or(Value::Null);
    let mut image = image;
    // `ResolveReferenceForTagEvent`: a Local reference policy pulls through
    // the stream's own repository.
    if let Some(e) = event {
        let local =
            spec.as_ref().and_then(|t| t.pointer("/referencePolicy/type")).and_then(Value::as_str) == Some("Local");
        let repo = is.pointer("/status/dockerImageRepository").and_then(Value::as_str).unwrap_or("");
        image["dockerImageReference"] = match (local, e.get("image").and_then(Value::as_str)) {
            (true, Some(d)) if !repo.is_empty() => json!(format!("{repo}@{d}")),
            _ => e.get("dockerImageReference").cloned().unwrap_or(Value::Null),
        };
    }
    let mut meta = json!({
        "name": id,
        "namespace": is.pointer("/metadata/namespace").cloned().unwrap_or(Value::Null),
        "uid": is.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
        "resourceVersion": is.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null),
        "creationTimestamp": created,
        "annotations": annotations,
    });
    if let Some(l) = is.pointer("/metadata/labels").filter(|l| l.as_object().is_some_and(|m| !m.is_empty())) {
        meta["labels"] = l.clone();
    }
    let mut out = json!({
        "apiVersion": format!("{GROUP}/v1"),
        "kind": "ImageStreamTag",
        "metadata": meta,
        "tag": spec.unwrap_or(Value::Null),
        "generation": event.and_then(|e| e.get("generation")).cloned().unwrap_or(json!(0)),
        "lookupPolicy": is.pointer("/spec/lookupPolicy").cloned().unwrap_or(json!({ "local": false })),
        "image": image,
    });
    if let Some(c) = status_tag(is, tag).and_then(|t| t.get("conditions")).filter(|c| !c.is_null()) {
        out["conditions"] = c.clone();
    }
    Ok(out)
}

async fn istag_request(api: SimApi, req: SubresourceRequest) -> Response {
    let as_table =
        req.headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("as=Table"));
    let include = req.query.include_object.clone();
    let respond = |code: StatusCode, items: Vec<Value>, single: bool, rv: u64| {
        if as_table {
            return super::server::table_response(&IMAGESTREAMTAGS, &items, rv, include.as_deref(), true);
        }
        let body = if single {
            items.into_iter().next().unwrap_or(Value::Null)
        } else {
            json!({
                "kind": "ImageStreamTagList",
                "apiVersion": format!("{GROUP}/v1"),
                "metadata": { "resourceVersion": rv.to_string() },
                "items": items,
            })
        };
        (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
    };
    let result = async {
        let ns = req.info.namespace.clone().unwrap_or_default();
        let rv_of = |v: &Value| resource_version_of(v).unwrap_or(0);
        match (req.info.verb.as_str(), req.info.name.as_deref()) {
            ("get", Some(id)) => {
                let (stream, tag) = name_and_tag(id)?;
                let is = get_stream(&api, &ns, stream)?;
                let v = view(&api, &is, tag, false)?;
                Ok(respond(StatusCode::OK, vec![v.clone()], true, rv_of(&v)))
            }
            ("list", None) => {
                let selector = super::selector::LabelSelector::parse(&req.query.label_selector)
                    .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
                let (streams, rv) = api.store.list(&IMAGESTREAMS, req.info.namespace.as_deref());
                let mut items = Vec::new();
                for is in streams.iter().filter(|is| selector.matches(&labels_of(is))) {
                    for t in is.pointer("/status/tags").and_then(Value::as_array).into_iter().flatten() {
                        if let Some(tag) = t.get("tag").and_then(Value::as_str)
                            && let Ok(v) = view(&api, is, tag, false)
                        {
                            items.push(v);
                        }
                    }
                }
                Ok(respond(StatusCode::OK, items, false, rv))
            }
            ("create", None) => {
                let body = read_body(req.body, &req.headers).await?;
                let id = body.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
                let (code, v) = write(&api, &ns, &id, body, Write::Create, req.query.dry_run)?;
                Ok(respond(code, vec![v], true, 0))
            }
            ("update", Some(id)) => {
                let body = read_body(req.body, &req.headers).await?;
                if let Some(n) = body.pointer("/metadata/name").and_then(Value::as_str).filter(|n| *n != id) {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({n}) does not match the name on the URL ({id})"
                    )));
                }
                let (code, v) = write(&api, &ns, id, body, Write::Update, req.query.dry_run)?;
                Ok(respond(code, vec![v], true, 0))
            }
            ("patch", Some(id)) => {
                let ct = req.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
                let ct = ct.split(';').next().unwrap_or("").trim().to_string();
                if ct != "application/merge-patch+json" && ct != "application/strategic-merge-patch+json" {
                    return Err(ApiError::unsupported_media_type(&ct));
                }
                let patch = read_body(req.body, &req.headers).await?;
                let (stream, tag) = name_and_tag(id)?;
                let mut current = view(&api, &get_stream(&api, &ns, stream)?, tag, false)?;
                json_patch::merge(&mut current, &patch);
                let (code, v) = write(&api, &ns, id, current, Write::Update, req.query.dry_run)?;
                Ok(respond(code, vec![v], true, 0))
            }
            ("delete", Some(id)) => {
                let (stream, tag) = name_and_tag(id)?;
                let uid = delete_tag(&api, &ns, stream, tag, id, req.query.dry_run)?;
                let body = delete_success(&IMAGESTREAMTAGS, id, &uid);
                Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response())
            }
            _ => Err(ApiError::method_not_allowed("the server does not allow this method on the requested resource")),
        }
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

fn get_stream(api: &SimApi, ns: &str, stream: &str) -> Result<Value, ApiError> {
    api.store.get(&IMAGESTREAMS, ns, stream).ok_or_else(|| ApiError::not_found(&IMAGESTREAMS, stream))
}

async fn read_body(body: Body, headers: &axum::http::HeaderMap) -> Result<Value, ApiError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
    if ct.starts_with("application/yaml") {
        let text = std::str::from_utf8(&bytes).map_err(|_| ApiError::bad_request("the body is not UTF-8"))?;
        return crate::yaml::to_json(text)
            .map_err(|e| ApiError::bad_request(format!("the body of the request is not valid YAML: {e}")));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the body of the request is not valid JSON: {e}")))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Write {
    Create,
    Update,
}

/// `ValidateImageStreamTag` for what the sim relies on: the name, and a
/// spec tag's `from` kind and reference policy.
fn validate_istag(id: &str, body: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    if name_and_tag(id).is_err() {
        causes.push(Cause::invalid("metadata.name", id, "must be of the form <stream_name>:<tag>"));
    }
    if let Some(tag) = body.get("tag").filter(|t| !t.is_null()) {
        if let Some(from) = tag.get("from").filter(|f| !f.is_null()) {
            let kind = from.get("kind").and_then(Value::as_str).unwrap_or("");
            if !matches!(kind, "DockerImage" | "ImageStreamTag" | "ImageStreamImage") {
                causes.push(Cause::invalid(
                    "tag.from.kind",
                    kind,
                    "valid values are 'DockerImage', 'ImageStreamImage', 'ImageStreamTag'",
                ));
            }
            let name = from.get("name").and_then(Value::as_str).unwrap_or("");
            if name.is_empty() {
                causes.push(Cause::required("tag.from.name"));
            } else if kind == "DockerImage" && super::reference::Reference::parse_normalized(name).is_err() {
                causes.push(Cause::invalid("tag.from.name", name, "invalid reference format"));
            }
        }
        let policy = tag.pointer("/referencePolicy/type").and_then(Value::as_str).unwrap_or("");
        if !matches!(policy, "Source" | "Local") {
            causes.push(Cause::invalid("tag.referencePolicy.type", policy, "valid values are \"Source\", \"Local\""));
        }
    }
    causes
}

/// Create or update the spec tag behind ImageStreamTag `id` from `body`
/// (`REST.Create` / `REST.update`); the status code and the view.
fn write(
    api: &SimApi,
    ns: &str,
    id: &str,
    body: Value,
    op: Write,
    dry_run: bool,
) -> Result<(StatusCode, Value), ApiError> {
    let causes = validate_istag(id, &body);
    if !causes.is_empty() {
        return Err(ApiError::invalid(&IMAGESTREAMTAGS, id, causes));
    }
    let (stream, tag) = name_and_tag(id)?;
    let precondition = body.pointer("/metadata/resourceVersion").and_then(Value::as_str).filter(|s| !s.is_empty());
    let annotations = body.pointer("/metadata/annotations").cloned().filter(|a| !a.is_null());
    let new_tag = body.get("tag").filter(|t| !t.is_null()).cloned().map(|mut t| {
        // PrepareForCreate / update: the tag is named after the istag, and
        // the istag's annotations are the spec tag's.
        t["name"] = json!(tag);
        if op == Write::Update || annotations.is_some() {
            t["annotations"] = annotations.clone().unwrap_or(Value::Null);
        }
        t.as_object_mut().map(|o| o.entry("annotations").or_insert(Value::Null));
        t.as_object_mut().map(|o| o.entry("generation").or_insert(Value::Null));
        t
    });
    let existing = api.store.get(&IMAGESTREAMS, ns, stream);
    let existed = existing.as_ref().is_some_and(|is| spec_tag(is, tag).is_some());
    match (op, &existing) {
        (Write::Create, _) if existed => return Err(ApiError::already_exists(&IMAGESTREAMTAGS, id)),
        (Write::Update, None) if precondition.is_some() => return Err(istag_not_found(id)),
        (Write::Update, Some(is))
            if precondition
                .is_some_and(|p| Some(p) != is.pointer("/metadata/resourceVersion").and_then(Value::as_str)) =>
        {
            let rv = is.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or("");
            let mut e = ApiError::conflict(&IMAGESTREAMTAGS, id);
            e.message = format!(
                "Operation cannot be fulfilled on imagestreamtags.image.openshift.io \"{id}\": another caller has updated the resource version to {rv}"
            );
            return Err(e);
        }
        _ => {}
    }
    if op == Write::Update && !existed && new_tag.is_none() {
        return Err(ApiError::bad_request(format!(
            "imagestreamtag {tag} is not a spec tag in imagestream {ns}/{stream}, cannot be updated"
        )));
    }
    let set_tag = |is: &mut Value, generation: i64| {
        let Some(mut t) = new_tag.clone() else {
            // An update without `tag`: only the annotations change.
            if let Some(t) = is
                .pointer_mut("/spec/tags")
                .and_then(Value::as_array_mut)
                .and_then(|ts| ts.iter_mut().find(|t| t.get("name").and_then(Value::as_str) == Some(tag)))
            {
                t["annotations"] = annotations.clone().unwrap_or(Value::Null);
            }
            return;
        };
        if !is.get("spec").is_some_and(Value::is_object) {
            is["spec"] = json!({});
        }
        if !is["spec"].get("tags").is_some_and(Value::is_array) {
            is["spec"]["tags"] = json!([]);
        }
        let tags = is["spec"]["tags"].as_array_mut().expect("made an array");
        let old = tags.iter().position(|x| x.get("name").and_then(Value::as_str) == Some(tag));
        // tagsChanged: a changed tag records the stream generation it was
        // set at; an unchanged one keeps its own.
        let same = old.is_some_and(|i| {
            let strip = |v: &Value| {
                let mut v = v.clone();
                v.as_object_mut().map(|o| o.remove("generation"));
                v
            };
            strip(&tags[i]) == strip(&t)
        });
        // A generation of 0 asks for a new one (a re-import), as `oc tag`
        // sends for DockerImage sources (updateSpecTagGenerationsForUpdate).
        let forced = t.get("generation").and_then(Value::as_i64) == Some(0);
        t["generation"] = match old {
            Some(i) if same && !forced => tags[i].get("generation").cloned().unwrap_or(json!(generation)),
            _ => json!(generation),
        };
        match old {
            Some(i) => tags[i] = t,
            None => tags.push(t),
        }
    };
    let result = match existing {
        None => {
            let mut is =
                json!({ "apiVersion": format!("{GROUP}/v1"), "kind": "ImageStream", "metadata": { "name": stream } });
            set_tag(&mut is, 1);
            api.store.create(&IMAGESTREAMS, ns, is, dry_run)?
        }
        Some(_) => {
            let opts = WriteOptions { dry_run, ..WriteOptions::default() };
            api.store.modify(&IMAGESTREAMS, ns, stream, &opts, |old| {
                let mut is = old.clone();
                let g = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
                set_tag(&mut is, g + 1);
                if is.get("spec") == old.get("spec") {
                    return Ok(old.clone());
                }
                Ok(is)
            })?
        }
    };
    let code = if existed { StatusCode::OK } else { StatusCode::CREATED };
    Ok((code, view(api, &result, tag, true)?))
}

/// Remove spec and status tag (`REST.Delete`); the stream's uid.
fn delete_tag(api: &SimApi, ns: &str, stream: &str, tag: &str, id: &str, dry_run: bool) -> Result<String, ApiError> {
    let opts = WriteOptions { dry_run, ..WriteOptions::default() };
    let mut found = false;
    // Spec and status in one write: the status of the main resource is kept
    // by `modify`, so the status tag goes through a status write after it.
    let updated = api.store.modify(&IMAGESTREAMS, ns, stream, &opts, |old| {
        let mut is = old.clone();
        if let Some(tags) = is.pointer_mut("/spec/tags").and_then(Value::as_array_mut) {
            let before = tags.len();
            tags.retain(|t| t.get("name").and_then(Value::as_str) != Some(tag));
            found |= tags.len() != before;
        }
        found |= status_tag(old, tag).is_some();
        Ok(is)
    })?;
    if !found {
        return Err(istag_not_found(id));
    }
    if status_tag(&updated, tag).is_some() {
        let opts = WriteOptions { scope: Scope::Status, dry_run, ..WriteOptions::default() };
        api.store.modify(&IMAGESTREAMS, ns, stream, &opts, |old| {
            let mut is = old.clone();
            if let Some(tags) = is.pointer_mut("/status/tags").and_then(Value::as_array_mut) {
                tags.retain(|t| t.get("tag").and_then(Value::as_str) != Some(tag));
            }
            Ok(is)
        })?;
    }
    Ok(updated.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("").to_string())
}

/// The image import controller (openshift-controller-manager's
/// image trigger / import for `spec.tags[].from.kind: DockerImage`).
/// `registry_host` is the sim's own `127.0.0.1:PORT`.
pub async fn import_controller(api: SimApi, registry_host: String) {
    let mut rx = api.store.events();
    for is in api.store.list(&IMAGESTREAMS, None).0 {
        import_stream(&api, &registry_host, &is).await;
    }
    loop {
        tokio::select! {
            _ = api.shutdown.cancelled() => return,
            ev = rx.recv() => match ev {
                Ok(e) if e.resource == IMAGESTREAMS.key() && e.kind != super::store::EventType::Deleted => {
                    import_stream(&api, &registry_host, &e.object).await;
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => {
                    for is in api.store.list(&IMAGESTREAMS, None).0 {
                        import_stream(&api, &registry_host, &is).await;
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}

/// Import each spec tag of `is` not yet imported at its generation.
async fn import_stream(api: &SimApi, host: &str, is: &Value) {
    let ns = is.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("").to_string();
    let stream = is.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
    let stream_generation = is.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
    for t in is.pointer("/spec/tags").and_then(Value::as_array).into_iter().flatten() {
        let Some(tag) = t.get("name").and_then(Value::as_str) else { continue };
        let from = t.pointer("/from/name").and_then(Value::as_str).unwrap_or("");
        if t.pointer("/from/kind").and_then(Value::as_str) != Some("DockerImage")
            || from.is_empty()
            || t.get("reference").and_then(Value::as_bool) == Some(true)
        {
            continue;
        }
        let generation = t.get("generation").and_then(Value::as_i64).unwrap_or(stream_generation);
        let st = status_tag(is, tag);
        let imported =
            st.and_then(|s| s.pointer("/items/0/generation")).and_then(Value::as_i64).is_some_and(|g| g >= generation);
        let failed = st.and_then(|s| s.get("conditions")).and_then(Value::as_array).is_some_and(|cs| {
            cs.iter().any(|c| c.get("generation").and_then(Value::as_i64).is_some_and(|g| g >= generation))
        });
        if imported || failed {
            continue;
        }
        let outcome = import_image(api, host, from).await;
        let opts = WriteOptions { scope: Scope::Status, ..WriteOptions::default() };
        let written = api.store.modify(&IMAGESTREAMS, &ns, &stream, &opts, |old| {
            let mut obj = old.clone();
            if !obj.get("status").is_some_and(Value::is_object) {
                obj["status"] = json!({});
            }
            let mut tags: Vec<Value> = old.pointer("/status/tags").and_then(Value::as_array).cloned().unwrap_or_default();
            match &outcome {
                Ok(digest) => add_tag_event(
                    &mut tags,
                    tag,
                    json!({ "created": now(), "dockerImageReference": from, "image": digest, "generation": generation }),
                ),
                Err((reason, message)) => {
                    let condition = json!({
                        "type": "ImportSuccess", "status": "False", "lastTransitionTime": now(),
                        "reason": reason, "message": message, "generation": generation,
                    });
                    match tags.iter_mut().find(|s| s.get("tag").and_then(Value::as_str) == Some(tag)) {
                        Some(s) => s["conditions"] = json!([condition]),
                        // `items` has no `omitempty`: a tag that never had an image sends `null`.
                        None => tags.push(json!({ "tag": tag, "items": null, "conditions": [condition] })),
                    }
                }
            }
            obj["status"]["tags"] = json!(tags);
            Ok(obj)
        });
        if let Err(e) = written {
            tracing::debug!(namespace = %ns, stream = %stream, error = %e, "sim import: status not written");
        }
    }
}

/// Find `from` in the sim's registry and record its Image; the digest, or
/// `(reason, message)` for the failed-import condition.
async fn import_image(api: &SimApi, host: &str, from: &str) -> Result<String, (&'static str, String)> {
    let r =
        super::reference::Reference::parse_normalized(from).map_err(|e| ("InvalidImageReference", e.to_string()))?;
    if r.domain != host {
        return Err((
            "InternalError",
            format!(
                "Internal error occurred: {from}: the simulated cluster imports images only from its own registry {host}"
            ),
        ));
    }
    let Some((digest, media_type, bytes)) = api.registry.get_manifest(&r.path, r.reference()).await else {
        return Err(("NotFound", format!("dockerimage.image.openshift.io \"{from}\" not found")));
    };
    let manifest: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let config = match manifest.pointer("/config/digest").and_then(Value::as_str) {
        Some(d) => match api.registry.open_blob(&r.path, d).await {
            Ok(mut f) => {
                use tokio::io::AsyncReadExt;
                let mut buf = Vec::new();
                let _ = f.read_to_end(&mut buf).await;
                serde_json::from_slice(&buf).unwrap_or(json!({}))
            }
            Err(_) => json!({}),
        },
        None => json!({}),
    };
    let size: u64 = manifest
        .get("layers")
        .and_then(Value::as_array)
        .map(|ls| ls.iter().filter_map(|l| l.get("size").and_then(Value::as_u64)).sum())
        .unwrap_or(0);
    record_image(api, &digest, &format!("{}/{}@{digest}", r.domain, r.path), &media_type, &config, size);
    Ok(digest)
}
