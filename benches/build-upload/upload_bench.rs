//! Upload a build context to a BuildConfig's instantiatebinary exactly as
//! the `openshift-build` stage does (gzip tar produced on the fly, sent
//! chunked). Driven by `benches/build-upload.sh`, which times it against curl.
//!
//! Usage: upload_bench KUBECONFIG NAMESPACE BUILDCONFIG CONTEXT_DIR

use std::path::PathBuf;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() == 5, "usage: upload_bench KUBECONFIG NAMESPACE BUILDCONFIG CONTEXT_DIR");
    let kc = kube::config::Kubeconfig::read_from(&args[1])?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let client = kube::Client::try_from(config)?;
    let started = std::time::Instant::now();
    let text = modelship::stages::openshift_build::instantiate_binary(
        &client,
        &args[2],
        &args[3],
        &PathBuf::from(&args[4]),
        &[("name".into(), args[3].clone()), ("namespace".into(), args[2].clone())],
    )
    .await?;
    let build: serde_json::Value = serde_json::from_str(&text)?;
    eprintln!("uploaded in {:.2}s: build {}", started.elapsed().as_secs_f64(), build["metadata"]["name"]);
    Ok(())
}
