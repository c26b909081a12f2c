//! Typed OpenShift resources: `build.openshift.io/v1` BuildConfig and Build,
//! `image.openshift.io/v1` ImageStream and ImageStreamTag, with the field
//! names of openshift/api. Specs stay JSON (they come from the catalog's
//! templates); the status fields modelship reads are typed.
//!
//! Lists and structs read from the server accept `null` where openshift/api's
//! Go types have no `omitempty` and the server encodes an empty value as
//! `null` (e.g. `NamedTagEventList.items` of a tag whose import failed).

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::Value;

macro_rules! openshift_resource {
    ($ty:ident, $group:literal, $kind:literal, $plural:literal) => {
        impl kube::Resource for $ty {
            type DynamicType = ();
            type Scope = k8s_openapi::NamespaceResourceScope;
            fn kind(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($kind)
            }
            fn group(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($group)
            }
            fn version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed("v1")
            }
            fn api_version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(concat!($group, "/v1"))
            }
            fn plural(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($plural)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

/// `null` read as the type's default (an empty list, no status).
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

pub const BUILD_GROUP: &str = "build.openshift.io";
pub const IMAGE_GROUP: &str = "image.openshift.io";

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildConfig {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<BuildConfigStatus>,
}
openshift_resource!(BuildConfig, "build.openshift.io", "BuildConfig", "buildconfigs");

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildConfigStatus {
    #[serde(default)]
    pub last_version: i64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Build {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Value,
    #[serde(default, deserialize_with = "null_default")]
    pub status: BuildStatus,
}
openshift_resource!(Build, "build.openshift.io", "Build", "builds");

/// `status.phase` values of a Build.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_docker_image_reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<BuildStatusOutput>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildStatusOutput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<BuildStatusOutputTo>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildStatusOutputTo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
}

impl Build {
    pub fn phase(&self) -> &str {
        self.status.phase.as_deref().unwrap_or("New")
    }
    /// Complete, Failed, Error or Cancelled.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase(), "Complete" | "Failed" | "Error" | "Cancelled")
    }
    pub fn image_digest(&self) -> Option<&str> {
        self.status.output.as_ref()?.to.as_ref()?.image_digest.as_deref()
    }
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageStream {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Value,
    #[serde(default, deserialize_with = "null_default")]
    pub status: ImageStreamStatus,
}
openshift_resource!(ImageStream, "image.openshift.io", "ImageStream", "imagestreams");

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageStreamStatus {
    #[serde(default, deserialize_with = "null_default")]
    pub docker_image_repository: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_docker_image_repository: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub tags: Vec<NamedTagEventList>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamedTagEventList {
    pub tag: String,
    /// `null` for a tag with no image yet (a failed import).
    #[serde(default, deserialize_with = "null_default")]
    pub items: Vec<TagEvent>,
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<TagEventCondition>,
}

/// Why a tag has no (new) image: `type: ImportSuccess`, `status: "False"`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TagEventCondition {
    #[serde(default, rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default)]
    pub generation: i64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TagEvent {
    #[serde(default)]
    pub created: String,
    pub docker_image_reference: String,
    pub image: String,
    #[serde(default)]
    pub generation: i64,
}

impl ImageStream {
    /// Whether any tag of the stream holds the image `digest`.
    pub fn has_image(&self, digest: &str) -> bool {
        self.status.tags.iter().any(|t| t.items.iter().any(|i| i.image == digest))
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageStreamTag {
    pub metadata: ObjectMeta,
    /// The spec tag (`null` when only pushes made the tag).
    #[serde(default)]
    pub tag: Value,
    #[serde(default)]
    pub image: Value,
}
openshift_resource!(ImageStreamTag, "image.openshift.io", "ImageStreamTag", "imagestreamtags");

#[cfg(test)]
mod tests {
    use super::*;

    /// Guards reading what openshift-apiserver sends: a tag whose import
    /// failed has `items: null` and a condition; an empty status is `null`.
    #[test]
    fn an_image_stream_with_a_failed_import_is_read() {
        let is: ImageStream = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "weather" },
            "spec": { "lookupPolicy": { "local": false }, "tags": [{ "name": "prod", "annotations": null,
                "from": { "kind": "DockerImage", "name": "r.example.com/ns/weather@sha256:00" },
                "generation": 2, "importPolicy": {}, "referencePolicy": { "type": "Source" } }] },
            "status": { "dockerImageRepository": "", "tags": [{ "tag": "prod", "items": null, "conditions": [{
                "type": "ImportSuccess", "status": "False", "reason": "NotFound",
                "message": "manifest unknown", "generation": 2 }] }] },
        }))
        .unwrap();
        assert!(is.status.tags[0].items.is_empty());
        assert_eq!(is.status.tags[0].conditions[0].reason.as_deref(), Some("NotFound"));
        assert!(!is.has_image("sha256:00"));
        let bare: ImageStream = serde_json::from_value(serde_json::json!({ "metadata": {}, "status": null })).unwrap();
        assert!(bare.status.tags.is_empty());
        let b: Build = serde_json::from_value(serde_json::json!({ "metadata": {}, "status": null })).unwrap();
        assert_eq!(b.phase(), "New");
    }
}
