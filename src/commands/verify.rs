//! `modelship verify docker://HOST/REPO@DIGEST --key cosign.pub` and
//! `modelship keys generate --out DIR`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::output::{OutputFormat, structured};
use super::{CommandError, GlobalArgs, fail};
use crate::registry::{AuthStore, ImageRef, RegistryClient};
use crate::secret::{Secret, mask};
use crate::signing::{self, keys, source::PASSWORD_ENV};

/// Check an image's signature and attestation, and print its provenance.
#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  modelship verify docker://registry.example.com/models-prod/weather@sha256:... --key cosign.pub\n\nExit codes: 0 verified, 1 not signed or not verified, 2 bad key file or reference."
)]
pub struct VerifyArgs {
    /// docker://HOST/REPO@sha256:DIGEST
    pub image: String,
    /// The public key (cosign.pub, a SPKI PEM).
    #[arg(long, value_name = "PUB")]
    pub key: PathBuf,
    /// Skip TLS verification / use plain HTTP for this image's registry.
    #[arg(long)]
    pub insecure: bool,
    /// docker config.json / containers auth.json with credentials.
    #[arg(long, value_name = "PATH")]
    pub authfile: Option<PathBuf>,
    /// Output format: the provenance as text, json or yaml.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

pub async fn run(a: VerifyArgs, _g: &GlobalArgs) -> Result<(), CommandError> {
    let image = ImageRef::parse(&a.image).map_err(fail)?;
    let Some(digest) = image.digest.clone() else {
        return Err(CommandError::usage(format!(
            "{} names no digest: verify checks one exact digest (docker://HOST/REPO@sha256:...)",
            a.image
        )));
    };
    let origin = format!("file {}", a.key.display());
    let pem = std::fs::read(&a.key).map_err(|e| {
        fail(keys::KeyError::BadPublic { origin: origin.clone(), reason: format!("cannot be read: {e}") })
    })?;
    let key = keys::load_public(&pem, &origin).map_err(fail)?;
    let auth = AuthStore::load(a.authfile.as_deref()).map_err(fail)?;
    let client = RegistryClient::connect(
        &image.registry,
        a.insecure,
        &[],
        auth.lookup(&image.registry, &image.repository).cloned(),
        auth.sources.clone(),
    )
    .await
    .map_err(fail)?;
    let verified = signing::verify_image(&client, &image.repository, &digest, &key).await.map_err(fail)?;
    let text = structured(a.output, &verified)?.unwrap_or_else(|| signing::describe(&verified));
    println!("{}", mask(&text));
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Write a cosign-compatible key pair: DIR/cosign.key (encrypted with
    /// $COSIGN_PASSWORD) and DIR/cosign.pub.
    #[command(
        after_help = "Examples:\n  COSIGN_PASSWORD=... modelship keys generate --out keys/\n\nThen give the pair to the pipeline's signing stage:\n  oc create secret generic cosign -n models-dev --from-file=keys/cosign.key --from-file=keys/cosign.pub --from-literal=cosign.password=\"$COSIGN_PASSWORD\""
    )]
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Directory to write cosign.key and cosign.pub into (created if absent).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Replace an existing pair.
    #[arg(long)]
    pub force: bool,
}

pub async fn keys(c: KeysCommand, _g: &GlobalArgs) -> Result<(), CommandError> {
    let KeysCommand::Generate(a) = c;
    let password = std::env::var(PASSWORD_ENV).map(Secret::new).map_err(|_| {
        CommandError::usage(format!(
            "set {PASSWORD_ENV} to the password that encrypts cosign.key (empty for none, as cosign allows)"
        ))
    })?;
    let (private_path, public_path) = (a.out.join("cosign.key"), a.out.join("cosign.pub"));
    for p in [&private_path, &public_path] {
        if p.exists() && !a.force {
            return Err(CommandError::usage(format!("{} exists; pass --force to replace the pair", p.display())));
        }
    }
    let (private, public) = tokio::task::spawn_blocking(move || keys::generate(&password))
        .await
        .map_err(|e| CommandError::usage(format!("generating the key pair: {e}")))?;
    let io = |p: &std::path::Path, e: std::io::Error| CommandError::usage(format!("writing {}: {e}", p.display()));
    std::fs::create_dir_all(&a.out).map_err(|e| io(&a.out, e))?;
    write_private(&private_path, private.as_bytes()).map_err(|e| io(&private_path, e))?;
    std::fs::write(&public_path, public.as_bytes()).map_err(|e| io(&public_path, e))?;
    println!("Private key written to {}", private_path.display());
    println!("Public key written to {}", public_path.display());
    Ok(())
}

/// The private key is readable by its owner only.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    opts.open(path)?.write_all(bytes)
}
