//! The reconcile decision of `up`, apart from any I/O: given what the previous `up` recorded,
//! the environment's current state and what the plan asks for now, leave it as it is or
//! (re)create it, and what to call that.

use envfile_spec::plan::Section;
use envfile_spec::Plan;
use serde::Serialize;

use super::record::EnvRecord;
use crate::backend::EnvStatus;

/// What `up` did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum UpAction {
    /// Running and the plan is unchanged: nothing was done.
    Unchanged,
    /// Created for the first time.
    Created,
    /// Existed but was stopped (or dead); started again.
    Started,
    /// Was running with another plan; these sections changed (`details`: the same, with
    /// what changed in them, e.g. `image (packages +make)`).
    Recreated {
        changed: Vec<Section>,
        details: Vec<String>,
    },
}

/// What `up` is asked for besides the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Wanted {
    /// `up --rebuild`: recreate even when nothing changed.
    pub rebuild: bool,
    /// `up --update`: re-resolve the image.
    pub update: bool,
    /// `up --privileged`.
    pub privileged: bool,
}

/// What `up` must do.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub action: UpAction,
    /// The environment is not stopped: stop it (on the backend it runs on) before starting
    /// it anew.
    pub stop_first: bool,
}

/// Decides what `up` does with the environment `previous` recorded (`None`: never made),
/// now in state `status`, for a plan of hash `plan_hash` whose build reads content of key
/// `build_key`.
pub fn decide(
    previous: Option<&EnvRecord>,
    status: EnvStatus,
    plan: &Plan,
    plan_hash: &str,
    build_key: &Option<String>,
    wanted: Wanted,
) -> Decision {
    let stop_first = status != EnvStatus::Stopped;
    let action = match (previous, status) {
        (None, _) => UpAction::Created,
        (Some(prev), EnvStatus::Running)
            if prev.converged
                && prev.plan_hash == plan_hash
                && prev.build_key == *build_key
                && prev.privileged == wanted.privileged
                && !wanted.rebuild
                && !wanted.update =>
        {
            UpAction::Unchanged
        }
        (Some(prev), EnvStatus::Running | EnvStatus::Starting) => {
            let mut changed = prev.plan.changed_sections(plan);
            if prev.build_key != *build_key && !changed.contains(&Section::Image) {
                changed.push(Section::Image);
                changed.sort();
            }
            UpAction::Recreated {
                changed,
                details: prev.plan.describe_changes(plan),
            }
        }
        (Some(_), _) => UpAction::Started,
    };
    Decision { action, stop_first }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        serde_json::from_value(serde_json::json!({
            "name": "x", "file": "/p/berth.toml", "project_dir": "/p", "backend": "container",
            "on_up": [], "image": {"from": {"kind": "rootfs", "path": "/r"}, "packages": [], "setup": []},
            "env": {}, "mounts": [], "ports": [], "resources": {},
            "network": {"mode": "isolated"},
            "shell": {"user": null, "workdir": "/", "command": ["/bin/sh"]},
            "services": {}
        }))
        .unwrap()
    }

    fn record(plan: &Plan, build_key: Option<&str>) -> EnvRecord {
        EnvRecord {
            env_id: "x-00000000".into(),
            name: plan.name.clone(),
            file: plan.file.clone(),
            plan: plan.clone(),
            plan_hash: plan.hash(),
            converged: true,
            image: None,
            layers: vec![],
            privileged: false,
            created_at: 1,
            ephemeral: None,
            build_key: build_key.map(String::from),
            on_create_done: None,
        }
    }

    fn key(k: &str) -> Option<String> {
        Some(k.to_string())
    }

    #[test]
    fn a_new_environment_is_created_and_a_stopped_one_started() {
        let p = plan();
        let d = decide(
            None,
            EnvStatus::Stopped,
            &p,
            &p.hash(),
            &None,
            Wanted::default(),
        );
        assert_eq!(
            d,
            Decision {
                action: UpAction::Created,
                stop_first: false
            }
        );
        // Leftovers of a folder without a record (a dead start) are stopped first.
        let d = decide(
            None,
            EnvStatus::Dead,
            &p,
            &p.hash(),
            &None,
            Wanted::default(),
        );
        assert_eq!((d.action, d.stop_first), (UpAction::Created, true));
        let prev = record(&p, Some("k"));
        let d = decide(
            Some(&prev),
            EnvStatus::Stopped,
            &p,
            &p.hash(),
            &key("k"),
            Wanted::default(),
        );
        assert_eq!((d.action, d.stop_first), (UpAction::Started, false));
        // A dead one (supervisor or VMM killed) is cleaned up, then started.
        let d = decide(
            Some(&prev),
            EnvStatus::Dead,
            &p,
            &p.hash(),
            &key("k"),
            Wanted::default(),
        );
        assert_eq!((d.action, d.stop_first), (UpAction::Started, true));
    }

    #[test]
    fn a_running_environment_with_the_same_plan_is_left_alone() {
        let p = plan();
        let prev = record(&p, Some("k"));
        let d = decide(
            Some(&prev),
            EnvStatus::Running,
            &p,
            &p.hash(),
            &key("k"),
            Wanted::default(),
        );
        assert_eq!(d.action, UpAction::Unchanged);
        // Starting (another command's start under way or interrupted) is never "unchanged".
        let d = decide(
            Some(&prev),
            EnvStatus::Starting,
            &p,
            &p.hash(),
            &key("k"),
            Wanted::default(),
        );
        assert_eq!(
            (d.action, d.stop_first),
            (
                UpAction::Recreated {
                    changed: vec![],
                    details: vec![]
                },
                true
            )
        );
    }

    #[test]
    fn anything_else_asked_for_recreates_a_running_environment() {
        let p = plan();
        let prev = record(&p, Some("k"));
        let unchanged_but = |wanted: Wanted, prev: &EnvRecord| {
            decide(
                Some(prev),
                EnvStatus::Running,
                &p,
                &p.hash(),
                &key("k"),
                wanted,
            )
        };
        let again = UpAction::Recreated {
            changed: vec![],
            details: vec![],
        };
        for wanted in [
            Wanted {
                rebuild: true,
                ..Wanted::default()
            },
            Wanted {
                update: true,
                ..Wanted::default()
            },
            Wanted {
                privileged: true,
                ..Wanted::default()
            },
        ] {
            let d = unchanged_but(wanted, &prev);
            assert_eq!(
                (d.action, d.stop_first),
                (again.clone(), true),
                "{wanted:?}"
            );
        }
        // The last `up` did not finish (e.g. an on_up step failed): it is done again.
        let unfinished = EnvRecord {
            converged: false,
            ..prev.clone()
        };
        assert_eq!(unchanged_but(Wanted::default(), &unfinished).action, again);
    }

    #[test]
    fn changed_sections_are_named_and_a_changed_build_counts_as_the_image() {
        let p = plan();
        let prev = record(&p, Some("k"));
        let mut changed = p.clone();
        changed.env.insert("A".into(), "1".into());
        let d = decide(
            Some(&prev),
            EnvStatus::Running,
            &changed,
            &changed.hash(),
            &key("k"),
            Wanted::default(),
        );
        let UpAction::Recreated {
            changed: sections,
            details,
        } = d.action
        else {
            panic!("{:?}", d.action)
        };
        assert_eq!(sections, vec![Section::Env]);
        assert_eq!(details.len(), 1, "{details:?}");
        // Only the build's inputs (or host certificates) changed: the image section.
        let d = decide(
            Some(&prev),
            EnvStatus::Running,
            &p,
            &p.hash(),
            &key("other"),
            Wanted::default(),
        );
        assert_eq!(
            d.action,
            UpAction::Recreated {
                changed: vec![Section::Image],
                details: vec![]
            }
        );
        // Both: the image is named once, in order.
        let d = decide(
            Some(&prev),
            EnvStatus::Running,
            &changed,
            &changed.hash(),
            &key("other"),
            Wanted::default(),
        );
        let UpAction::Recreated {
            changed: sections, ..
        } = d.action
        else {
            panic!()
        };
        let mut expected = vec![Section::Env, Section::Image];
        expected.sort();
        assert_eq!(sections, expected);
    }
}
