//! The change feed: every commit is persisted, applied in memory, kept in a
//! bounded history and broadcast; watches subscribe from a resourceVersion.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast;

use super::super::resource::ResourceType;
use super::super::status::ApiError;
use super::{Event, EventType, HISTORY, Inner, Store, resource_version_of};

impl Store {
    /// Changes to `resource` (in `ns`, or all namespaces) after `from_rv`,
    /// the store's resourceVersion, and a receiver for the changes still to
    /// come, taken atomically. `None` means "current state first": every
    /// existing object as a synthetic `Added` event, as a watch without a
    /// resourceVersion gets from the API server.
    pub fn subscribe(
        &self,
        resource: &str,
        ns: Option<&str>,
        from_rv: Option<u64>,
    ) -> Result<(Vec<Event>, u64, broadcast::Receiver<Event>), ApiError> {
        let inner = self.lock();
        let rx = self.tx.subscribe();
        let mut backlog = Vec::new();
        if from_rv.is_none()
            && let Some(m) = inner.objects.get(resource)
        {
            for ((n, _), obj) in m {
                if ns.is_none_or(|ns| n == ns) {
                    backlog.push(Event {
                        rv: resource_version_of(obj).unwrap_or(0),
                        resource: resource.to_string(),
                        namespace: n.clone(),
                        kind: EventType::Added,
                        object: Arc::new(obj.clone()),
                        previous: None,
                    });
                }
            }
        }
        if let Some(from) = from_rv {
            if from < inner.history_from {
                return Err(ApiError::gone(from, inner.history_from + 1));
            }
            backlog.extend(
                inner
                    .history
                    .iter()
                    .filter(|e| e.rv > from && e.resource == resource && ns.is_none_or(|ns| e.namespace == ns))
                    .cloned(),
            );
        }
        Ok((backlog, inner.rv, rx))
    }

    /// Every change to any resource from now on (for controllers).
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    pub(super) fn commit(
        &self,
        inner: &mut Inner,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        kind: EventType,
        obj: Value,
    ) -> Result<Value, ApiError> {
        self.commit_key(inner, &rt.key(), ns, name, kind, obj)
    }

    /// Persist, then apply in memory, then announce. `obj` carries its new
    /// resourceVersion (`inner.rv + 1`).
    pub(super) fn commit_key(
        &self,
        inner: &mut Inner,
        resource: &str,
        ns: &str,
        name: &str,
        kind: EventType,
        obj: Value,
    ) -> Result<Value, ApiError> {
        let rv = inner.rv + 1;
        self.persist(resource, ns, name, kind, &obj, rv)?;
        inner.rv = rv;
        let key = (ns.to_string(), name.to_string());
        let previous = match kind {
            EventType::Deleted => inner.objects.get_mut(resource).and_then(|m| m.remove(&key)),
            _ => inner.objects.entry(resource.to_string()).or_default().insert(key, obj.clone()),
        };
        let event = Event {
            rv,
            resource: resource.to_string(),
            namespace: ns.to_string(),
            kind,
            object: Arc::new(obj.clone()),
            previous: previous.map(Arc::new),
        };
        inner.history.push_back(event.clone());
        while inner.history.len() > HISTORY {
            if let Some(e) = inner.history.pop_front() {
                inner.history_from = e.rv;
            }
        }
        // No receivers is fine.
        let _ = self.tx.send(event);
        Ok(obj)
    }
}
