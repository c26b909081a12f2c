//! Where a run's clusters, registries and model source are when not where
//! the pipeline file says: `--context ENV=CTX`, `--registry ENV=HOST`,
//! `-n/--namespace ENV=NS`, `--model-endpoint URL`, `--model-secret NAME`.
//! Applied to the loaded pipeline, the one place every later use of an
//! environment's context or namespace reads it from. `--sim` sets the same
//! overrides for the clusters it starts, so a simulated run takes no path a
//! real one cannot.

use std::collections::BTreeMap;

use super::Pipeline;

/// An environment's registry, overridden.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryOverride {
    /// The cluster's integrated registry, as found through its ImageStreams
    /// (what an environment without `registry:` uses).
    Cluster,
    /// This `host[:port]`.
    Host(String),
}

impl RegistryOverride {
    /// `cluster` or a `host[:port]`.
    pub fn parse(value: &str) -> RegistryOverride {
        match value {
            "cluster" => RegistryOverride::Cluster,
            host => RegistryOverride::Host(host.to_string()),
        }
    }
}

/// Overrides applied to a loaded pipeline before it runs. Never written
/// back to the file; the run record keeps the pipeline's digest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Environment name -> kubeconfig context.
    pub contexts: BTreeMap<String, String>,
    /// Environment name -> namespace.
    pub namespaces: BTreeMap<String, String>,
    /// Environment name -> registry.
    pub registries: BTreeMap<String, RegistryOverride>,
    /// `spec.model.endpoint`.
    pub model_endpoint: Option<String>,
    /// Allow a plain-HTTP `model_endpoint` (named by the flag that sets it).
    pub model_insecure: bool,
    /// `spec.model.credentialsSecret`.
    pub model_secret: Option<String>,
}

impl Overrides {
    pub fn is_empty(&self) -> bool {
        *self == Overrides::default()
    }

    /// Apply to `pipeline`. An environment the pipeline does not declare is
    /// an error naming the flag and the declared environments.
    pub fn apply(&self, pipeline: &mut Pipeline) -> Result<(), String> {
        let envs = &mut pipeline.spec.environments;
        let declared: Vec<String> = envs.keys().cloned().collect();
        let unknown = |flag: &str, name: &str| {
            let hint = super::validate::did_you_mean(name, declared.iter().map(String::as_str))
                .map(|h| format!(" ({h})"))
                .unwrap_or_default();
            format!(
                "{flag} {name}=…: the pipeline declares no environment `{name}`{hint}; declared: {}",
                declared.join(", ")
            )
        };
        for (name, context) in &self.contexts {
            envs.get_mut(name).ok_or_else(|| unknown("--context", name))?.context = Some(context.clone());
        }
        for (name, namespace) in &self.namespaces {
            if let Some(problem) = crate::names::label_problem(namespace) {
                return Err(format!("--namespace {name}={namespace}: not a namespace name: {problem}"));
            }
            envs.get_mut(name).ok_or_else(|| unknown("--namespace", name))?.namespace = namespace.clone();
        }
        for (name, registry) in &self.registries {
            let env = envs.get_mut(name).ok_or_else(|| unknown("--registry", name))?;
            env.registry = match registry {
                RegistryOverride::Cluster => None,
                RegistryOverride::Host(h) => Some(h.clone()),
            };
        }
        let model = &mut pipeline.spec.model;
        if let Some(endpoint) = &self.model_endpoint {
            model.endpoint = Some(endpoint.clone());
            model.insecure = self.model_insecure;
        }
        if let Some(secret) = &self.model_secret {
            model.credentials_secret = Some(secret.clone());
        }
        Ok(())
    }

    /// Environment -> where its `context` came from, for an error about a
    /// context the kubeconfig lacks: `--context ENV=CTX` when overridden,
    /// else the key in `file`.
    pub fn context_origins(&self, pipeline: &Pipeline, file: &std::path::Path) -> Vec<(String, String)> {
        pipeline
            .spec
            .environments
            .iter()
            .filter_map(|(name, env)| {
                let ctx = env.context.as_ref()?;
                Some((
                    name.clone(),
                    if self.contexts.contains_key(name) {
                        format!("--context {name}={ctx}")
                    } else {
                        format!("spec.environments.{name}.context in {}", file.display())
                    },
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline() -> Pipeline {
        let text = "apiVersion: modelship.io/v1alpha1\nkind: Pipeline\nmetadata: {name: p}\nspec:\n  model: {name: m, source: 's3://b/m/'}\n  environments:\n    dev: {context: dev-cluster, namespace: d, registry: r.example}\n    prod: {namespace: p}\n  stages: []\n";
        crate::spec::load_str(std::path::Path::new("p.yaml"), text).unwrap().pipeline
    }

    #[test]
    fn overrides_replace_contexts_registries_and_the_model_endpoint() {
        let mut p = pipeline();
        let o = Overrides {
            contexts: [("dev".into(), "dev".into()), ("prod".into(), "prod".into())].into(),
            namespaces: [("prod".into(), "models-prod-2".into())].into(),
            registries: [("dev".into(), RegistryOverride::Cluster)].into(),
            model_endpoint: Some("http://127.0.0.1:9".into()),
            model_insecure: true,
            model_secret: Some("s3".into()),
        };
        o.apply(&mut p).unwrap();
        let dev = &p.spec.environments["dev"];
        assert_eq!((dev.context.as_deref(), dev.registry.as_deref()), (Some("dev"), None));
        assert_eq!(p.spec.environments["prod"].context.as_deref(), Some("prod"));
        assert_eq!((dev.namespace.as_str(), p.spec.environments["prod"].namespace.as_str()), ("d", "models-prod-2"));
        assert_eq!(p.spec.model.endpoint.as_deref(), Some("http://127.0.0.1:9"));
        assert!(p.spec.model.insecure);
        assert_eq!(p.spec.model.credentials_secret.as_deref(), Some("s3"));
    }

    #[test]
    fn an_override_for_an_undeclared_environment_names_the_flag_and_a_guess() {
        let mut p = pipeline();
        let o = Overrides { contexts: [("prdo".into(), "x".into())].into(), ..Default::default() };
        let err = o.apply(&mut p).unwrap_err();
        assert!(err.contains("--context prdo") && err.contains("did you mean `prod`"), "{err}");
        let o = Overrides { namespaces: [("prod".into(), "Not_A_Label".into())].into(), ..Default::default() };
        let err = o.apply(&mut pipeline()).unwrap_err();
        assert!(err.contains("--namespace prod=Not_A_Label"), "{err}");
    }

    #[test]
    fn context_origins_name_the_flag_or_the_file() {
        let p = pipeline();
        let file = std::path::Path::new("p.yaml");
        assert_eq!(
            Overrides::default().context_origins(&p, file),
            vec![("dev".to_string(), "spec.environments.dev.context in p.yaml".to_string())]
        );
        let o = Overrides { contexts: [("dev".into(), "dev-cluster".into())].into(), ..Default::default() };
        assert_eq!(o.context_origins(&p, file)[0].1, "--context dev=dev-cluster");
    }
}
