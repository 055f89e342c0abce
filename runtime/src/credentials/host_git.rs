//! The host's git, asked by berth on the user's behalf: the identity (`user.name`,
//! `user.email`) and credentials (`git credential fill`). Always run outside any
//! repository (working folder `/`, repository-selecting variables removed), so a project
//! folder an environment can write into (its `.git/config`) never configures what the
//! host runs; never allowed to prompt (no terminal prompt, no askpass program), so a
//! request from inside cannot put a password dialog in front of the user.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a credential lookup on the host may take (a helper asking a keyring).
const FILL_TIMEOUT: Duration = Duration::from_secs(60);

/// Attributes a request from inside may pass to the host's `git credential fill`.
const REQUEST_KEYS: &[&str] = &["protocol", "host", "path", "username", "url"];
/// Attributes of the host's answer passed back inside.
const ANSWER_KEYS: &[&str] = &[
    "username",
    "password",
    "password_expiry_utc",
    "oauth_refresh_token",
];

fn host_git(args: &[&str]) -> Command {
    let mut c = Command::new("git");
    c.arg("-c").arg("core.askPass=").args(args);
    c.current_dir("/");
    for v in [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_COMMON_DIR",
        "GIT_INDEX_FILE",
        "GIT_ASKPASS",
        "SSH_ASKPASS",
    ] {
        c.env_remove(v);
    }
    c.env("GIT_TERMINAL_PROMPT", "0");
    c.stdin(Stdio::null()).stderr(Stdio::null());
    c
}

/// What berth needs of the host user's git configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostGitConfig {
    pub name: Option<String>,
    pub email: Option<String>,
    /// Whether a credential helper is configured (without one, `credential fill` could
    /// only prompt, which berth never lets it do).
    pub has_helper: bool,
}

/// The host user's git configuration (empty when git is missing), read with one `git
/// config` outside any repository.
pub fn read_config() -> HostGitConfig {
    read_config_with_includes().0
}

/// [`read_config`], and whether the configuration has an `include` or `includeIf` (whose
/// files an answer then depends on too).
pub fn read_config_with_includes() -> (HostGitConfig, bool) {
    read_config_from(host_git(CONFIG_ARGS))
}

/// `git config` of what berth reads, includes named (see [`read_config_with_includes`]).
const CONFIG_ARGS: &[&str] = &[
    "config",
    "--null",
    "--get-regexp",
    r"^(user\.name|user\.email|credential\..*helper|include\..*|includeif\..*)$",
];

fn read_config_from(mut git: Command) -> (HostGitConfig, bool) {
    let out = git.stdout(Stdio::piped()).output();
    let Ok(out) = out else {
        return (HostGitConfig::default(), false);
    };
    (parse_config(&out.stdout), has_include(&out.stdout))
}

/// Whether `git config --null --get-regexp` output has an `include.*` or `includeif.*` key.
fn has_include(bytes: &[u8]) -> bool {
    bytes.split(|b| *b == 0).any(|entry| {
        let key = entry.split(|b| *b == b'\n').next().unwrap_or_default();
        let key = String::from_utf8_lossy(key).to_ascii_lowercase();
        key.starts_with("include.") || key.starts_with("includeif.")
    })
}

/// `git config --null --get-regexp` output (`key\nvalue\0` entries) as [`HostGitConfig`].
fn parse_config(bytes: &[u8]) -> HostGitConfig {
    let mut c = HostGitConfig::default();
    for entry in bytes.split(|b| *b == 0) {
        let Ok(entry) = std::str::from_utf8(entry) else {
            continue;
        };
        let Some((key, value)) = entry.split_once('\n') else {
            continue;
        };
        let usable = !value.is_empty() && !value.contains('\n');
        match key {
            "user.name" if usable => c.name = Some(value.to_string()),
            "user.email" if usable => c.email = Some(value.to_string()),
            k if k.starts_with("credential.") && k.ends_with(".helper")
                || k == "credential.helper" =>
            {
                // An empty value resets the list of helpers.
                c.has_helper = !value.is_empty();
            }
            _ => {}
        }
    }
    c
}

/// A value in a gitconfig file: quoted, with `\` and `"` escaped.
fn quoted(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A system gitconfig: `include` first (the image's `/etc/gitconfig`, or the environment's
/// gitconfig that includes it), then the host's identity and the credential helper's socket
/// (in a session's folder: its path or the placeholder the inside builtin replaces).
pub fn gitconfig_text(
    include: &str,
    name: Option<&str>,
    email: Option<&str>,
    helper_socket: Option<&str>,
) -> String {
    let mut t = format!("[include]\n\tpath = {}\n", quoted(include));
    if name.is_some() || email.is_some() {
        t.push_str("[user]\n");
        if let Some(n) = name {
            t.push_str(&format!("\tname = {}\n", quoted(n)));
        }
        if let Some(e) = email {
            t.push_str(&format!("\temail = {}\n", quoted(e)));
        }
    }
    if let Some(s) = helper_socket {
        t.push_str(&format!(
            "[credential]\n\thelper = {}\n",
            quoted(&format!("cache --socket {s}"))
        ));
    }
    t
}

/// The request of git's `credential-cache` client (`action=…`, `timeout=…`, then the
/// credential's attributes), as the action and the attributes berth passes on.
pub fn parse_request(text: &str) -> Option<(String, Vec<(String, String)>)> {
    let mut action = None;
    let mut attrs = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        let (k, v) = line.split_once('=')?;
        if v.contains('\0') {
            return None;
        }
        match k {
            "action" => action = Some(v.to_string()),
            k if REQUEST_KEYS.contains(&k) => attrs.push((k.to_string(), v.to_string())),
            _ => {}
        }
    }
    Some((action?, attrs))
}

/// Asks the host's `git credential fill` for `attrs`; the answer's lines to pass back
/// inside (empty when the host has no credential for them).
pub fn fill(attrs: &[(String, String)]) -> String {
    let mut input = String::new();
    for (k, v) in attrs {
        input.push_str(&format!("{k}={v}\n"));
    }
    input.push('\n');
    let mut c = host_git(&["credential", "fill"]);
    c.stdin(Stdio::piped()).stdout(Stdio::piped());
    let Ok(mut child) = c.spawn() else {
        return String::new();
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    let mut stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.take(64 * 1024).read_to_end(&mut out);
        }
        out
    });
    let deadline = Instant::now() + FILL_TIMEOUT;
    let ok = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status.success(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break false;
            }
        }
    };
    let out = reader.join().unwrap_or_default();
    if !ok {
        return String::new();
    }
    String::from_utf8_lossy(&out)
        .lines()
        .filter(|l| {
            l.split_once('=')
                .is_some_and(|(k, _)| ANSWER_KEYS.contains(&k))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitconfig_quotes_values_and_names_the_helper() {
        let t = gitconfig_text(
            "/etc/gitconfig",
            Some("Ann \"A\" \\ B"),
            Some("a@b"),
            Some("/tmp/x/g.sock"),
        );
        assert!(
            t.starts_with("[include]\n\tpath = \"/etc/gitconfig\"\n"),
            "{t}"
        );
        assert!(t.contains("\tname = \"Ann \\\"A\\\" \\\\ B\"\n"), "{t}");
        assert!(t.contains("\temail = \"a@b\"\n"), "{t}");
        assert!(
            t.contains("\thelper = \"cache --socket /tmp/x/g.sock\"\n"),
            "{t}"
        );
        assert!(!gitconfig_text("/etc/gitconfig", None, None, None).contains("[user]"));
    }

    #[test]
    fn an_identity_from_an_included_file_is_read_and_the_include_noticed() {
        if Command::new("git").arg("--version").output().is_err() {
            eprintln!("skipped: git is not installed");
            return;
        }
        let home = tempfile::tempdir().unwrap();
        let git = |gitconfig: &str| {
            std::fs::write(home.path().join(".gitconfig"), gitconfig).unwrap();
            let mut c = host_git(CONFIG_ARGS);
            c.env("HOME", home.path())
                .env_remove("XDG_CONFIG_HOME")
                .env_remove("GIT_CONFIG_GLOBAL")
                .env("GIT_CONFIG_NOSYSTEM", "1");
            read_config_from(c)
        };
        std::fs::write(home.path().join("more"), "[user]\n\tname = Inc\n").unwrap();
        let (c, included) = git("[include]\n\tpath = more\n[user]\n\temail = a@b\n");
        assert_eq!(c.name.as_deref(), Some("Inc"));
        assert_eq!(c.email.as_deref(), Some("a@b"));
        assert!(included, "include.path noticed");
        let (_, included) = git("[includeIf \"gitdir:/x/\"]\n\tpath = more\n");
        assert!(included, "includeIf noticed");
        let (c, included) = git("[user]\n\tname = Plain\n");
        assert_eq!(c.name.as_deref(), Some("Plain"));
        assert!(!included);
    }

    #[test]
    fn host_config_takes_the_last_value_and_notices_helpers() {
        let c = parse_config(
            b"user.name\nA\0user.name\nB\0user.email\nb@c\0credential.https://x.helper\nstore\0",
        );
        assert_eq!(c.name.as_deref(), Some("B"));
        assert_eq!(c.email.as_deref(), Some("b@c"));
        assert!(c.has_helper);
        let c = parse_config(b"credential.helper\nstore\0credential.helper\n\0");
        assert!(!c.has_helper && c.name.is_none());
    }

    #[test]
    fn request_keeps_only_credential_attributes() {
        let (a, attrs) = parse_request(
            "action=get\ntimeout=900\nprotocol=https\nhost=example.com\nhelper=!evil\nusername=u\n",
        )
        .unwrap();
        assert_eq!(a, "get");
        let keys: Vec<&str> = attrs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["protocol", "host", "username"]);
        assert!(parse_request("protocol=https\n").is_none(), "no action");
        assert!(parse_request("action=get\nnot a pair\n").is_none());
        assert!(parse_request("action=get\nhost=a\0b\n").is_none());
    }
}
