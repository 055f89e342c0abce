//! `[secrets]`: named secrets read on the host at `up` (`env`, `file`, `command`; the first
//! spelling `from_env`, `from_file`, `from_command` is the same key), exactly one source
//! each, optionally also a variable (`as_env`).

use std::collections::BTreeMap;

use super::toml_readers::show_key;
use super::toml_readers::Tbl;
use super::Checker;
use crate::diagnostic::ErrorKind;
use crate::plan::{SecretPlan, SecretSource};

/// A secret's name: a file name under /run/secrets and a variable name.
pub fn is_secret_name(name: &str) -> bool {
    let mut b = name.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
        && name.len() <= 64
}

/// The sources of a secret, each with its first spelling (still read, as the same key).
const SOURCE_KEYS: [(&str, &str); 3] = [
    ("env", "from_env"),
    ("file", "from_file"),
    ("command", "from_command"),
];

impl Checker<'_> {
    pub(super) fn secrets(&mut self, root: &Tbl<'_>) -> BTreeMap<String, SecretPlan> {
        let mut out = BTreeMap::new();
        let Some((item, _)) = root.get("secrets") else {
            return out;
        };
        let span = self.item_head(item, root.key_span("secrets"));
        let Some(t) = self.table(
            item,
            span.clone(),
            "secrets",
            "write each secret as NAME = { env = \"HOST_VAR\" } (or file / command)",
        ) else {
            return out;
        };
        for (name, sitem) in t.iter() {
            let kspan = t
                .get_key_value(name)
                .and_then(|(k, _)| k.span())
                .unwrap_or(0..0);
            if !is_secret_name(name) {
                self.error(
                    ErrorKind::BadName,
                    kspan.clone(),
                    format!("`{}` is not a valid secret name", show_key(name)),
                    Some("use letters, digits and `_` (at most 64), not starting with a digit: it names a file in /run/secrets and a variable".into()),
                );
                continue;
            }
            let display = format!("secrets.{name}");
            let head = self.item_head(sitem, kspan.clone());
            let Some(st) = self.table(
                sitem,
                head.clone(),
                &display,
                &format!("write {name} = {{ env = \"HOST_VAR\" }}"),
            ) else {
                continue;
            };
            let s = Tbl {
                t: st,
                span: head,
                spec: "secrets.*",
                display: display.clone(),
            };
            self.unknown_keys(&s);
            let mut sources = Vec::new();
            let mut present = 0;
            for (key, first_spelling) in SOURCE_KEYS {
                for k in [key, first_spelling] {
                    let Some((item, span)) = s.get(k) else {
                        continue;
                    };
                    present += 1;
                    let what = format!("{display}.{k}");
                    let source = match key {
                        "env" => self
                            .non_empty_string(item, span, &what)
                            .map(SecretSource::FromEnv),
                        "file" => self
                            .non_empty_string(item, span, &what)
                            .map(|v| SecretSource::FromFile(self.host_path(&v))),
                        _ => self
                            .command(item, span, &what)
                            .map(SecretSource::FromCommand),
                    };
                    sources.extend(source);
                }
            }
            let as_env = s
                .get("as_env")
                .and_then(|(item, span)| self.boolean(item, span, &format!("{display}.as_env")))
                .unwrap_or(false);
            if present != 1 {
                self.error(
                    if present == 0 {
                        ErrorKind::MissingKey
                    } else {
                        ErrorKind::InvalidValue
                    },
                    s.span.clone(),
                    format!("secret `{name}` needs exactly one of env, file, command"),
                    Some(format!("write {name} = {{ env = \"HOST_VAR\" }}, {{ file = \"~/.token\" }} or {{ command = [\"pass\", \"show\", \"x\"] }}")),
                );
                continue;
            }
            if let Some(source) = sources.pop() {
                out.insert(name.to_string(), SecretPlan { source, as_env });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use crate::plan::{SecretPlan, SecretSource};
    use std::collections::BTreeMap;

    fn check(toml: &str) -> Result<BTreeMap<String, SecretPlan>, String> {
        crate::load::parse(toml.as_bytes(), std::path::Path::new("/p/berth.toml"))
            .map(|l| l.plan.secrets)
            .map_err(|r| r.render(false))
    }

    const BASE: &str = "name = \"c\"\n[image]\nfrom = \"debian:12\"\n";

    #[test]
    fn each_source_and_as_env() {
        let s = check(&format!(
            "{BASE}[secrets]\nA = {{ env = \"TOKEN\", as_env = true }}\nB = {{ file = \"keys/b\" }}\nC = {{ command = [\"pass\", \"c\"] }}\n"
        ))
        .unwrap();
        assert_eq!(s["A"].source, SecretSource::FromEnv("TOKEN".into()));
        assert!(s["A"].as_env && !s["B"].as_env);
        assert_eq!(s["B"].source, SecretSource::FromFile("/p/keys/b".into()));
        assert_eq!(
            s["C"].source,
            SecretSource::FromCommand(vec!["pass".into(), "c".into()])
        );
        assert!(check(BASE).unwrap().is_empty());
        // The first spelling is the same key.
        let first = check(&format!(
            "{BASE}[secrets]\nA = {{ from_env = \"TOKEN\", as_env = true }}\nB = {{ from_file = \"keys/b\" }}\nC = {{ from_command = [\"pass\", \"c\"] }}\n"
        ))
        .unwrap();
        assert_eq!(first, s);
    }

    #[test]
    fn bad_names_and_sources_are_errors_with_line_and_column() {
        let e = check(&format!(
            "{BASE}[secrets]\n\"a/b\" = {{ from_env = \"X\" }}\n"
        ))
        .unwrap_err();
        assert!(
            e.contains("not a valid secret name") && e.contains(":5:"),
            "{e}"
        );
        let e = check(&format!("{BASE}[secrets]\nA = {{ as_env = true }}\n")).unwrap_err();
        assert!(e.contains("exactly one of") && e.contains(":5:"), "{e}");
        let e = check(&format!(
            "{BASE}[secrets]\nA = {{ from_env = \"X\", from_file = \"y\" }}\n"
        ))
        .unwrap_err();
        assert!(e.contains("exactly one of"), "{e}");
        let e = check(&format!(
            "{BASE}[secrets]\nA = {{ env = \"X\", from_env = \"X\" }}\n"
        ))
        .unwrap_err();
        assert!(e.contains("exactly one of env, file, command"), "{e}");
        let e = check(&format!("{BASE}[secrets]\nA = {{ from_envv = \"X\" }}\n")).unwrap_err();
        assert!(e.contains("from_envv") && e.contains(":5:"), "{e}");
        // A VM takes them too (the guest's agent writes them into its tmpfs).
        let vm = check(
            "name = \"c\"\nbackend = \"vm\"\n[vm]\nkernel = \"debian:linux-image-cloud-amd64\"\n[image]\nfrom = \"debian:12\"\n[secrets]\nA = { env = \"X\" }\n",
        );
        assert!(vm.is_ok(), "{vm:?}");
    }
}
