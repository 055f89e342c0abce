//! `berth init --from-compose` and `--from-devcontainer` through the real binary: a compose
//! file with an app and a Redis sidecar (images pushed to the loopback docker-registry)
//! imports and comes up with the app reaching Redis on localhost; a dev container whose
//! feature is an OCI artifact in that registry converts, fetches the feature and builds it;
//! bad input fails with where and what, writing nothing; `up` without berth.toml says how to
//! convert what the folder has.

use std::path::Path;
use std::process::Command;

use berth_e2e::host::{busybox_rootfs, copy_program_with_libs};
use berth_e2e::oci::{sha256, Compression, Layer, Registry, OCI_MANIFEST};
use berth_e2e::project::Project;
use berth_e2e::{require_root, text, Berth};

/// The tar of a folder (numeric owners, as an image layer).
fn tar_dir(dir: &Path) -> Vec<u8> {
    let out = Command::new("tar")
        .args(["--numeric-owner", "-C"])
        .arg(dir)
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Pushes `dir` as a one-layer image `repo:tag` with `PATH` covering /usr/bin.
fn push_dir_image(reg: &Registry, repo: &str, tag: &str, dir: &Path) {
    push_dir_image_running(reg, repo, tag, dir, &[], &["/bin/sh"]);
}

/// [`push_dir_image`] with the image's `Entrypoint` and `Cmd`.
fn push_dir_image_running(
    reg: &Registry,
    repo: &str,
    tag: &str,
    dir: &Path,
    entrypoint: &[&str],
    cmd: &[&str],
) {
    let layer = Layer::new(tar_dir(dir), Compression::Gzip);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Entrypoint": entrypoint, "Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id()]},
    }))
    .unwrap();
    push_artifact(
        reg,
        repo,
        tag,
        "application/vnd.oci.image.config.v1+json",
        &config,
        &layer.blob,
        &layer.media_type,
    );
}

fn push_artifact(
    reg: &Registry,
    repo: &str,
    tag: &str,
    config_type: &str,
    config: &[u8],
    blob: &[u8],
    layer_type: &str,
) {
    reg.push_blob(repo, blob);
    reg.push_blob(repo, config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config_type, "digest": sha256(config), "size": config.len()},
        "layers": [{"mediaType": layer_type, "digest": sha256(blob), "size": blob.len()}],
    }))
    .unwrap();
    reg.push_manifest(repo, tag, OCI_MANIFEST, &manifest);
}

/// The images of the sidecar tests, pushed: busybox with redis-cli (`e2e/app:1`, the app), with
/// redis-server and redis-cli (`e2e/redis:7`: the server and its health check).
fn push_redis_images(reg: &Registry, server: &Path, cli: &Path) -> tempfile::TempDir {
    let images = tempfile::tempdir().unwrap();
    let (app, redis) = (images.path().join("app"), images.path().join("redis"));
    busybox_rootfs(&app);
    copy_program_with_libs(cli, &app);
    busybox_rootfs(&redis);
    copy_program_with_libs(server, &redis);
    copy_program_with_libs(cli, &redis);
    push_dir_image(reg, "e2e/app", "1", &app);
    // Like the redis image: the server is the entrypoint, the cmd its arguments.
    push_dir_image_running(
        reg,
        "e2e/redis",
        "7",
        &redis,
        &["/usr/bin/redis-server"],
        &["--port", "6379"],
    );
    images
}

/// Debian's redis-server and redis-cli, or `None` (the test says why and passes).
fn redis_programs() -> Option<(&'static Path, &'static Path)> {
    let (server, cli) = (
        Path::new("/usr/bin/redis-server"),
        Path::new("/usr/bin/redis-cli"),
    );
    if !server.exists() || !cli.exists() {
        eprintln!("skipped: needs redis-server and redis-cli (scripts/install-deps installs them)");
        return None;
    }
    Some((server, cli))
}

/// A project folder with no berth.toml (the conversion writes it).
fn empty_project(prefix: &str) -> Project {
    let p = Project::builder(prefix, "cv-").without_rootfs().create("");
    std::fs::remove_file(p.path().join("berth.toml")).unwrap();
    p
}

const COMPOSE: &str = r#"
services:
  app:
    image: {registry}/e2e/app:1
    volumes: [".:/work"]
    working_dir: /work
    environment:
      - REDIS_URL=redis://localhost:6379
    depends_on:
      cache:
        condition: service_healthy
  cache:
    image: {registry}/e2e/redis:7
    command: ["--bind", "127.0.0.1", "--port", "6379", "--dir", "/data", "--appendonly", "yes"]
    volumes: ["cache-data:/data"]
    healthcheck:
      test: ["CMD", "redis-cli", "-h", "127.0.0.1", "ping"]
      interval: 1s
      retries: 30
    networks: [back]
volumes:
  cache-data:
networks:
  back:
"#;

#[test]
fn a_compose_file_with_an_app_and_a_redis_sidecar_imports_and_comes_up() {
    require_root!();
    let (server, cli) = (
        Path::new("/usr/bin/redis-server"),
        Path::new("/usr/bin/redis-cli"),
    );
    if !server.exists() || !cli.exists() {
        eprintln!("skipped: needs redis-server and redis-cli (scripts/install-deps installs them)");
        return;
    }
    let Some(reg) = Registry::start() else { return };
    let _images = push_redis_images(&reg, server, cli);
    let p = empty_project("berth-compose-");
    std::fs::write(
        p.path().join("compose.yaml"),
        COMPOSE.replace("{registry}", &reg.addr),
    )
    .unwrap();
    let b = Berth::new();
    let before = p.snapshot(&b);
    // Without a path, the names docker compose looks for (compose.yaml first).
    let (out, err) = b.ok_both(p.path(), &["init", "--from-compose"]);
    assert!(
        out.contains("created berth.toml from") && out.contains("compose.yaml"),
        "{out}"
    );
    // What does not map is listed, on stderr and in the file.
    assert!(
        err.contains("services.cache.networks: no berth equivalent"),
        "{err}"
    );
    let toml = std::fs::read_to_string(p.path().join("berth.toml")).unwrap();
    assert!(toml.contains("#   - services.cache.networks"), "{toml}");
    assert!(toml.contains("[services.cache]"), "{toml}");
    // `command` without `entrypoint` keeps the image's entrypoint, as compose runs it.
    assert!(
        toml.contains("args = [\"--bind\", \"127.0.0.1\"")
            && !err.contains("services.cache.command"),
        "{toml}\n{err}"
    );
    b.ok(p.path(), &["validate"]);

    let (_, err) = b.ok_both(p.path(), &["up"]);
    assert!(
        err.contains("waiting for sidecar cache to be ready"),
        "{err}"
    );
    // The app reaches the sidecar on its own localhost, with the compose environment set.
    let pong = b.ok(
        p.path(),
        &[
            "exec",
            "--",
            "sh",
            "-c",
            "redis-cli -h 127.0.0.1 ping; echo $REDIS_URL; pwd",
        ],
    );
    assert_eq!(pong, "PONG\nredis://localhost:6379\n/work\n");
    b.ok(
        p.path(),
        &[
            "exec",
            "--",
            "redis-cli",
            "-h",
            "127.0.0.1",
            "set",
            "k",
            "kept",
        ],
    );
    // The named volume is the compose project's (`<project>_cache-data`), kept across down.
    b.ok(p.path(), &["down"]);
    b.ok(p.path(), &["up"]);
    let got = b.ok(
        p.path(),
        &["exec", "--", "redis-cli", "-h", "127.0.0.1", "get", "k"],
    );
    assert_eq!(got.trim(), "kept");
    let volumes: Vec<String> = std::fs::read_dir(b.home.path().join("volumes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        volumes.iter().any(|v| v.ends_with("_cache-data")),
        "{volumes:?}"
    );
    b.ok(p.path(), &["destroy", "--volumes"]);
    before.assert_nothing_leaked(&p.snapshot(&b));
}

#[test]
fn a_devcontainer_with_a_registry_feature_converts_fetches_and_builds_it() {
    require_root!();
    let Some(reg) = Registry::start() else { return };
    let images = tempfile::tempdir().unwrap();
    let app = images.path().join("app");
    busybox_rootfs(&app);
    push_dir_image(&reg, "e2e/base", "1", &app);
    // A feature as the devcontainers publish them: a tar layer with install.sh and
    // devcontainer-feature.json; its option becomes GREETING, its default fills WHO.
    let feature = images.path().join("feature");
    std::fs::create_dir_all(&feature).unwrap();
    std::fs::write(
        feature.join("install.sh"),
        "#!/bin/sh\nset -e\necho \"$GREETING, $WHO ($_REMOTE_USER)\" > /etc/greeting\n",
    )
    .unwrap();
    std::fs::write(
        feature.join("devcontainer-feature.json"),
        r#"{"id": "greeter", "version": "1.0.0", "options": {"greeting": {"type": "string", "default": "hello"}, "who": {"type": "string", "default": "world"}}, "containerEnv": {"GREETER": "1"}}"#,
    )
    .unwrap();
    push_artifact(
        &reg,
        "features/greeter",
        "1",
        "application/vnd.devcontainers",
        b"{}",
        &tar_dir(&feature),
        "application/vnd.devcontainers.layer.v1+tar",
    );

    let p = empty_project("berth-devcontainer-");
    std::fs::create_dir(p.path().join(".devcontainer")).unwrap();
    let json = format!(
        r#"{{
            // A dev container on a registry image with a registry feature.
            "name": "greeter",
            "image": "{0}/e2e/base:1",
            "features": {{ "{0}/features/greeter:1": {{ "greeting": "hi there" }} }},
            "remoteUser": "dev",
            "postStartCommand": "cat /etc/greeting > /tmp/started",
        }}"#,
        reg.addr
    );
    std::fs::write(p.path().join(".devcontainer/devcontainer.json"), json).unwrap();
    let b = Berth::new();
    let before = p.snapshot(&b);
    // Without berth.toml, up says how to convert.
    let out = b.run_in(p.path(), &["up"]);
    let (_, err) = text(&out);
    assert!(!out.status.success());
    assert!(err.contains("berth init --from-devcontainer"), "{err}");

    // --devcontainer uses it directly: converted in memory, the feature fetched and built,
    // no berth.toml written; every command takes the flag.
    let (_, err) = b.ok_both(p.path(), &["up", "--devcontainer"]);
    assert!(err.contains("fetching feature"), "{err}");
    let greeting = b.ok(
        p.path(),
        &["--devcontainer", "exec", "--", "cat", "/etc/greeting"],
    );
    assert_eq!(greeting, "hi there, world (dev)\n");
    assert!(!p.path().join("berth.toml").exists());
    b.ok(p.path(), &["--devcontainer", "destroy"]);

    let (_, err) = b.ok_both(p.path(), &["init", "--from-devcontainer"]);
    assert!(err.contains("fetching feature"), "{err}");
    let fetched = p.path().join(".devcontainer/berth-features/greeter");
    assert!(
        fetched.join("install.sh").is_file() && fetched.join("devcontainer-feature.json").is_file()
    );
    let toml = std::fs::read_to_string(p.path().join("berth.toml")).unwrap();
    assert!(toml.contains("GREETING='hi there'"), "{toml}");
    b.ok(p.path(), &["up"]);
    let greeting = b.ok(
        p.path(),
        &["exec", "--", "cat", "/etc/greeting", "/tmp/started"],
    );
    assert_eq!(greeting, "hi there, world (dev)\nhi there, world (dev)\n");
    assert_eq!(
        b.ok(p.path(), &["exec", "--", "sh", "-c", "echo $GREETER"]),
        "1\n"
    );
    // The remote user the image lacked was created by the last setup step.
    b.ok(p.path(), &["exec", "--", "id", "dev"]);
    b.ok(p.path(), &["destroy"]);
    before.assert_nothing_leaked(&p.snapshot(&b));
}

#[test]
fn bad_input_fails_with_where_and_what_and_writes_nothing() {
    let b = Berth::new();
    let p = empty_project("berth-convert-bad-");
    let cases: [(&str, &str, &[&str], &str); 4] = [
        (
            "compose.yaml",
            "services:\n  app:\n    image: [x\n",
            &["--from-compose", "compose.yaml"],
            "compose.yaml:",
        ),
        (
            "compose.yaml",
            "services:\n  app:\n    image: x\n    depends_on: [db]\n",
            &["--from-compose", "compose.yaml"],
            "depends_on names `db`, which is not a service",
        ),
        (
            "compose.yaml",
            "services:\n  a: {image: x, depends_on: [b]}\n  b: {image: x, depends_on: [a]}\n",
            &["--from-compose", "compose.yaml"],
            "a → b → a",
        ),
        (
            "dc.json",
            "{\n  \"image\": \"x\",\n  \"name\": ]\n}\n",
            &["--from-devcontainer", "dc.json"],
            "devcontainer.json:3:",
        ),
    ];
    for (file, content, args, want) in cases {
        std::fs::write(p.path().join(file), content).unwrap();
        let mut argv = vec!["init"];
        argv.extend_from_slice(args);
        let out = b.run_in(p.path(), &argv);
        let (_, err) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{content}: {err}");
        assert!(err.contains(want), "{want:?} not in {err}");
        assert!(
            !p.path().join("berth.toml").exists(),
            "{content}: a berth.toml was written"
        );
    }
    // A compose file with no berth.toml beside it: up says how to convert.
    let out = b.run_in(p.path(), &["up"]);
    assert!(
        text(&out).1.contains("berth init --from-compose FILE"),
        "{}",
        text(&out).1
    );
}

/// The devcontainers/templates compose layout (`../..:/workspaces`, `sleep infinity`,
/// `network_mode: service:…`) on the registry images.
const DEVCONTAINER_COMPOSE: &str = r#"
services:
  app:
    image: {registry}/e2e/app:1
    volumes:
      - ../..:/workspaces:cached
    command: sleep infinity
    network_mode: service:cache
  cache:
    image: {registry}/e2e/redis:7
    restart: unless-stopped
    entrypoint: ["/usr/bin/redis-server"]
    command: ["--bind", "127.0.0.1", "--port", "6379"]
    healthcheck:
      test: ["CMD-SHELL", "redis-cli -h 127.0.0.1 ping | grep -q PONG"]
      interval: 1s
"#;

#[test]
fn a_devcontainer_on_a_compose_file_converts_and_comes_up_with_its_sidecar() {
    require_root!();
    let Some((server, cli)) = redis_programs() else {
        return;
    };
    let Some(reg) = Registry::start() else { return };
    let _images = push_redis_images(&reg, server, cli);
    let p = empty_project("berth-dc-compose-");
    let dc = p.path().join(".devcontainer");
    std::fs::create_dir(&dc).unwrap();
    std::fs::write(
        dc.join("docker-compose.yml"),
        DEVCONTAINER_COMPOSE.replace("{registry}", &reg.addr),
    )
    .unwrap();
    std::fs::write(
        dc.join("devcontainer.json"),
        r#"{
            "name": "Redis app",
            "dockerComposeFile": "docker-compose.yml",
            "service": "app",
            "workspaceFolder": "/workspaces/${localWorkspaceFolderBasename}",
            "forwardPorts": ["cache:6379"],
            "postStartCommand": "redis-cli -h 127.0.0.1 ping > /tmp/pong"
        }"#,
    )
    .unwrap();
    let b = Berth::new();
    let before = p.snapshot(&b);
    let (_, err) = b.ok_both(p.path(), &["init", "--from-devcontainer"]);
    assert!(err.contains("services.app.command"), "{err}");
    b.ok(p.path(), &["up"]);
    // postStartCommand ran after the sidecar was ready; the project is where the template
    // puts it, and the shell starts there.
    let folder = p.path().file_name().unwrap().to_string_lossy().into_owned();
    let got = b.ok(
        p.path(),
        &[
            "exec",
            "--",
            "sh",
            "-c",
            "cat /tmp/pong; ls /workspaces/*/.devcontainer/devcontainer.json",
        ],
    );
    assert_eq!(
        got,
        format!("PONG\n/workspaces/{folder}/.devcontainer/devcontainer.json\n")
    );
    b.ok(p.path(), &["destroy", "--volumes"]);
    before.assert_nothing_leaked(&p.snapshot(&b));
}
