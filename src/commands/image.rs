//! `modelship image copy SRC DST`

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{CommandError, GlobalArgs, fail};
use crate::registry::{AuthStore, CopyOptions, ImageRef, copy_image};

/// Container images in registries.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Copy an image by digest between registries, preserving the digest.
    #[command(
        after_help = "Examples (plain-HTTP registries on loopback):\n  modelship image copy docker://127.0.0.1:5000/ns/app:v1 docker://127.0.0.1:5001/ns/app:prod \\\n    --src-insecure --dest-insecure\n  modelship image copy docker://127.0.0.1:5000/ns/app:v1 docker://127.0.0.1:5000/ns/app:v1-old \\\n    --src-insecure --dest-insecure"
    )]
    Copy(CopyArgs),
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// docker://HOST/REPO[:TAG|@DIGEST]
    pub src: String,
    /// docker://HOST/REPO:TAG
    pub dst: String,
    /// Skip TLS verification / use plain HTTP for the source registry.
    #[arg(long)]
    pub src_insecure: bool,
    /// Skip TLS verification / use plain HTTP for the destination registry.
    #[arg(long)]
    pub dest_insecure: bool,
    /// docker config.json / containers auth.json with credentials.
    #[arg(long, value_name = "PATH")]
    pub authfile: Option<PathBuf>,
}

/// Copy, print the digest on stdout (so scripts can capture it), stats to logs.
pub async fn run(c: ImageCommand, _g: &GlobalArgs) -> Result<(), CommandError> {
    match c {
        ImageCommand::Copy(a) => {
            let src = ImageRef::parse(&a.src).map_err(fail)?;
            let dst = ImageRef::parse(&a.dst).map_err(fail)?;
            let auth = AuthStore::load(a.authfile.as_deref()).map_err(fail)?;
            let opts = CopyOptions {
                src_insecure: a.src_insecure,
                dest_insecure: a.dest_insecure,
                auth,
                ..CopyOptions::default()
            };
            let stats = copy_image(&src, &dst, &opts).await.map_err(fail)?;
            println!("{}", stats.digest);
            Ok(())
        }
    }
}
