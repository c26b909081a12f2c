//! Typed OpenShift resources: `build.openshift.io/v1` BuildConfig and Build,
//! `image.openshift.io/v1` ImageStream and ImageStreamTag, with the field
//! names of openshift/api. Specs stay JSON (they come from the catalog's
//! templates); the status fields modelship reads are typed.

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
    #[serde(default)]
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
    #[serde(default)]
    pub status: ImageStreamStatus,
}
openshift_resource!(ImageStream, "image.openshift.io", "ImageStream", "imagestreams");

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageStreamStatus {
    #[serde(default)]
    pub docker_image_repository: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_docker_image_repository: Option<String>,
    #[serde(default)]
    pub tags: Vec<NamedTagEventList>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamedTagEventList {
    pub tag: String,
    #[serde(default)]
    pub items: Vec<TagEvent>,
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
    #[serde(default)]
    pub image: Value,
}
openshift_resource!(ImageStreamTag, "image.openshift.io", "ImageStreamTag", "imagestreamtags");
