//! `apps/v1`: Deployments. The sim has no pods; the Seldon controller
//! ([`super::seldon`]) writes each predictor's Deployment (image, replicas)
//! and its status, so a client can confirm a rollout the way it would in a
//! real cluster: the Deployment runs the new image and its replicas are
//! updated and available for the current generation.

use super::resource::{Column, ResourceTable, ResourceType};

pub const DEPLOYMENTS: ResourceType = ResourceType {
    short_names: &["deploy"],
    categories: &["all"],
    subresources: &["status"],
    generation: true,
    columns: &[
        Column::Path { name: "Ready", path: "status.readyReplicas" },
        Column::Path { name: "Up-To-Date", path: "status.updatedReplicas" },
        Column::Path { name: "Available", path: "status.availableReplicas" },
    ],
    ..ResourceType::namespaced("apps", "v1", "Deployment", "deployments", "deployment")
};

pub fn register(table: &mut ResourceTable) {
    table.add(DEPLOYMENTS);
}
