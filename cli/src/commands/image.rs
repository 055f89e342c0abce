//! `berth image pull|push|build|ls|rm|prune|import|export` (push in `image_push.rs`, build
//! in `image_build.rs`).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use berth_runtime::image::export::CacheReport;
use berth_runtime::image::progress::human_bytes;
use berth_runtime::image::store::SHORT_ID_LEN;
use berth_runtime::image::{ImageStore, PullOptions, RegistryOptions, ResolveOptions};
use berth_runtime::state::BerthHome;
use clap::Subcommand;
use envfile_spec::plan::ImageSource;
use envfile_spec::reference::ImageReference;

use crate::exit::{from_error, CliError, EXIT_ERROR};
use crate::global_args::{GlobalArgs, JsonFlag};
use crate::progress::progress;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Pull an image from a registry.
    Pull {
        /// Image reference (e.g. debian:bookworm, 127.0.0.1:5000/app@sha256:…).
        reference: String,
        /// Use plain HTTP / accept invalid certificates.
        #[arg(long)]
        insecure: bool,
    },
    /// Push an image (or, in a project folder, the environment's built image) to a registry.
    Push(super::image_push::PushArgs),
    /// Build a Dockerfile with berth's own cached builder (no daemon).
    Build(Box<super::image_build::BuildArgs>),
    /// List images and their sizes (shared layers counted once).
    Ls(JsonFlag),
    /// Remove an image (its layers go with `prune` when nothing else uses them).
    Rm { reference: String },
    /// Remove layers and blobs that no image or environment references.
    Prune,
    /// Import a root filesystem tar, an OCI layout, or a CI cache folder.
    Import {
        /// A rootfs tar or an OCI layout folder.
        path: Option<PathBuf>,
        /// Name to give the imported image.
        #[arg(long)]
        name: Option<String>,
        /// Import layers from a CI cache folder written by `export --cache`.
        #[arg(long, value_name = "DIR", conflicts_with = "path")]
        cache: Option<PathBuf>,
    },
    /// Export an image as a rootfs tar or an OCI layout, or layers into a CI cache folder.
    Export {
        /// The image to export.
        reference: Option<String>,
        /// Output path (a .tar file, or a folder for --oci).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Write an OCI image layout instead of a flat rootfs tar.
        #[arg(long)]
        oci: bool,
        /// Write all layers this project uses into a CI cache folder.
        #[arg(long, value_name = "DIR", conflicts_with = "output")]
        cache: Option<PathBuf>,
    },
}

fn store() -> Result<(BerthHome, ImageStore), CliError> {
    let home = BerthHome::discover().map_err(|e| from_error(EXIT_ERROR, &e))?;
    let store = ImageStore::open(&home);
    Ok((home, store))
}

fn fail(e: impl std::error::Error) -> CliError {
    from_error(EXIT_ERROR, &e)
}

pub fn run(cmd: ImageCommand, g: &GlobalArgs) -> Result<i32, CliError> {
    let (home, store) = store()?;
    match cmd {
        ImageCommand::Push(args) => super::image_push::run(&args, g),
        ImageCommand::Build(args) => super::image_build::run(&args, g),
        ImageCommand::Pull {
            reference,
            insecure,
        } => {
            let source = parse_source(&reference)?;
            // Ctrl-C or SIGTERM: no half-unpacked layer stays in tmp/.
            berth_runtime::state::remove_staging_on_signals(&home)
                .map_err(|e| CliError::new(EXIT_ERROR, format!("cannot handle signals: {e}")))?;
            let opts = ResolveOptions {
                pull: PullOptions {
                    registry: RegistryOptions { insecure },
                    progress: progress(g),
                    ..PullOptions::default()
                },
                // `pull` asks the registry again even when the image is here (a local
                // base is re-imported only when its content changed).
                update: matches!(source, ImageSource::Oci { .. }),
                pinned: None,
            };
            let image = store.resolve(&source, &opts).map_err(fail)?;
            println!("{} {}", image.name, image.manifest_digest);
            Ok(0)
        }
        ImageCommand::Ls(flag) => {
            let listing = store.list().map_err(fail)?;
            if flag.json {
                let text = serde_json::to_string_pretty(&listing)
                    .map_err(|e| CliError::new(EXIT_ERROR, e.to_string()))?;
                println!("{text}");
                return Ok(0);
            }
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "{:<50} {:<14} {:>6} {:>10} {:>10}",
                "NAME", "ID", "LAYERS", "SIZE", "UNIQUE"
            );
            for i in &listing.images {
                let id = i.id.strip_prefix("sha256:").unwrap_or(&i.id);
                let _ = writeln!(
                    out,
                    "{:<50} {:<14} {:>6} {:>10} {:>10}",
                    ImageStore::display_name(&i.name),
                    &id[..SHORT_ID_LEN.min(id.len())],
                    i.layers,
                    human_bytes(i.size),
                    human_bytes(i.unique_size)
                );
            }
            let _ = writeln!(
                out,
                "total: {} in {} layers (shared layers counted once)",
                human_bytes(listing.total_size),
                listing.total_layers
            );
            Ok(0)
        }
        ImageCommand::Rm { reference } => {
            let r = store.remove(&reference).map_err(fail)?;
            if !g.quiet {
                eprintln!(
                    "removed {} (run `berth image prune` to free its layers)",
                    r.name
                );
            }
            Ok(0)
        }
        ImageCommand::Prune => {
            let r = store.prune().map_err(fail)?;
            if !g.quiet {
                eprintln!(
                    "removed {} cached build steps, {} layers, {} layer copies, {} blobs and {} build keys, freed {}",
                    r.build_steps_removed,
                    r.layers_removed,
                    r.layer_copies_removed,
                    r.blobs_removed,
                    r.build_memos_removed,
                    human_bytes(r.bytes_freed)
                );
            }
            Ok(0)
        }
        ImageCommand::Import { path, name, cache } => {
            let p = progress(g);
            if let Some(dir) = cache {
                let r = store.import_cache(&dir, &p).map_err(fail)?;
                report_cache("imported", &r, g);
                return Ok(0);
            }
            let Some(path) = path else {
                return Err(CliError::usage(
                    "give a rootfs tar or OCI layout folder to import, or --cache DIR",
                ));
            };
            let path = absolute(&path)?;
            let record = if path.join("oci-layout").is_file() {
                store.import_oci_layout(&path, name.as_deref(), &p)
            } else if path.is_dir() {
                store.import_rootfs_dir(&path, name.as_deref(), &p)
            } else {
                store.import_rootfs_tar(&path, name.as_deref(), &p)
            }
            .map_err(fail)?;
            println!("{} {}", record.name, record.manifest_digest);
            Ok(0)
        }
        ImageCommand::Export {
            reference,
            output,
            oci,
            cache,
        } => {
            if let Some(dir) = cache {
                let names: Vec<String> = reference.into_iter().collect();
                let r = store.export_cache(&dir, &names).map_err(fail)?;
                report_cache("exported", &r, g);
                return Ok(0);
            }
            let Some(reference) = reference else {
                return Err(CliError::usage(
                    "name the image to export (see `berth image ls`)",
                ));
            };
            let record = store.get(&reference).map_err(fail)?.ok_or_else(|| {
                CliError::new(
                    EXIT_ERROR,
                    format!(
                        "no image named `{reference}` in the local store; see `berth image ls`"
                    ),
                )
            })?;
            if oci {
                let Some(dir) = output else {
                    return Err(CliError::usage(
                        "--oci needs -o DIR, the folder to write the layout into",
                    ));
                };
                store.export_oci_layout(&record, &dir).map_err(fail)?;
                return Ok(0);
            }
            match output {
                Some(p) if p.as_os_str() != "-" => {
                    let tmp = p.with_extension(format!("tmp-{}", std::process::id()));
                    let f = std::fs::File::create(&tmp).map_err(|e| {
                        CliError::new(EXIT_ERROR, format!("cannot create {}: {e}", tmp.display()))
                    })?;
                    let res = store.export_rootfs_tar(&record, std::io::BufWriter::new(f));
                    if let Err(e) = res {
                        let _ = std::fs::remove_file(&tmp);
                        return Err(fail(e));
                    }
                    std::fs::rename(&tmp, &p).map_err(|e| {
                        CliError::new(EXIT_ERROR, format!("cannot write {}: {e}", p.display()))
                    })?;
                }
                _ => {
                    if std::io::stdout().is_terminal() {
                        return Err(CliError::usage(
                            "refusing to write a tar to a terminal; use -o FILE or redirect stdout",
                        ));
                    }
                    store
                        .export_rootfs_tar(
                            &record,
                            std::io::BufWriter::new(std::io::stdout().lock()),
                        )
                        .map_err(fail)?;
                }
            }
            Ok(0)
        }
    }
}

/// What `berth image pull` accepts: an OCI reference, or a local base as in berth.toml's
/// `[image].from` (`debootstrap:SUITE`, `rootfs:DIR`, `tar:FILE`).
fn parse_source(s: &str) -> Result<ImageSource, CliError> {
    if let Some(suite) = s.strip_prefix("debootstrap:") {
        return Ok(ImageSource::Debootstrap {
            suite: suite.to_string(),
            mirror: None,
        });
    }
    if let Some(p) = s.strip_prefix("rootfs:") {
        return Ok(ImageSource::Rootfs {
            path: absolute(Path::new(p))?,
        });
    }
    if let Some(p) = s.strip_prefix("tar:") {
        return Ok(ImageSource::Tar {
            path: absolute(Path::new(p))?,
        });
    }
    let reference = ImageReference::parse(s).map_err(|e| CliError::usage(format!("{e}")))?;
    Ok(ImageSource::Oci { reference })
}

fn report_cache(verb: &str, r: &CacheReport, g: &GlobalArgs) {
    if !g.quiet {
        eprintln!(
            "{verb} {} images, {} blobs ({} layers unpacked)",
            r.images, r.blobs, r.layers_unpacked
        );
    }
}

fn absolute(p: &Path) -> Result<std::path::PathBuf, CliError> {
    std::path::absolute(p).map_err(|e| CliError::usage(format!("bad path {}: {e}", p.display())))
}
