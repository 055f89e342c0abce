//! `RUN` steps of a Dockerfile build: the command (exec form, shell form through `SHELL`,
//! heredocs), `--mount=type=cache` folders kept in berth's home across builds,
//! `--network=none`, and the step's key (command, environment with the build arguments in
//! scope, user, folder, mounts, network). The command runs through the build sandbox's
//! [`StepRunner`](super::super::build::StepRunner).

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::super::build::{HostCas, StepCommand, StepMount};
use super::super::error::ImageError;
use super::super::host_ca::BUNDLE_PATH;
use super::super::layer_writer::WhiteoutMode;
use super::build::Run;
use super::config::{chain, StageState};
use super::error::{DockerfileError, Located};
use super::parse::{Args, Instruction};
use super::plan::flag_value;
use super::run_mount::{parse_mount, MountRequest};
use super::run_mount_stage::prepare;
use crate::state::{FileLock, LockMode};

impl Run<'_> {
    pub(super) fn run_step(
        &mut self,
        st: &mut StageState,
        ins: &Instruction,
        label: &str,
    ) -> Result<(), DockerfileError> {
        let escape = self.plan.escape;
        let lookup = |n: &str| st.lookup(n);
        let mut cache_mounts: Vec<(PathBuf, String)> = Vec::new();
        let mut requests = Vec::new();
        let mut no_network = false;
        for f in &ins.flags {
            let v = flag_value(f, escape, &lookup).map_err(|l| self.err(l))?;
            match f.name.as_str() {
                "network" => match v.as_str() {
                    "none" => no_network = true,
                    "default" => no_network = false,
                    other => {
                        return Err(self.err(Located::new(f.pos, format!("--network={other} is not supported"), "use --network=none or --network=default (the build's own network with NAT)")))
                    }
                },
                _ => {
                    let req = parse_mount(&v, &st.workdir())
                        .map_err(|e| self.err(Located::new(f.pos, e.message, e.hint)))?;
                    if let MountRequest::Cache { target, id } = &req {
                        cache_mounts.push(self.cache_mount(target, id.as_deref())?);
                    } else {
                        requests.push((req, f.pos));
                    }
                }
            }
        }
        let (mount_plans, mount_key) = self.step_mounts(ins, requests)?;
        let argv = self.run_command(st, ins)?;
        let env = st.run_env();
        let workdir = st.workdir();
        let user = st.config.user.clone();
        let key = chain(
            &st.key,
            &[
                b"RUN",
                serde_json::to_string(&argv).unwrap_or_default().as_bytes(),
                serde_json::to_string(&env).unwrap_or_default().as_bytes(),
                workdir.as_bytes(),
                user.as_deref().unwrap_or("").as_bytes(),
                serde_json::to_string(&cache_mounts.iter().map(|m| &m.1).collect::<Vec<_>>())
                    .unwrap_or_default()
                    .as_bytes(),
                if no_network { b"none" } else { b"default" },
            ],
        );
        // Steps without other mounts keep the keys they had before those existed.
        let key = if mount_key.is_empty() {
            key
        } else {
            chain(
                &key,
                &mount_key.iter().map(Vec::as_slice).collect::<Vec<_>>(),
            )
        };
        let store = self.store;
        let runner = self.runner;
        let progress = self.progress;
        let home = &self.store.home;
        let secrets = &self.build.secrets;
        let host_ca = self.build.host_ca.as_ref();
        let context_dir = self.build.context.as_path();
        let mut targets: Vec<String> = cache_mounts.iter().map(|m| m.1.clone()).collect();
        self.layer_step(
            st,
            label,
            key,
            WhiteoutMode::FromOverlay,
            &mut |upper, lowers| {
                let _locks = cache_mounts
                    .iter()
                    .map(|(dir, _)| {
                        FileLock::acquire(&dir.with_extension("lock"), LockMode::Exclusive)
                            .map_err(ImageError::from)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let prepared = prepare(&mount_plans, secrets, context_dir, home, label)?;
                let mut mounts = prepared.mounts.clone();
                let mut env = env.clone();
                env.extend(prepared.env.iter().cloned());
                let staged_ca = match host_ca {
                    Some(cas) => Some(StagedBundle::write(cas, lowers, home, label)?),
                    None => None,
                };
                if let Some(ca) = &staged_ca {
                    mounts.push(ca.mount());
                    // A variable the Dockerfile sets itself stays as it set it.
                    for (k, v) in HostCas::env() {
                        if !env.iter().any(|(name, _)| *name == k) {
                            env.push((k, v));
                        }
                    }
                }
                targets.extend(mounts.iter().map(|m| m.target().to_string()));
                store.run_command_step(
                    label,
                    lowers,
                    upper,
                    &StepCommand {
                        argv: &argv,
                        workdir: &workdir,
                        env: &env,
                        user: user.as_deref(),
                        cache_mounts: &cache_mounts,
                        no_network,
                        mounts: &mounts,
                    },
                    runner,
                    progress,
                )?;
                // What the sandbox made only to mount something on (cache mounts, /proc,
                // /etc/hosts, ...) is not part of the step's result.
                for t in targets
                    .iter()
                    .map(String::as_str)
                    .chain(SANDBOX_MOUNTPOINTS)
                {
                    remove_mountpoint(upper, t, lowers);
                }
                drop((prepared, staged_ca));
                Ok(())
            },
        )
    }

    /// `--mount=type=cache,target=/x[,id=…]` → its folder in berth's home (kept across
    /// builds, one per id) and its target.
    fn cache_mount(
        &self,
        target: &str,
        id: Option<&str>,
    ) -> Result<(PathBuf, String), DockerfileError> {
        let target = target.to_string();
        let id = id.map_or_else(|| target.clone(), str::to_string);
        let dir = self
            .store
            .home
            .root()
            .join("build-cache")
            .join(&hex::encode(Sha256::digest(id.as_bytes()))[..32]);
        fs::create_dir_all(self.store.home.root().join("build-cache"))
            .map_err(ImageError::io(&dir))?;
        Ok((dir, target))
    }

    /// The argv of a `RUN`: exec form as is; shell form through the stage's shell; a
    /// heredoc alone is the script.
    fn run_command(
        &self,
        st: &StageState,
        ins: &Instruction,
    ) -> Result<Vec<String>, DockerfileError> {
        let mut argv = st.shell.clone();
        match (&ins.args, ins.heredocs.as_slice()) {
            (Args::Exec(v), _) => return Ok(v.clone()),
            (Args::Shell(s), [doc])
                if s.split_whitespace().count() == 1 && s.trim_start().starts_with("<<") =>
            {
                if doc.body.starts_with("#!") {
                    return Err(self.err(Located::new(
                        ins.args_pos,
                        "a RUN heredoc with its own `#!` interpreter is not supported",
                        "pipe it to the interpreter instead: `RUN python3 <<EOF`",
                    )));
                }
                argv.push(doc.body.clone());
            }
            (Args::Shell(s), docs) => {
                let mut script = s.clone();
                for d in docs {
                    script.push('\n');
                    script.push_str(&d.body);
                    script.push_str(&d.name);
                }
                argv.push(script);
            }
        }
        Ok(argv)
    }
}

/// The CA bundle a `RUN` step trusts ([`HostCas::bundle`]: the image's own store merged with
/// the host's certificates), written to a staging folder of its own in the home's `tmp/`
/// (`ca-bundle-<pid>-<hex>`: removed with it, on SIGINT/SIGTERM, or by the next command's sweep
/// after a `kill -9`), and mounted read-only at [`BUNDLE_PATH`] for the step's run only.
struct StagedBundle {
    dir: crate::state::StagingDir,
}

impl StagedBundle {
    fn write(
        cas: &HostCas,
        lowers: &[PathBuf],
        home: &crate::state::BerthHome,
        label: &str,
    ) -> Result<StagedBundle, ImageError> {
        let failed = |e: std::io::Error| {
            ImageError::Build {
            step: label.to_string(),
            detail: format!(
                "cannot give the step the host's CA certificates: {e}; build with `--no-host-ca` (or `host_ca = false` under [image]) to run it without them"
            ),
        }
        };
        let bytes = cas.bundle(lowers).map_err(failed)?;
        let dir = home.staging_dir("ca-bundle")?;
        let file = dir.path().join("ca-certificates.crt");
        fs::write(&file, bytes).map_err(failed)?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).map_err(failed)?;
        Ok(StagedBundle { dir })
    }

    fn mount(&self) -> StepMount {
        StepMount::Staged {
            source: self.dir.path().join("ca-certificates.crt"),
            target: BUNDLE_PATH.to_string(),
            readonly: true,
            owner: None,
        }
    }
}

/// Where the build sandbox mounts things when the image lacks them.
const SANDBOX_MOUNTPOINTS: [&str; 6] = [
    "/dev",
    "/proc",
    "/sys",
    "/etc/hostname",
    "/etc/hosts",
    "/etc/resolv.conf",
];

/// Removes the folder or file something was mounted on when the step made it only for the
/// mount (empty, and not in the layers below), with the parents made for it too.
fn remove_mountpoint(upper: &Path, target: &str, lowers: &[PathBuf]) {
    let mut rel = PathBuf::from(target.trim_start_matches('/'));
    loop {
        if rel.as_os_str().is_empty()
            || lowers
                .iter()
                .any(|l| fs::symlink_metadata(l.join(&rel)).is_ok())
        {
            return;
        }
        let p = upper.join(&rel);
        let removed = match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => fs::remove_dir(&p).is_ok(),
            Ok(m) if m.is_file() && m.len() == 0 => fs::remove_file(&p).is_ok(),
            _ => false,
        };
        if !removed || !rel.pop() {
            return;
        }
    }
}
