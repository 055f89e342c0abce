//! `[credentials]`: which of the host's credentials `shell`, `exec` and SSH sessions get
//! (the SSH agent, the git identity, git credentials through the host's helper).

use super::toml_readers::Tbl;
use super::Checker;
use crate::plan::CredentialsPlan;

impl Checker<'_> {
    pub(super) fn credentials(&mut self, root: &Tbl<'_>) -> CredentialsPlan {
        let mut plan = CredentialsPlan::default();
        let Some(t) = self.sub_table(
            root,
            "credentials",
            "write `[credentials]` with ssh_agent/git/git_credentials = true or false",
        ) else {
            return plan;
        };
        for (key, field) in [
            ("ssh_agent", &mut plan.ssh_agent),
            ("git", &mut plan.git),
            ("git_credentials", &mut plan.git_credentials),
        ] {
            if let Some((item, span)) = t.get(key) {
                if let Some(v) = self.boolean(item, span, &format!("credentials.{key}")) {
                    *field = v;
                }
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use crate::plan::CredentialsPlan;

    fn check(toml: &str) -> Result<CredentialsPlan, String> {
        crate::load::parse(toml.as_bytes(), std::path::Path::new("/p/berth.toml"))
            .map(|l| l.plan.credentials)
            .map_err(|r| r.render(false))
    }

    const BASE: &str = "name = \"c\"\n[image]\nfrom = \"debian:12\"\n";

    #[test]
    fn all_on_by_default_and_each_can_be_turned_off() {
        assert_eq!(check(BASE).unwrap(), CredentialsPlan::default());
        let p = check(&format!(
            "{BASE}[credentials]\nssh_agent = false\ngit_credentials = false\n"
        ))
        .unwrap();
        assert!(!p.ssh_agent && p.git && !p.git_credentials);
    }

    #[test]
    fn wrong_type_and_unknown_key_are_errors_with_line_and_column() {
        let e = check(&format!("{BASE}[credentials]\nssh_agent = \"no\"\n")).unwrap_err();
        assert!(
            e.contains("credentials.ssh_agent") && e.contains(":5:"),
            "{e}"
        );
        let e = check(&format!("{BASE}[credentials]\nssh_agnet = false\n")).unwrap_err();
        assert!(
            e.contains("ssh_agnet") && e.contains("ssh_agent") && e.contains(":5:"),
            "{e}"
        );
    }
}
