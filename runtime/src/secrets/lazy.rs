//! Secrets a Dockerfile build may mount (`RUN --mount=type=secret`): where each comes from,
//! and its value once read. A value is read on the host the first time a step that mounts it
//! really runs, and at most once per build however many steps (and parallel stages) mount it:
//! a `command` source (a password manager, a vault CLI) runs once, or not at all when every
//! such step is cached. Values already read for the same `berth up` are given in up front
//! ([`LazySecrets::with_values`]) and nothing is read again. Values live in memory only.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use envfile_spec::plan::SecretSource;

use super::{read_one, SecretValue, SecretsError};

/// Named secret sources, each read at most once (clones share the values).
#[derive(Clone, Default)]
pub struct LazySecrets {
    sources: BTreeMap<String, SecretSource>,
    values: Arc<Mutex<BTreeMap<String, Arc<Vec<u8>>>>>,
}

impl std::fmt::Debug for LazySecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names and sources only, never a value.
        f.debug_struct("LazySecrets")
            .field("sources", &self.sources)
            .finish_non_exhaustive()
    }
}

impl FromIterator<(String, SecretSource)> for LazySecrets {
    fn from_iter<I: IntoIterator<Item = (String, SecretSource)>>(iter: I) -> Self {
        LazySecrets {
            sources: iter.into_iter().collect(),
            values: Arc::default(),
        }
    }
}

impl LazySecrets {
    /// These sources, with the values of `read` (read already, e.g. by `up` for the
    /// environment's `/run/secrets`) taken as they are instead of being read again.
    pub fn with_values(self, read: &[SecretValue]) -> Self {
        {
            let mut values = self.values.lock().unwrap_or_else(|p| p.into_inner());
            for s in read.iter().filter(|s| self.sources.contains_key(&s.name)) {
                values.insert(s.name.clone(), Arc::new(s.value.clone()));
            }
        }
        self
    }

    /// Whether a secret `name` is given at all.
    pub fn contains(&self, name: &str) -> bool {
        self.sources.contains_key(name)
    }

    /// The value of `name`, read from its source on first use only. Concurrent callers wait
    /// for the one read (a command runs once). `None`: no such secret.
    pub fn value(&self, name: &str) -> Option<Result<Arc<Vec<u8>>, SecretsError>> {
        let source = self.sources.get(name)?;
        let mut values = self.values.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = values.get(name) {
            return Some(Ok(Arc::clone(v)));
        }
        Some(read_one(name, source).map(|v| {
            let v = Arc::new(v);
            values.insert(name.to_string(), Arc::clone(&v));
            v
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn counting_command(dir: &std::path::Path) -> SecretSource {
        let count = dir.join("runs");
        SecretSource::FromCommand(vec![
            "sh".into(),
            "-c".into(),
            format!("echo run >> '{}'; echo s3cr3t", count.display()),
        ])
    }

    fn runs(dir: &std::path::Path) -> usize {
        fs::read_to_string(dir.join("runs"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    #[test]
    fn a_command_runs_once_on_first_use_for_every_clone_and_thread() {
        let dir = tempfile::tempdir().unwrap();
        let secrets: LazySecrets = [("tok".to_string(), counting_command(dir.path()))]
            .into_iter()
            .collect();
        assert_eq!(runs(dir.path()), 0, "nothing is read before it is used");
        assert!(secrets.contains("tok") && !secrets.contains("other"));
        assert!(secrets.value("other").is_none());
        let clone = secrets.clone();
        std::thread::scope(|s| {
            for _ in 0..4 {
                let c = clone.clone();
                s.spawn(move || assert_eq!(&**c.value("tok").unwrap().unwrap(), b"s3cr3t"));
            }
        });
        assert_eq!(&**secrets.value("tok").unwrap().unwrap(), b"s3cr3t");
        assert_eq!(runs(dir.path()), 1);
    }

    #[test]
    fn values_read_before_are_not_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = [("tok".to_string(), counting_command(dir.path()))]
            .into_iter()
            .collect::<LazySecrets>()
            .with_values(&[
                SecretValue {
                    name: "tok".into(),
                    value: b"from-up".to_vec(),
                    as_env: false,
                },
                SecretValue {
                    name: "not-a-build-secret".into(),
                    value: b"x".to_vec(),
                    as_env: false,
                },
            ]);
        assert_eq!(&**secrets.value("tok").unwrap().unwrap(), b"from-up");
        assert!(secrets.value("not-a-build-secret").is_none());
        assert_eq!(runs(dir.path()), 0);
        assert!(!format!("{secrets:?}").contains("from-up"));
    }

    #[test]
    fn a_failed_read_is_an_error_and_tried_again_next_time() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("ok");
        let secrets: LazySecrets = [("tok".to_string(), SecretSource::FromFile(flag.clone()))]
            .into_iter()
            .collect();
        assert!(secrets.value("tok").unwrap().is_err());
        fs::write(&flag, "now").unwrap();
        assert_eq!(&**secrets.value("tok").unwrap().unwrap(), b"now");
    }
}
