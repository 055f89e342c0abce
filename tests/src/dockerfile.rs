//! Fixtures of the Dockerfile tests (`tests/tests/dockerfile*.rs`): a loopback registry with a
//! busybox base image, a project shaped like a real Node-style app, `berth image build`, and
//! listings of an exported rootfs tar to compare file trees.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::host::busybox_rootfs;
use crate::oci::{sha256, Compression, Image, Layer, Registry};
use crate::Berth;

/// A registry holding `base:1`: busybox with a user `app` (1000:1000).
pub fn registry_with_base() -> Option<Registry> {
    registry_with(false)
}

/// [`registry_with_base`]; `distro_files`: with the files every distribution image has and
/// a build sandbox mounts over (`/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`, `/run`),
/// which buildah leaves behind (empty, mode 755) in an image that lacks them.
pub fn registry_with(distro_files: bool) -> Option<Registry> {
    let reg = Registry::start()?;
    let root = tempfile::tempdir().unwrap();
    busybox_rootfs(root.path());
    if distro_files {
        for f in ["etc/hosts", "etc/hostname", "etc/resolv.conf"] {
            fs::write(root.path().join(f), "").unwrap();
        }
        fs::create_dir_all(root.path().join("run")).unwrap();
    }
    fs::write(
        root.path().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    )
    .unwrap();
    fs::write(root.path().join("etc/group"), "root:x:0:\napp:x:1000:\n").unwrap();
    let mut t = tar::Builder::new(Vec::new());
    t.follow_symlinks(false);
    t.append_dir_all(".", root.path()).unwrap();
    let layer = Layer::new(t.into_inner().unwrap(), Compression::Gzip);
    // With a history entry per layer, as buildah wants of a base.
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id()]},
        "history": [{"created_by": "busybox rootfs"}],
    }))
    .unwrap();
    let mut image = Image::new(vec![layer], "amd64");
    let mut manifest: serde_json::Value = serde_json::from_slice(&image.manifest).unwrap();
    manifest["config"]["digest"] = sha256(&config).into();
    manifest["config"]["size"] = config.len().into();
    image.manifest = serde_json::to_vec(&manifest).unwrap();
    image.config = config;
    reg.push_image("base", "1", &image);
    Some(reg)
}

/// A real project's shape: manifest first, install with a cache mount, sources, build; a
/// slim final stage with `--chmod`, `--chown`, `COPY --from`, `USER`, `EXPOSE`, entrypoint.
/// `FROM` is `${REGISTRY}/base:1` (pass `--build-arg REGISTRY=<addr>`).
pub const APP_DOCKERFILE: &str = r#"# syntax=docker/dockerfile:1
ARG REGISTRY
FROM ${REGISTRY}/base:1 AS deps
WORKDIR /app
COPY package.json ./
RUN --mount=type=cache,target=/root/.npm \
    echo "install $(cat package.json)" >> /root/.npm/runs \
 && mkdir -p node_modules/left-pad \
 && cp package.json node_modules/left-pad/ \
 && wc -l < /root/.npm/runs | tr -d ' ' > /app/installs

FROM deps AS build
ARG MODE=production
ENV NODE_ENV=$MODE
COPY src ./src
RUN mkdir -p dist && cat src/*.js > dist/bundle.js && echo "$NODE_ENV" > dist/mode

FROM ${REGISTRY}/base:1
LABEL org.opencontainers.image.title="demo app"
WORKDIR /srv
COPY --chmod=640 config/app.conf /etc/app.conf
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build --chown=app:app /app/dist ./dist
RUN mkdir -p /srv/logs && echo ready > /srv/logs/state
USER app
EXPOSE 3000
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat /srv/dist/bundle.js"]
"#;

/// Writes [`APP_DOCKERFILE`] and its context (with a `.dockerignore`d `node_modules` and
/// log file) into `dir`.
pub fn app_project(dir: &Path) {
    fs::create_dir_all(dir.join("src")).unwrap();
    fs::create_dir_all(dir.join("config")).unwrap();
    fs::create_dir_all(dir.join("node_modules/junk")).unwrap();
    fs::write(dir.join("package.json"), "{\"name\":\"demo\"}\n").unwrap();
    fs::write(dir.join("src/a.js"), "console.log('a');\n").unwrap();
    fs::write(dir.join("src/b.js"), "console.log('b');\n").unwrap();
    fs::write(dir.join("src/debug.log"), "noise\n").unwrap();
    fs::write(dir.join("config/app.conf"), "port=3000\n").unwrap();
    fs::write(dir.join("node_modules/junk/x"), "x").unwrap();
    fs::write(dir.join(".dockerignore"), "node_modules\n**/*.log\n").unwrap();
    fs::write(dir.join("Dockerfile"), APP_DOCKERFILE).unwrap();
}

/// Every entry of a rootfs tar: path → (kind, mode, uid, gid, content hash or link).
pub fn listing(tar_path: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut ar = tar::Archive::new(fs::File::open(tar_path).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let path = path
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        if path.is_empty() || path == "." {
            continue;
        }
        let kind = e.header().entry_type();
        let link = e
            .header()
            .link_name()
            .unwrap()
            .map(|l| l.display().to_string());
        let what = if kind.is_symlink() {
            format!("-> {}", link.unwrap_or_default())
        } else if kind.is_hard_link() {
            format!("hardlink {}", link.unwrap_or_default())
        } else if kind.is_file() {
            let mut buf = Vec::new();
            e.read_to_end(&mut buf).unwrap();
            hex::encode(Sha256::digest(&buf))
        } else {
            format!("{kind:?}")
        };
        let h = e.header();
        out.insert(
            path,
            format!(
                "{:o} {}:{} {what}",
                h.mode().unwrap() & 0o7777,
                h.uid().unwrap(),
                h.gid().unwrap()
            ),
        );
    }
    out
}

/// `berth image build ARGS` in `dir`, asserted to succeed: (stdout, stderr).
pub fn build(b: &Berth, dir: &Path, args: &[&str]) -> (String, String) {
    let mut all = vec!["image", "build"];
    all.extend_from_slice(args);
    b.ok_both(dir, &all)
}

/// The regular files of an exported rootfs tar: path → content.
pub fn tar_files(tar_path: &Path) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let mut ar = tar::Archive::new(fs::File::open(tar_path).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        let mut s = Vec::new();
        if e.header().entry_type().is_file() {
            e.read_to_end(&mut s).unwrap();
        }
        files.insert(path, String::from_utf8_lossy(&s).into_owned());
    }
    files
}
