//! The `fetch-model` download path as a standalone program, for
//! `benches/fetch.sh` (built as an example so test runners leave it alone).
//!
//! Usage: fetch_bench SOURCE DEST [ENDPOINT] — credentials come from the
//! standard AWS chain (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`).
//! `CONCURRENCY` and `PART_SIZE` in the environment override the defaults.

use std::time::Instant;

use modelship::spec::ModelSpec;
use modelship::stages::fetch_model::{self, Params};
use serde_json::json;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [source, dest, rest @ ..] = args.as_slice() else {
        eprintln!("usage: fetch_bench SOURCE DEST [ENDPOINT]");
        std::process::exit(2);
    };
    let mut model = json!({"name": "bench", "source": source});
    if let Some(ep) = rest.first() {
        model["endpoint"] = json!(ep);
    }
    let model: ModelSpec = serde_json::from_value(model).expect("model spec");
    let mut with = json!({"insecure": true});
    if let Ok(c) = std::env::var("CONCURRENCY") {
        with["concurrency"] = json!(c);
    }
    if let Ok(p) = std::env::var("PART_SIZE") {
        with["partSize"] = json!(p);
    }
    let params: Params = serde_json::from_value(with).expect("params");
    let dest = std::path::PathBuf::from(dest);
    let started = Instant::now();
    match fetch_model::fetch(&params, &model, &dest, &dest, None, false).await {
        Ok(f) => {
            let secs = started.elapsed().as_secs_f64();
            println!(
                "{}",
                json!({
                    "seconds": secs,
                    "bytes": f.bytes_transferred,
                    "mibPerSec": f.bytes_transferred as f64 / 1048576.0 / secs,
                    "contentDigest": f.content_digest,
                    "sha256": f.manifest.first().map(|m| m.sha256.clone()),
                })
            );
        }
        Err(e) => {
            eprintln!("fetch failed: {e}");
            std::process::exit(1);
        }
    }
}
