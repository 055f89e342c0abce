//! [`BackendError`]: the one error type of the [`Backend`](super::Backend) trait.

use std::fmt;

/// A backend's own error (a `ContainerError`, a `VmError`), shown as it is, and whether it
/// means that the environment is not running (so the environment layer can say "not
/// running; start it with `berth up`" instead of a broken connection).
pub struct BackendError {
    inner: Box<dyn std::error::Error + Send + Sync + 'static>,
    not_running: bool,
}

impl BackendError {
    /// Wraps a backend's error.
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        BackendError {
            inner: Box::new(e),
            not_running: false,
        }
    }

    /// Wraps a backend's error that says the environment is not running.
    pub fn not_running(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        BackendError {
            inner: Box::new(e),
            not_running: true,
        }
    }

    /// The environment was not running (or stopped while the operation ran).
    pub fn is_not_running(&self) -> bool {
        self.not_running
    }

    /// The backend's own error, to look into it (`downcast_ref::<VmError>()`, …).
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.inner
    }
}

impl fmt::Debug for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner, f)
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.source()
    }
}

impl From<crate::state::StateError> for BackendError {
    fn from(e: crate::state::StateError) -> Self {
        BackendError::new(e)
    }
}
