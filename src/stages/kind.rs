//! The registry: every stage kind, its module, and the kinds whose outputs
//! it reads by default. Dispatch from a `uses:` name goes through here.

use serde_json::{Map, Value};

use super::context::{Outputs, StageContext, StageError, ValidateCx};
use super::{Contract, Stage, fetch_model, openshift_build, prediction_check, promote, render, seldon_deploy, sign};
#[cfg(test)]
use crate::engine::testkind::TestStep;
use crate::spec::Problem;

/// The one list of stage kinds: `Kind` variant => module type, and its
/// default wiring: when a stage's `with:` leaves an input out, it reads the
/// outputs of the latest earlier stage of each kind listed here ("render
/// takes the latest fetch-model's model directory"). The engine resolves
/// these links for a run ([`super::Links::resolve`]); validation and plans
/// see the same ones through [`ValidateCx::linked`]. Adding a kind is its
/// module plus one line here.
macro_rules! for_each_kind {
    ($mac:ident) => {
        $mac! {
            FetchModel => fetch_model::FetchModel, [],
            Render => render::Render, [FetchModel],
            OpenshiftBuild => openshift_build::OpenshiftBuild, [Render],
            SeldonDeploy => seldon_deploy::SeldonDeploy, [OpenshiftBuild],
            PredictionCheck => prediction_check::PredictionCheck, [SeldonDeploy],
            Sign => sign::Sign, [FetchModel, Render, OpenshiftBuild, PredictionCheck],
            Promote => promote::Promote, [OpenshiftBuild, SeldonDeploy, PredictionCheck, FetchModel],
        }
    };
}

macro_rules! define_kind {
    ($($variant:ident => $ty:ty, [$($input:ident),*],)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kind {
            $($variant,)*
            /// The engine's test kind; not in [`Kind::ALL`], so catalog and
            /// validation tests see only the production kinds.
            #[cfg(test)]
            TestStep,
        }

        impl Kind {
            pub const ALL: &'static [Kind] = &[$(Kind::$variant,)*];

            pub fn name(self) -> &'static str {
                match self { $(Kind::$variant => <$ty as Contract>::KIND,)* #[cfg(test)] Kind::TestStep => <TestStep as Contract>::KIND, }
            }

            pub fn outputs(self) -> &'static [&'static str] {
                match self { $(Kind::$variant => <$ty as Contract>::OUTPUTS,)* #[cfg(test)] Kind::TestStep => <TestStep as Contract>::OUTPUTS, }
            }

            /// The kinds whose outputs a stage of this kind reads by default.
            pub fn inputs(self) -> &'static [Kind] {
                match self { $(Kind::$variant => &[$(Kind::$input),*],)* #[cfg(test)] Kind::TestStep => &[], }
            }

            /// Typed parse of `with:` plus the kind's pure checks.
            pub fn validate(self, with: &Map<String, Value>, cx: &ValidateCx<'_>) -> Vec<Problem> {
                match self { $(Kind::$variant => validate_as::<$ty>(with, cx),)* #[cfg(test)] Kind::TestStep => validate_as::<TestStep>(with, cx), }
            }

            pub fn plan(self, with: &Map<String, Value>, cx: &ValidateCx<'_>) -> Result<Vec<String>, Problem> {
                match self { $(Kind::$variant => plan_as::<$ty>(with, cx),)* #[cfg(test)] Kind::TestStep => plan_as::<TestStep>(with, cx), }
            }

            /// Whether a stage of this kind with this `with:` talks to a
            /// cluster; a `with:` that does not parse counts as yes.
            pub fn needs_cluster(self, with: &Map<String, Value>, cx: &ValidateCx<'_>) -> bool {
                match self { $(Kind::$variant => needs_cluster_as::<$ty>(with, cx),)* #[cfg(test)] Kind::TestStep => needs_cluster_as::<TestStep>(with, cx), }
            }

            /// Run with `with:` already rendered.
            pub async fn run(self, with: Map<String, Value>, cx: &StageContext) -> Result<Outputs, StageError> {
                match self { $(Kind::$variant => run_as::<$ty>(with, cx).await,)* #[cfg(test)] Kind::TestStep => run_as::<TestStep>(with, cx).await, }
            }

            #[cfg(test)]
            fn default_output(self) -> Value {
                match self { $(Kind::$variant => serde_json::to_value(<$ty as Contract>::Output::default()).unwrap(),)* Kind::TestStep => serde_json::to_value(<TestStep as Contract>::Output::default()).unwrap(), }
            }
        }
    };
}

for_each_kind!(define_kind);

impl Kind {
    pub fn from_name(name: &str) -> Option<Kind> {
        #[cfg(test)]
        if name == <TestStep as Contract>::KIND {
            return Some(Kind::TestStep);
        }
        Kind::ALL.iter().copied().find(|k| k.name() == name)
    }

    /// The kind of a stage type.
    pub fn of<S: Contract>() -> Kind {
        Kind::from_name(S::KIND).expect("every Stage type is registered in for_each_kind!")
    }

    pub fn names() -> impl Iterator<Item = &'static str> {
        Kind::ALL.iter().map(|k| k.name())
    }
}

/// The registry as spec validation sees it ([`crate::spec::StageKinds`]).
pub struct Registry;

impl crate::spec::StageKinds for Registry {
    fn names(&self) -> Vec<&'static str> {
        Kind::names().collect()
    }

    fn outputs(&self, uses: &str) -> Option<&'static [&'static str]> {
        Kind::from_name(uses).map(Kind::outputs)
    }

    fn validate(
        &self,
        pipeline: &crate::spec::Pipeline,
        index: usize,
        catalog: &crate::catalog::Catalog,
    ) -> Option<Vec<Problem>> {
        let stage = pipeline.spec.stages.get(index)?;
        let kind = Kind::from_name(&stage.uses)?;
        let cx = ValidateCx { pipeline, stage, index, catalog };
        Some(kind.validate(&stage.with, &cx))
    }

    fn needs_cluster(
        &self,
        pipeline: &crate::spec::Pipeline,
        index: usize,
        catalog: &crate::catalog::Catalog,
    ) -> Option<bool> {
        let stage = pipeline.spec.stages.get(index)?;
        let kind = Kind::from_name(&stage.uses)?;
        let cx = ValidateCx { pipeline, stage, index, catalog };
        Some(kind.needs_cluster(&stage.with, &cx))
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Deserialize `with:` into the kind's params; serde's error names the field.
pub fn parse_params<S: Contract>(with: &Map<String, Value>) -> Result<S::Params, Problem> {
    serde_path_to_error::deserialize(Value::Object(with.clone())).map_err(|e| {
        let path = e.path().to_string();
        Problem {
            path: if path == "." { String::new() } else { path },
            message: e.into_inner().to_string(),
            hint: None,
        }
    })
}

fn validate_as<S: Contract>(with: &Map<String, Value>, cx: &ValidateCx<'_>) -> Vec<Problem> {
    match parse_params::<S>(with) {
        Ok(p) => S::validate(&p, cx),
        Err(problem) => vec![problem],
    }
}

fn needs_cluster_as<S: Contract>(with: &Map<String, Value>, cx: &ValidateCx<'_>) -> bool {
    parse_params::<S>(with).map_or(true, |p| S::needs_cluster(&p, cx))
}

fn plan_as<S: Contract>(with: &Map<String, Value>, cx: &ValidateCx<'_>) -> Result<Vec<String>, Problem> {
    parse_params::<S>(with).map(|p| S::plan(&p, cx))
}

async fn run_as<S: Stage>(with: Map<String, Value>, cx: &StageContext) -> Result<Outputs, StageError> {
    let params =
        parse_params::<S>(&with).map_err(|p| StageError::bad_input(format!("with.{}: {}", p.path, p.message)))?;
    let output = S::run(params, cx).await?;
    super::to_outputs(&output)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `OUTPUTS` (what templates may reference) is exactly the typed output's fields.
    #[test]
    fn outputs_are_the_typed_outputs_fields() {
        for kind in Kind::ALL.iter().copied().chain([Kind::TestStep]) {
            let Value::Object(fields) = kind.default_output() else { panic!("{kind}: output is not a struct") };
            let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
            let mut declared = kind.outputs().to_vec();
            names.sort();
            declared.sort();
            assert_eq!(names, declared, "{kind}");
        }
    }

    /// The catalog folder `stages/<kind>/` documents every kind.
    #[test]
    fn every_kind_has_a_catalog_readme() {
        let catalog = crate::catalog::Catalog::embedded();
        for kind in Kind::ALL {
            let readme = catalog.readme(kind.name()).unwrap_or_else(|| panic!("no stages/{kind}/README.md"));
            assert!(readme.contains("utput"), "stages/{kind}/README.md says nothing of its outputs");
        }
    }

    #[test]
    fn inputs_name_only_earlier_kinds_in_the_list() {
        for kind in Kind::ALL {
            for input in kind.inputs() {
                assert!(input < kind, "{kind} reads {input}, which is registered after it");
            }
        }
    }
}
