//! Dispatch from a `uses:` name to the stage module.

use serde_json::{Map, Value};

use super::context::{Outputs, Problem, StageContext, StageError, ValidateCx};
use super::{Stage, fetch_model, openshift_build, prediction_check, promote, render, seldon_deploy, sign};
#[cfg(test)]
use crate::engine::testkind::TestStep;

/// The one list of stage kinds: `Kind` variant => module type.
macro_rules! for_each_kind {
    ($mac:ident) => {
        $mac! {
            FetchModel => fetch_model::FetchModel,
            Render => render::Render,
            OpenshiftBuild => openshift_build::OpenshiftBuild,
            SeldonDeploy => seldon_deploy::SeldonDeploy,
            PredictionCheck => prediction_check::PredictionCheck,
            Sign => sign::Sign,
            Promote => promote::Promote,
        }
    };
}

macro_rules! define_kind {
    ($($variant:ident => $ty:ty,)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
                match self { $(Kind::$variant => <$ty as Stage>::KIND,)* #[cfg(test)] Kind::TestStep => <TestStep as Stage>::KIND, }
            }

            pub fn outputs(self) -> &'static [&'static str] {
                match self { $(Kind::$variant => <$ty as Stage>::OUTPUTS,)* #[cfg(test)] Kind::TestStep => <TestStep as Stage>::OUTPUTS, }
            }

            /// Typed parse of `with:` plus the kind's pure checks.
            pub fn validate(self, with: &Map<String, Value>, cx: &ValidateCx<'_>) -> Vec<Problem> {
                match self { $(Kind::$variant => validate_as::<$ty>(with, cx),)* #[cfg(test)] Kind::TestStep => validate_as::<TestStep>(with, cx), }
            }

            pub fn plan(self, with: &Map<String, Value>, cx: &ValidateCx<'_>) -> Result<Vec<String>, Problem> {
                match self { $(Kind::$variant => plan_as::<$ty>(with, cx),)* #[cfg(test)] Kind::TestStep => plan_as::<TestStep>(with, cx), }
            }

            /// Run with `with:` already rendered.
            pub async fn run(self, with: Map<String, Value>, cx: &StageContext) -> Result<Outputs, StageError> {
                match self { $(Kind::$variant => run_as::<$ty>(with, cx).await,)* #[cfg(test)] Kind::TestStep => run_as::<TestStep>(with, cx).await, }
            }
        }
    };
}

for_each_kind!(define_kind);

impl Kind {
    pub fn from_name(name: &str) -> Option<Kind> {
        #[cfg(test)]
        if name == <TestStep as Stage>::KIND {
            return Some(Kind::TestStep);
        }
        Kind::ALL.iter().copied().find(|k| k.name() == name)
    }

    pub fn names() -> impl Iterator<Item = &'static str> {
        Kind::ALL.iter().map(|k| k.name())
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Deserialize `with:` into the kind's params; serde's error names the field.
pub fn parse_params<S: Stage>(with: &Map<String, Value>) -> Result<S::Params, Problem> {
    serde_path_to_error::deserialize(Value::Object(with.clone())).map_err(|e| {
        let path = e.path().to_string();
        Problem {
            path: if path == "." { String::new() } else { path },
            message: e.into_inner().to_string(),
            hint: None,
        }
    })
}

fn validate_as<S: Stage>(with: &Map<String, Value>, cx: &ValidateCx<'_>) -> Vec<Problem> {
    match parse_params::<S>(with) {
        Ok(p) => S::validate(&p, cx),
        Err(problem) => vec![problem],
    }
}

fn plan_as<S: Stage>(with: &Map<String, Value>, cx: &ValidateCx<'_>) -> Result<Vec<String>, Problem> {
    parse_params::<S>(with).map(|p| S::plan(&p, cx))
}

async fn run_as<S: Stage>(with: Map<String, Value>, cx: &StageContext) -> Result<Outputs, StageError> {
    let params =
        parse_params::<S>(&with).map_err(|p| StageError::bad_input(format!("with.{}: {}", p.path, p.message)))?;
    S::run(params, cx).await
}
