//! `berth image push REF [IMAGE]`: an image of the local store, or (without IMAGE) the image
//! the environment of this berth.toml was built into, to a registry.

use berth_runtime::image::progress::human_bytes;
use berth_runtime::image::{ImageStore, LayerCompression, PushOptions, RegistryOptions};
use berth_runtime::state::BerthHome;
use clap::Args;
use envfile_spec::reference::ImageReference;

use crate::environment::Current;
use crate::exit::{from_error, CliError, EXIT_ERROR};
use crate::global_args::GlobalArgs;
use crate::progress::progress;

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Where to push: registry/repository[:tag] (tag `latest` when omitted).
    pub reference: String,
    /// The image to push (a name from `berth image ls`); without it, the image the
    /// environment of this berth.toml was built into by `berth up` (base, packages and setup
    /// layers).
    pub image: Option<String>,
    /// Use plain HTTP / accept invalid certificates.
    #[arg(long)]
    pub insecure: bool,
    /// Compression of layers berth built (stored uncompressed): gzip or zstd. Layers pulled
    /// compressed are pushed as they are.
    #[arg(long, default_value = "gzip", value_parser = ["gzip", "zstd"])]
    pub compression: String,
}

pub fn run(args: &PushArgs, g: &GlobalArgs) -> Result<i32, CliError> {
    let target =
        ImageReference::parse(&args.reference).map_err(|e| CliError::usage(format!("{e}")))?;
    let home = BerthHome::discover().map_err(|e| from_error(EXIT_ERROR, &e))?;
    let store = ImageStore::open(&home);
    let name = match &args.image {
        Some(n) => n.clone(),
        None => {
            let current = Current::load(g)?;
            let record = current.record.as_ref().ok_or_else(|| {
                CliError::new(
                    EXIT_ERROR,
                    format!(
                        "environment `{}` was not built yet: run `berth up` first, or name the image to push (see `berth image ls`)",
                        current.plan.name
                    ),
                )
            })?;
            let image = record.image.as_ref().ok_or_else(|| {
                CliError::new(
                    EXIT_ERROR,
                    format!(
                        "environment `{}` has no image recorded; run `berth up` again",
                        record.name
                    ),
                )
            })?;
            if record.plan_hash != current.plan.hash() && !g.quiet {
                eprintln!(
                    "notice: berth.toml changed since the last `berth up`; pushing the image that `up` built (run `berth up` first to push the current one)"
                );
            }
            image.name.clone()
        }
    };
    let record = store
        .get(&name)
        .map_err(|e| from_error(EXIT_ERROR, &e))?
        .ok_or_else(|| {
            CliError::new(
                EXIT_ERROR,
                format!("no image named `{name}` in the local store; see `berth image ls`"),
            )
        })?;
    let opts = PushOptions {
        registry: RegistryOptions {
            insecure: args.insecure,
        },
        compression: LayerCompression::parse(&args.compression).unwrap_or_default(),
        progress: progress(g),
        ..PushOptions::default()
    };
    let report = store
        .push(&record, &target, &opts)
        .map_err(|e| from_error(EXIT_ERROR, &e))?;
    if !g.quiet {
        eprintln!(
            "pushed {}: {} blobs sent ({}{}), {} already there, {} mounted from another repository",
            report.reference,
            report.uploaded,
            human_bytes(report.uploaded_bytes),
            if report.resumed > 0 {
                format!(", {} resumed", report.resumed)
            } else {
                String::new()
            },
            report.existed,
            report.mounted,
        );
    }
    println!("{}@{}", report.reference, report.manifest_digest);
    Ok(0)
}
