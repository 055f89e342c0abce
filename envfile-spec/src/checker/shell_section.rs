//! `[shell]`: the command `berth shell` runs, its user and working folder.

use super::toml_readers::Tbl;
use super::Checker;
use crate::diagnostic::ErrorKind;
use crate::plan::*;

/// Default shell command.
pub const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-l"];

impl Checker<'_> {
    pub(super) fn shell(&mut self, root: &Tbl<'_>, mounts: &[MountPlan]) -> ShellPlan {
        let mut plan = ShellPlan {
            user: None,
            workdir: None,
            command: DEFAULT_SHELL.iter().map(|s| s.to_string()).collect(),
        };
        if let Some(t) = self.sub_table(root, "shell", "write `[shell]` with user/workdir/command")
        {
            if let Some((item, span)) = t.get("user") {
                plan.user = self.non_empty_string(item, span.clone(), "shell.user").and_then(|u| {
                    if u.chars().any(|c| c.is_whitespace() || c == ':' || c == '/') {
                        self.error(
                            ErrorKind::InvalidValue,
                            span,
                            format!("`shell.user` {u:?} is not a user name or uid"),
                            Some("give a user name such as \"dev\" or a numeric uid such as \"1000\"".into()),
                        );
                        None
                    } else {
                        Some(u)
                    }
                });
            }
            if let Some((item, span)) = t.get("workdir") {
                plan.workdir = self
                    .string(item, span.clone(), "shell.workdir")
                    .and_then(|w| self.guest_path(&w, span, "shell.workdir", false));
            }
            if let Some((item, span)) = t.get("command") {
                if let Some(c) = self.command(item, span, "shell.command") {
                    plan.command = c;
                }
            }
        }
        if plan.workdir.is_none() {
            plan.workdir = Some(
                mounts
                    .first()
                    .map_or_else(|| "/".to_string(), |m| m.target.clone()),
            );
        }
        plan
    }
}
