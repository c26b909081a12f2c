//! Upload a build context to a BuildConfig's instantiatebinary exactly as
//! the `openshift-build` stage does (gzip tar produced on the fly, sent
//! chunked through the kube client). Driven by `benches/build-upload.sh`,
//! which times it against curl.
//!
//! Usage: upload_bench KUBECONFIG NAMESPACE BUILDCONFIG CONTEXT_DIR
//!        upload_bench --write FILE CONTEXT_DIR   (the same gzip tar, to a file, for curl)

use std::path::PathBuf;

use futures::TryStreamExt;
use tokio::io::AsyncWriteExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "--write" {
        let mut out = tokio::fs::File::create(&args[2]).await?;
        let mut stream = std::pin::pin!(modelship::archive::context_stream(PathBuf::from(&args[3])));
        while let Some(chunk) = stream.try_next().await? {
            out.write_all(&chunk).await?;
        }
        out.flush().await?;
        return Ok(());
    }
    anyhow::ensure!(args.len() == 5, "usage: upload_bench KUBECONFIG NAMESPACE BUILDCONFIG CONTEXT_DIR");
    let kc = kube::config::Kubeconfig::read_from(&args[1])?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let client = kube::Client::try_from(config)?;
    let text = modelship::cluster::build::instantiate_binary(
        &client,
        &args[2],
        &args[3],
        modelship::archive::context_stream(PathBuf::from(&args[4])),
        &[("name".into(), args[3].clone()), ("namespace".into(), args[2].clone())],
    )
    .await?;
    let build: serde_json::Value = serde_json::from_str(&text)?;
    println!("{}", build["metadata"]["name"].as_str().unwrap_or_default());
    Ok(())
}
