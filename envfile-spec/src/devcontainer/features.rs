//! Dev Container Features (`features` of devcontainer.json) as build steps: each feature's
//! folder is a build input, and a `setup` step runs its `install.sh` as root with its options as
//! upper-cased variables (defaults from its `devcontainer-feature.json`) and the
//! `_REMOTE_USER`/`_CONTAINER_USER` variables of the spec, in `installsAfter` order (or
//! `overrideFeatureInstallOrder`). Setup steps are cached layers, so is each feature.

use serde_json::{Map, Value};

use crate::draft::{shell_quote, Draft, Sources};

/// What the features need to know of the users.
pub struct Users<'a> {
    pub remote: &'a str,
    pub container: &'a str,
}

/// One feature, fetched and read.
struct Feature {
    /// As written in devcontainer.json.
    id: String,
    folder: String,
    env: Vec<(String, String)>,
    installs_after: Vec<String>,
    meta: Map<String, Value>,
}

/// The id without its tag or digest (`ghcr.io/x/node:1` → `ghcr.io/x/node`), as
/// `installsAfter` names features.
fn unversioned(id: &str) -> &str {
    let id = id.split('@').next().unwrap_or(id);
    match id.rfind(':') {
        Some(i) if !id[i..].contains('/') => &id[..i],
        _ => id,
    }
}

/// An option name as the variable `install.sh` reads (the spec's rule: non-word characters
/// become `_`, leading digits and underscores one `_`, upper case).
pub fn option_variable(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let trimmed = s.trim_start_matches(|c: char| c.is_ascii_digit() || c == '_');
    let s = if trimmed.len() != s.len() {
        format!("_{trimmed}")
    } else {
        s
    };
    s.to_ascii_uppercase()
}

fn home(user: &str) -> String {
    if user == "root" {
        "/root".into()
    } else {
        format!("/home/{user}")
    }
}

/// Adds the features of `obj` to the draft; what does not map goes to `skip`.
pub fn apply(
    obj: &Map<String, Value>,
    sources: &dyn Sources,
    users: &Users<'_>,
    draft: &mut Draft,
    skip: &mut dyn FnMut(String, String),
) {
    let Some(features) = obj.get("features") else {
        return;
    };
    let Some(features) = features.as_object() else {
        skip("features".into(), "not an object".into());
        return;
    };
    let mut list = Vec::new();
    for (id, given) in features {
        let key = format!("features.{id}");
        let options = match given {
            Value::Object(o) => o.clone(),
            Value::String(v) => Map::from_iter([("version".to_string(), Value::String(v.clone()))]),
            Value::Bool(true) => Map::new(),
            Value::Bool(false) => continue,
            _ => {
                skip(
                    key,
                    "its options are neither an object nor a version string".into(),
                );
                continue;
            }
        };
        let files = match sources.feature(id) {
            Ok(f) => f,
            Err(why) => {
                skip(key, format!("not converted: {why}; install its tools with [image].packages or [image].setup"));
                continue;
            }
        };
        let meta = match jsonc_parser::parse_to_serde_value(&files.metadata, &Default::default()) {
            Ok(Some(Value::Object(m))) => m,
            Ok(_) => {
                skip(key, "its devcontainer-feature.json is not an object".into());
                continue;
            }
            Err(e) => {
                skip(
                    key,
                    format!("its devcontainer-feature.json is not valid JSON: {e}"),
                );
                continue;
            }
        };
        let mut env = Vec::new();
        let declared = meta.get("options").and_then(Value::as_object);
        for (name, def) in declared.into_iter().flatten() {
            let value = options.get(name).or_else(|| def.get("default"));
            if let Some(v) = value.and_then(text) {
                env.push((option_variable(name), v));
            }
        }
        for name in options.keys() {
            if !declared.is_some_and(|d| d.contains_key(name)) {
                skip(
                    format!("{key}.{name}"),
                    "the feature declares no such option".into(),
                );
            }
        }
        let installs_after = meta
            .get("installsAfter")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(|s| unversioned(s).to_string())
                    .collect()
            })
            .unwrap_or_default();
        list.push(Feature {
            id: id.clone(),
            folder: files.folder,
            env,
            installs_after,
            meta,
        });
    }
    let order: Vec<String> = obj
        .get("overrideFeatureInstallOrder")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|s| unversioned(s).to_string())
                .collect()
        })
        .unwrap_or_default();
    for f in install_order(list, &order) {
        add(f, users, draft, skip);
    }
}

/// The features in the order they install: `overrideFeatureInstallOrder` first, then each
/// feature after those of its `installsAfter` that are present (file order otherwise).
fn install_order(mut pending: Vec<Feature>, first: &[String]) -> Vec<Feature> {
    pending.sort_by_key(|f| {
        first
            .iter()
            .position(|o| o == unversioned(&f.id))
            .unwrap_or(usize::MAX)
    });
    let mut done: Vec<Feature> = Vec::new();
    while !pending.is_empty() {
        let present: Vec<String> = pending
            .iter()
            .map(|f| unversioned(&f.id).to_string())
            .collect();
        let ready = pending
            .iter()
            .position(|f| {
                !f.installs_after
                    .iter()
                    .any(|a| present.contains(a) && a != unversioned(&f.id))
            })
            // A circle of soft dependencies: install in file order, as the spec allows.
            .unwrap_or(0);
        done.push(pending.remove(ready));
    }
    done
}

fn add(f: Feature, users: &Users<'_>, draft: &mut Draft, skip: &mut dyn FnMut(String, String)) {
    let key = format!("features.{}", f.id);
    let mut vars = f.env.clone();
    for (k, v) in [
        ("_REMOTE_USER", users.remote.to_string()),
        ("_REMOTE_USER_HOME", home(users.remote)),
        ("_CONTAINER_USER", users.container.to_string()),
        ("_CONTAINER_USER_HOME", home(users.container)),
    ] {
        vars.push((k.to_string(), v));
    }
    let assignments: Vec<String> = vars
        .iter()
        .map(|(k, v)| format!("{k}={}", shell_quote(v)))
        .collect();
    draft.image.inputs.push(f.folder.clone());
    draft.image.setup.push(format!(
        "cd {} && chmod +x ./install.sh && env {} ./install.sh",
        shell_quote(&f.folder),
        assignments.join(" ")
    ));
    for (k, v) in f.meta.iter() {
        match k.as_str() {
            "containerEnv" => {
                for (name, value) in v.as_object().into_iter().flatten() {
                    match value.as_str() {
                        Some(s) if !s.contains("${") && crate::checker::is_env_name(name) => draft.set_env(name, s.to_string()),
                        _ => skip(format!("{key}.containerEnv.{name}"), format!("{value} refers to the image's own variables (`${{…}}`), which berth.toml cannot; set the full value in [env]")),
                    }
                }
            }
            "onCreateCommand" | "updateContentCommand" | "postCreateCommand" | "postStartCommand" => {
                match super::command_line(v) {
                    Some(c) if k == "postStartCommand" => draft.on_up.push(c),
                    Some(c) => draft.on_create.push(c),
                    None => skip(format!("{key}.{k}"), "not a string or an array of strings".into()),
                }
            }
            "id" | "version" | "name" | "description" | "documentationURL" | "licenseURL" | "options" | "installsAfter" | "keywords" | "legacyIds" | "deprecated" | "customizations" => {}
            "dependsOn" => {
                for dep in v.as_object().into_iter().flatten().map(|(d, _)| d) {
                    skip(format!("{key}.dependsOn"), format!("needs feature {dep}: add it to features if it is not there"));
                }
            }
            "privileged" | "capAdd" | "securityOpt" | "init" => skip(format!("{key}.{k}"), "container security options are not set by berth.toml (`berth up --privileged` is the opt-in)".into()),
            other => skip(format!("{key}.{other}"), "no berth equivalent".into()),
        }
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::draft::{FeatureFiles, MemorySources};

    fn source(features: &[(&str, &str, &str)]) -> MemorySources {
        MemorySources {
            features: features
                .iter()
                .map(|(id, folder, meta)| {
                    (
                        id.to_string(),
                        FeatureFiles {
                            folder: folder.to_string(),
                            metadata: meta.to_string(),
                        },
                    )
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn features_become_ordered_setup_steps_with_their_options() {
        let s = source(&[
            (
                "ghcr.io/devcontainers/features/node:1",
                ".devcontainer/berth-features/node",
                r#"{"id": "node", "options": {"version": {"type": "string", "default": "lts"}, "nodeGypDependencies": {"type": "boolean", "default": true}}, "installsAfter": ["ghcr.io/devcontainers/features/common-utils"], "containerEnv": {"NVM_DIR": "/usr/local/share/nvm", "PATH": "/usr/local/share/nvm/current/bin:${PATH}"}}"#,
            ),
            (
                "ghcr.io/devcontainers/features/common-utils:2",
                ".devcontainer/berth-features/common-utils",
                r#"{"id": "common-utils", "options": {"username": {"type": "string", "default": "automatic"}}, "privileged": false}"#,
            ),
            (
                "./local",
                ".devcontainer/local",
                r#"{"id": "local", "postCreateCommand": "local-setup"}"#,
            ),
        ]);
        let obj: Map<String, Value> = serde_json::from_str(
            r#"{"features": {
            "ghcr.io/devcontainers/features/node:1": {"version": "20", "bogus": 1},
            "ghcr.io/devcontainers/features/common-utils:2": {},
            "./local": true,
            "ghcr.io/devcontainers/features/missing:1": "latest"
        }}"#,
        )
        .unwrap();
        let mut d = Draft::default();
        let mut skipped = Vec::new();
        apply(
            &obj,
            &s,
            &Users {
                remote: "node",
                container: "root",
            },
            &mut d,
            &mut |k, r| skipped.push((k, r)),
        );
        // serde_json objects iterate in key order; installsAfter puts common-utils before node.
        assert_eq!(
            d.image.inputs,
            [
                ".devcontainer/local",
                ".devcontainer/berth-features/common-utils",
                ".devcontainer/berth-features/node"
            ]
        );
        assert!(d.image.setup[1].starts_with("cd .devcontainer/berth-features/common-utils && chmod +x ./install.sh && env USERNAME=automatic _REMOTE_USER=node _REMOTE_USER_HOME=/home/node _CONTAINER_USER=root _CONTAINER_USER_HOME=/root ./install.sh"), "{:?}", d.image.setup);
        assert!(
            d.image.setup[2].contains("env NODEGYPDEPENDENCIES=true VERSION=20 _REMOTE_USER=node"),
            "{:?}",
            d.image.setup
        );
        assert_eq!(
            d.env,
            [("NVM_DIR".to_string(), "/usr/local/share/nvm".to_string())]
        );
        assert_eq!(d.on_create, ["local-setup"]);
        let keys: Vec<&str> = skipped.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "features.ghcr.io/devcontainers/features/missing:1",
                "features.ghcr.io/devcontainers/features/node:1.bogus",
                "features.ghcr.io/devcontainers/features/common-utils:2.privileged",
                "features.ghcr.io/devcontainers/features/node:1.containerEnv.PATH",
            ]
        );
    }

    #[test]
    fn override_order_and_option_names() {
        assert_eq!(option_variable("version"), "VERSION");
        assert_eq!(option_variable("install-tools"), "INSTALL_TOOLS");
        assert_eq!(option_variable("9lives"), "_LIVES");
        assert_eq!(unversioned("ghcr.io/a/b:1.2"), "ghcr.io/a/b");
        assert_eq!(unversioned("localhost:5000/a/b"), "localhost:5000/a/b");
        assert_eq!(unversioned("ghcr.io/a/b@sha256:00"), "ghcr.io/a/b");
        let s = source(&[
            ("a:1", "fa", r#"{"installsAfter": ["b"]}"#),
            ("b:1", "fb", r#"{}"#),
            ("c:1", "fc", r#"{}"#),
        ]);
        let obj: Map<String, Value> = serde_json::from_str(r#"{"features": {"a:1": {}, "b:1": {}, "c:1": {}}, "overrideFeatureInstallOrder": ["c"]}"#).unwrap();
        let mut d = Draft::default();
        apply(
            &obj,
            &s,
            &Users {
                remote: "root",
                container: "root",
            },
            &mut d,
            &mut |_, _| {},
        );
        assert_eq!(d.image.inputs, ["fc", "fb", "fa"]);
    }
}
