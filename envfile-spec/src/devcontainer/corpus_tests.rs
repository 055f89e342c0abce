//! Real-shaped dev containers (`tests/devcontainer-corpus/`, modelled on devcontainers/templates
//! and devcontainers/images: node+postgres with compose, python with a Dockerfile, go with
//! features, rust with a template option) converted from a copy of their folder: every output
//! validates with the checker (the `[image] dockerfile` keys included), and every value of the
//! source either shows in the output or is listed as not converted.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::*;
use crate::folder_sources::FolderSources;

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/devcontainer-corpus");

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

struct Converted {
    _dir: tempfile::TempDir,
    project: PathBuf,
    source: Value,
    conversion: Conversion,
}

/// Converts one corpus case in a copy of its folder. Features in a registry are "fetched"
/// only when the case holds them already (this test has no registry; the e2e test has one).
fn convert_case(case: &str) -> Converted {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join(case);
    copy_dir(&Path::new(CORPUS).join(case), &project);
    let json_path = ".devcontainer/devcontainer.json";
    let text = std::fs::read_to_string(project.join(json_path)).unwrap();
    let fetch = |id: &str, dest: &Path| -> Result<(), String> {
        if dest.join("install.sh").exists() {
            Ok(())
        } else {
            Err(format!("cannot fetch {id}: no registry in this test"))
        }
    };
    let sources = FolderSources::new(&project, ".devcontainer", Some(&fetch));
    let ctx = Context {
        project_dir: &project,
        json_path,
        host_uid: Some(1000),
    };
    let conversion = convert(&text, &ctx, &sources).unwrap();
    let source = jsonc_parser::parse_to_serde_value(&text, &Default::default())
        .unwrap()
        .unwrap();
    Converted {
        _dir: dir,
        project,
        source,
        conversion,
    }
}

/// Validates the output; returns its diagnostics but a bind mount of a `~/` file this
/// machine's home lacks.
fn unexpected_diagnostics(c: &Converted) -> Vec<String> {
    let file = c.project.join("berth.toml");
    std::fs::write(&file, &c.conversion.toml).unwrap();
    let Err(report) = crate::load(&file) else {
        return Vec::new();
    };
    report
        .diagnostics
        .iter()
        .filter(|d| !(d.kind.code() == "path-not-found" && d.message.contains("~/")))
        .map(|d| format!("{}: {}", d.kind.code(), d.message))
        .collect()
}

/// Keys whose values name where things are rather than being copied (paths resolved against
/// the devcontainer.json's folder, the compose service): checked by the tests of each case.
const STRUCTURAL: &[&str] = &[
    "dockerComposeFile",
    "service",
    "build.dockerfile",
    "build.context",
    "workspaceFolder",
    "name",
    "$schema",
    "customizations",
    "updateRemoteUserUID",
];

/// Every leaf value of the devcontainer.json with its key path.
fn leaves(v: &Value, path: String, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                leaves(v, p, out);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                leaves(v, format!("{path}[{i}]"), out);
            }
        }
        Value::String(s) => out.push((path, s.clone())),
        other => out.push((path, other.to_string())),
    }
}

fn assert_nothing_silently_dropped(c: &Converted) {
    let body: String = c
        .conversion
        .toml
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !body.contains("${"),
        "a variable is left in the output:\n{}",
        c.conversion.toml
    );
    // Listed: under its key (or a parent key), or by its value (runArgs list an option and its
    // value under the option's index).
    let listed = |path: &str, value: &str| {
        c.conversion.skipped.iter().any(|s| {
            path == s.key
                || path.starts_with(&format!("{}.", s.key))
                || path.starts_with(&format!("{}[", s.key))
                || s.reason.contains(value)
        })
    };
    let mut all = Vec::new();
    leaves(&c.source, String::new(), &mut all);
    for (path, value) in all {
        if STRUCTURAL
            .iter()
            .any(|s| path == *s || path.starts_with(&format!("{s}.")))
            || listed(&path, &value)
            || value.contains("${")
        {
            continue;
        }
        // An array command is written word by word, a mount string key by key.
        let parts: Vec<&str> = if path.starts_with("mounts[") || path.starts_with("runArgs") {
            value.split([',', '=']).collect()
        } else if path.starts_with("forwardPorts") || path.starts_with("appPort") {
            value.split(':').collect()
        } else {
            vec![value.as_str()]
        };
        for part in parts {
            let shown = part.trim_start_matches("./").trim_start_matches("--");
            assert!(
                body.contains(shown) || body.contains(&crate::draft::shell_quote(shown)),
                "{path} = {value:?} is neither in the output nor listed as not converted:\n{}",
                c.conversion.toml
            );
        }
    }
}

fn doc(c: &Converted) -> toml_edit::DocumentMut {
    c.conversion.toml.parse().unwrap()
}

#[test]
fn node_postgres_compose_template() {
    let c = convert_case("node-postgres");
    assert_eq!(
        unexpected_diagnostics(&c),
        Vec::<String>::new(),
        "{}",
        c.conversion.toml
    );
    assert_nothing_silently_dropped(&c);
    let d = doc(&c);
    assert_eq!(
        d["image"]["dockerfile"].as_str(),
        Some(".devcontainer/Dockerfile")
    );
    assert_eq!(d["image"]["context"].as_str(), Some(".devcontainer"));
    let db = &d["services"]["db"];
    assert_eq!(db["env"]["POSTGRES_PASSWORD"].as_str(), Some("postgres"));
    assert_eq!(
        db["ready"]["command"].as_str(),
        Some("pg_isready -U postgres")
    );
    assert_eq!(db["restart"].as_str(), Some("always"));
    let m = d["mounts"].as_array_of_tables().unwrap().get(0).unwrap();
    assert_eq!(m["target"].as_str(), Some("/workspaces/node-postgres"));
    assert_eq!(d["shell"]["user"].as_str(), Some("node"));
    assert_eq!(d["on_create"][0].as_str(), Some("yarn install"));
}

#[test]
fn python_dockerfile_image() {
    let c = convert_case("python-dockerfile");
    assert_eq!(
        unexpected_diagnostics(&c),
        Vec::<String>::new(),
        "{}",
        c.conversion.toml
    );
    assert_nothing_silently_dropped(&c);
    let d = doc(&c);
    assert_eq!(
        d["image"]["dockerfile"].as_str(),
        Some(".devcontainer/Dockerfile")
    );
    assert_eq!(d["image"]["context"].as_str(), Some("."));
    assert_eq!(
        d["image"]["args"]["VARIANT"].as_str(),
        Some("3.12-bookworm")
    );
    assert_eq!(d["resources"]["memory"].as_str(), Some("2g"));
    let keys: Vec<&str> = c
        .conversion
        .skipped
        .iter()
        .map(|s| s.key.as_str())
        .collect();
    for k in [
        "remoteEnv.PATH",
        "runArgs[0]",
        "runArgs[1]",
        "portsAttributes",
        "postAttachCommand",
    ] {
        assert!(keys.contains(&k), "{k} not in {keys:?}");
    }
}

#[test]
fn go_image_with_features() {
    let c = convert_case("go-features");
    assert_eq!(
        unexpected_diagnostics(&c),
        Vec::<String>::new(),
        "{}",
        c.conversion.toml
    );
    assert_nothing_silently_dropped(&c);
    let d = doc(&c);
    let inputs: Vec<&str> = d["image"]["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        inputs,
        [
            ".devcontainer/berth-features/node",
            ".devcontainer/local-tools"
        ],
        "installsAfter: local-tools after node"
    );
    let setup: Vec<&str> = d["image"]["setup"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        setup[0].contains("VERSION=lts")
            && setup[0].contains("NODEGYPDEPENDENCIES=false")
            && setup[0].contains("NVMINSTALLPATH=/usr/local/share/nvm"),
        "{setup:?}"
    );
    assert!(
        setup[1].contains("GREETING='hello from a local feature'"),
        "{setup:?}"
    );
    assert!(setup[2].starts_with("id -u vscode"), "{setup:?}");
    assert_eq!(d["env"]["NVM_DIR"].as_str(), Some("/usr/local/share/nvm"));
    assert_eq!(
        d["on_create"][0].as_str(),
        Some("cat /etc/greeting"),
        "feature hooks run before the file's own"
    );
    let m = d["mounts"].as_array_of_tables().unwrap();
    assert!(
        m.iter()
            .any(|m| m["source"].as_str() == Some("go-mod-cache-go-features")),
        "{}",
        c.conversion.toml
    );
}

#[test]
fn rust_template_with_a_template_option() {
    let c = convert_case("rust-template");
    assert_eq!(
        unexpected_diagnostics(&c),
        Vec::<String>::new(),
        "{}",
        c.conversion.toml
    );
    assert_nothing_silently_dropped(&c);
    let d = doc(&c);
    assert_eq!(
        d["image"]["from"].as_str(),
        Some("mcr.microsoft.com/devcontainers/rust:1-1-bookworm")
    );
    assert_eq!(
        d["env"]["CARGO_TARGET_DIR"].as_str(),
        Some("/workspaces/rust-template/target-dev")
    );
    // The registry feature could not be fetched here: listed, with why.
    let f = c
        .conversion
        .skipped
        .iter()
        .find(|s| s.key == "features.ghcr.io/devcontainers/features/rust:1")
        .unwrap();
    assert!(f.reason.contains("no registry in this test"), "{f:?}");
}
