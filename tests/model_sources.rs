//! Where models come from besides a plain bucket, against the real servers
//! on loopback: MLflow's model registry (`models:/NAME@ALIAS`,
//! `models:/NAME/VERSION`, artifacts in moto's S3 or behind the tracking
//! server's proxy, versions registered by MLflow's own client), DVC-tracked
//! paths (`dvc:PATH`, pushed to moto by `dvc push`, read at a Git commit),
//! and `modelship model push` (checked with boto3). Every bad input the
//! issue names fails with one line naming what and where, leaves no model
//! file behind and prints no secret.

mod support;

use std::path::Path;
use std::process::Command;

use modelship::ExitClass;
use modelship::HasExitClass;
use modelship::spec::ModelSpec;
use modelship::stages::fetch_model::{self, Access, FetchModelError, Lineage, Params};
use modelship::storage::mlflow::MlflowCredentials;
use modelship::storage::{Fetched, StaticCredentials};
use serde_json::{Value, json};
use support::registries::{AK, Artifacts, DvcRepo, Mlflow, SK, s3_env};
use support::s3::Moto;

fn fixture() -> std::path::PathBuf {
    support::repo().join("fixtures/weather-model")
}

fn creds() -> Option<StaticCredentials> {
    Some(StaticCredentials {
        access_key_id: modelship::secret::Secret::new(AK),
        secret_access_key: modelship::secret::Secret::new(SK),
        session_token: None,
    })
}

fn model(v: Value) -> ModelSpec {
    let mut m = json!({ "name": "weather", "insecure": true });
    m.as_object_mut().unwrap().extend(v.as_object().unwrap().clone());
    serde_json::from_value(m).unwrap()
}

async fn fetch(m: &ModelSpec, base: &Path, dest: &Path, access: Access) -> Result<(Fetched, Lineage), FetchModelError> {
    fetch_model::fetch_from(&Params::default(), m, base, dest, &access, false).await
}

fn s3_access() -> Access {
    Access { s3: creds(), mlflow: Some(MlflowCredentials::default()), ..Access::default() }
}

/// path -> sha256 of every file under `dir`.
fn files(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    fn walk(root: &Path, d: &Path, out: &mut Vec<(String, String)>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                walk(root, &e.path(), out);
            } else {
                let rel = e.path().strip_prefix(root).unwrap().display().to_string();
                out.push((rel, support::registry::sha256_file(&e.path())));
            }
        }
    }
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out.sort();
    out
}

fn manifest_of(f: &Fetched) -> Vec<(String, String)> {
    f.manifest.iter().map(|m| (m.path.clone(), format!("sha256:{}", m.sha256))).collect()
}

// ------------------------------------------------------------------ MLflow

/// `models:/weather@champion` and `models:/weather/1` resolve through the
/// REST API to the version MLflow's client registered, and its artifacts
/// come from moto's S3 byte for byte, with the lineage naming the version.
#[tokio::test]
async fn mlflow_alias_and_version_fetch_artifacts_from_s3() {
    let moto = Moto::start();
    let ml = Mlflow::start(&moto, Artifacts::S3, None);
    let (v1, run1) = ml.register("weather", &fixture(), None);
    let (v2, run2) = ml.register("weather", &fixture(), Some("champion"));
    assert_eq!((v1.as_str(), v2.as_str()), ("1", "2"));
    let tmp = tempfile::tempdir().unwrap();
    let m = model(
        json!({ "source": "models:/weather@champion", "mlflow": { "trackingUri": ml.uri, "insecure": true }, "endpoint": ml.s3 }),
    );
    let (f, lineage) = fetch(&m, tmp.path(), &tmp.path().join("a"), s3_access()).await.unwrap();
    assert_eq!(manifest_of(&f), files(&fixture()));
    let l = lineage.mlflow.unwrap();
    assert_eq!(
        (l.name.as_str(), l.version.as_str(), l.alias.as_deref(), l.run_id.as_str()),
        ("weather", "2", Some("champion"), run2.as_str())
    );
    assert!(l.artifact_uri.starts_with("s3://mlflow/art/") && l.artifact_uri.ends_with("/artifacts/model"), "{l:?}");
    assert!(f.objects.iter().all(|o| o.url.starts_with(&l.artifact_uri)), "{:?}", f.objects);

    let m1 = model(
        json!({ "source": "models:/weather/1", "mlflow": { "trackingUri": ml.uri, "insecure": true }, "endpoint": ml.s3 }),
    );
    let (f1, lineage1) = fetch(&m1, tmp.path(), &tmp.path().join("b"), s3_access()).await.unwrap();
    let l1 = lineage1.mlflow.unwrap();
    assert_eq!((l1.version.as_str(), l1.alias, l1.run_id.as_str()), ("1", None, run1.as_str()));
    assert_eq!(f1.content_digest, f.content_digest, "the same files make the same model digest");
}

/// With `--serve-artifacts` the version's URI is `mlflow-artifacts:/...`:
/// the files come through the tracking server, verified by size and hashed.
#[tokio::test]
async fn mlflow_artifacts_through_the_tracking_servers_proxy() {
    let moto = Moto::start();
    let ml = Mlflow::start(&moto, Artifacts::Proxied, None);
    ml.register("weather", &fixture(), Some("champion"));
    let tmp = tempfile::tempdir().unwrap();
    // No S3 endpoint or keys: everything goes through the tracking server.
    let m =
        model(json!({ "source": "models:/weather@champion", "mlflow": { "trackingUri": ml.uri, "insecure": true } }));
    let access = Access { mlflow: Some(MlflowCredentials::default()), ..Access::default() };
    let (f, lineage) = fetch(&m, tmp.path(), &tmp.path().join("a"), access.clone()).await.unwrap();
    assert_eq!(manifest_of(&f), files(&fixture()));
    assert_eq!(files(&f.model_dir), files(&fixture()));
    assert!(lineage.mlflow.unwrap().artifact_uri.starts_with("mlflow-artifacts:/"));
    // A second fetch keeps the verified files.
    let (again, _) = fetch(&m, tmp.path(), &tmp.path().join("a"), access).await.unwrap();
    assert_eq!((again.fetched_files, again.reused_files), (0, f.manifest.len()));
}

/// An alias or version that does not exist and a version with no
/// artifacts: one line naming the server, the model and what is missing;
/// exit class bad input; nothing in the model directory.
#[tokio::test]
async fn mlflow_missing_alias_version_and_artifacts_are_clear_errors() {
    let moto = Moto::start();
    let ml = Mlflow::start(&moto, Artifacts::S3, None);
    ml.register("weather", &fixture(), Some("champion"));
    let empty = tempfile::tempdir().unwrap();
    let (empty_version, _) = ml.register("weather", &empty.path().join("nothing"), None);
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("models:/weather@staging", format!("MLflow at {}: registered model `weather` has no alias `staging`", ml.uri)),
        ("models:/weather/9", format!("MLflow at {}: no version 9 of registered model `weather`", ml.uri)),
        ("models:/nosuch/1", format!("MLflow at {}: no version 1 of registered model `nosuch`", ml.uri)),
        (
            &format!("models:/weather/{empty_version}") as &str,
            format!("MLflow at {}: weather version {empty_version} keeps its artifacts at `s3://mlflow/art/", ml.uri),
        ),
    ];
    for (i, (source, want)) in cases.iter().enumerate() {
        let m = model(
            json!({ "source": source, "mlflow": { "trackingUri": ml.uri, "insecure": true }, "endpoint": ml.s3 }),
        );
        let dest = tmp.path().join(format!("d{i}"));
        let err = fetch(&m, tmp.path(), &dest, s3_access()).await.unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with(want.as_str()), "{source}: {text}");
        assert!(!text.contains('\n'), "{text}");
        assert_eq!(err.exit_class(), ExitClass::BadInput, "{source}: {text}");
        assert!(files(&dest.join("model")).is_empty(), "{source}: no partial model");
    }
    let last = fetch(
        &model(json!({ "source": format!("models:/weather/{empty_version}"), "mlflow": { "trackingUri": ml.uri, "insecure": true }, "endpoint": ml.s3 })),
        tmp.path(),
        &tmp.path().join("e"),
        s3_access(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(last.ends_with("no files are there: refusing to produce an empty model"), "{last}");
}

/// A tracking server with MLflow's basic-auth app: the right user and
/// password fetch; a wrong password and a token it does not know are
/// refused with a line naming where the credentials came from, never them.
#[tokio::test]
async fn a_tracking_server_that_refuses_the_credentials() {
    let moto = Moto::start();
    let ml = Mlflow::start(&moto, Artifacts::S3, Some("admin-pass-4f1c9a"));
    ml.register("weather", &fixture(), Some("champion"));
    let tmp = tempfile::tempdir().unwrap();
    let m = model(
        json!({ "source": "models:/weather@champion", "mlflow": { "trackingUri": ml.uri, "insecure": true }, "endpoint": ml.s3 }),
    );
    let with = |user: &str, password: &str, token: &str| {
        let data = [
            (MlflowCredentials::USERNAME, user.to_string()),
            (MlflowCredentials::PASSWORD, password.to_string()),
            (MlflowCredentials::TOKEN, token.to_string()),
        ];
        let get = move |k: &str| data.iter().find(|(n, v)| *n == k && !v.is_empty()).map(|(_, v)| v.clone());
        Access {
            s3: creds(),
            mlflow: Some(MlflowCredentials::from_lookup("Secret models-dev/mlflow", get)),
            ..Access::default()
        }
    };
    let (ok, _) = fetch(&m, tmp.path(), &tmp.path().join("ok"), with("admin", "admin-pass-4f1c9a", "")).await.unwrap();
    assert_eq!(manifest_of(&ok), files(&fixture()));
    for (i, (access, names)) in [
        (with("admin", "wrong-password-77a1", ""), "user `admin` (password from Secret models-dev/mlflow)"),
        (with("", "", "token-it-never-issued-5e2b"), "the token from Secret models-dev/mlflow"),
    ]
    .into_iter()
    .enumerate()
    {
        let dest = tmp.path().join(format!("bad{i}"));
        let err = fetch(&m, tmp.path(), &dest, access).await.unwrap_err();
        let text = modelship::secret::mask(&modelship::error::chain(&err));
        assert!(text.starts_with(&format!("MLflow at {} refused {names} (HTTP 401)", ml.uri)), "{text}");
        for secret in ["wrong-password-77a1", "token-it-never-issued-5e2b", "admin-pass-4f1c9a"] {
            assert!(!text.contains(secret), "{text}");
        }
        assert!(!text.contains('\n'));
        assert_eq!(err.exit_class(), ExitClass::BadInput);
        assert!(files(&dest.join("model")).is_empty());
    }
}

// --------------------------------------------------------------------- DVC

/// `dvc add` a model directory, `dvc push` it to moto, commit: `dvc:PATH`
/// at that commit fetches every file from DVC 3's `files/md5/` layout,
/// each md5-verified; a path below the tracked directory fetches that part;
/// a later commit that changes the model is read only when it is the one run.
#[tokio::test]
async fn dvc_tracked_directory_at_the_commit_being_run() {
    let moto = Moto::start();
    let repo = DvcRepo::new(&moto, "dvc");
    let model_dir = repo.path().join("models/weather");
    support::copy_tree(&fixture(), &model_dir);
    std::fs::create_dir_all(model_dir.join("extra")).unwrap();
    std::fs::write(model_dir.join("extra/notes.txt"), "line one\r\nline two\r\n").unwrap();
    repo.dvc(&["add", "-q", "models/weather"]);
    repo.dvc(&["push", "-q"]);
    let first = repo.commit("model v1");
    let want = files(&model_dir);

    // v2: one file changed, pushed and committed.
    std::fs::write(model_dir.join("weather.json"), "{\"kind\": \"changed\"}\n").unwrap();
    repo.dvc(&["add", "-q", "models/weather"]);
    repo.dvc(&["push", "-q"]);
    let second = repo.commit("model v2");

    let base = repo.path().join("pipelines");
    std::fs::create_dir_all(&base).unwrap();
    let m = model(json!({ "source": "dvc:models/weather" }));
    let tmp = tempfile::tempdir().unwrap();
    let at = |c: &str| Access { s3: creds(), commit: Some(c.to_string()), ..Access::default() };
    let (f, lineage) = fetch(&m, &base, &tmp.path().join("v1"), at(&first)).await.unwrap();
    assert_eq!(manifest_of(&f), want);
    let l = lineage.dvc.unwrap();
    assert_eq!(
        (l.commit.as_str(), l.file.as_str(), l.out.as_str(), l.hash.as_str()),
        (first.as_str(), "models/weather.dvc", "models/weather", "md5")
    );
    assert_eq!((l.remote.as_str(), l.remote_url.as_str()), ("store", "s3://dvc/cache"));
    assert!(l.md5.ends_with(".dir"));
    assert!(f.objects.iter().all(|o| o.url.starts_with("s3://dvc/cache/files/md5/")), "{:?}", f.objects);

    let (f2, l2) = fetch(&m, &base, &tmp.path().join("v2"), at(&second)).await.unwrap();
    assert_ne!(f2.content_digest, f.content_digest);
    assert_eq!(l2.dvc.unwrap().commit, second);
    // HEAD when the run names no commit.
    let (head, _) =
        fetch(&m, &base, &tmp.path().join("head"), Access { s3: creds(), ..Access::default() }).await.unwrap();
    assert_eq!(head.content_digest, f2.content_digest);

    // A part of the tracked directory.
    let part = model(json!({ "source": "dvc:models/weather/extra" }));
    let (p, _) = fetch(&part, &base, &tmp.path().join("part"), at(&first)).await.unwrap();
    assert_eq!(p.manifest.iter().map(|m| m.path.as_str()).collect::<Vec<_>>(), ["notes.txt"]);
}

/// A file tracked on its own, and an entry in DVC 2's format (no `hash:`),
/// whose object DVC keeps at the remote's root and whose md5 is of the text
/// with CRLF as LF: both fetched and verified as DVC computes them.
#[tokio::test]
async fn dvc_single_file_and_the_older_layout() {
    let moto = Moto::start();
    let repo = DvcRepo::new(&moto, "dvc-old");
    std::fs::create_dir_all(repo.path().join("models")).unwrap();
    std::fs::write(repo.path().join("models/model.txt"), "weights\r\nmore\r\n").unwrap();
    repo.dvc(&["add", "-q", "models/model.txt"]);
    // The same kind of file the old way: hashed by DVC's own md5-dos2unix,
    // cached where DVC 3 keeps legacy objects, tracked without `hash:`.
    std::fs::write(repo.path().join("models/old.txt"), "old\r\nweights\r\n").unwrap();
    let legacy = repo
        .python(
            "from dvc_data.hashfile.hash import file_md5\nprint(file_md5('models/old.txt', name='md5-dos2unix'))",
            &[],
        )
        .trim()
        .to_string();
    let cached = repo.path().join(".dvc/cache").join(&legacy[..2]).join(&legacy[2..]);
    std::fs::create_dir_all(cached.parent().unwrap()).unwrap();
    std::fs::copy(repo.path().join("models/old.txt"), &cached).unwrap();
    std::fs::write(
        repo.path().join("models/old.txt.dvc"),
        format!("outs:\n- md5: {legacy}\n  size: 15\n  path: old.txt\n"),
    )
    .unwrap();
    std::fs::write(repo.path().join("models/.gitignore"), "/model.txt\n/old.txt\n").unwrap();
    repo.dvc(&["push", "-q"]);
    let commit = repo.commit("two files");
    let listed = moto.boto3(
        "import sys, boto3\ns3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id='a', aws_secret_access_key='b')\nfor o in s3.list_objects_v2(Bucket='dvc-old')['Contents']: print(o['Key'])",
        &[&moto.endpoint],
    );
    assert!(
        listed.lines().any(|k| k == format!("cache/{}/{}", &legacy[..2], &legacy[2..])),
        "dvc push put the legacy object at the root:\n{listed}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let at = Access { s3: creds(), commit: Some(commit), ..Access::default() };
    let (f, l) =
        fetch(&model(json!({ "source": "dvc:models/model.txt" })), repo.path(), &tmp.path().join("new"), at.clone())
            .await
            .unwrap();
    assert_eq!(
        manifest_of(&f),
        [("model.txt".to_string(), support::registry::sha256_file(&repo.path().join("models/model.txt")))]
    );
    assert_eq!(l.dvc.unwrap().hash, "md5");
    let (old, l) = fetch(&model(json!({ "source": "dvc:models/old.txt" })), repo.path(), &tmp.path().join("old"), at)
        .await
        .unwrap();
    assert_eq!(old.manifest[0].path, "old.txt");
    assert_eq!(std::fs::read(old.model_dir.join("old.txt")).unwrap(), b"old\r\nweights\r\n");
    assert_eq!(l.dvc.unwrap().hash, "md5-dos2unix");
}

/// Bytes in the remote that do not match the md5 in the `.dvc` file, a
/// remote that is not S3, a path no `.dvc` file tracks: one line each,
/// bad input, and no model file written.
#[tokio::test]
async fn dvc_bad_inputs_are_clear_errors() {
    let moto = Moto::start();
    let repo = DvcRepo::new(&moto, "dvc-bad");
    std::fs::create_dir_all(repo.path().join("models")).unwrap();
    std::fs::write(repo.path().join("models/m.bin"), b"the real weights").unwrap();
    repo.dvc(&["add", "-q", "models/m.bin"]);
    repo.dvc(&["push", "-q"]);
    let good = repo.commit("model");
    let md5 = repo
        .python("import yaml\nprint(yaml.safe_load(open('models/m.bin.dvc'))['outs'][0]['md5'])", &[])
        .trim()
        .to_string();
    // Someone overwrote the object in the remote.
    moto.boto3(
        "import sys, boto3\ns3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id='a', aws_secret_access_key='b')\ns3.put_object(Bucket='dvc-bad', Key=sys.argv[2], Body=b'tampered weights')",
        &[&moto.endpoint, &format!("cache/files/md5/{}/{}", &md5[..2], &md5[2..])],
    );
    let tmp = tempfile::tempdir().unwrap();
    let at = |c: &str| Access { s3: creds(), commit: Some(c.to_string()), ..Access::default() };
    let dest = tmp.path().join("tampered");
    let err = fetch(&model(json!({ "source": "dvc:models/m.bin" })), repo.path(), &dest, at(&good)).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("object `s3://dvc-bad/cache/files/md5/{}/{}`: md5 (recorded by DVC for `m.bin`) mismatch: expected {md5}, got ", &md5[..2], &md5[2..])),
        "{text}"
    );
    assert!(files(&dest.join("model")).is_empty(), "a file that failed its md5 never gets its name");

    // A remote that is not S3.
    repo.dvc(&["remote", "add", "gcs", "gs://bucket/cache"]);
    repo.dvc(&["remote", "default", "gcs"]);
    let gcs = repo.commit("remote on GCS");
    let err = fetch(&model(json!({ "source": "dvc:models/m.bin" })), repo.path(), &tmp.path().join("gcs"), at(&gcs))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "dvc:models/m.bin: DVC remote `gcs` is `gs://bucket/cache`, which is not S3: modelship reads s3:// remotes only"
    );
    assert_eq!(err.exit_class(), ExitClass::BadInput);

    let err = fetch(&model(json!({ "source": "dvc:models/other" })), repo.path(), &tmp.path().join("none"), at(&good))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "dvc:models/other: no .dvc file or dvc.lock stage tracks it at commit {good} (looked for models/other.dvc, models.dvc, models/dvc.lock, dvc.lock)"
        )
    );
    assert_eq!(err.exit_class(), ExitClass::BadInput);
}

/// `dvc:` paths that leave the repository are refused by `modelship
/// validate` with the line and column of the source (exit 2).
#[test]
fn a_dvc_path_outside_the_repository_is_a_bad_pipeline() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("p.yaml");
    std::fs::write(
        &file,
        "apiVersion: modelship.io/v1alpha1\nkind: Pipeline\nmetadata: { name: p }\nspec:\n  model: { name: weather, source: \"dvc:../secrets/model\" }\n  stages:\n    - { name: fetch, uses: fetch-model }\n",
    )
    .unwrap();
    let out = Command::new(support::BIN).arg("validate").arg(&file).output().unwrap();
    let stderr = support::text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("`../secrets/model` leaves the repository (`..`)"), "{stderr}");
}

// -------------------------------------------------------------- model push

/// `len` bytes of xorshift noise: no two parts alike.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn push(dir: &Path, dest: &str, moto: &Moto, extra: &[&str]) -> std::process::Output {
    Command::new(support::BIN)
        .args(["model", "push"])
        .arg(dir)
        .arg(dest)
        .args(["--endpoint", &moto.endpoint, "--insecure", "-v"])
        .args(extra)
        .envs(s3_env(&moto.endpoint))
        .env("XDG_CACHE_HOME", dir.parent().unwrap().join("cache"))
        .env_remove("AWS_ENDPOINT_URL")
        .output()
        .unwrap()
}

/// A directory of a small file, a 26 MiB file and a skipped notebook: the
/// big file goes up as a multipart upload in 8 MiB parts (boto3 sees the
/// `-4` ETag, the `sha256` metadata and the bytes), the notebook stays
/// home, versions are reported, and the content digest is the one
/// fetch-model computes for the prefix. No credential is printed.
#[tokio::test]
async fn model_push_uploads_what_fetch_model_reads() {
    let moto = Moto::start();
    moto.create_bucket("models", true);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    support::copy_tree(&fixture(), &dir);
    let big = noise(26 << 20, 3);
    std::fs::write(dir.join("weights.bin"), &big).unwrap();
    std::fs::create_dir_all(dir.join("notebooks")).unwrap();
    std::fs::write(dir.join("notebooks/explore.ipynb"), "{}").unwrap();
    let out = push(&dir, "s3://models/weather/", &moto, &["--exclude", "**/*.ipynb", "-o", "json"]);
    let stderr = support::text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for secret in [SK, AK] {
        assert!(!stderr.contains(secret) && !support::text(&out.stdout).contains(secret), "credential printed");
    }
    let manifest: Value = serde_json::from_slice(&out.stdout).unwrap();
    let files_out = manifest["files"].as_array().unwrap();
    let paths: Vec<&str> = files_out.iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["MyModel.py", "README.md", "weather.json", "weights.bin"]);
    let w = &files_out[3];
    assert_eq!((w["parts"].as_u64(), w["action"].as_str()), (Some(4), Some("uploaded")));
    assert!(files_out.iter().all(|f| f["versionId"].as_str().is_some_and(|v| !v.is_empty())), "{manifest:#}");

    // boto3's view of the big object.
    let seen = moto.boto3(
        "import sys, json, hashlib, boto3\ns3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id='a', aws_secret_access_key='b')\nh = s3.head_object(Bucket='models', Key='weather/weights.bin')\nbody = s3.get_object(Bucket='models', Key='weather/weights.bin')['Body'].read()\nkeys = [o['Key'] for o in s3.list_objects_v2(Bucket='models')['Contents']]\nprint(json.dumps({'etag': h['ETag'], 'meta': h['Metadata'], 'sha': hashlib.sha256(body).hexdigest(), 'keys': keys}))",
        &[&moto.endpoint],
    );
    let seen: Value = serde_json::from_str(seen.trim()).unwrap();
    let sha = support::registry::sha256_digest(&big);
    assert_eq!(seen["sha"].as_str().map(|s| format!("sha256:{s}")), Some(sha.clone()));
    assert_eq!(seen["meta"]["sha256"].as_str().map(|s| format!("sha256:{s}")), Some(sha));
    assert!(seen["etag"].as_str().unwrap().ends_with("-4\""), "{seen}");
    assert_eq!(seen["etag"].as_str().unwrap().trim_matches('"'), w["etag"].as_str().unwrap());
    assert!(!seen["keys"].to_string().contains("ipynb"), "{seen}");

    // fetch-model reads the same model, with the same digest.
    let m = model(json!({ "source": "s3://models/weather/", "endpoint": moto.endpoint }));
    let (f, _) =
        fetch(&m, tmp.path(), &tmp.path().join("fetched"), Access { s3: creds(), ..Access::default() }).await.unwrap();
    assert_eq!(manifest["contentDigest"].as_str().unwrap(), f.content_digest);

    // Pushed again: nothing changed, nothing sent.
    let again = push(&dir, "s3://models/weather/", &moto, &["--exclude", "**/*.ipynb", "-o", "json"]);
    let again: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again["bytesUploaded"], 0);
    assert!(again["files"].as_array().unwrap().iter().all(|f| f["action"] == "unchanged"));
}

/// The connection to S3 breaks after about 20 MiB of a 40 MiB file going
/// up in 5 MiB parts: the push fails with one line saying how far it got
/// and how to resume; the same command then resumes the open upload,
/// sending only the parts S3 does not have, and boto3 reads the whole file.
#[tokio::test]
async fn an_interrupted_model_push_resumes() {
    let moto = Moto::start();
    moto.create_bucket("models", false);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    std::fs::create_dir_all(&dir).unwrap();
    let big = noise(40 << 20, 7);
    std::fs::write(dir.join("weights.bin"), &big).unwrap();
    let cutter = support::s3::UploadCutter::start(moto.endpoint.trim_start_matches("http://"), 20 << 20).await;
    let via = Moto::at(&format!("http://{}", cutter.addr));
    let args = ["--part-size", "5MiB", "--concurrency", "2", "-o", "json"];
    let first = tokio::task::spawn_blocking({
        let (dir, via) = (dir.clone(), via.endpoint.clone());
        move || push(&dir, "s3://models/m/", &Moto::at(&via), &args)
    })
    .await
    .unwrap();
    let stderr = support::text(&first.stderr);
    assert_eq!(first.status.code(), Some(1), "{stderr}");
    let line = stderr.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("{stderr}"));
    let done: u32 = line
        .strip_prefix("error: upload of `s3://models/m/weights.bin` stopped after ")
        .and_then(|r| r.split_once(" of 8 parts: run the same command again to resume it"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!((1..8).contains(&done), "{line}");
    drop(cutter);

    let second = push(&dir, "s3://models/m/", &moto, &args);
    assert!(second.status.success(), "{}", support::text(&second.stderr));
    let m: Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(m["files"][0]["action"], "resumed");
    assert_eq!(m["bytesUploaded"].as_u64().unwrap(), big.len() as u64 - u64::from(done) * (5 << 20));
    let seen = moto.boto3(
        "import sys, hashlib, boto3\ns3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id='a', aws_secret_access_key='b')\nprint(hashlib.sha256(s3.get_object(Bucket='models', Key='m/weights.bin')['Body'].read()).hexdigest(), len(s3.list_multipart_uploads(Bucket='models').get('Uploads', [])))",
        &[&moto.endpoint],
    );
    assert_eq!(seen.trim(), format!("{} 0", &support::registry::sha256_digest(&big)["sha256:".len()..]));
}

/// Bad arguments are usage errors (exit 2) with one line.
#[test]
fn model_push_refuses_bad_arguments() {
    let tmp = tempfile::tempdir().unwrap();
    for (args, want) in [
        (vec!["s3://b/p/", "--part-size", "4MiB"], "--part-size must be between 5MiB"),
        (vec!["s3://b/key"], "the destination is a prefix and ends with `/`"),
        (vec!["gs://b/p/"], "unknown scheme"),
    ] {
        let out = Command::new(support::BIN).args(["model", "push"]).arg(tmp.path()).args(&args).output().unwrap();
        let stderr = support::text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}

// ------------------------------------------------------------ to prod, --sim

/// `pipelines/weather-mlflow.yaml` under `--sim` against a real tracking
/// server: the version under `champion` is fetched from the server's
/// artifact proxy (the tracking URI is used as written: no embedded S3),
/// built, checked and promoted; MLflow then shows the promoted digest on
/// that version and the `production` alias on it. A second version goes the
/// same way, and `modelship rollback` moves the alias back to the first.
#[test]
fn weather_mlflow_runs_to_prod_and_leaves_the_tag_and_alias() {
    let moto = Moto::start();
    let ml = Mlflow::start(&moto, Artifacts::Proxied, None);
    let (v1, run1) = ml.register("weather", &fixture(), Some("champion"));
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = tmp.path().join("pipelines/weather-mlflow.yaml");
    std::fs::create_dir_all(pipeline.parent().unwrap()).unwrap();
    let yaml = std::fs::read_to_string(support::repo().join("pipelines/weather-mlflow.yaml")).unwrap();
    // Signed, so the attestation can be read back.
    let edited = yaml
        .replace("trackingUri: http://127.0.0.1:5000", &format!("trackingUri: {}", ml.uri))
        .replace("load: { requests: 200, concurrency: 8 }", "load: { requests: 20, concurrency: 2 }")
        .replacen("spec:\n", "spec:\n  signing:\n    key: { file: keys/cosign.key }\n", 1)
        .replacen("    - name: promote\n", "    - name: sign\n      uses: sign\n    - name: promote\n", 1);
    assert!(
        edited.contains(&ml.uri) && edited.contains("requests: 20,") && edited.contains("uses: sign"),
        "the pipeline changed shape"
    );
    std::fs::write(&pipeline, edited).unwrap();
    const PASSWORD: &str = "mlflow-e2e-key-password";
    let keys = Command::new(support::BIN)
        .args(["keys", "generate", "--out"])
        .arg(pipeline.parent().unwrap().join("keys"))
        .env("COSIGN_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(keys.status.success(), "{}", support::text(&keys.stderr));
    let sim = tmp.path().join("sim");
    let run = |args: &[&str]| {
        let out = support::cli::modelship()
            .args(args)
            .env("XDG_CACHE_HOME", tmp.path().join("cache"))
            .env("COSIGN_PASSWORD", PASSWORD)
            .env_remove("MLFLOW_TRACKING_URI")
            .output()
            .unwrap();
        let (stdout, stderr) = (support::text(&out.stdout), support::text(&out.stderr));
        assert!(out.status.success(), "modelship {args:?}:\n{stdout}\n{stderr}");
        assert!(!stderr.contains("simulated S3 started"), "--sim put its own S3 in place of MLflow:\n{stderr}");
        stdout
    };
    let (p, s) = (pipeline.display().to_string(), sim.display().to_string());
    let promoted = |stdout: &str| {
        let line = stdout.lines().find(|l| l.starts_with("promoted ")).unwrap_or_else(|| panic!("{stdout}"));
        line.split_whitespace().nth(1).unwrap().to_string()
    };
    let first = promoted(&run(&["run", &p, "--sim", &s]));
    let info = ml.version_info("weather", &v1);
    // The attestation carried to prod names the version.
    let statements = support::registry::attestations(&sim.join("prod/registry"), "models-prod/weather");
    let m = &statements[0]["predicate"]["model"];
    assert_eq!(m["source"], "models:/weather@champion", "{m}");
    assert_eq!(
        (m["mlflow"]["name"].as_str(), m["mlflow"]["version"].as_str()),
        (Some("weather"), Some(v1.as_str())),
        "{m}"
    );
    assert_eq!(m["mlflow"]["alias"], "champion");
    assert_eq!(m["mlflow"]["runId"], run1.as_str());
    assert!(m["mlflow"]["artifactUri"].as_str().is_some_and(|u| u.starts_with("mlflow-artifacts:/")), "{m}");
    assert_eq!(info["tags"]["modelship.io/prod.digest"], first.as_str(), "{info}");
    assert!(info["aliases"].as_array().unwrap().iter().any(|a| a == "production"), "{info}");

    // A new version (one more file, so another image) becomes champion.
    let v2dir = tmp.path().join("v2");
    support::copy_tree(&fixture(), &v2dir);
    std::fs::write(v2dir.join("CHANGES.md"), "retrained\n").unwrap();
    let (v2, _) = ml.register("weather", &v2dir, Some("champion"));
    let second = promoted(&run(&["run", &p, "--sim", &s]));
    assert_ne!(first, second);
    let info2 = ml.version_info("weather", &v2);
    assert_eq!(info2["tags"]["modelship.io/prod.digest"], second.as_str(), "{info2}");
    assert!(info2["aliases"].as_array().unwrap().iter().any(|a| a == "production"), "{info2}");

    // Rolled back by hand: the alias follows the digest.
    let out = run(&["rollback", "weather", "--env", "prod", "-f", &p, "--sim", &s]);
    assert!(out.contains(&first), "{out}");
    let back = ml.version_info("weather", &v1);
    assert!(back["aliases"].as_array().unwrap().iter().any(|a| a == "production"), "{back}");
    assert!(!ml.version_info("weather", &v2)["aliases"].as_array().unwrap().iter().any(|a| a == "production"));
}
