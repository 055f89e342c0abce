//! `[image] dockerfile` with `context`, `target` and `args`: the base image built from a
//! Dockerfile by berth's own builder (the Dockerfile itself is checked when it is built).

use std::collections::BTreeMap;

use super::toml_readers::Tbl;
use super::Checker;
use crate::diagnostic::ErrorKind;
use crate::plan::DockerfilePlan;

impl Checker<'_> {
    pub(super) fn dockerfile(&mut self, img: &Tbl<'_>) -> Option<DockerfilePlan> {
        let context = match img.get("context") {
            Some((item, span)) => self
                .string(item, span.clone(), "image.context")
                .and_then(|s| self.existing_path(&s, span, "image.context", Some(true))),
            None => Some(self.project_dir.clone()),
        };
        let target = img.get("target").and_then(|(item, span)| {
            let t = self.non_empty_string(item, span.clone(), "image.target")?;
            let ok = t.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !ok {
                self.error(
                    ErrorKind::InvalidValue,
                    span,
                    format!("`image.target` is not a stage name: {t:?}"),
                    Some("name a stage of the Dockerfile (`FROM … AS NAME`)".into()),
                );
                return None;
            }
            Some(t)
        });
        let args: BTreeMap<String, String> = match img.get("args") {
            Some((item, span)) => self.env_map(item, span, "image.args"),
            None => BTreeMap::new(),
        };
        let Some((item, span)) = img.get("dockerfile") else {
            for key in ["context", "target", "args"] {
                if img.get(key).is_some() {
                    self.error(
                        ErrorKind::MisplacedKey,
                        img.key_span(key),
                        format!("`image.{key}` applies only to `dockerfile`"),
                        Some(format!(
                            "add dockerfile = \"Dockerfile\" to build the base from a Dockerfile, or remove `{key}`"
                        )),
                    );
                }
            }
            return None;
        };
        let path = self
            .string(item, span.clone(), "image.dockerfile")
            .and_then(|s| self.existing_path(&s, span, "image.dockerfile", Some(false)));
        Some(DockerfilePlan {
            path: path?,
            context: context?,
            target,
            args,
        })
    }
}
