//! `devices`: host device patterns an environment may use. A pattern is an absolute path under
//! `/dev` whose components may hold the wildcards `*` (any run of characters) and `?` (one
//! character), each matching within one component, as in a shell: `/dev/dri/*` is every node
//! directly in `/dev/dri`. Pure: the host's `/dev` is listed by the runtime.

/// Why a `devices` entry is refused (for the validator's message).
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    let Some(rest) = pattern.strip_prefix("/dev/") else {
        return Err(format!(
            "{pattern:?} is not under /dev: only device nodes of the host's /dev can be given"
        ));
    };
    if rest.is_empty() {
        return Err("\"/dev/\" names no device".into());
    }
    for comp in rest.split('/') {
        match comp {
            "" => {
                return Err(format!(
                    "{pattern:?} has an empty path component (`//` or a trailing `/`)"
                ))
            }
            "." | ".." => return Err(format!("{pattern:?} contains `{comp}`")),
            _ => {}
        }
        if comp.contains("**") {
            return Err(format!(
                "{pattern:?} uses `**`: `*` already matches any run of characters, and only within one path component"
            ));
        }
        if let Some(c) = comp.chars().find(|c| {
            matches!(c, '[' | ']' | '{' | '}' | '\\') || c.is_whitespace() || c.is_control()
        }) {
            return Err(format!(
                "{pattern:?} contains {c:?}: the only wildcards are `*` and `?`"
            ));
        }
    }
    Ok(())
}

/// Whether `path` (absolute, e.g. `/dev/dri/card0`) matches `pattern` (checked with
/// [`check_pattern`]): component by component, with `*` and `?` inside a component.
pub fn matches(pattern: &str, path: &str) -> bool {
    let p: Vec<&str> = pattern.split('/').collect();
    let q: Vec<&str> = path.split('/').collect();
    p.len() == q.len()
        && p.iter()
            .zip(&q)
            .all(|(a, b)| component_matches(a.as_bytes(), b.as_bytes()))
}

/// Whether the pattern has a wildcard (it may then match no node, or many).
pub fn is_pattern(pattern: &str) -> bool {
    pattern.contains(['*', '?'])
}

fn component_matches(p: &[u8], s: &[u8]) -> bool {
    // Iterative wildcard match with backtracking to the last `*`.
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_and_refused_patterns() {
        for ok in [
            "/dev/kvm",
            "/dev/fuse",
            "/dev/dri/*",
            "/dev/ttyUSB?",
            "/dev/nvidia*",
        ] {
            assert_eq!(check_pattern(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("/tmp/evil", "not under /dev"),
            ("dev/kvm", "not under /dev"),
            ("/dev", "not under /dev"),
            ("/dev/", "names no device"),
            ("/dev/../etc/shadow", "`..`"),
            ("/dev/./kvm", "`.`"),
            ("/dev//kvm", "empty path component"),
            ("/dev/dri/", "empty path component"),
            ("/dev/dri/[card", "'['"),
            ("/dev/{a,b}", "'{'"),
            ("/dev/**", "`**`"),
            ("/dev/a b", "' '"),
        ] {
            let e = check_pattern(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn wildcards_match_within_one_component() {
        assert!(matches("/dev/kvm", "/dev/kvm"));
        assert!(!matches("/dev/kvm", "/dev/kvm2"));
        assert!(matches("/dev/dri/*", "/dev/dri/card0"));
        assert!(matches("/dev/dri/*", "/dev/dri/renderD128"));
        assert!(!matches("/dev/dri/*", "/dev/dri/by-path/x"));
        assert!(!matches("/dev/*", "/dev/dri/card0"));
        assert!(matches("/dev/ttyUSB?", "/dev/ttyUSB0"));
        assert!(!matches("/dev/ttyUSB?", "/dev/ttyUSB10"));
        assert!(matches("/dev/nvidia*", "/dev/nvidia"));
        assert!(matches("/dev/nv*a*", "/dev/nvidia-uvm"));
        assert!(!matches("/dev/nv*x", "/dev/nvidia"));
        assert!(is_pattern("/dev/dri/*") && !is_pattern("/dev/kvm"));
    }
}
