//! `[image].cache` and `[image].cache_push`: the registry build cache (see SPEC.md,
//! *Registry build cache*).

use super::toml_readers::Tbl;
use super::Checker;
use crate::diagnostic::ErrorKind;
use crate::reference::ImageReference;

impl Checker<'_> {
    /// The cache repository (`registry/repository`, no tag) and whether to push to it.
    pub(super) fn image_cache(&mut self, img: &Tbl<'_>) -> (Option<String>, bool) {
        let cache = img.get("cache").and_then(|(item, span)| {
            let s = self.non_empty_string(item, span.clone(), "image.cache")?;
            match ImageReference::parse_repository(&s) {
                Ok(r) => Some(format!("{}/{}", r.registry, r.repository)),
                Err(why) => {
                    self.error(
                        ErrorKind::BadImage,
                        span,
                        format!("`image.cache` is not a registry repository: {why}"),
                        Some("e.g. cache = \"registry.example.com/team/project-cache\"".into()),
                    );
                    None
                }
            }
        });
        let push = img
            .get("cache_push")
            .and_then(|(item, span)| self.boolean(item, span, "image.cache_push"))
            .unwrap_or(false);
        if push && img.get("cache").is_none() {
            self.error(
                ErrorKind::MissingKey,
                img.key_span("cache_push"),
                "`image.cache_push = true` but `[image]` names no `cache` to push to",
                Some(
                    "add cache = \"registry.example.com/team/project-cache\", or remove cache_push"
                        .into(),
                ),
            );
        }
        (cache, push)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Plan;

    fn check(text: &str) -> (Plan, Vec<(ErrorKind, usize, usize, String)>) {
        let dir = tempfile::tempdir().unwrap();
        let (plan, errors) = super::super::checked(dir.path(), text);
        let errors = errors
            .into_iter()
            .map(|d| (d.kind, d.line, d.column, d.message))
            .collect();
        (plan, errors)
    }

    #[test]
    fn a_cache_repository_is_normalized_and_read_only_by_default() {
        let (plan, errors) =
            check("[image]\nfrom = \"debian\"\ncache = \"127.0.0.1:5000/team/cache\"\n");
        assert_eq!(errors, []);
        assert_eq!(
            plan.image.cache.as_deref(),
            Some("127.0.0.1:5000/team/cache")
        );
        assert!(!plan.image.cache_push);
        let (plan, errors) =
            check("[image]\nfrom = \"debian\"\ncache = \"team/cache\"\ncache_push = true\n");
        assert_eq!(errors, []);
        assert_eq!(plan.image.cache.as_deref(), Some("docker.io/team/cache"));
        assert!(plan.image.cache_push);
        // Without the keys a plan serializes as before, and the keys change no hash: where
        // steps are shared does not restart an environment.
        let (plain, _) = check("[image]\nfrom = \"debian\"\n");
        let json = serde_json::to_string(&plain.image).unwrap();
        assert!(!json.contains("cache"), "{json}");
        let mut without = plan.clone();
        without.image.cache = None;
        without.image.cache_push = false;
        assert_eq!(plan.hash(), without.hash());
        assert_eq!(
            plan.section_hash(crate::plan::Section::Image),
            without.section_hash(crate::plan::Section::Image)
        );
    }

    #[test]
    fn a_tagged_cache_or_a_push_without_cache_is_an_error_with_its_position() {
        let (_, errors) = check("[image]\nfrom = \"debian\"\ncache = \"reg.example.com/c:v1\"\n");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(
            (errors[0].0, errors[0].1, errors[0].2),
            (ErrorKind::BadImage, 3, 9)
        );
        assert!(errors[0].3.contains("tag or digest"), "{errors:?}");

        let (_, errors) = check("[image]\nfrom = \"debian\"\ncache_push = true\n");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(
            (errors[0].0, errors[0].1, errors[0].2),
            (ErrorKind::MissingKey, 3, 1)
        );

        let (_, errors) =
            check("[image]\nfrom = \"debian\"\ncache = \"Bad Name\"\ncache_push = \"yes\"\n");
        let kinds: Vec<_> = errors.iter().map(|e| (e.0, e.1)).collect();
        assert_eq!(
            kinds,
            [(ErrorKind::BadImage, 3), (ErrorKind::WrongType, 4)],
            "{errors:?}"
        );
    }
}
