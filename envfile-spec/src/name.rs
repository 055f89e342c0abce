//! Environment names: `[a-z0-9-]`, 1 to 63 characters, starting and ending with a letter or
//! digit (a DNS label, so it can be a hostname). The default is derived from the folder.

/// Longest allowed name.
pub const MAX_NAME_LEN: usize = 63;

/// Name used when the folder's name has no usable character at all.
pub const FALLBACK_NAME: &str = "berth";

/// The default environment name for a project folder: the folder's name lower-cased, every
/// character outside `[a-z0-9]` turned into `-` (runs collapsed), `-` trimmed from both ends,
/// cut to 63 characters.
pub fn derive_name(folder_name: &str) -> String {
    let mut out = String::new();
    for c in folder_name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let mut name: String = out.trim_matches('-').chars().take(MAX_NAME_LEN).collect();
    while name.ends_with('-') {
        name.pop();
    }
    if name.is_empty() {
        FALLBACK_NAME.to_string()
    } else {
        name
    }
}

/// Checks an explicit name; the error says what is wrong with it.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(format!(
            "the name is {} characters long; at most {MAX_NAME_LEN} are allowed",
            name.chars().count()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
    {
        return Err(format!(
            "the name contains {c:?}; only lowercase letters, digits and `-` are allowed"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("the name must start and end with a letter or digit".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivation() {
        assert_eq!(derive_name("My Project"), "my-project");
        assert_eq!(derive_name("web_app.v2"), "web-app-v2");
        assert_eq!(derive_name("--x--"), "x");
        assert_eq!(derive_name("Café"), "caf");
        assert_eq!(derive_name("___"), FALLBACK_NAME);
        assert_eq!(derive_name(""), FALLBACK_NAME);
        let long = "a".repeat(62) + "-bbbb";
        assert_eq!(derive_name(&long), "a".repeat(62));
        assert_eq!(derive_name(&"x".repeat(100)).len(), 63);
        for n in ["My Project", "a.b", "ÄÖÜ-1"] {
            assert_eq!(check_name(&derive_name(n)), Ok(()), "{n}");
        }
    }

    #[test]
    fn checks() {
        assert!(check_name("web").is_ok());
        assert!(check_name("web-2").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("Web").is_err());
        assert!(check_name("a_b").is_err());
        assert!(check_name("-a").is_err());
        assert!(check_name(&"a".repeat(64)).is_err());
        assert!(check_name(&"a".repeat(63)).is_ok());
    }
}
