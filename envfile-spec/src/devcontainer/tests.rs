//! Each mapping of devcontainer.json on its own.

use std::path::Path;

use super::*;
use crate::draft::{FeatureFiles, MemorySources};

fn ctx(json: &str) -> Context<'_> {
    Context {
        project_dir: Path::new("/home/ann/my-app"),
        json_path: json,
        host_uid: Some(1000),
    }
}

fn conv(text: &str) -> Conversion {
    convert(
        text,
        &ctx(".devcontainer/devcontainer.json"),
        &MemorySources::default(),
    )
    .unwrap()
}

fn keys(c: &Conversion) -> Vec<&str> {
    c.skipped.iter().map(|s| s.key.as_str()).collect()
}

#[test]
fn typescript_node_example() {
    let text = r#"
    // For format details, see https://aka.ms/devcontainer.json.
    {
        "name": "Node.js & TypeScript",
        "image": "mcr.microsoft.com/devcontainers/typescript-node:1-20-bullseye",
        "forwardPorts": [3000, "5173", "db:5432"],
        "containerEnv": { "NODE_ENV": "development", "TZ": "UTC" },
        "remoteEnv": { "PATH": "${containerEnv:PATH}:/extra", "TZ": "Europe/Berlin" },
        "postCreateCommand": "npm ci",
        "postStartCommand": ["npm", "run", "dev server"],
        "customizations": { "vscode": { "extensions": ["dbaeumer.vscode-eslint"] } },
        "remoteUser": "node", /* trailing comma allowed */
    }"#;
    let c = conv(text);
    let t = &c.toml;
    assert!(t.contains("name = \"node-js-typescript\"\n"), "{t}");
    assert!(t.contains("from = \"mcr.microsoft.com/devcontainers/typescript-node:1-20-bullseye\""));
    assert!(
        t.contains(
            "on_create = [\n    \"npm ci\",\n]\non_up = [\n    \"npm run 'dev server'\",\n]"
        ),
        "{t}"
    );
    assert!(t.contains("[[ports]]\nhost = 3000\nguest = 3000"));
    assert!(t.contains("[[ports]]\nhost = 5173\nguest = 5173"));
    let body: String = t.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(!body.contains("5432"), "{t}");
    assert!(t.contains("NODE_ENV = \"development\""));
    assert!(t.contains("TZ = \"Europe/Berlin\""), "remoteEnv wins: {t}");
    assert!(!t.contains("TZ = \"UTC\""));
    assert!(
        !t.contains("PATH ="),
        "substituted values are not written: {t}"
    );
    assert!(t.contains("source = \".\"\ntarget = \"/workspaces/my-app\""));
    assert!(t.contains("user = \"node\"\nworkdir = \"/workspaces/my-app\""));
    // The user is created when the image lacks it, with the host user's uid (bind mount).
    assert!(
        t.contains("id -u node >/dev/null 2>&1 || { uid=1000; while cut -d: -f3 /etc/passwd"),
        "{t}"
    );
    assert!(
        t.contains(r#"useradd -m -u "$uid" node"#) && t.contains(r#"adduser -D -u "$uid" node"#),
        "{t}"
    );
    let k = keys(&c);
    for expected in ["forwardPorts[2]", "remoteEnv.PATH", "customizations"] {
        assert!(k.contains(&expected), "{expected} not in {k:?}");
    }
    assert!(!k.contains(&"image") && !k.contains(&"remoteUser"));
    assert!(
        t.contains("#   - remoteEnv.PATH: "),
        "listed in the file too: {t}"
    );
}

#[test]
fn mounts_in_both_forms_and_workspace() {
    let text = r#"{
        "image": "debian:bookworm",
        "workspaceMount": "source=${localWorkspaceFolder},target=/src,type=bind,consistency=cached",
        "workspaceFolder": "/src",
        "mounts": [
            "source=${localEnv:HOME}/.ssh,target=/home/dev/.ssh,type=bind,readonly",
            { "source": "cache-vol", "target": "/cache", "type": "volume" },
            { "target": "/tmp/scratch", "type": "tmpfs" },
            "source=${localEnv:SECRET_DIR},target=/secret,type=bind",
            { "source": "x", "target": "/y", "type": "npipe" },
            "source=${localWorkspaceFolderBasename}-node_modules,target=${containerWorkspaceFolder}/node_modules,type=volume"
        ],
        "onCreateCommand": { "deps": "make deps", "db": ["./db.sh", "init"] },
        "hostRequirements": { "cpus": 4, "memory": "8gb", "storage": "32gb" }
    }"#;
    let c = conv(text);
    let t = &c.toml;
    assert!(
        t.contains("[[mounts]]\nsource = \".\"\ntarget = \"/src\"\n"),
        "{t}"
    );
    assert!(
        t.contains("source = \"~/.ssh\"\ntarget = \"/home/dev/.ssh\"\nreadonly = true"),
        "{t}"
    );
    assert!(t.contains("source = \"cache-vol\"\ntarget = \"/cache\"\ntype = \"volume\""));
    assert!(t.contains("[[mounts]]\ntarget = \"/tmp/scratch\"\ntype = \"tmpfs\""));
    assert!(
        t.contains(
            "source = \"my-app-node_modules\"\ntarget = \"/src/node_modules\"\ntype = \"volume\""
        ),
        "{t}"
    );
    assert!(!t.contains("/secret"));
    assert!(t.contains("\"make deps\""));
    assert!(t.contains("\"./db.sh init\""));
    assert!(t.contains("cpus = 4.0\nmemory = \"8gb\""), "{t}");
    assert!(t.contains("workdir = \"/src\""));
    let k = keys(&c);
    for expected in ["mounts[3]", "mounts[4]", "hostRequirements.storage"] {
        assert!(k.contains(&expected), "{expected} not in {k:?}");
    }
}

#[test]
fn variables_are_resolved_or_listed() {
    let s = MemorySources {
        env: [
            ("USER".to_string(), "ann".to_string()),
            ("GH_TOKEN".to_string(), "secret!".to_string()),
        ]
        .into(),
        ..Default::default()
    };
    let c = convert(
        r#"{
            "image": "debian",
            "workspaceFolder": "/workspaces/${localWorkspaceFolderBasename}",
            "postCreateCommand": "cd ${containerWorkspaceFolder} && make",
            "postStartCommand": "echo ${localEnv:TOKEN}",
            "containerEnv": { "HOST_PROJECT": "${localWorkspaceFolder}", "WHO": "${localEnv:USER}", "LANG_X": "${localEnv:NOPE:C.UTF-8}", "GH": "${localEnv:GH_TOKEN}" },
            "remoteEnv": { "APP": "${containerWorkspaceFolder}/app", "P": "${containerEnv:PATH}:/x", "B": "${containerWorkspaceFolderBasename}" }
        }"#,
        &ctx(".devcontainer/devcontainer.json"),
        &s,
    )
    .unwrap();
    let t = &c.toml;
    for want in [
        "target = \"/workspaces/my-app\"",
        "workdir = \"/workspaces/my-app\"",
        "\"cd /workspaces/my-app && make\"",
        "APP = \"/workspaces/my-app/app\"",
        "HOST_PROJECT = \"/home/ann/my-app\"",
        "WHO = \"ann\"",
        "LANG_X = \"C.UTF-8\"",
        "B = \"my-app\"",
    ] {
        assert!(t.contains(want), "{want}: {t}");
    }
    assert!(
        !t.contains("secret!"),
        "a secret is never copied into berth.toml: {t}"
    );
    let body: String = t.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(!body.contains("${"), "{t}");
    let k = keys(&c);
    for expected in ["postStartCommand", "remoteEnv.P", "containerEnv.GH"] {
        assert!(k.contains(&expected), "{expected} not in {k:?}");
    }
}

#[test]
fn dockerfile_build_becomes_the_image_dockerfile_keys() {
    let c = conv(
        r#"{ "build": { "dockerfile": "Dockerfile", "context": "..", "args": { "VARIANT": "3.12", "USER": "${localEnv:NOPE:dev}" }, "target": "dev", "cacheFrom": "x" }, "appPort": "8080:80" }"#,
    );
    let doc: toml_edit::DocumentMut = c.toml.parse().unwrap();
    assert_eq!(
        doc["image"]["dockerfile"].as_str(),
        Some(".devcontainer/Dockerfile")
    );
    assert_eq!(doc["image"]["context"].as_str(), Some("."));
    assert_eq!(doc["image"]["target"].as_str(), Some("dev"));
    assert_eq!(doc["image"]["args"]["VARIANT"].as_str(), Some("3.12"));
    assert_eq!(doc["image"]["args"]["USER"].as_str(), Some("dev"));
    assert!(doc["image"].get("from").is_none());
    assert!(c.toml.contains("host = 8080\nguest = 80"));
    assert_eq!(keys(&c), ["build.cacheFrom"]);
    // The legacy top-level form, context defaulting to the devcontainer.json's folder.
    let c = conv(r#"{ "dockerFile": "../Dockerfile" }"#);
    let doc: toml_edit::DocumentMut = c.toml.parse().unwrap();
    assert_eq!(doc["image"]["dockerfile"].as_str(), Some("Dockerfile"));
    assert_eq!(doc["image"]["context"].as_str(), Some(".devcontainer"));
}

#[test]
fn compose_setups_make_the_service_the_environment() {
    let compose = r#"
services:
  app:
    build:
      context: ..
      dockerfile: .devcontainer/Dockerfile
    volumes:
      - ../..:/workspaces:cached
    command: sleep infinity
    network_mode: service:db
  db:
    image: postgres:latest
    restart: unless-stopped
    volumes:
      - postgres-data:/var/lib/postgresql/data
    environment:
      POSTGRES_PASSWORD: postgres
  unused:
    image: busybox
volumes:
  postgres-data:
"#;
    let s = MemorySources {
        files: [(
            ".devcontainer/docker-compose.yml".to_string(),
            compose.to_string(),
        )]
        .into(),
        ..Default::default()
    };
    let c = convert(
        r#"{ "name": "Node.js & PostgreSQL", "dockerComposeFile": "docker-compose.yml", "service": "app", "runServices": ["db"],
             "workspaceFolder": "/workspaces/${localWorkspaceFolderBasename}", "forwardPorts": [3000, "db:5432"], "remoteUser": "node" }"#,
        &ctx(".devcontainer/devcontainer.json"),
        &s,
    )
    .unwrap();
    let doc: toml_edit::DocumentMut = c.toml.parse().unwrap();
    assert_eq!(
        doc["image"]["dockerfile"].as_str(),
        Some(".devcontainer/Dockerfile")
    );
    assert_eq!(doc["image"]["context"].as_str(), Some("."));
    let m = doc["mounts"].as_array_of_tables().unwrap().get(0).unwrap();
    assert_eq!(
        (m["source"].as_str(), m["target"].as_str()),
        (Some("."), Some("/workspaces/my-app"))
    );
    let db = &doc["services"]["db"];
    assert_eq!(db["image"].as_str(), Some("postgres:latest"));
    assert_eq!(
        db["mounts"][0]["source"].as_str(),
        Some("my-app_devcontainer_postgres-data")
    );
    assert!(doc["services"].get("unused").is_none());
    assert!(
        doc["services"].get("app").is_none(),
        "sleep infinity is no service: {}",
        c.toml
    );
    let ports: Vec<i64> = doc["ports"]
        .as_array_of_tables()
        .unwrap()
        .iter()
        .map(|p| p["host"].as_integer().unwrap())
        .collect();
    assert_eq!(ports, [3000, 5432]);
    assert_eq!(doc["shell"]["workdir"].as_str(), Some("/workspaces/my-app"));
    let k = keys(&c);
    for expected in [
        "services.unused",
        "services.app.volumes[0]",
        "services.app.command",
    ] {
        assert!(k.contains(&expected), "{expected} not in {k:?}");
    }
}

#[test]
fn template_options_come_from_the_template_beside_the_devcontainer_folder() {
    let s = MemorySources {
        files: [("devcontainer-template.json".to_string(), r#"{ "id": "rust", "options": { "imageVariant": { "type": "string", "default": "bookworm" } } }"#.to_string())].into(),
        ..Default::default()
    };
    let c = convert(
        r#"{ "image": "mcr.microsoft.com/devcontainers/rust:1-${templateOption:imageVariant}", "postCreateCommand": "echo ${templateOption:other}" }"#,
        &ctx(".devcontainer/devcontainer.json"),
        &s,
    )
    .unwrap();
    assert!(
        c.toml
            .contains("from = \"mcr.microsoft.com/devcontainers/rust:1-bookworm\""),
        "{}",
        c.toml
    );
    assert_eq!(keys(&c), ["postCreateCommand"]);
    assert!(
        c.skipped[0].reason.contains("template option other"),
        "{:?}",
        c.skipped
    );
    // Without the template file the option is listed, and the image falls back.
    let c = conv(r#"{ "image": "rust:1-${templateOption:imageVariant}" }"#);
    assert!(keys(&c).contains(&"image"), "{:?}", c.skipped);
}

#[test]
fn features_are_fetched_through_the_sources_and_installed_by_setup_steps() {
    let s = MemorySources {
        features: [(
            "ghcr.io/devcontainers/features/go:1".to_string(),
            FeatureFiles { folder: ".devcontainer/berth-features/go".into(), metadata: r#"{"id": "go", "options": {"version": {"type": "string", "default": "latest"}}, "containerEnv": {"GOPATH": "/go"}}"#.into() },
        )]
        .into(),
        ..Default::default()
    };
    let c = convert(
        r#"{ "image": "mcr.microsoft.com/devcontainers/base:bookworm", "features": { "ghcr.io/devcontainers/features/go:1": { "version": "1.22" } }, "remoteUser": "vscode" }"#,
        &ctx(".devcontainer/devcontainer.json"),
        &s,
    )
    .unwrap();
    let doc: toml_edit::DocumentMut = c.toml.parse().unwrap();
    assert_eq!(
        doc["image"]["inputs"][0].as_str(),
        Some(".devcontainer/berth-features/go")
    );
    let setup: Vec<&str> = doc["image"]["setup"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(setup.len(), 2, "the feature, then the user: {setup:?}");
    assert!(setup[0].contains("env VERSION=1.22 _REMOTE_USER=vscode _REMOTE_USER_HOME=/home/vscode _CONTAINER_USER=root"), "{setup:?}");
    assert!(setup[1].starts_with("id -u vscode"), "{setup:?}");
    assert_eq!(doc["env"]["GOPATH"].as_str(), Some("/go"));
    assert!(c.skipped.is_empty(), "{:?}", c.skipped);
}

#[test]
fn run_args_map_into_their_keys() {
    let c = conv(
        r#"{ "image": "debian", "runArgs": ["--device=/dev/fuse", "--cap-add=SYS_PTRACE", "--memory=4g"] }"#,
    );
    assert!(c.toml.contains("devices = [\"/dev/fuse\"]\n"), "{}", c.toml);
    assert!(c.toml.contains("memory = \"4g\""), "{}", c.toml);
    assert_eq!(keys(&c), ["runArgs[1]"]);
}

#[test]
fn rejects_non_objects_and_syntax_errors_with_their_position() {
    let s = MemorySources::default();
    let c = ctx(".devcontainer/devcontainer.json");
    assert_eq!(
        convert("[1, 2]", &c, &s),
        Err(DevcontainerError::NotAnObject)
    );
    assert_eq!(convert("", &c, &s), Err(DevcontainerError::NotAnObject));
    let err = convert("{\n  \"image\": \"x\",\n  \"name\": ]\n}", &c, &s).unwrap_err();
    assert!(
        matches!(err, DevcontainerError::Syntax { line: 3, .. }),
        "{err:?}"
    );
    assert!(err.to_string().starts_with("devcontainer.json:3:"), "{err}");
    let err = convert(
        r#"{ "dockerComposeFile": "missing.yml", "service": "app" }"#,
        &c,
        &s,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains(".devcontainer/missing.yml"),
        "{err}"
    );
    let s = MemorySources {
        files: [(
            ".devcontainer/dc.yml".to_string(),
            "services:\n  app: {image: x}\n".to_string(),
        )]
        .into(),
        ..Default::default()
    };
    let err = convert(r#"{ "dockerComposeFile": "dc.yml" }"#, &c, &s).unwrap_err();
    assert!(err.to_string().contains("service"), "{err}");
    let err = convert(
        r#"{ "dockerComposeFile": "dc.yml", "service": "web" }"#,
        &c,
        &s,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            DevcontainerError::Compose(ComposeError::UnknownService { .. })
        ),
        "{err:?}"
    );
}

#[test]
fn strings_are_escaped_for_toml() {
    let c = conv(r#"{ "image": "debian", "containerEnv": { "Q": "a \"quoted\" \\ value\n" } }"#);
    let doc: toml_edit::DocumentMut = c.toml.parse().unwrap();
    assert_eq!(doc["env"]["Q"].as_str(), Some("a \"quoted\" \\ value\n"));
}
