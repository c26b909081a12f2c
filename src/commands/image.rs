//! `modelship image copy SRC DST`

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{CommandError, GlobalArgs};

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Copy an image by digest between registries, preserving the digest.
    #[command(
        after_help = "Example:\n  modelship image copy docker://127.0.0.1:5000/ns/app@sha256:... docker://127.0.0.1:5001/ns/app:prod --src-insecure --dest-insecure"
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

pub async fn run(_c: ImageCommand, _g: &GlobalArgs) -> Result<(), CommandError> {
    todo!("registry helper")
}
