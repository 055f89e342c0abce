//! The image side of berth: registry pulls, the content-addressed blob store, safe layer
//! unpacking into a shared layer store, local bases, image records, export/import, the lock
//! file and cached build steps. [`ImageStore`] is the entry point.
//!
//! For an environment backend:
//!
//! ```text
//! let store = ImageStore::open(&home);
//! let _guard = store.lock_shared()?;              // until env.json lists the layers
//! let (base, _) = store.resolve_locked(&plan.image.from, &lock_path_for(&plan.file), &opts)?;
//! let image = store.build(&base, &BuildSpec { packages, setup, .. }, &runner, &progress)?;
//! // image.layers: unpacked layer dirs, bottom → top (overlay lowerdir= wants them reversed)
//! // image.diff_ids: write them to envs/<id>/env.json as "layers": [...] so prune keeps them
//! // image.config: Env, Cmd, Entrypoint, WorkingDir, User of the image
//! ```
//!
//! Layers unpacked as root carry `trusted.overlay.opaque` and 0:0 character-device whiteouts;
//! unpacked without root, opaque directories carry `user.overlay.opaque` instead (mount the
//! overlay with `userxattr`, as inside a user namespace).

pub mod auth;
pub mod bases;
mod blob_download;
pub mod blob_store;
mod blob_tee;
mod blob_writer;
pub mod build;
pub mod build_cache;
pub mod build_inputs;
pub mod compressing_upload;
pub mod context_digests;
pub mod copy_keys;
pub mod credentials;
pub mod dev_feature;
pub mod digest;
pub mod dockerfile;
pub mod early_keys;
pub mod error;
pub mod export;
pub mod host_ca;
mod host_ca_stamp;
pub mod image_store;
pub mod layer_copies;
pub mod layer_store;
pub mod layer_writer;
pub mod lockfile;
pub mod login;
pub mod manifest;
pub mod package_manager;
pub mod parallel_gzip;
pub use crate::progress;
pub mod pull;
pub mod push;
pub mod registry;
pub mod sparse;
pub mod step_cache;
pub mod step_runner;
pub mod store;
pub mod tree_stamp;
pub mod unpack;
pub mod upload;
pub mod upper_layer;
pub mod xattrs;

pub use digest::Digest;
pub use error::ImageError;

pub(crate) use crate::state::unique_suffix;

pub use image_store::{ImageConfig, ImageRecord, LayerRecord};
pub use manifest::Platform;
pub use progress::{
    human_duration, LineProgress, Progress, ProgressReporter, QuietProgress, TransferProgress,
};
pub use pull::PullOptions;
pub use push::{LayerCompression, PushOptions, PushReport};
pub use registry::RegistryOptions;
pub use store::{
    ImageListing, ImageStore, ImageSummary, PruneReport, ResolveOptions, ResolvedImage,
};
