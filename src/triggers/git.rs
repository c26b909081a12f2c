//! What a push changed, from the repository itself (payload commit lists are
//! truncated by both hosts, so they are never trusted for this).
//!
//! - update: the files that differ between the `before` and `after` trees
//!   (the two-dot diff GitHub Actions uses for `paths` on push);
//! - force push (`before` is not an ancestor of `after`): the same tree diff,
//!   which is what differs between what was there and what is there now;
//! - new branch (`before` all zeros): the files touched by the commits that
//!   only this branch has, i.e. reachable from `after` but from no other
//!   branch, tag or remote-tracking ref;
//! - deleted branch (`after` all zeros): nothing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use git2::{Oid, Repository, Sort};

use super::TriggerError;
use super::event::{PushEvent, normalize_repo_url};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeKind {
    Update,
    NewBranch,
    ForcePush,
    Deleted,
}

impl std::fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChangeKind::Update => "update",
            ChangeKind::NewBranch => "new branch",
            ChangeKind::ForcePush => "force push",
            ChangeKind::Deleted => "deleted",
        })
    }
}

/// The files a push changed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeSet {
    pub kind: ChangeKind,
    /// Repository-relative paths, `/`-separated; a rename lists both names.
    pub files: BTreeSet<String>,
    /// Commits the comparison covered (new branch: the branch's own commits).
    pub commits: usize,
}

pub fn open(path: &Path) -> Result<Repository, TriggerError> {
    Repository::discover(path).map_err(|source| TriggerError::OpenRepo { path: path.to_path_buf(), source })
}

fn workdir(repo: &Repository) -> PathBuf {
    // libgit2 reports directories with a trailing `/`; rebuilding from the
    // components drops it, so messages show the path as the user wrote it.
    repo.workdir().unwrap_or_else(|| repo.path()).components().collect()
}

/// The repository identities a payload must match: `expect` when given,
/// else the URLs of the checkout's remotes.
pub fn check_repository(repo: &Repository, event: &PushEvent, expect: &[String]) -> Result<(), TriggerError> {
    let known: Vec<String> = if expect.is_empty() {
        let names = repo.remotes().map_err(|source| TriggerError::Git {
            repo: workdir(repo),
            action: "list remotes".into(),
            source,
        })?;
        names
            .iter()
            .filter_map(|n| n.ok().flatten())
            .filter_map(|n| repo.find_remote(n).ok().and_then(|r| r.url().ok().map(str::to_string)))
            .collect()
    } else {
        expect.to_vec()
    };
    if known.is_empty() {
        return Err(TriggerError::NoRepositoryIdentity { repo: workdir(repo) });
    }
    let known_norm: BTreeSet<String> = known.iter().map(|u| normalize_repo_url(u)).collect();
    if event.repository_urls.iter().any(|u| known_norm.contains(&normalize_repo_url(u))) {
        return Ok(());
    }
    Err(TriggerError::OtherRepository {
        payload: event.repository.clone(),
        payload_urls: event.repository_urls.iter().map(|u| crate::secret::mask(u)).collect(),
        repo: workdir(repo),
        remotes: known.iter().map(|u| crate::secret::mask(u)).collect(),
    })
}

/// Fetch every branch from the remotes that are the payload's repository,
/// when `before` or `after` is not in the checkout yet (a long-running
/// `modelship serve` sees pushes before anyone updates its checkout).
/// Credentials come from the checkout's Git credential helpers or an SSH
/// agent, through the `git` command (this build of libgit2 has no HTTPS or
/// SSH transport). Returns whether anything was fetched.
pub fn fetch_missing(repo: &Repository, event: &PushEvent, expect: &[String]) -> Result<bool, TriggerError> {
    let present = |sha: &str| {
        crate::triggers::event::is_zero_sha(sha) || Oid::from_str(sha).is_ok_and(|o| repo.find_commit(o).is_ok())
    };
    if present(&event.before) && present(&event.after) {
        return Ok(false);
    }
    // One fetch at a time per process: concurrent deliveries would race on ref locks.
    static FETCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    let payload: BTreeSet<String> = event.repository_urls.iter().map(|u| normalize_repo_url(u)).collect();
    let names = repo.remotes().map_err(|source| TriggerError::Git {
        repo: workdir(repo),
        action: "list remotes".into(),
        source,
    })?;
    let mut fetched = false;
    for name in names.iter().filter_map(|n| n.ok().flatten()) {
        let Ok(remote) = repo.find_remote(name) else { continue };
        let url = remote.url().unwrap_or_default().to_string();
        // With --expect-repo the identity was checked already; otherwise only
        // remotes that are the payload's repository are fetched from.
        if expect.is_empty() && !payload.contains(&normalize_repo_url(&url)) {
            continue;
        }
        fetch_with_git_cli(&workdir(repo), name, &url)?;
        fetched = true;
        if present(&event.before) && present(&event.after) {
            break;
        }
    }
    Ok(fetched)
}

/// `git fetch REMOTE +refs/heads/*:refs/remotes/REMOTE/*`, never prompting,
/// bounded in time.
fn fetch_with_git_cli(dir: &Path, remote: &str, url: &str) -> Result<(), TriggerError> {
    const LIMIT: std::time::Duration = std::time::Duration::from_secs(300);
    let failed = |message: String| TriggerError::Fetch {
        repo: dir.to_path_buf(),
        remote: remote.to_string(),
        url: crate::secret::mask(url),
        message: crate::secret::mask(&message),
    };
    let mut child = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["fetch", "--quiet", "--no-tags", remote, &format!("+refs/heads/*:refs/remotes/{remote}/*")])
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot run `git`: {e}")))?;
    let started = std::time::Instant::now();
    loop {
        match child.try_wait().map_err(|e| failed(e.to_string()))? {
            Some(status) if status.success() => return Ok(()),
            Some(status) => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return Err(failed(format!("git fetch exited with {status}: {}", err.trim())));
            }
            None if started.elapsed() > LIMIT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(format!("git fetch took longer than {}s", LIMIT.as_secs())));
            }
            None => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
}

/// Compute what `event` changed in `repo`.
pub fn changes(repo: &Repository, event: &PushEvent) -> Result<ChangeSet, TriggerError> {
    if event.is_deleted_ref() {
        return Ok(ChangeSet { kind: ChangeKind::Deleted, files: BTreeSet::new(), commits: 0 });
    }
    let git_err = |action: String| {
        let repo_path = workdir(repo);
        move |source| TriggerError::Git { repo: repo_path, action, source }
    };
    let find = |sha: &str, field: &'static str| -> Result<git2::Commit<'_>, TriggerError> {
        let missing = || TriggerError::MissingCommit {
            repo: workdir(repo),
            sha: sha.to_string(),
            field,
            git_ref: event.git_ref.clone(),
        };
        let oid = Oid::from_str(sha).map_err(|_| missing())?;
        repo.find_commit(oid).map_err(|_| missing())
    };
    let after = find(&event.after, "after")?;
    if event.is_new_ref() {
        return new_branch_changes(repo, event, &after);
    }
    let before = find(&event.before, "before")?;
    let forced = before.id() != after.id()
        && !repo.graph_descendant_of(after.id(), before.id()).map_err(git_err("compare before and after".into()))?;
    let commits = if forced {
        0
    } else {
        let mut walk = repo.revwalk().map_err(git_err("walk history".into()))?;
        walk.push(after.id()).map_err(git_err("walk history".into()))?;
        walk.hide(before.id()).map_err(git_err("walk history".into()))?;
        walk.count()
    };
    let files = tree_diff(repo, Some(&before), &after)?;
    Ok(ChangeSet { kind: if forced { ChangeKind::ForcePush } else { ChangeKind::Update }, files, commits })
}

fn new_branch_changes(
    repo: &Repository,
    event: &PushEvent,
    after: &git2::Commit<'_>,
) -> Result<ChangeSet, TriggerError> {
    let git_err = |action: &str| {
        let repo_path = workdir(repo);
        let action = action.to_string();
        move |source| TriggerError::Git { repo: repo_path, action, source }
    };
    let branch = event.branch().unwrap_or("");
    let mut walk = repo.revwalk().map_err(git_err("walk history"))?;
    walk.set_sorting(Sort::TOPOLOGICAL).map_err(git_err("walk history"))?;
    walk.push(after.id()).map_err(git_err("walk history"))?;
    // Hide everything every *other* ref reaches: what remains is this branch's own work.
    for reference in repo.references().map_err(git_err("list refs"))?.flatten() {
        let Ok(name) = reference.name() else { continue };
        let same_branch = !branch.is_empty()
            && (name == event.git_ref || (name.starts_with("refs/remotes/") && name.ends_with(&format!("/{branch}"))));
        if same_branch || name.ends_with("/HEAD") {
            continue;
        }
        if let Ok(commit) = reference.peel_to_commit() {
            walk.hide(commit.id()).map_err(git_err("walk history"))?;
        }
    }
    let mut files = BTreeSet::new();
    let mut commits = 0;
    for oid in walk {
        let commit = repo.find_commit(oid.map_err(git_err("walk history"))?).map_err(git_err("read commit"))?;
        commits += 1;
        let parent = commit.parents().next();
        files.extend(tree_diff(repo, parent.as_ref(), &commit)?);
    }
    Ok(ChangeSet { kind: ChangeKind::NewBranch, files, commits })
}

fn tree_diff(
    repo: &Repository,
    old: Option<&git2::Commit<'_>>,
    new: &git2::Commit<'_>,
) -> Result<BTreeSet<String>, TriggerError> {
    let err = |source| TriggerError::Git { repo: workdir(repo), action: format!("diff {}", new.id()), source };
    let old_tree = old.map(|c| c.tree()).transpose().map_err(err)?;
    let new_tree = new.tree().map_err(err)?;
    let diff = repo.diff_tree_to_tree(old_tree.as_ref(), Some(&new_tree), None).map_err(err)?;
    let mut files = BTreeSet::new();
    for delta in diff.deltas() {
        for file in [delta.old_file(), delta.new_file()] {
            if let Some(path) = file.path() {
                files.insert(path.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    Ok(files)
}
