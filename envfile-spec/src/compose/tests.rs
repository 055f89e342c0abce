//! Whole compose files through [`super::convert`]: the output parses and validates with the
//! checker, and every key that is not converted is listed.

use std::path::Path;

use super::*;
use crate::draft::MemorySources;

fn sources(files: &[(&str, &str)], env: &[(&str, &str)]) -> MemorySources {
    MemorySources {
        files: files
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

/// Validates `toml` as berth.toml in a temporary project folder.
pub(crate) fn validate(toml: &str) -> Result<crate::Loaded, crate::Report> {
    validate_with(toml, &[])
}

/// [`validate`] in a project folder that also holds the (empty) files `files`.
pub(crate) fn validate_with(toml: &str, files: &[&str]) -> Result<crate::Loaded, crate::Report> {
    let dir = tempfile::tempdir().unwrap();
    for f in files {
        let path = dir.path().join(f);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "").unwrap();
    }
    let file = dir.path().join("berth.toml");
    std::fs::write(&file, toml).unwrap();
    crate::parse(toml.as_bytes(), &file)
}

fn keys(c: &Conversion) -> Vec<&str> {
    c.skipped.iter().map(|s| s.key.as_str()).collect()
}

const APP_AND_DB: &str = r#"
name: shop
services:
  app:
    build:
      context: .
      dockerfile: docker/Dockerfile.dev
      target: dev
      args:
        NODE_VERSION: "20"
    environment:
      - DATABASE_URL=postgres://postgres:${DB_PASSWORD:-dev}@localhost:5432/shop
      - HOME_DIR
    env_file: .env.app
    volumes:
      - .:/app
      - node_modules:/app/node_modules
    ports:
      - "3000:3000"
    working_dir: /app
    command: npm run dev
    depends_on:
      db:
        condition: service_healthy
      cache:
        condition: service_started
  db:
    image: postgres:16
    restart: unless-stopped
    environment:
      POSTGRES_PASSWORD: ${DB_PASSWORD:-dev}
    volumes:
      - pgdata:/var/lib/postgresql/data
    healthcheck:
      test: ["CMD-SHELL", "pg_isready -U postgres"]
      interval: 5s
      timeout: 5s
      retries: 5
    ports: ["5432:5432"]
    networks: [back]
  cache:
    image: redis:7
    entrypoint: ["redis-server"]
    command: ["--appendonly", "yes"]
    depends_on: [db]
    deploy:
      resources:
        limits: { memory: 256m }
volumes:
  pgdata:
  node_modules:
networks:
  back:
"#;

#[test]
fn app_with_database_and_cache() {
    let s = sources(
        &[(".env.app", "LOG_LEVEL=debug\n")],
        &[("HOME_DIR", "/home/x")],
    );
    let c = convert(
        "docker-compose.yml",
        APP_AND_DB,
        Path::new("/src/shop"),
        None,
        &s,
    )
    .unwrap();
    let doc: toml_edit::DocumentMut = c.toml.parse().unwrap();
    let image = &doc["image"];
    assert_eq!(image["dockerfile"].as_str(), Some("docker/Dockerfile.dev"));
    assert_eq!(image["context"].as_str(), Some("."));
    assert_eq!(image["target"].as_str(), Some("dev"));
    assert_eq!(image["args"]["NODE_VERSION"].as_str(), Some("20"));
    assert_eq!(
        doc["env"]["DATABASE_URL"].as_str(),
        Some("postgres://postgres:dev@localhost:5432/shop")
    );
    assert_eq!(doc["env"]["HOME_DIR"].as_str(), Some("/home/x"));
    assert_eq!(doc["env"]["LOG_LEVEL"].as_str(), Some("debug"));
    assert_eq!(doc["shell"]["workdir"].as_str(), Some("/app"));
    let mounts = doc["mounts"].as_array_of_tables().unwrap();
    assert_eq!(mounts.get(0).unwrap()["source"].as_str(), Some("."));
    assert_eq!(
        mounts.get(1).unwrap()["source"].as_str(),
        Some("shop_node_modules")
    );
    assert_eq!(
        doc["services"]["app"]["command"].as_array().unwrap().len(),
        3
    );
    let db = &doc["services"]["db"];
    assert_eq!(db["image"].as_str(), Some("postgres:16"));
    assert_eq!(db["restart"].as_str(), Some("always"));
    assert_eq!(db["env"]["POSTGRES_PASSWORD"].as_str(), Some("dev"));
    assert_eq!(db["mounts"][0]["source"].as_str(), Some("shop_pgdata"));
    assert_eq!(
        db["ready"]["command"].as_str(),
        Some("pg_isready -U postgres")
    );
    assert_eq!(db["ready"]["timeout"].as_str(), Some("50s"));
    let cache = &doc["services"]["cache"];
    let cmd: Vec<&str> = cache["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(cmd, ["redis-server", "--appendonly", "yes"]);
    assert_eq!(cache["after"][0].as_str(), Some("db"));
    assert_eq!(cache["resources"]["memory"].as_str(), Some("256m"));
    let ports = doc["ports"].as_array_of_tables().unwrap();
    assert_eq!(ports.len(), 2);
    let k = keys(&c);
    for expected in [
        "networks",
        "services.db.networks",
        "services.db.healthcheck",
        "services.app.command",
    ] {
        assert!(k.contains(&expected), "{expected} not in {k:?}");
    }
    assert!(
        c.toml
            .contains("#   - services.db.networks: no berth equivalent"),
        "{}",
        c.toml
    );
    // It validates as written, in the project that has the Dockerfile.
    if let Err(report) = validate_with(&c.toml, &["docker/Dockerfile.dev"]) {
        panic!("{report:?}\n{}", c.toml);
    }
}

#[test]
fn named_service_becomes_the_environment_and_the_output_validates() {
    let text = r#"
services:
  web:
    image: docker.io/library/python:3.12
    volumes: ["./src:/src:ro", "/etc/hosts:/host-hosts:ro", "~/.cache/pip:/root/.cache/pip"]
    ports: ["8000"]
    user: "1000:1000"
    command: ["python", "-m", "http.server"]
    restart: on-failure:3
  redis:
    image: redis:7
    command: redis-server --save ""
    healthcheck:
      test: redis-cli ping
    tmpfs: /tmp
    volumes: ["cache:/data"]
volumes:
  cache:
    external: true
"#;
    let s = sources(&[], &[]);
    let c = convert("compose.yaml", text, Path::new("/p/proj"), Some("web"), &s).unwrap();
    let doc: toml_edit::DocumentMut = c.toml.parse().unwrap();
    assert_eq!(
        doc["image"]["from"].as_str(),
        Some("docker.io/library/python:3.12")
    );
    assert_eq!(doc["shell"]["user"].as_str(), Some("1000"));
    assert_eq!(
        doc["services"]["web"]["restart"].as_str(),
        Some("on-failure")
    );
    assert_eq!(
        doc["services"]["redis"]["mounts"][1]["source"].as_str(),
        Some("cache")
    );
    // `command` without `entrypoint`: arguments to the image's entrypoint, as compose.
    assert!(
        doc["services"]["redis"].get("command").is_none(),
        "{}",
        c.toml
    );
    let cmd: Vec<&str> = doc["services"]["redis"]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(cmd, ["redis-server", "--save", ""]);
    assert_eq!(
        doc["services"]["redis"]["ready"]["command"].as_str(),
        Some("redis-cli ping")
    );
    let k = keys(&c);
    assert!(
        k.contains(&"services.web.restart")
            && !k.contains(&"services.redis.command")
            && k.contains(&"services.web.user"),
        "{k:?}"
    );
    // Relative sources must exist for the checker: validate in a folder that has ./src.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("src")).unwrap();
    let file = dir.path().join("berth.toml");
    std::fs::write(&file, &c.toml).unwrap();
    let home = std::env::var("HOME").unwrap_or_default();
    let has_pip_cache = Path::new(&home).join(".cache/pip").exists();
    match crate::parse(c.toml.as_bytes(), &file) {
        Ok(_) => {}
        Err(r) if !has_pip_cache => {
            assert!(
                r.diagnostics
                    .iter()
                    .all(|d| d.message.contains(".cache/pip")),
                "{:?}",
                r.diagnostics
            );
        }
        Err(r) => panic!("{:?}\n{}", r.diagnostics, c.toml),
    }
}

#[test]
fn compose_files_without_an_app_make_every_service_a_sidecar() {
    let text = "services:\n  db:\n    image: postgres:16\n    environment: [POSTGRES_PASSWORD=x]\n  debug:\n    image: busybox\n    profiles: [debug]\n";
    let c = convert(
        "docker-compose.yml",
        text,
        Path::new("/w/api"),
        None,
        &sources(&[], &[]),
    )
    .unwrap();
    assert!(
        c.toml.contains("[services.db]\nimage = \"postgres:16\""),
        "{}",
        c.toml
    );
    assert!(c.toml.contains("target = \"/work\""), "{}", c.toml);
    assert!(!c.toml.contains("[services.debug]"), "{}", c.toml);
    assert_eq!(keys(&c), ["services.debug"]);
    validate(&c.toml).unwrap();
}

#[test]
fn mounts_of_folders_above_the_project_mount_the_project_where_it_appears() {
    // The devcontainers/templates layout: .devcontainer/docker-compose.yml mounts ../..
    let text = "services:\n  app:\n    image: mcr.microsoft.com/devcontainers/base:bookworm\n    volumes: ['../..:/workspaces:cached', '../data:/data']\n";
    let compose = load(
        &[(".devcontainer/docker-compose.yml".into(), text.into())],
        &sources(&[], &[]),
    )
    .unwrap();
    let place = Placement {
        project_dir: "/home/ann/src/proj".into(),
        base_dir: ".devcontainer".into(),
        project_name: "proj_devcontainer".into(),
        environment: Some("app".into()),
        run_services: None,
    };
    let mut draft = Draft::default();
    let mut skipped = Vec::new();
    services::apply(
        &compose,
        &place,
        &sources(&[], &[]),
        &mut draft,
        &mut skipped,
    )
    .unwrap();
    assert_eq!(draft.mounts[0].source.as_deref(), Some("."));
    assert_eq!(draft.mounts[0].target, "/workspaces/proj");
    assert_eq!(draft.mounts[1].source.as_deref(), Some("data"));
    assert_eq!(skipped[0].key, "services.app.volumes[0]");
}

#[test]
fn bad_input_is_refused_with_where_and_what_to_do() {
    let s = sources(&[], &[]);
    let p = Path::new("/x/p");
    let err = convert(
        "dc.yml",
        "services:\n  app:\n    image: [unclosed\n",
        p,
        None,
        &s,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            ComposeError::Syntax { line: 4, .. } | ComposeError::Syntax { line: 3, .. }
        ),
        "{err:?}"
    );
    assert!(err.to_string().starts_with("dc.yml:"), "{err}");
    let err = convert(
        "dc.yml",
        "services:\n  a:\n    image: x\n    depends_on: [b]\n",
        p,
        None,
        &s,
    )
    .unwrap_err();
    assert_eq!(
        err,
        ComposeError::UnknownDependency {
            service: "a".into(),
            missing: "b".into(),
            known: "a".into()
        }
    );
    let err = convert(
        "dc.yml",
        "services:\n  a: {image: x, depends_on: [b]}\n  b: {image: x, depends_on: {c: {condition: service_healthy}}}\n  c: {image: x, depends_on: [a]}\n",
        p,
        None,
        &s,
    )
    .unwrap_err();
    assert_eq!(err, ComposeError::Cycle("a → b → c → a".into()));
    let err = convert("dc.yml", "services:\n  a: {image: x}\n", p, Some("web"), &s).unwrap_err();
    assert!(err.to_string().contains("--service"), "{err}");
    let err = convert("dc.yml", "version: '3'\n", p, None, &s).unwrap_err();
    assert!(matches!(err, ComposeError::Shape { .. }), "{err:?}");
    let err = convert(
        "dc.yml",
        "services:\n  a: {image: \"${TAG:?pick a tag}\"}\n",
        p,
        None,
        &s,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("TAG") && err.to_string().contains("pick a tag"),
        "{err}"
    );
    let err = convert(
        "dc.yml",
        "services:\n  a: {build: ., env_file: missing.env}\n",
        p,
        None,
        &s,
    )
    .unwrap_err();
    assert!(
        matches!(err, ComposeError::MissingEnvFile { .. }),
        "{err:?}"
    );
    let err = convert(
        "dc.yml",
        "services:\n  a: {build: a}\n  b: {build: b}\n",
        p,
        None,
        &s,
    )
    .unwrap_err();
    assert!(
        matches!(err, ComposeError::AmbiguousService { .. }),
        "{err:?}"
    );
}

#[test]
fn merged_files_and_anchors() {
    let base = "x-common: &common\n  restart: always\nservices:\n  db:\n    <<: *common\n    image: postgres:15\n    ports: ['5432:5432']\n";
    let over = "services:\n  db:\n    image: postgres:16\n    ports: ['5433:5433']\n";
    let c = load(
        &[("a.yml".into(), base.into()), ("b.yml".into(), over.into())],
        &sources(&[], &[]),
    )
    .unwrap();
    let db = &c.services[0].1;
    assert_eq!(get_str(db, "image"), "postgres:16");
    assert_eq!(get_str(db, "restart"), "always");
    assert_eq!(db.get("ports").unwrap().as_sequence().unwrap().len(), 2);
    assert_eq!(c.other_keys, ["x-common"]);
}

fn get_str(m: &serde_norway::Mapping, k: &str) -> String {
    fields::scalar(m.get(k).unwrap()).unwrap()
}
