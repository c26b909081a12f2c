//! The hostile-input corpus in `fixtures/hostile/` (regenerate with its
//! `generate.py`): every malformed or adversarial pipeline file, template,
//! webhook body, S3 key and image reference gets a clear error and a
//! non-zero exit from the real binary: no panic, bounded memory (peak RSS
//! read from the kernel) and bounded output. A hang is caught by a watchdog
//! that kills the child, which fails the test.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use modelship::registry::ImageRef;
use modelship::storage::safe_relative;

/// Peak resident memory allowed to any one invocation. The alias and merge
/// bombs would take gigabytes if expanded.
const MAX_RSS_KIB: i64 = 256 * 1024;
/// Diagnostics are windowed: a 1 MiB scalar must not come back whole.
const MAX_STDERR: usize = 64 * 1024;
/// Not a performance bound: only what turns a hang into a failure.
const WATCHDOG: Duration = Duration::from_secs(180);

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hostile")
}

fn files(sub: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(corpus().join(sub)).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    assert!(!v.is_empty(), "no corpus files in {sub}");
    v
}

/// One JSON string per line.
fn lines(name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(corpus().join(name)).unwrap();
    text.lines().map(|l| serde_json::from_str::<String>(l).unwrap()).collect()
}

struct Outcome {
    code: Option<i32>,
    signal: Option<i32>,
    stderr: String,
    max_rss_kib: i64,
}

/// Run the binary, reap it with `wait4` for its peak RSS, kill it if it hangs.
fn modelship(args: &[&str], cwd: &Path) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_modelship"))
        .args(args)
        .current_dir(cwd)
        .env_remove("MODELSHIP_STAGES_DIR")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn modelship");
    let pid = child.id() as libc::pid_t;
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut pipe, &mut buf).unwrap();
        buf
    });
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let killed = std::sync::Arc::new(AtomicBool::new(false));
    let watchdog = {
        let killed = killed.clone();
        std::thread::spawn(move || {
            if done_rx.recv_timeout(WATCHDOG).is_err() {
                killed.store(true, Ordering::SeqCst);
                // SAFETY: pid is our unreaped child; kill(2) has no memory effects.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        })
    };
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child, not yet reaped (std never waited on it).
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    let _ = done_tx.send(());
    watchdog.join().unwrap();
    let stderr = String::from_utf8_lossy(&reader.join().unwrap()).into_owned();
    assert!(!killed.load(Ordering::SeqCst), "modelship {args:?} hung for {WATCHDOG:?} and was killed");
    let status = std::process::ExitStatus::from_raw(status);
    // The child is reaped; keep std from trying again on drop.
    std::mem::forget(child);
    Outcome { code: status.code(), signal: status.signal(), stderr, max_rss_kib: usage.ru_maxrss }
}

/// Exit 2 (bad input), no panic, something to read, bounded memory and output.
fn assert_refused(what: &str, o: &Outcome) {
    assert_eq!(o.signal, None, "{what}: killed by signal {:?}\n{}", o.signal, o.stderr);
    assert!(!o.stderr.contains("panicked"), "{what}: panicked\n{}", o.stderr);
    assert_eq!(o.code, Some(2), "{what}: expected exit 2 (bad input)\n{}", head(&o.stderr));
    assert!(o.stderr.trim().len() > 10, "{what}: no error message");
    assert!(o.stderr.len() <= MAX_STDERR, "{what}: {} bytes of stderr\n{}", o.stderr.len(), head(&o.stderr));
    assert!(o.max_rss_kib <= MAX_RSS_KIB, "{what}: peak RSS {} KiB", o.max_rss_kib);
}

fn head(s: &str) -> &str {
    let mut end = s.len().min(2000);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[test]
fn hostile_pipelines_are_refused_by_validate_and_run() {
    let tmp = tempfile::tempdir().unwrap();
    let mut peak = 0;
    for file in files("pipelines") {
        let f = file.to_str().unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let o = modelship(&["validate", f], tmp.path());
        assert_refused(&format!("validate {name}"), &o);
        // The error names the file; parse errors also give line and column.
        assert!(o.stderr.contains(&name), "validate {name}: the file is not named\n{}", head(&o.stderr));
        peak = peak.max(o.max_rss_kib);
        let o = modelship(&["run", f, "--dry-run"], tmp.path());
        assert_refused(&format!("run --dry-run {name}"), &o);
        peak = peak.max(o.max_rss_kib);
    }
    eprintln!("hostile pipelines: peak RSS {peak} KiB");
}

#[test]
fn hostile_templates_in_with_values_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for file in files("templates") {
        let template = std::fs::read_to_string(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        // Rendering directly never panics, whatever the outcome.
        let _ = modelship::template::references(&template);
        let _ = modelship::template::render(&template, &serde_json::json!({"params": {}}), "corpus");
        // As a `with:` value (a JSON string is a YAML double-quoted scalar).
        let pipeline = format!(
            "apiVersion: modelship.io/v1alpha1\nkind: Pipeline\nmetadata:\n  name: weather\nspec:\n  model:\n    name: weather\n    source: s3://models/weather/\n  environments:\n    dev:\n      namespace: models-dev\n  stages:\n    - name: fetch\n      uses: fetch-model\n      with:\n        source: {}\n",
            serde_json::to_string(&template).unwrap()
        );
        let path = tmp.path().join(format!("{name}.yaml"));
        std::fs::write(&path, pipeline).unwrap();
        let o = modelship(&["validate", path.to_str().unwrap()], tmp.path());
        assert_refused(&format!("template {name}"), &o);
        assert!(o.stderr.contains(":16:"), "template {name}: not pointed at its line\n{}", head(&o.stderr));
    }
}

#[test]
fn hostile_webhook_bodies_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    git2::Repository::init(tmp.path()).unwrap();
    let pipelines = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    for file in files("webhooks") {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let args = [
            "trigger",
            "--event",
            file.to_str().unwrap(),
            "--repo",
            tmp.path().to_str().unwrap(),
            "--pipelines",
            pipelines.to_str().unwrap(),
            "--dry-run",
        ];
        let o = modelship(&args, tmp.path());
        assert_refused(&format!("webhook {name}"), &o);
    }
}

#[test]
fn hostile_s3_keys_never_become_paths_outside_the_model() {
    for key in lines("s3-keys.txt") {
        match safe_relative(&key) {
            Err(_) => {}
            // Normalised names are allowed only if they stay inside.
            Ok(rel) => panic!("{key:?} became the local path {rel:?}"),
        }
    }
}

#[test]
fn hostile_image_references_are_refused_before_any_connection() {
    let tmp = tempfile::tempdir().unwrap();
    // Port 1 on loopback: a reference that parsed would fail to connect,
    // with exit 1, not 2.
    let good = "docker://127.0.0.1:1/ns/app:tag";
    for r in lines("image-refs.txt") {
        assert!(ImageRef::parse(&r).is_err(), "{r:?} parsed");
        if r.contains('\0') {
            continue; // not passable as a process argument
        }
        assert_refused(&format!("image copy source {r:?}"), &modelship(&["image", "copy", &r, good], tmp.path()));
        assert_refused(&format!("image copy dest {r:?}"), &modelship(&["image", "copy", good, &r], tmp.path()));
    }
}
