//! What `up` builds over an environment's base image, from its plan.

use envfile_spec::Plan;

use super::error::EnvError;
use crate::image::build::{BuildInputs, BuildSpec, HostCas};
use crate::state::BerthHome;

/// What `up` builds over the base image: the plan's `[image]` build keys, its `[env]`, the
/// expanded inputs and (unless `host_ca = false`) the host's CA certificates (their key from
/// the stamp cache in the berth home `home` when the host's files did not change).
pub(super) fn build_spec(plan: &Plan, home: &BerthHome) -> Result<BuildSpec, EnvError> {
    let inputs = if plan.image.inputs.is_empty() {
        None
    } else {
        Some(BuildInputs::collect(&plan.project_dir, &plan.image.inputs)?)
    };
    let host_ca = if plan.image.host_ca {
        HostCas::from_host_cached(home.root()).map_err(|source| crate::state::StateError::Read {
            path: "/etc/ssl/certs".into(),
            source,
        })?
    } else {
        None
    };
    Ok(BuildSpec {
        packages: plan.image.packages.clone(),
        setup: plan.image.setup.clone(),
        env: plan
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        workdir: plan.image.workdir.clone(),
        inputs,
        host_ca,
    })
}

/// [`BuildSpec::content_key`] of `spec`, with the content of the plan's Dockerfile and its
/// build context when the base is built from one (an edit there rebuilds on `up`; unchanged
/// files are answered from their stamps in the berth home `home`, not read).
pub(super) fn build_key(
    plan: &Plan,
    spec: &BuildSpec,
    home: &BerthHome,
) -> Result<Option<String>, EnvError> {
    let Some(df) = &plan.image.dockerfile else {
        return Ok(spec.content_key());
    };
    let docker = crate::image::dockerfile::context::content_key(&df.path, &df.context, home.root())
        .map_err(|source| crate::state::StateError::Read {
            path: df.context.clone(),
            source,
        })?;
    Ok(Some(format!(
        "{}+dockerfile:{docker}",
        spec.content_key().unwrap_or_default()
    )))
}
