//! A real Git repository for the trigger tests, made with git2: commits on
//! `main` touching two models, a feature branch, a rewritten (force-pushed)
//! history, and pipeline files whose `triggers.push` select among them.
//! Payloads are the real upstream ones (fixtures/webhooks/), rewritten to
//! point at these commits.

use std::path::{Path, PathBuf};

use git2::{Commit, Oid, Repository, Signature};
use serde_json::Value;

pub const GITHUB_REMOTE: &str = "https://github.com/openshift-pipelines/pipelines-as-code.git";
pub const GITLAB_REMOTE: &str = "git@example.com:mike/diaspora.git";
pub const ZERO: &str = "0000000000000000000000000000000000000000";

pub struct Fixture {
    pub dir: tempfile::TempDir,
    /// main: c0 (README, pipelines) -> c1 (weather model) -> c2 (iris model)
    /// -> c3 (weather requirements + docs)
    pub c: [String; 4],
    /// feature/iris-tuning: branched at c1, one commit under models/iris/.
    pub feature: String,
    /// A rewrite of main after c1 (what a force push sends as `after`).
    pub rewritten: String,
}

impl Fixture {
    pub fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }
    pub fn pipelines(&self) -> PathBuf {
        self.repo().join("pipelines")
    }

    /// A clone of the repository at `DIR/checkout`, then a commit on `main`
    /// after c3 writing `file` (path, content) in the repository, which
    /// plays the Git host: the checkout lacks it. The checkout and the
    /// pushed commit.
    pub fn checkout_behind(&self, file: (&str, &str), message: &str) -> (PathBuf, Oid) {
        let checkout = self.dir.path().join("checkout");
        Repository::clone(self.repo().to_str().unwrap(), &checkout).unwrap();
        let upstream = Repository::open(self.repo()).unwrap();
        let head = upstream.find_commit(Oid::from_str(&self.c[3]).unwrap()).unwrap();
        let pushed = commit(&upstream, Some(&head), &[file], message, Some("refs/heads/main"));
        (checkout, pushed)
    }
}

fn pipeline(name: &str, triggers: &str, commit_param: bool) -> String {
    let params = if commit_param { "  params:\n    commit: { description: pushed commit }\n" } else { "" };
    format!(
        "apiVersion: modelship.io/v1alpha1\nkind: Pipeline\nmetadata:\n  name: {name}\nspec:\n  model:\n    name: {name}\n    source: s3://models/{name}/\n{params}  environments:\n    dev:\n      namespace: models-dev\n  stages:\n    - name: fetch\n      uses: fetch-model\n{triggers}"
    )
}

const PIPELINES: &[(&str, &str, bool)] = &[
    ("weather", "  triggers:\n    push: { branches: [main], paths: [\"models/weather/**\"] }\n", true),
    ("iris", "  triggers:\n    push: { branches: [main, \"feature/*\"], paths: [\"models/iris/**\"] }\n", false),
    ("ghost", "  triggers:\n    push: { branches: [main], paths: [\"models/ghost/**\"] }\n", false),
    ("manual", "", false),
];

pub fn commit(
    repo: &Repository,
    parent: Option<&Commit<'_>>,
    files: &[(&str, &str)],
    message: &str,
    update_ref: Option<&str>,
) -> Oid {
    let sig = Signature::now("Test", "test@example.com").unwrap();
    // An in-memory index builds nested trees from plain paths.
    let mut index = git2::Index::new().unwrap();
    if let Some(p) = parent {
        index.read_tree(&p.tree().unwrap()).unwrap();
    }
    for (path, content) in files {
        let blob = repo.blob(content.as_bytes()).unwrap();
        let entry = git2::IndexEntry {
            ctime: git2::IndexTime::new(0, 0),
            mtime: git2::IndexTime::new(0, 0),
            dev: 0,
            ino: 0,
            mode: 0o100644,
            uid: 0,
            gid: 0,
            file_size: content.len() as u32,
            id: blob,
            flags: 0,
            flags_extended: 0,
            path: path.as_bytes().to_vec(),
        };
        index.add(&entry).unwrap();
    }
    let tree_id = index.write_tree_to(repo).unwrap();
    let tree = repo.find_tree(tree_id).unwrap();
    let parents: Vec<&Commit<'_>> = parent.into_iter().collect();
    repo.commit(update_ref, &sig, &sig, message, &tree, &parents).unwrap()
}

/// A model repository at `path` on `main`: a first commit of `files` plus
/// the weather model fixture under `model_dir/`, then one commit under
/// `models/weather/` (what the weather pipelines' triggers watch), checked
/// out. Returns the two commits.
pub fn model_repo(git: &Repository, mut files: Vec<(String, String)>, model_dir: &str) -> (Oid, Oid) {
    let fixture = crate::support::repo().join("fixtures/weather-model");
    for e in std::fs::read_dir(fixture).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        files.push((format!("{model_dir}/{name}"), std::fs::read_to_string(e.path()).unwrap()));
    }
    let refs: Vec<(&str, &str)> = files.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let base = commit(git, None, &refs, "pipelines and model", Some("refs/heads/main"));
    let parent = git.find_commit(base).unwrap();
    let pushed = commit(
        git,
        Some(&parent),
        &[("models/weather/notes.md", "retrained\n")],
        "weather v1",
        Some("refs/heads/main"),
    );
    git.checkout_head(Some(git2::build::CheckoutBuilder::new().force())).unwrap();
    (base, pushed)
}

pub fn build() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("repo");
    let repo = Repository::init_opts(&path, git2::RepositoryInitOptions::new().initial_head("main")).unwrap();
    repo.remote("origin", GITHUB_REMOTE).unwrap();
    repo.remote("gitlab", GITLAB_REMOTE).unwrap();
    let mut files: Vec<(String, String)> = vec![("README.md".into(), "# models\n".into())];
    for (name, triggers, commit_param) in PIPELINES {
        files.push((format!("pipelines/{name}.yaml"), pipeline(name, triggers, *commit_param)));
    }
    let refs: Vec<(&str, &str)> = files.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let c0 = commit(&repo, None, &refs, "initial", Some("refs/heads/main"));
    let p0 = repo.find_commit(c0).unwrap();
    let c1 = commit(
        &repo,
        Some(&p0),
        &[("models/weather/model.joblib", "weather v1")],
        "weather model",
        Some("refs/heads/main"),
    );
    let p1 = repo.find_commit(c1).unwrap();
    let c2 = commit(&repo, Some(&p1), &[("models/iris/model.pkl", "iris v1")], "iris model", Some("refs/heads/main"));
    let p2 = repo.find_commit(c2).unwrap();
    let c3 = commit(
        &repo,
        Some(&p2),
        &[("models/weather/requirements.txt", "scikit-learn\n"), ("docs/notes.md", "notes\n")],
        "weather deps, notes",
        Some("refs/heads/main"),
    );
    let feature = commit(
        &repo,
        Some(&p1),
        &[("models/iris/params.yaml", "c: 1.0\n")],
        "tune iris",
        Some("refs/heads/feature/iris-tuning"),
    );
    // Not on any ref: as if main had been rewritten on the server after c1.
    let rewritten = commit(&repo, Some(&p1), &[("models/weather/model.joblib", "weather v2")], "retrain weather", None);
    // The working tree mirrors main, so the pipeline files exist on disk.
    repo.checkout_head(Some(git2::build::CheckoutBuilder::new().force())).unwrap();
    Fixture {
        dir,
        c: [c0.to_string(), c1.to_string(), c2.to_string(), c3.to_string()],
        feature: feature.to_string(),
        rewritten: rewritten.to_string(),
    }
}

/// GitHub's `X-Hub-Signature-256` of `body` with `secret`.
pub fn github_signature(secret: &str, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

pub fn fixture_json(rel: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/webhooks").join(rel);
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

/// The recorded GitHub push (PaC's fixture), pointed at our commits.
pub fn github_push(git_ref: &str, before: &str, after: &str) -> Vec<u8> {
    let mut v = fixture_json("github/push.recorded-pac-main-2-commits.json");
    v["ref"] = git_ref.into();
    v["before"] = before.into();
    v["after"] = after.into();
    v["created"] = (before == ZERO).into();
    v["deleted"] = (after == ZERO).into();
    serde_json::to_vec(&v).unwrap()
}

/// GitLab's documented push example, pointed at our commits.
pub fn gitlab_push(git_ref: &str, before: &str, after: &str) -> Vec<u8> {
    let mut v = fixture_json("gitlab/push.json");
    v["ref"] = git_ref.into();
    v["before"] = before.into();
    v["after"] = after.into();
    v["checkout_sha"] = after.into();
    serde_json::to_vec(&v).unwrap()
}
