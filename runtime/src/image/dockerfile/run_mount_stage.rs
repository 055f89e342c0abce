//! What a `RUN` step's `--mount`s (other than `type=cache`) mount, in two halves: before the
//! cache lookup, each mount is resolved and keyed ([`Run::step_mounts`]: a bind's files and
//! their content hash, a secret's id but never its value, a missing required secret or
//! agent an error at its line); when the step really runs, [`prepare`] stages them for that
//! step alone and removes them afterwards (the [`PreparedMounts`] guard):
//!
//! - `type=bind`: the source itself, as an overlay of the build context (`.dockerignore`d
//!   paths hidden by a mask of whiteouts; never outside it, no symlink followed) or of a
//!   stage's or image's layers (`from=`), read-only unless `rw` (writes then land in a
//!   throw-away upper folder); keyed by the content of what the step sees (context files
//!   through their stamps, a stage's files through `copy_keys`), never by the stage's key;
//! - `type=tmpfs`: a fresh tmpfs;
//! - `type=secret`: the value read on the host (`[secrets]` of berth.toml, `--secret` of
//!   `berth image build`) into a file on a private tmpfs folder (`/dev/shm`), never on disk,
//!   in no layer and no cache key;
//! - `type=ssh`: a socket relayed to the host's SSH agent, `SSH_AUTH_SOCK` set to it.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::super::build::{StepLower, StepMount};
use super::super::context_digests::hash_entry;
use super::super::error::ImageError;
use super::build::{BuildSecrets, Run};
use super::context;
use super::copy_step::copied_content_key;
use super::error::{DockerfileError, Located, Pos};
use super::parse::Instruction;
use super::run_mount::MountRequest;
use crate::credentials::{AgentTarget, RelayThread};
use crate::state::{BerthHome, ShmDir, StagingDir};

/// Where the first agent socket goes when an ssh mount names no target (as BuildKit).
const SSH_TARGET: &str = "/run/buildkit/ssh_agent";

/// A mount resolved before the cache lookup.
pub(super) enum MountPlan {
    /// A path of the build context or of a stage's (image's) layers, bound as it is:
    /// read-only, or writable into a folder of the step's own that is thrown away.
    Bind {
        lowers: Lowers,
        /// Paths of the context `.dockerignore` excludes (hidden by a mask over it).
        mask: Vec<String>,
        /// The path bound, relative to the context or the stage's root.
        sub: String,
        target: String,
        writable: bool,
    },
    Tmpfs {
        target: String,
        size: Option<u64>,
    },
    Secret {
        id: String,
        /// `false`: not given and not required; nothing is mounted.
        given: bool,
        target: String,
        mode: u32,
        owner: (u32, u32),
        at: Place,
    },
    Ssh {
        /// The host's agent socket; `None`: no agent and not required.
        agent: Option<PathBuf>,
        target: String,
        mode: u32,
        owner: (u32, u32),
    },
}

/// What a bind mount is a path of.
pub(super) enum Lowers {
    /// The build context folder.
    Context,
    /// A stage's or an image's layers, bottom first.
    Layers(Vec<PathBuf>),
}

/// `/a/./b/` → `a/b`; `None` when `..` leaves the root.
fn clean_rel(p: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for s in p.split('/') {
        match s {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            s => out.push(s),
        }
    }
    Some(out.join("/"))
}

/// Makes `at` a mask over the context `root`: a whiteout (the overlay's mark of a removed
/// entry) for each path of `hidden`, in folders that copy the context's own modes (and, as
/// root, owners), so the overlay shows the context without what `.dockerignore` excludes.
fn write_mask(root: &Path, at: &Path, hidden: &[String]) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let copy_dir = |rel: &str, to: &Path| -> std::io::Result<()> {
        let meta = fs::symlink_metadata(context::inside(root, rel))?;
        if fs::symlink_metadata(to).is_err() {
            fs::create_dir(to)?;
        }
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()))?;
        }
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))
    };
    // Folders first (their owners may refuse writes once set), then the whiteouts.
    let mut dirs: Vec<String> = vec![String::new()];
    for h in hidden {
        let mut sofar = String::new();
        for seg in h
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |x| x.1)
        {
            sofar = if sofar.is_empty() {
                seg.to_string()
            } else {
                format!("{sofar}/{seg}")
            };
            if !dirs.contains(&sofar) {
                dirs.push(sofar.clone());
            }
        }
    }
    for d in &dirs {
        fs::create_dir_all(context::inside(at, d))?;
    }
    for h in hidden {
        nix::sys::stat::mknod(
            &at.join(h),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .map_err(std::io::Error::from)?;
    }
    // Deepest first, so a folder's mode never stops the ones below it.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count() + usize::from(!d.is_empty())));
    for d in &dirs {
        copy_dir(d, &context::inside(at, d))?;
    }
    Ok(())
}

/// A place in the Dockerfile, for errors found when the step runs.
pub(super) struct Place {
    file: String,
    source: String,
    pos: Pos,
}

impl Place {
    fn error(&self, message: String, hint: &str) -> DockerfileError {
        Located::new(self.pos, message, hint).in_file(&self.file, &self.source)
    }
}

/// The mounts of one running step; dropping it removes what was staged.
#[derive(Default)]
pub(super) struct PreparedMounts {
    pub mounts: Vec<StepMount>,
    /// Variables the step gets (`SSH_AUTH_SOCK`).
    pub env: Vec<(String, String)>,
    // Dropped in this order: the relays stop before their folder goes.
    relays: Vec<RelayThread>,
    private: Vec<ShmDir>,
    staged: Vec<StagingDir>,
}

impl Run<'_> {
    /// Resolves the step's non-cache mounts: what each mounts, and the parts of the step's
    /// key they add.
    pub(super) fn step_mounts(
        &mut self,
        ins: &Instruction,
        requests: Vec<(MountRequest, Pos)>,
    ) -> Result<(Vec<MountPlan>, Vec<Vec<u8>>), DockerfileError> {
        let mut plans = Vec::new();
        let mut key = Vec::new();
        let mut ssh_n = 0;
        for (req, pos) in requests {
            match req {
                MountRequest::Cache { .. } => {}
                MountRequest::Bind {
                    target,
                    source,
                    from,
                    writable,
                } => {
                    let (lowers, sub, mask, content) = match &from {
                        None => {
                            let (rel, mask, content) = self.context_bind(&source, pos)?;
                            (Lowers::Context, rel, mask, content)
                        }
                        Some(name) => {
                            let (layers, _) = self.copy_source(name, pos)?;
                            let src = if source.is_empty() {
                                "/".to_string()
                            } else {
                                source.clone()
                            };
                            // Checked in the stage's tree now (it exists, through folders
                            // only); the mount resolves it again without following links.
                            let items =
                                self.items_from_layers(&layers, &[src], name, "/m", false, ins)?;
                            if let Some(top) = items.iter().find(|i| i.to == "/m") {
                                self.refuse_symlink(&top.from, &source, pos)?;
                            }
                            let sub = clean_rel(&source).ok_or_else(|| {
                                self.err(Located::new(
                                    pos,
                                    format!(
                                        "the bind source `{source}` leaves the root of `{name}`"
                                    ),
                                    "name a path inside the stage or image",
                                ))
                            })?;
                            // Keyed by what the step sees (as `COPY --from`): a source
                            // stage that ran again and made the same files reruns nothing.
                            let content = copied_content_key(&self.store.home, &layers, &items)
                                .map_err(|e| {
                                    self.err(Located::new(
                                        pos,
                                        format!("cannot read `{source}` of `{name}`: {e}"),
                                        "check that the berth home's layers are intact (berth image prune, then build again)",
                                    ))
                                })?;
                            (Lowers::Layers(layers), sub, Vec::new(), content)
                        }
                    };
                    key.push(
                        format!("bind\0{target}\0{source}\0{from:?}\0{writable}\0{content}")
                            .into_bytes(),
                    );
                    plans.push(MountPlan::Bind {
                        lowers,
                        mask,
                        sub,
                        target,
                        writable,
                    });
                }
                MountRequest::Tmpfs { target, size } => {
                    key.push(format!("tmpfs\0{target}\0{size:?}").into_bytes());
                    plans.push(MountPlan::Tmpfs { target, size });
                }
                MountRequest::Secret {
                    id,
                    target,
                    required,
                    mode,
                    uid,
                    gid,
                } => {
                    let given = self.build.secrets.contains(&id);
                    if !given && required {
                        return Err(self.err(Located::new(
                            pos,
                            format!("the required secret `{id}` is not given"),
                            format!("add `[secrets] {id} = {{ env = \"VAR\" }}` (or file/command) to berth.toml, or pass `--secret id={id},env=VAR` to berth image build"),
                        )));
                    }
                    // The id, never the value: a changed token reruns nothing.
                    key.push(format!("secret\0{id}\0{target}\0{mode:o}\0{uid}:{gid}").into_bytes());
                    plans.push(MountPlan::Secret {
                        id,
                        given,
                        target,
                        mode,
                        owner: (uid, gid),
                        at: self.place(pos),
                    });
                }
                MountRequest::Ssh {
                    target,
                    required,
                    mode,
                    uid,
                    gid,
                    ..
                } => {
                    let target = target.unwrap_or_else(|| format!("{SSH_TARGET}.{ssh_n}"));
                    ssh_n += 1;
                    let agent = self.build.ssh_agent.clone();
                    if agent.is_none() && required {
                        return Err(self.err(Located::new(
                            pos,
                            "this step requires the SSH agent, and berth forwards none",
                            "start an agent (`eval $(ssh-agent)`, `ssh-add`) so SSH_AUTH_SOCK is set; `berth image build` needs --ssh, berth.toml `[credentials] ssh_agent = true`",
                        )));
                    }
                    key.push(format!("ssh\0{target}\0{mode:o}\0{uid}:{gid}").into_bytes());
                    plans.push(MountPlan::Ssh {
                        agent,
                        target,
                        mode,
                        owner: (uid, gid),
                    });
                }
            }
        }
        Ok((plans, key))
    }

    fn place(&self, pos: Pos) -> Place {
        let (file, source) = self.file_and_source();
        Place {
            file: file.to_string(),
            source: source.to_string(),
            pos,
        }
    }

    /// A bind of the build context's `source`: its path in the context (nothing outside
    /// it, no symlink on the way), what `.dockerignore` excludes under it (hidden from the
    /// step), and the content hash of what the step sees.
    fn context_bind(
        &self,
        source: &str,
        pos: Pos,
    ) -> Result<(String, Vec<String>, String), DockerfileError> {
        let root = &self.build.context;
        let located = |e: String| {
            self.err(Located::new(
                pos,
                e,
                "a bind mount's source is a path inside the build context (or use from=STAGE)",
            ))
        };
        let matched = context::match_sources(root, source, &self.ignore).map_err(located)?;
        let [m] = matched.as_slice() else {
            return Err(located(format!(
                "`{source}` names {} paths; a bind mount takes one",
                matched.len()
            )));
        };
        let top = context::inside(root, &m.rel);
        self.refuse_symlink(&top, source, pos)?;
        let mut h = Sha256::new();
        let rels = context::walk(root, &m.rel, &self.ignore)
            .map_err(|e| located(format!("cannot read `{source}`: {e}")))?;
        for rel in rels {
            let sub = rel
                .strip_prefix(&m.rel)
                .unwrap_or(&rel)
                .trim_start_matches('/');
            let path = context::inside(root, &rel);
            hash_entry(&mut h, sub, &path, Some(self.digests))
                .map_err(|e| located(format!("cannot read `{rel}`: {e}")))?;
        }
        let mask = context::excluded_under(root, &m.rel, &self.ignore)
            .map_err(|e| located(format!("cannot read `{source}`: {e}")))?;
        Ok((m.rel.clone(), mask, hex::encode(h.finalize())))
    }

    /// A bind source that is a symlink would be followed on the host: refused.
    fn refuse_symlink(&self, path: &Path, source: &str, pos: Pos) -> Result<(), DockerfileError> {
        if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(self.err(Located::new(
                pos,
                format!("the bind source `{source}` is a symlink"),
                "name the file or folder it points to (inside the build context) instead",
            )));
        }
        Ok(())
    }
}

/// Stages `plans` for one run of the step.
pub(super) fn prepare(
    plans: &[MountPlan],
    secrets: &BuildSecrets,
    context_dir: &Path,
    home: &BerthHome,
    label: &str,
) -> Result<PreparedMounts, DockerfileError> {
    let mut out = PreparedMounts::default();
    let context = context_dir;
    let build_err = |detail: String| {
        DockerfileError::from(ImageError::Build {
            step: label.to_string(),
            detail,
        })
    };
    for p in plans {
        match p {
            MountPlan::Bind {
                lowers,
                mask,
                sub,
                target,
                writable,
            } => {
                let mut step_lowers = Vec::new();
                match lowers {
                    Lowers::Context => {
                        if !mask.is_empty() {
                            let dir = home.staging_dir("run-mount").map_err(ImageError::from)?;
                            let at = dir.path().join("mask");
                            write_mask(context, &at, mask).map_err(|e| {
                                build_err(format!("cannot stage the bind mount of {target}: {e}"))
                            })?;
                            out.staged.push(dir);
                            step_lowers.push(StepLower::HostFolder(at));
                        }
                        step_lowers.push(StepLower::HostFolder(context.to_path_buf()));
                    }
                    Lowers::Layers(layers) => {
                        step_lowers.extend(layers.iter().rev().cloned().map(StepLower::Layer));
                        if step_lowers.is_empty() {
                            // An empty stage (`FROM scratch` alone): an empty folder.
                            let dir = home.staging_dir("run-mount").map_err(ImageError::from)?;
                            step_lowers.push(StepLower::HostFolder(dir.path().to_path_buf()));
                            out.staged.push(dir);
                        }
                    }
                }
                let upper = if *writable {
                    let dir = home.staging_dir("run-mount").map_err(ImageError::from)?;
                    let p = dir.path().to_path_buf();
                    out.staged.push(dir);
                    Some(p)
                } else {
                    None
                };
                out.mounts.push(StepMount::Overlay {
                    lowers: step_lowers,
                    upper,
                    sub: sub.clone(),
                    target: target.clone(),
                });
            }
            MountPlan::Tmpfs { target, size } => out.mounts.push(StepMount::Tmpfs {
                target: target.clone(),
                size: *size,
            }),
            MountPlan::Secret {
                id,
                given,
                target,
                mode,
                owner,
                at,
            } => {
                if !given {
                    continue;
                }
                // Read on the first run of a step that mounts it, once per build.
                let Some(value) = secrets.value(id) else {
                    continue;
                };
                let value = value.map_err(|e| {
                    at.error(
                        format!("cannot read the secret for this step: {e}"),
                        "fix the secret's source; the step did not run",
                    )
                })?;
                let dir = private_dir(&mut out.private, label)?;
                let file = dir.join("secret");
                write_private(&file, &value, *mode)
                    .map_err(|e| build_err(format!("cannot stage the secret {id}: {e}")))?;
                out.mounts.push(StepMount::Staged {
                    source: file,
                    target: target.clone(),
                    readonly: true,
                    owner: Some(*owner),
                });
            }
            MountPlan::Ssh {
                agent,
                target,
                mode,
                owner,
            } => {
                let Some(agent) = agent else { continue };
                let dir = private_dir(&mut out.private, label)?;
                let sock = dir.join("agent.sock");
                let listener = std::os::unix::net::UnixListener::bind(&sock)
                    .and_then(|l| {
                        fs::set_permissions(&sock, fs::Permissions::from_mode(*mode))?;
                        Ok(l)
                    })
                    .map_err(|e| build_err(format!("cannot make the SSH agent socket: {e}")))?;
                let relay = RelayThread::start(listener, AgentTarget::HostSocket(agent.clone()))
                    .map_err(|e| build_err(format!("cannot relay the SSH agent: {e}")))?;
                out.relays.push(relay);
                if !out.env.iter().any(|(k, _)| k == "SSH_AUTH_SOCK") {
                    out.env.push(("SSH_AUTH_SOCK".into(), target.clone()));
                }
                out.mounts.push(StepMount::Staged {
                    source: sock,
                    target: target.clone(),
                    readonly: false,
                    owner: Some(*owner),
                });
            }
        }
    }
    Ok(out)
}

/// A new private folder (0700) on the tmpfs `/dev/shm`: a secret never touches a disk.
fn private_dir(dirs: &mut Vec<ShmDir>, label: &str) -> Result<PathBuf, DockerfileError> {
    let d = ShmDir::new("build-mount").map_err(|e| ImageError::Build {
        step: label.to_string(),
        detail: format!("{e}; secret and ssh mounts need the tmpfs /dev/shm"),
    })?;
    let p = d.path().to_path_buf();
    dirs.push(d);
    Ok(p)
}

/// Writes `value` to a new file of `mode` (the runner gives it its owner inside, in the
/// step's user namespace).
fn write_private(path: &Path, value: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(value)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};

    #[test]
    fn a_stage_path_is_cleaned_and_never_leaves_its_root() {
        assert_eq!(clean_rel("/opt/./tool/").as_deref(), Some("opt/tool"));
        assert_eq!(clean_rel("/").as_deref(), Some(""));
        assert_eq!(clean_rel("a/../b").as_deref(), Some("b"));
        assert_eq!(clean_rel("/../etc"), None);
        assert_eq!(clean_rel("a/../../b"), None);
    }

    #[test]
    fn the_mask_hides_each_excluded_path_in_folders_like_the_contexts() {
        let ctx = tempfile::tempdir().unwrap();
        let c = ctx.path();
        fs::create_dir_all(c.join("src/deep")).unwrap();
        fs::set_permissions(c.join("src"), fs::Permissions::from_mode(0o750)).unwrap();
        fs::write(c.join("src/deep/x.log"), "").unwrap();
        fs::write(c.join("top.log"), "").unwrap();
        let out = tempfile::tempdir().unwrap();
        let at = out.path().join("mask");
        write_mask(c, &at, &["src/deep/x.log".into(), "top.log".into()]).unwrap();
        for w in ["src/deep/x.log", "top.log"] {
            let m = fs::symlink_metadata(at.join(w)).unwrap();
            assert!(m.file_type().is_char_device() && m.rdev() == 0, "{w}");
        }
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&at.join("src")), 0o750);
        assert_eq!(mode(&at.join("src/deep")), mode(&c.join("src/deep")));
        assert_eq!(mode(&at), mode(c));
        // Nothing else: the mask holds only the whiteouts and their folders.
        let mut names: Vec<String> = fs::read_dir(&at)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["src", "top.log"]);
    }
}
