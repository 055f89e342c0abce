//! The interface between a build and what runs its steps: a [`StepRunner`] (the container
//! backend's) runs one [`StepCommand`] over the layers so far, with the step's own
//! [`StepMount`]s, into an upper folder that becomes the step's layer. Used by berth.toml's
//! build steps (`build.rs`) and Dockerfile `RUN`s (`dockerfile/run_step.rs`) alike.

use std::path::{Path, PathBuf};

/// Error of a step runner (the backend's own error type, boxed).
pub type StepRunnerError = Box<dyn std::error::Error + Send + Sync>;

/// The command of a build step.
#[derive(Debug, Clone, Copy)]
pub struct StepCommand<'a> {
    pub argv: &'a [String],
    /// Folder it runs in (absolute, inside).
    pub workdir: &'a str,
    /// Its whole environment.
    pub env: &'a [(String, String)],
    /// The user it runs as (`name`, `uid` or `uid:gid`); `None`: root.
    pub user: Option<&'a str>,
    /// Host folders kept across builds, mounted read-write at a path inside
    /// (`RUN --mount=type=cache`).
    pub cache_mounts: &'a [(PathBuf, String)],
    /// Loopback only, no outside network (`RUN --network=none`).
    pub no_network: bool,
    /// What else the step mounts (`RUN --mount=type=bind|tmpfs|secret|ssh`).
    pub mounts: &'a [StepMount],
}

/// A mount of one build step only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepMount {
    /// A file, folder or socket berth staged for this step alone (a copy of part of the
    /// build context or of a stage, a secret's file on a tmpfs, the SSH agent's relay
    /// socket), never a symlink. Its owners are ids inside: the runner moves them onto the
    /// step's id range before the start. Nothing written there is kept.
    Staged {
        source: PathBuf,
        target: String,
        readonly: bool,
        /// For a single file or socket: the (uid, gid) inside it must show with, given by
        /// the runner in the step's user namespace (rootless too); `None`: as staged.
        owner: Option<(u32, u32)>,
    },
    /// A fresh tmpfs (size in bytes; `None`: the kernel's default).
    Tmpfs { target: String, size: Option<u64> },
    /// The path `sub` (relative, resolved without following any symlink) of an overlay of
    /// `lowers` (top first), bound at `target`: read-only, or, with `upper` (an empty folder
    /// berth made for this step alone and removes after it), writable with every write
    /// landing there, never in a lower.
    Overlay {
        lowers: Vec<StepLower>,
        upper: Option<PathBuf>,
        sub: String,
        target: String,
    },
}

/// A lower folder of a [`StepMount::Overlay`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepLower {
    /// A layer of the image store (its ids shown as the layers of the step's root).
    Layer(PathBuf),
    /// A host folder (the build context, or a mask berth made over it): its owner shows as
    /// the step's root.
    HostFolder(PathBuf),
}

impl StepMount {
    pub fn target(&self) -> &str {
        match self {
            StepMount::Staged { target, .. }
            | StepMount::Tmpfs { target, .. }
            | StepMount::Overlay { target, .. } => target,
        }
    }
}

/// Runs one build step in a throw-away container.
pub trait StepRunner {
    /// Runs `command` with the root filesystem `lower_layers` (bottom → top, read-only)
    /// under an overlay whose upper directory is `upper` (empty, on the store's filesystem)
    /// and work directory `work`, passing everything the command prints to `output`.
    /// Returns the command's exit code.
    fn run_step(
        &self,
        lower_layers: &[PathBuf],
        upper: &Path,
        work: &Path,
        command: &StepCommand<'_>,
        output: &mut dyn FnMut(&[u8]),
    ) -> Result<i32, StepRunnerError>;
}
