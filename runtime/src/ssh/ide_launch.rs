//! `berth open`: how each IDE opens a folder of an environment over berth's SSH endpoint
//! (the `Host berth-NAME` entries of `berth ssh-config --install`): the command line of its
//! launcher, with the URI it takes.

use std::path::{Path, PathBuf};

use super::client_config::host_alias;

/// The IDEs `berth open --ide` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ide {
    Code,
    Cursor,
    Zed,
    JetBrains,
}

impl Ide {
    pub const NAMES: &'static [&'static str] = &["code", "cursor", "zed", "jetbrains"];

    pub fn from_name(name: &str) -> Option<Ide> {
        Some(match name {
            "code" | "vscode" => Ide::Code,
            "cursor" => Ide::Cursor,
            "zed" => Ide::Zed,
            "jetbrains" | "gateway" => Ide::JetBrains,
            _ => return None,
        })
    }

    /// The launcher looked up on PATH.
    pub fn launcher(self) -> &'static str {
        match self {
            Ide::Code => "code",
            Ide::Cursor => "cursor",
            Ide::Zed => "zed",
            // JetBrains Gateway's launcher script (Toolbox installs it under this name).
            Ide::JetBrains => "gateway",
        }
    }
}

/// `s` with every byte outside URI-safe characters (`/` kept) percent-encoded.
fn encode_path(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The URI that opens `workdir` of environment `env_name` as `user` in `ide`.
pub fn open_uri(ide: Ide, env_name: &str, user: Option<&str>, workdir: &str) -> String {
    let host = host_alias(env_name);
    let path = encode_path(workdir);
    match ide {
        Ide::Code | Ide::Cursor => format!("vscode-remote://ssh-remote+{host}{path}"),
        Ide::Zed => format!("ssh://{host}{path}"),
        Ide::JetBrains => {
            let mut uri =
                format!("jetbrains-gateway://connect#type=ssh&deploy=true&host={host}&port=22&projectPath={path}");
            if let Some(u) = user {
                uri.push_str(&format!("&user={}", encode_path(u)));
            }
            uri
        }
    }
}

/// The launcher's arguments for `uri`.
pub fn launcher_args(ide: Ide, uri: &str) -> Vec<String> {
    match ide {
        Ide::Code | Ide::Cursor => vec!["--folder-uri".into(), uri.into()],
        Ide::Zed | Ide::JetBrains => vec![uri.into()],
    }
}

/// `program` found in the folders of `path` (a `PATH` value), if executable there.
pub fn find_on_path(program: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .map(|d| d.join(program))
        .find(|p| {
            Path::new(p)
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_of_each_ide() {
        assert_eq!(
            open_uri(Ide::Code, "web", Some("dev"), "/work/my app"),
            "vscode-remote://ssh-remote+berth-web/work/my%20app"
        );
        assert_eq!(
            launcher_args(Ide::Cursor, "u"),
            ["--folder-uri".to_string(), "u".to_string()]
        );
        assert_eq!(open_uri(Ide::Zed, "web", None, "/w"), "ssh://berth-web/w");
        assert_eq!(
            open_uri(Ide::JetBrains, "web", Some("dev"), "/w"),
            "jetbrains-gateway://connect#type=ssh&deploy=true&host=berth-web&port=22&projectPath=/w&user=dev"
        );
        assert_eq!(Ide::from_name("vscode"), Some(Ide::Code));
        assert_eq!(Ide::from_name("emacs"), None);
    }
}
