//! The starter files `berth init` writes, embedded from `templates/` at the workspace root.

/// One starter berth.toml.
#[derive(Debug, Clone, Copy)]
pub struct Template {
    pub name: &'static str,
    /// The file's text.
    pub text: &'static str,
}

impl Template {
    /// The first comment line, without `# `: what the template is for.
    pub fn description(&self) -> &'static str {
        self.text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix('#'))
            .map_or("", str::trim)
    }

    /// The text with `name = "…"` set as the first key (after the leading comments).
    pub fn text_with_name(&self, name: Option<&str>) -> String {
        let Some(name) = name else {
            return self.text.to_string();
        };
        let line = format!("name = {}\n", toml_edit::Value::from(name));
        let mut out = String::new();
        let mut inserted = false;
        for l in self.text.split_inclusive('\n') {
            if !(inserted || l.starts_with('#') || l.trim().is_empty()) {
                out.push_str(&line);
                out.push('\n');
                inserted = true;
            }
            out.push_str(l);
        }
        if !inserted {
            out.push_str(&line);
        }
        out
    }
}

/// Used when `berth init` is given no `--template`.
pub const DEFAULT_TEMPLATE: &str = "debian";

const TEMPLATES: &[Template] = &[
    Template {
        name: "debian",
        text: include_str!("../../templates/debian.toml"),
    },
    Template {
        name: "alpine",
        text: include_str!("../../templates/alpine.toml"),
    },
    Template {
        name: "busybox",
        text: include_str!("../../templates/busybox.toml"),
    },
    Template {
        name: "go",
        text: include_str!("../../templates/go.toml"),
    },
    Template {
        name: "go-docker",
        text: include_str!("../../templates/go-docker.toml"),
    },
    Template {
        name: "node",
        text: include_str!("../../templates/node.toml"),
    },
    Template {
        name: "node-docker",
        text: include_str!("../../templates/node-docker.toml"),
    },
    Template {
        name: "python",
        text: include_str!("../../templates/python.toml"),
    },
    Template {
        name: "python-docker",
        text: include_str!("../../templates/python-docker.toml"),
    },
    Template {
        name: "rust",
        text: include_str!("../../templates/rust.toml"),
    },
    Template {
        name: "rust-docker",
        text: include_str!("../../templates/rust-docker.toml"),
    },
];

/// Every template, the default first.
pub fn list() -> &'static [Template] {
    TEMPLATES
}

/// The template called `name`.
pub fn get(name: &str) -> Option<&'static Template> {
    TEMPLATES.iter().find(|t| t.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_descriptions() {
        for required in [
            "debian",
            "alpine",
            "rust",
            "python",
            "node",
            "go",
            "busybox",
            "rust-docker",
            "python-docker",
            "node-docker",
            "go-docker",
        ] {
            let t = get(required).unwrap_or_else(|| panic!("template {required} missing"));
            assert!(!t.description().is_empty(), "{required} has no description");
        }
        assert_eq!(list()[0].name, DEFAULT_TEMPLATE);
        assert!(get("nope").is_none());
        // The plain language names need only the Debian mirror (and the language's own
        // package registry once the project fetches dependencies).
        for plain in ["rust", "python", "node", "go"] {
            assert!(
                get(plain)
                    .unwrap()
                    .text
                    .contains("from = \"debootstrap:bookworm\""),
                "{plain}"
            );
        }
    }

    #[test]
    fn name_goes_before_the_first_table() {
        let t = get("busybox").unwrap().text_with_name(Some("demo"));
        let name_at = t.find("name = \"demo\"").unwrap();
        assert!(name_at < t.find("[image]").unwrap());
        assert!(t.starts_with('#'));
    }
}
