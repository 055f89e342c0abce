//! What the environment commands share: the berth home, the environment of the current
//! berth.toml, and error conversion.

use berth_runtime::environment::{EnvError, EnvRecord, Environments};
use berth_runtime::net::network::Plumbing;
use berth_runtime::net::port_owner::find_port_holder;
use berth_runtime::net::NetRecord;
use berth_runtime::state::BerthHome;
use envfile_spec::plan::NetworkMode;
use envfile_spec::{Loaded, Plan};

use crate::envfile::load_plan;
use crate::exit::{from_error, CliError, EXIT_ERROR, EXIT_NOT_RUNNING};
use crate::global_args::GlobalArgs;

/// The environments under this user's berth home.
pub fn environments() -> Result<Environments, CliError> {
    let home = BerthHome::discover().map_err(|e| from_error(EXIT_ERROR, &e))?;
    Ok(Environments::open(&home))
}

/// Maps an environment error to its exit code: 3 when the environment is missing or stopped.
pub fn env_error(e: EnvError) -> CliError {
    let code = match e {
        EnvError::NotFound { .. } | EnvError::NotRunning { .. } => EXIT_NOT_RUNNING,
        _ => EXIT_ERROR,
    };
    from_error(code, &e)
}

/// The plan of the current berth.toml and its environment's record, if it was ever created.
pub struct Current {
    pub plan: Plan,
    pub envs: Environments,
    pub record: Option<EnvRecord>,
}

impl Current {
    pub fn load(g: &GlobalArgs) -> Result<Current, CliError> {
        let envs = environments()?;
        envs.collect_garbage();
        if let Some(name) = &g.environment {
            let record = envs.find(name).map_err(env_error)?;
            return Ok(Current {
                plan: record.plan.clone(),
                envs,
                record: Some(record),
            });
        }
        let Loaded { plan, .. } = load_plan(g)?;
        let id = Environments::env_id(&plan);
        let record = match envs.find(&id) {
            Ok(r) => Some(r),
            Err(EnvError::NotFound { .. }) => None,
            Err(e) => return Err(env_error(e)),
        };
        Ok(Current { plan, envs, record })
    }

    /// The record, or "not created yet" (exit 3).
    pub fn require(&self) -> Result<&EnvRecord, CliError> {
        self.record.as_ref().ok_or_else(|| {
            env_error(EnvError::NotFound {
                name: self.plan.name.clone(),
            })
        })
    }
}

/// Milliseconds for humans: `12 ms`, `1.4 s`.
pub fn human_duration(d: std::time::Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}

/// How an environment is reached, one line each: its address (or why it has none), then
/// every forwarded port (`127.0.0.1:8080 → 80/tcp`, noting a replaced host port).
pub fn network_lines(rec: &NetRecord) -> Vec<String> {
    let mut out = Vec::new();
    match (rec.address, rec.gateway, rec.mode, &rec.plumbing) {
        (Some(a), Some(g), _, _) => out.push(format!("address {a}, gateway {g}")),
        (_, _, NetworkMode::None, _) => out.push("loopback only, no outbound network".into()),
        (_, _, _, Plumbing::Pasta { .. }) => {
            out.push("user-mode networking (pasta): the host's addresses".into())
        }
        _ => {}
    }
    for p in &rec.ports {
        let note = if p.bound != p.spec.host {
            format!(" ({} was taken)", p.spec.host)
        } else {
            String::new()
        };
        out.push(format!("{p}{note}"));
    }
    out
}

/// One line per forwarded port published elsewhere than declared because its host port was
/// taken, naming the holder (an environment by name) when it can be found:
/// `port 8080 is in use (by environment web); published on 127.0.0.1:40123 instead`.
pub fn replaced_port_lines(rec: &NetRecord) -> Vec<String> {
    rec.ports
        .iter()
        .filter(|p| p.bound != p.spec.host)
        .map(|p| {
            let by = find_port_holder(p.spec.protocol, p.spec.host)
                .map(|h| format!(" (by {h})"))
                .unwrap_or_default();
            format!(
                "port {} is in use{by}; published on {} instead",
                p.spec.host.port(),
                p.bound
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_runtime::net::forward::{ForwardSpec, ForwardedPort};
    use envfile_spec::plan::Protocol;

    #[test]
    fn network_lines_show_address_ports_and_replaced_host_ports() {
        let spec = |host: &str, guest, protocol| ForwardSpec {
            protocol,
            host: host.parse().unwrap(),
            guest_port: guest,
            shared: false,
        };
        let rec = NetRecord {
            mode: NetworkMode::Isolated,
            plumbing: Plumbing::Bridge {
                bridge: "berth0".into(),
                nft_table: "berth".into(),
                port: Some("bv0123456789".into()),
            },
            address: Some("10.88.0.2".parse().unwrap()),
            gateway: Some("10.88.0.1".parse().unwrap()),
            ports: vec![
                ForwardedPort {
                    spec: spec("127.0.0.1:8080", 80, Protocol::Tcp),
                    bound: "127.0.0.1:8080".parse().unwrap(),
                },
                ForwardedPort {
                    spec: spec("127.0.0.1:5353", 53, Protocol::Udp),
                    bound: "127.0.0.1:40000".parse().unwrap(),
                },
            ],
            leaves_bridge_idle: false,
        };
        assert_eq!(
            network_lines(&rec),
            [
                "address 10.88.0.2, gateway 10.88.0.1",
                "127.0.0.1:8080 → 80/tcp",
                "127.0.0.1:40000 → 53/udp (127.0.0.1:5353 was taken)",
            ]
        );
        assert_eq!(
            network_lines(&NetRecord::loopback_only()),
            ["loopback only, no outbound network"]
        );
    }
}
