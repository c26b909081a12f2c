//! From a payload to a plan: which pipelines run for this push, and why each
//! does or does not.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobBuilder, GlobSetBuilder};
use serde::Serialize;

use super::TriggerError;
use super::event::{EventKind, Provider, PushEvent};
use super::git::{self, ChangeKind, ChangeSet};
use crate::spec::Pipeline;

/// Everything selection needs besides the payload.
#[derive(Debug, Clone)]
pub struct TriggerRequest {
    /// `X-GitHub-Event` / `X-Gitlab-Event` / `--event-type`.
    pub event_type: String,
    /// Known from the endpoint; `None` guesses from the payload.
    pub provider: Option<Provider>,
    pub repo: PathBuf,
    pub pipelines: PathBuf,
    /// Repository URLs payloads must come from; empty: the checkout's remotes.
    pub expect_repo: Vec<String>,
    /// For messages: the file name or `delivery <id>`.
    pub source: String,
    /// Fetch from the payload's remote when its commits are not in the checkout.
    pub fetch: bool,
}

/// One pipeline's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    pub pipeline: String,
    pub file: PathBuf,
    /// `spec.model.name`: the server runs one pipeline of a model at a time.
    #[serde(skip)]
    pub model: String,
    pub run: bool,
    pub reason: String,
    /// Changed files that matched the pipeline's `paths`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub matched: Vec<String>,
    /// Whether the pipeline declares a `commit` param (then `--set commit=SHA`).
    #[serde(skip)]
    pub declares_commit: bool,
}

/// What a push means: ignored (with the reason), or the per-pipeline
/// decisions.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerPlan {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<PushEvent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<ChangeSet>,
    /// Set when the push as a whole starts nothing (not a push, a tag, a deleted branch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignored: Option<String>,
    pub decisions: Vec<Decision>,
}

impl TriggerPlan {
    pub fn selected(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| d.run)
    }
    fn ignored(event: Option<PushEvent>, reason: String) -> TriggerPlan {
        TriggerPlan { event, changes: None, ignored: Some(reason), decisions: Vec::new() }
    }
}

/// Parse, check and select. Errors are the caller's bad input: a malformed
/// payload, another repository's push, commits the checkout lacks, an
/// unreadable pipeline file.
pub fn plan(payload: &[u8], req: &TriggerRequest) -> Result<TriggerPlan, TriggerError> {
    if let EventKind::Other(kind) = EventKind::parse(&req.event_type) {
        return Ok(TriggerPlan::ignored(None, format!("event type `{kind}` is not a push; nothing runs")));
    }
    let event = PushEvent::from_json(payload, req.provider, &req.source)?;
    let repo = git::open(&req.repo)?;
    git::check_repository(&repo, &event, &req.expect_repo)?;
    let Some(branch) = event.branch().map(str::to_string) else {
        let reason = format!("`{}` is not a branch (tags do not trigger pipelines); nothing runs", event.git_ref);
        return Ok(TriggerPlan::ignored(Some(event), reason));
    };
    if event.is_deleted_ref() {
        let reason = format!("branch `{branch}` was deleted; nothing runs");
        return Ok(TriggerPlan::ignored(Some(event), reason));
    }
    if req.fetch {
        git::fetch_missing(&repo, &event, &req.expect_repo)?;
    }
    let changes = git::changes(&repo, &event)?;
    let entries = load_pipelines(&req.pipelines)?;
    let decisions = entries.iter().map(|(path, p)| decide(path, p, &branch, &changes)).collect::<Result<_, _>>()?;
    Ok(TriggerPlan { event: Some(event), changes: Some(changes), ignored: None, decisions })
}

/// Every `*.yaml`/`*.yml` in `dir`, sorted by file name.
pub fn load_pipelines(dir: &Path) -> Result<Vec<(PathBuf, Pipeline)>, TriggerError> {
    let read = std::fs::read_dir(dir).map_err(|source| TriggerError::Io { path: dir.to_path_buf(), source })?;
    let mut files: Vec<PathBuf> = read
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    files.into_iter().map(|path| load_pipeline(&path).map(|p| (path, p))).collect()
}

// TODO(lead): switch to `crate::spec::load(path)` (span-carrying errors) once
// the spec branch is merged; it is `todo!()` on this branch.
fn load_pipeline(path: &Path) -> Result<Pipeline, TriggerError> {
    let text = std::fs::read_to_string(path).map_err(|source| TriggerError::Io { path: path.to_path_buf(), source })?;
    crate::spec::yaml::from_str::<Pipeline>(&text).map_err(|e| TriggerError::Pipeline {
        path: path.to_path_buf(),
        message: match (e.line, e.col) {
            (Some(l), Some(c)) => format!("{l}:{c}: {}", e.message),
            _ => e.message,
        },
    })
}

fn glob(path: &Path, pattern: &str, what: &str) -> Result<Glob, TriggerError> {
    // `*` stays within one path segment (as in GitHub Actions filters); `**` crosses.
    GlobBuilder::new(pattern).literal_separator(true).build().map_err(|e| TriggerError::Pipeline {
        path: path.to_path_buf(),
        message: format!("triggers.push.{what}: invalid glob `{pattern}`: {e}"),
    })
}

fn decide(path: &Path, p: &Pipeline, branch: &str, changes: &ChangeSet) -> Result<Decision, TriggerError> {
    let mut d = Decision {
        pipeline: p.metadata.name.clone(),
        file: path.to_path_buf(),
        model: p.spec.model.name.clone(),
        run: false,
        reason: String::new(),
        matched: Vec::new(),
        declares_commit: p.spec.params.contains_key("commit"),
    };
    let Some(push) = p.spec.triggers.as_ref().and_then(|t| t.push.as_ref()) else {
        d.reason = "no `triggers.push` in the pipeline".into();
        return Ok(d);
    };
    if !push.branches.is_empty() {
        let mut set = GlobSetBuilder::new();
        for b in &push.branches {
            set.add(glob(path, b, "branches")?);
        }
        let set =
            set.build().map_err(|e| TriggerError::Pipeline { path: path.to_path_buf(), message: e.to_string() })?;
        if !set.is_match(branch) {
            d.reason = format!("branch `{branch}` does not match branches {:?}", push.branches);
            return Ok(d);
        }
    }
    if push.paths.is_empty() {
        d.run = true;
        d.reason = format!("branch `{branch}` matches and the pipeline has no path filter");
        return Ok(d);
    }
    let mut set = GlobSetBuilder::new();
    for g in &push.paths {
        set.add(glob(path, g, "paths")?);
    }
    let set = set.build().map_err(|e| TriggerError::Pipeline { path: path.to_path_buf(), message: e.to_string() })?;
    d.matched = changes.files.iter().filter(|f| set.is_match(f.as_str())).cloned().collect();
    // A `dvc:PATH` model changes when its `.dvc` file (or a `dvc.lock`
    // above it) does, whatever `paths` says.
    if let Some(tracked) = p.spec.model.source.strip_prefix("dvc:") {
        let tracking = crate::storage::dvc::tracking_files(tracked);
        let dvc: Vec<String> =
            changes.files.iter().filter(|f| tracking.contains(f) && !d.matched.contains(f)).cloned().collect();
        if !dvc.is_empty() {
            d.run = true;
            d.reason = format!("the DVC file(s) tracking `{}` changed: {}", p.spec.model.source, dvc.join(", "));
            d.matched.extend(dvc);
            return Ok(d);
        }
    }
    if d.matched.is_empty() {
        d.reason = if changes.files.is_empty() {
            format!("the push changed no files (paths {:?})", push.paths)
        } else {
            format!("none of the {} changed file(s) match paths {:?}", changes.files.len(), push.paths)
        };
    } else {
        d.run = true;
        d.reason = format!("{} changed file(s) match paths {:?}", d.matched.len(), push.paths);
    }
    Ok(d)
}

/// What `modelship trigger --dry-run` prints.
pub fn render_plan(plan: &TriggerPlan, dry_run: bool) -> String {
    let mut out = String::new();
    if let Some(ev) = &plan.event {
        let _ = writeln!(
            out,
            "{} push to {} ({}): {} -> {}",
            ev.provider,
            ev.git_ref,
            ev.repository,
            short(&ev.before),
            short(&ev.after)
        );
    }
    if let Some(c) = &plan.changes {
        let extra = match c.kind {
            ChangeKind::ForcePush => " (before is not an ancestor of after; compared the two trees)",
            ChangeKind::NewBranch => " (files touched by commits no other ref has)",
            _ => "",
        };
        let _ = writeln!(out, "{}: {} commit(s), {} file(s) changed{extra}", c.kind, c.commits, c.files.len());
    }
    if let Some(reason) = &plan.ignored {
        let _ = writeln!(out, "ignored: {reason}");
        return out;
    }
    if plan.decisions.is_empty() {
        let _ = writeln!(out, "no pipelines found; nothing runs");
        return out;
    }
    for d in &plan.decisions {
        let verb = match (d.run, dry_run) {
            (true, true) => "would run",
            (true, false) => "run",
            (false, _) => "skip",
        };
        let _ = writeln!(out, "{verb:>9} {} ({}): {}", d.pipeline, d.file.display(), d.reason);
        for f in &d.matched {
            let _ = writeln!(out, "          - {f}");
        }
    }
    if plan.selected().next().is_none() {
        let _ = writeln!(out, "no pipeline matches this push; nothing runs");
    }
    out
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(source: &str) -> Pipeline {
        crate::spec::yaml::from_str(&format!(
            "apiVersion: modelship.io/v1alpha1\nkind: Pipeline\nmetadata: {{name: w}}\nspec:\n  model: {{name: w, source: '{source}'}}\n  stages: []\n  triggers:\n    push: {{branches: [main], paths: ['src/**']}}\n"
        ))
        .unwrap()
    }

    fn changes(files: &[&str]) -> ChangeSet {
        ChangeSet { kind: ChangeKind::Update, files: files.iter().map(|f| f.to_string()).collect(), commits: 1 }
    }

    /// `dvc push` + a commit of the `.dvc` file is how a DVC team ships a
    /// new model: that commit must select the pipeline even when its
    /// `paths` name only code.
    #[test]
    fn a_changed_dvc_file_selects_the_pipeline_of_its_path() {
        let p = pipeline("dvc:models/weather");
        let d = decide(Path::new("p.yaml"), &p, "main", &changes(&["models/weather.dvc", "README.md"])).unwrap();
        assert!(d.run, "{d:?}");
        assert_eq!(d.matched, ["models/weather.dvc"]);
        assert!(d.reason.contains("DVC file(s) tracking `dvc:models/weather` changed"), "{}", d.reason);
        let lock = decide(Path::new("p.yaml"), &p, "main", &changes(&["dvc.lock"])).unwrap();
        assert!(lock.run);
        // Another model's .dvc file, or another branch, does not.
        assert!(!decide(Path::new("p.yaml"), &p, "main", &changes(&["models/other.dvc"])).unwrap().run);
        assert!(!decide(Path::new("p.yaml"), &p, "dev", &changes(&["models/weather.dvc"])).unwrap().run);
        // An S3 model is untouched by .dvc files.
        let s3 = pipeline("s3://b/models/weather/");
        assert!(!decide(Path::new("p.yaml"), &s3, "main", &changes(&["models/weather.dvc"])).unwrap().run);
    }
}
