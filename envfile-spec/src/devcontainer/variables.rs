//! The `${…}` variables of devcontainer.json, resolved where berth can know them:
//! `${localWorkspaceFolder}`, `${localWorkspaceFolderBasename}`, `${containerWorkspaceFolder}`,
//! `${containerWorkspaceFolderBasename}`, `${localEnv:VAR[:default]}` (also `${env:…}`),
//! `${devcontainerId}` (the environment's name: stable and unique on the machine),
//! `${containerEnv:VAR}` when the file itself sets VAR, and `${templateOption:X}` from the
//! template's `devcontainer-template.json`.

use std::collections::BTreeMap;

use serde_json::Value;

/// Where a value ends up: on the host (a mount source: the project folder is `.`, the home
/// folder `~`) or inside the environment (the project folder's absolute path as text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    HostPath,
    Inside,
}

/// The values the variables resolve to.
pub struct Vars<'a> {
    pub project_dir: String,
    pub folder_name: String,
    pub workdir: Option<String>,
    pub local_env: &'a dyn Fn(&str) -> Option<String>,
    /// `containerEnv` of the file (for `${containerEnv:VAR}`).
    pub container_env: BTreeMap<String, String>,
}

/// Why a value could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved(pub String);

impl std::fmt::Display for Unresolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Variable names whose value berth does not copy into berth.toml: the file is committed.
fn looks_secret(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    [
        "TOKEN",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "KEY",
        "CREDENTIAL",
        "AUTH",
        "PAT",
    ]
    .iter()
    .any(|w| n.split('_').any(|part| part == *w) || n.ends_with(w))
}

impl Vars<'_> {
    /// `s` with every variable replaced, or why one could not be.
    pub fn resolve(&self, s: &str, place: Place) -> Result<String, Unresolved> {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            let Some(end) = after.find('}') else {
                return Err(Unresolved(format!("{s:?} has a `${{` without `}}`")));
            };
            out.push_str(&self.one(&after[..end], s, place, out.is_empty())?);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn one(
        &self,
        var: &str,
        whole: &str,
        place: Place,
        at_start: bool,
    ) -> Result<String, Unresolved> {
        let host = place == Place::HostPath && at_start;
        match var {
            "localWorkspaceFolder" if host => Ok(".".into()),
            "localWorkspaceFolder" => Ok(self.project_dir.clone()),
            "localWorkspaceFolderBasename" => Ok(self.folder_name.clone()),
            // Stable for the project on this machine: berth's environment name.
            "devcontainerId" => Ok(crate::name::derive_name(&self.folder_name)),
            "containerWorkspaceFolder" | "containerWorkspaceFolderBasename" => {
                let Some(w) = &self.workdir else {
                    return Err(Unresolved(format!(
                        "{whole:?}: ${{{var}}} is not known here"
                    )));
                };
                Ok(if var.ends_with("Basename") {
                    w.rsplit('/')
                        .find(|c| !c.is_empty())
                        .unwrap_or("")
                        .to_string()
                } else {
                    w.clone()
                })
            }
            _ => {
                let (kind, spec) = var.split_once(':').unwrap_or((var, ""));
                let (name, default) = match spec.split_once(':') {
                    Some((n, d)) => (n, Some(d)),
                    None => (spec, None),
                };
                match kind {
                    "localEnv" | "env" => {
                        if host && name == "HOME" {
                            return Ok("~".into());
                        }
                        if looks_secret(name) {
                            return Err(Unresolved(format!("{whole:?}: ${{{var}}} looks like a secret; berth does not copy it into berth.toml, which you commit")));
                        }
                        match (self.local_env)(name).or(default.map(str::to_string)) {
                            Some(v) => Ok(v),
                            None => Err(Unresolved(format!("{whole:?}: {name} is not set in the environment of `berth init` and has no default (`${{localEnv:{name}:DEFAULT}}`)"))),
                        }
                    }
                    "containerEnv" => match self.container_env.get(name) {
                        Some(v) => Ok(v.clone()),
                        None => Err(Unresolved(format!("{whole:?}: ${{containerEnv:{name}}} is the image's own value, which berth.toml cannot refer to; write the full value in [env]"))),
                    },
                    "templateOption" => Err(Unresolved(format!("{whole:?}: template option {name} has no default (no devcontainer-template.json beside the .devcontainer folder gives one)"))),
                    _ => Err(Unresolved(format!("{whole:?}: ${{{var}}} is not a variable berth knows"))),
                }
            }
        }
    }
}

/// Replaces `${templateOption:X}` in the raw text of a template file with the defaults of
/// `devcontainer-template.json` (`options.X.default`), escaped for a JSON string. Options
/// without a default are left for [`Vars`] to report.
pub fn apply_template_options(text: &str, template_json: &str) -> Result<String, String> {
    let value = jsonc_parser::parse_to_serde_value(template_json, &Default::default())
        .map_err(|e| format!("devcontainer-template.json: {e}"))?;
    let mut out = text.to_string();
    let options = value
        .as_ref()
        .and_then(|v| v.get("options"))
        .and_then(Value::as_object);
    for (name, def) in options.into_iter().flatten() {
        let default = match def.get("default") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Bool(b)) => b.to_string(),
            Some(Value::Number(n)) => n.to_string(),
            _ => continue,
        };
        let escaped = serde_json::to_string(&default).unwrap_or_default();
        let escaped = &escaped[1..escaped.len().saturating_sub(1).max(1)];
        out = out.replace(&format!("${{templateOption:{name}}}"), escaped);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(env: &'a dyn Fn(&str) -> Option<String>) -> Vars<'a> {
        Vars {
            project_dir: "/home/ann/proj".into(),
            folder_name: "proj".into(),
            workdir: Some("/workspaces/proj".into()),
            local_env: env,
            container_env: [("APP_HOME".to_string(), "/opt/app".to_string())].into(),
        }
    }

    #[test]
    fn every_variable_berth_can_know() {
        let env = |n: &str| (n == "USER").then(|| "ann".to_string());
        let v = vars(&env);
        let r = |s: &str, p| v.resolve(s, p);
        assert_eq!(
            r("${localWorkspaceFolder}/x", Place::HostPath).unwrap(),
            "./x"
        );
        assert_eq!(
            r("${localWorkspaceFolder}/x", Place::Inside).unwrap(),
            "/home/ann/proj/x"
        );
        assert_eq!(
            r("/w/${localWorkspaceFolderBasename}", Place::Inside).unwrap(),
            "/w/proj"
        );
        assert_eq!(
            r("${containerWorkspaceFolder}/a", Place::Inside).unwrap(),
            "/workspaces/proj/a"
        );
        assert_eq!(
            r("${containerWorkspaceFolderBasename}", Place::Inside).unwrap(),
            "proj"
        );
        assert_eq!(r("${localEnv:USER}", Place::Inside).unwrap(), "ann");
        assert_eq!(
            r("${localEnv:NOPE:fallback}", Place::Inside).unwrap(),
            "fallback"
        );
        assert_eq!(
            r("${localEnv:HOME}/.ssh", Place::HostPath).unwrap(),
            "~/.ssh"
        );
        assert_eq!(
            r("${containerEnv:APP_HOME}/bin", Place::Inside).unwrap(),
            "/opt/app/bin"
        );
        for bad in [
            "${localEnv:NOPE}",
            "${containerEnv:PATH}",
            "${templateOption:x}",
            "${foo}",
            "${localEnv:GITHUB_TOKEN}",
            "${x",
        ] {
            assert!(r(bad, Place::Inside).is_err(), "{bad}");
        }
        assert!(r("${localEnv:GITHUB_TOKEN}", Place::Inside)
            .unwrap_err()
            .0
            .contains("secret"));
    }

    #[test]
    fn template_options_take_their_defaults() {
        let t = r#"{ "id": "rust", "options": { "imageVariant": { "type": "string", "default": "bookworm" }, "q": { "default": "a\"b" }, "none": { "type": "string" } } }"#;
        let out = apply_template_options(r#"{"image": "rust:1-${templateOption:imageVariant}", "x": "${templateOption:q}", "y": "${templateOption:none}"}"#, t).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["image"], "rust:1-bookworm");
        assert_eq!(v["x"], "a\"b");
        assert_eq!(v["y"], "${templateOption:none}");
    }
}
