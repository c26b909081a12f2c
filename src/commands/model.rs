//! `modelship model push DIR s3://BUCKET/PREFIX/`

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::output::{OutputFormat, structured};
use super::{CommandError, GlobalArgs, fail};
use crate::secret::mask;
use crate::storage::upload::{self, PushRequest};
use crate::storage::{S3Options, Source};

/// Models in object storage.
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Upload every file under DIR to s3://BUCKET/PREFIX/: parallel multipart
    /// uploads above the threshold, a SHA-256 per file as object metadata,
    /// resumable; prints the model's content digest (the one fetch-model computes).
    #[command(
        after_help = "Examples:\n  modelship model push fixtures/weather-model s3://models/weather/ \\\n    --endpoint http://127.0.0.1:9000 --insecure\n  modelship model push fixtures/weather-model s3://models/w2/ --exclude '*.md' \\\n    --part-size 16MiB --endpoint http://127.0.0.1:9000 --insecure -o json\n\nCredentials: the AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, web identity).\nAn interrupted upload resumes when the same command runs again.\nExit codes: 0 pushed, 1 failed, 2 bad input."
    )]
    Push(PushArgs),
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The model directory.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// s3://BUCKET/PREFIX/ (the files keep their paths below it).
    #[arg(value_name = "s3://BUCKET/PREFIX/")]
    pub dest: String,
    /// S3-compatible endpoint (path-style); default AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS.
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Signing region; default the AWS chain (AWS_REGION, profile), else us-east-1.
    #[arg(long)]
    pub region: Option<String>,
    /// Allow a plain-HTTP endpoint.
    #[arg(long)]
    pub insecure: bool,
    /// Leave out files whose path (relative to DIR) matches (repeatable; `**` crosses directories).
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Files bigger than this go up as parallel multipart uploads.
    #[arg(long, value_name = "SIZE", default_value = "20MiB", value_parser = parse_size)]
    pub multipart_threshold: u64,
    /// Part size of a multipart upload (at least 5MiB, S3's smallest part).
    #[arg(long, value_name = "SIZE", default_value = "8MiB", value_parser = parse_size)]
    pub part_size: u64,
    /// Requests in flight at once.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// `json`/`yaml`: the manifest (files, keys, sha256, ETags, version ids, content digest).
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

fn parse_size(text: &str) -> Result<u64, String> {
    crate::storage::parse_size(text)
}

pub async fn run(c: ModelCommand, g: &GlobalArgs) -> Result<(), CommandError> {
    match c {
        ModelCommand::Push(a) => push(a, g).await,
    }
}

async fn push(a: PushArgs, g: &GlobalArgs) -> Result<(), CommandError> {
    let (bucket, key) = match Source::parse(&a.dest).map_err(fail)? {
        Source::S3 { bucket, key } => (bucket, key),
        _ => return Err(CommandError::usage(format!("{}: expected s3://BUCKET/PREFIX/", mask(&a.dest)))),
    };
    if !(key.is_empty() || key.ends_with('/')) {
        return Err(CommandError::usage(format!(
            "{}: the destination is a prefix and ends with `/` (s3://{bucket}/{key}/)",
            mask(&a.dest)
        )));
    }
    if let Some(ep) = &a.endpoint {
        crate::storage::check_endpoint(ep, a.insecure).map_err(fail)?;
    }
    let req = PushRequest {
        dir: a.dir.clone(),
        bucket,
        prefix: key,
        s3: S3Options {
            endpoint: a.endpoint.clone(),
            region: a.region.clone(),
            credentials: None,
            insecure: a.insecure,
        },
        exclude: a.exclude.clone(),
        multipart_threshold: a.multipart_threshold,
        part_size: a.part_size,
        concurrency: usize::from(a.concurrency),
        progress: std::io::stderr().is_terminal() && g.log_format.is_text() && !g.quiet,
    };
    let manifest = upload::push(req).await.map_err(fail)?;
    if let Some(text) = structured(a.output, &manifest)? {
        println!("{}", mask(&text));
        return Ok(());
    }
    let mut out = String::new();
    for f in &manifest.files {
        let version = f.version_id.as_deref().map(|v| format!(" version {v}")).unwrap_or_default();
        out.push_str(&format!(
            "{:<9} s3://{}/{} ({} bytes, sha256 {}){version}\n",
            f.action,
            bucket_of(&manifest.destination),
            f.key,
            f.size,
            f.sha256
        ));
    }
    out.push_str(&format!(
        "{} file(s), {} bytes ({} uploaded in {:.1}s) to {}\ncontent digest {}",
        manifest.files.len(),
        manifest.total_bytes,
        manifest.bytes_uploaded,
        manifest.seconds,
        manifest.destination,
        manifest.content_digest
    ));
    println!("{}", mask(&out));
    Ok(())
}

fn bucket_of(destination: &str) -> &str {
    destination.strip_prefix("s3://").and_then(|r| r.split('/').next()).unwrap_or_default()
}
