//! `berth status` and `berth ls`: what an environment is doing, and every environment.

use std::path::PathBuf;

use envfile_spec::plan::Section;
use envfile_spec::Plan;
use serde::Serialize;

use super::environments::Environments;
use super::error::EnvError;
use super::record::EnvRecord;
use crate::backend::{EnvStatus, StatusReport};
use crate::net::NetRecord;

/// One line of `berth ls`.
#[derive(Debug, Clone, Serialize)]
pub struct EnvSummary {
    pub env_id: String,
    pub name: String,
    pub file: PathBuf,
    pub status: EnvStatus,
    pub image: Option<String>,
    pub ephemeral: bool,
}

/// What `berth status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct EnvView {
    pub env_id: String,
    pub name: String,
    pub file: PathBuf,
    pub image: Option<String>,
    /// The berth.toml changed since the last `up`: these sections differ.
    pub pending_changes: Vec<Section>,
    /// State and usage; for a VM also its facts (`vm`).
    #[serde(flatten)]
    pub report: StatusReport,
    /// Address, gateway and forwarded ports while it runs.
    pub network: Option<NetRecord>,
    /// Its sidecars (`[services.NAME]` with `image`), in start order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sidecars: Vec<super::sidecars::SidecarView>,
}

impl Environments {
    /// State, usage and pending changes of an environment.
    pub fn status(&self, record: &EnvRecord, current: Option<&Plan>) -> Result<EnvView, EnvError> {
        let dir = self.home.env_dir(&record.env_id);
        let report = self.backend(record.plan.backend).status(&dir)?;
        let network = match report.status {
            EnvStatus::Running => self.network_record(&record.env_id),
            _ => None,
        };
        Ok(EnvView {
            env_id: record.env_id.clone(),
            name: record.name.clone(),
            file: record.file.clone(),
            image: record.image.as_ref().map(|i| i.name.clone()),
            pending_changes: current
                .map(|p| record.plan.changed_sections(p))
                .unwrap_or_default(),
            report,
            network,
            sidecars: self.sidecar_views(record),
        })
    }

    /// Every environment with its state. One read of each record, on which garbage
    /// collection's full sweep runs first (the environments it removes are not listed); per
    /// environment, the backend's cheapest look at its state ([`Backend::liveness`]: for a
    /// container its state record and whether its supervisor lives).
    ///
    /// [`Backend::liveness`]: crate::backend::Backend::liveness
    pub fn list(&self) -> Result<Vec<EnvSummary>, EnvError> {
        let records = self.records()?;
        let removed = self.sweep_records(&records);
        let mut out = Vec::new();
        // A finished run whose removal process is stopping it is as good as gone.
        for r in records
            .into_iter()
            .filter(|r| !removed.contains(&r.env_id) && !self.run_being_removed(r))
        {
            let status = self
                .backend(r.plan.backend)
                .liveness(&self.home.env_dir(&r.env_id));
            out.push(EnvSummary {
                env_id: r.env_id,
                name: r.name,
                file: r.file,
                status,
                image: r.image.map(|i| i.name),
                ephemeral: r.ephemeral.is_some(),
            });
        }
        Ok(out)
    }
}
