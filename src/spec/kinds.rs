//! What validation needs to know of stage kinds, as an interface the stage
//! registry implements ([`crate::stages::Registry`]): the pipeline file sits
//! below the stage kinds that read it, and never imports them.

use super::Pipeline;
use crate::catalog::Catalog;

/// The closed set of stage kinds, as validation sees it.
pub trait StageKinds {
    fn names(&self) -> Vec<&'static str>;
    /// The output names of kind `uses`; `None` for an unknown kind.
    fn outputs(&self, uses: &str) -> Option<&'static [&'static str]>;
    /// The problems in the `with:` of stage `index` (typed parse plus the
    /// kind's pure checks); `None` for an unknown kind.
    fn validate(&self, pipeline: &Pipeline, index: usize, catalog: &Catalog) -> Option<Vec<Problem>>;
    /// Whether stage `index` talks to a cluster; `None` for an unknown kind.
    fn needs_cluster(&self, pipeline: &Pipeline, index: usize, catalog: &Catalog) -> Option<bool>;
}

/// The first stage (up to and including `until`, when given) that needs a
/// cluster, as `(index, name, uses)`; unknown kinds count as needing one.
pub fn first_cluster_stage<'p>(
    kinds: &dyn StageKinds,
    pipeline: &'p Pipeline,
    catalog: &Catalog,
    until: Option<&str>,
) -> Option<(usize, &'p str, &'p str)> {
    for (i, stage) in pipeline.spec.stages.iter().enumerate() {
        if kinds.needs_cluster(pipeline, i, catalog).unwrap_or(true) {
            return Some((i, &stage.name, &stage.uses));
        }
        if until == Some(stage.name.as_str()) {
            break;
        }
    }
    None
}

/// One problem in a stage's `with:`; the spec validator turns `path` into a
/// file position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path below `with`, e.g. `cases[0].expect`; empty for `with` itself.
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem { path: path.into(), message: message.into(), hint: None }
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// A problem at `path` if `name` is not a declared environment (templated
/// values are checked after rendering, at run time).
pub fn environment_problem(pipeline: &Pipeline, path: &str, name: &str) -> Option<Problem> {
    if crate::template::is_template(name) || pipeline.spec.environments.contains_key(name) {
        return None;
    }
    let declared: Vec<&str> = pipeline.spec.environments.keys().map(String::as_str).collect();
    let mut p = Problem::new(path, format!("environment `{name}` is not declared in spec.environments"));
    p.hint = Some(crate::suggest::did_you_mean(name, declared.iter().copied()).unwrap_or_else(|| {
        if declared.is_empty() {
            "no environments are declared".to_string()
        } else {
            format!("declared: {}", declared.join(", "))
        }
    }));
    Some(p)
}
