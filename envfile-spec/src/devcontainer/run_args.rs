//! `runArgs` (docker run arguments) that have a berth.toml form: `--device`, `-e/--env`,
//! `-p/--publish`, `--memory/-m`, `--cpus`, `--pids-limit`, `--network host|none`,
//! `--tmpfs`, `-v/--volume`. `--cap-add` and `--privileged` are listed with the opt-in
//! (`berth up --privileged`); the rest is listed too.

use serde_json::Value;

use crate::draft::{Draft, MountDraft, PortDraft};

/// Options that take a value (as the next argument unless written `--opt=value`).
const WITH_VALUE: &[&str] = &[
    "--device",
    "-e",
    "--env",
    "-p",
    "--publish",
    "-m",
    "--memory",
    "--cpus",
    "--pids-limit",
    "--network",
    "--net",
    "--tmpfs",
    "-v",
    "--volume",
    "--cap-add",
    "--cap-drop",
    "--security-opt",
    "--name",
    "--hostname",
    "-h",
    "--shm-size",
    "--add-host",
    "--label",
    "-l",
    "--ulimit",
    "--user",
    "-u",
    "--workdir",
    "-w",
    "--mount",
    "--env-file",
    "--entrypoint",
    "--dns",
    "--gpus",
    "--ipc",
    "--pid",
    "--runtime",
    "--platform",
];

pub fn apply(v: Option<&Value>, draft: &mut Draft, skip: &mut dyn FnMut(String, String)) {
    let Some(v) = v else { return };
    let Some(items) = v.as_array() else {
        skip("runArgs".into(), "not an array".into());
        return;
    };
    let args: Vec<String> = items
        .iter()
        .map(|a| a.as_str().map_or_else(|| a.to_string(), str::to_string))
        .collect();
    let mut i = 0;
    while i < args.len() {
        let key = format!("runArgs[{i}]");
        let arg = &args[i];
        let (opt, value) = match arg.split_once('=') {
            Some((o, v)) if o.starts_with('-') => (o.to_string(), Some(v.to_string())),
            _ if WITH_VALUE.contains(&arg.as_str()) => {
                i += 1;
                (arg.clone(), args.get(i).cloned())
            }
            _ => (arg.clone(), None),
        };
        i += 1;
        let shown = match &value {
            Some(v) => format!("{opt} {v}"),
            None => opt.clone(),
        };
        let Some(value) = value else {
            match opt.as_str() {
                "--privileged" => skip(key, "berth.toml does not grant privileges; `berth up --privileged` (root, trusted images) is the opt-in".into()),
                "--init" => skip(key, "berth's own PID 1 reaps processes already".into()),
                "--rm" | "-it" | "-i" | "-t" | "-d" => {}
                _ => skip(key, format!("{shown}: no berth equivalent")),
            }
            continue;
        };
        let mapped = match opt.as_str() {
            "--device" => {
                let mut parts = value.split(':');
                let host = parts.next().unwrap_or("").to_string();
                let inside = parts.next().map(str::to_string);
                if host.starts_with("/dev/") {
                    if !draft.devices.contains(&host) {
                        draft.devices.push(host.clone());
                    }
                    if inside.is_some_and(|p| p != host) {
                        skip(key.clone(), format!("{shown}: berth makes a device at its host path; the other path is not used"));
                    }
                    true
                } else {
                    false
                }
            }
            "-e" | "--env" => match value.split_once('=') {
                Some((k, v)) if crate::checker::is_env_name(k) => {
                    draft.set_env(k, v.to_string());
                    true
                }
                _ => false,
            },
            "-p" | "--publish" => match value.rsplit_once(':') {
                Some((h, g)) => match (
                    h.rsplit(':').next().unwrap_or("").parse::<u16>(),
                    g.parse::<u16>(),
                ) {
                    (Ok(h), Ok(g)) if h > 0 && g > 0 => {
                        draft.add_port(PortDraft {
                            host: h,
                            guest: g,
                            udp: false,
                            address: None,
                        });
                        true
                    }
                    _ => false,
                },
                None => false,
            },
            "-m" | "--memory" if crate::size::parse_size(&value).is_ok_and(|b| b > 0) => {
                draft.resources.memory = Some(value.clone());
                true
            }
            "--cpus" => match value.parse::<f64>() {
                Ok(c) if c > 0.0 && c <= 4096.0 => {
                    draft.resources.cpus = Some(c);
                    true
                }
                _ => false,
            },
            "--pids-limit" => match value.parse::<u64>() {
                Ok(p) if (1..=4_194_304).contains(&p) => {
                    draft.resources.pids = Some(p);
                    true
                }
                _ => false,
            },
            "--network" | "--net" if value == "host" || value == "none" => {
                draft.network_mode = Some(value.clone());
                true
            }
            "--tmpfs" => {
                draft.mounts.push(MountDraft {
                    source: None,
                    target: value.split(':').next().unwrap_or("").to_string(),
                    kind: "tmpfs".into(),
                    readonly: false,
                });
                true
            }
            "--cap-add" => {
                skip(key, format!("{shown}: berth.toml adds no capabilities; `berth up --privileged` (root, trusted images) gives all of them"));
                continue;
            }
            _ => false,
        };
        if !mapped {
            skip(key, format!("{shown}: no berth equivalent"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_args_that_map_and_those_that_do_not() {
        let v: Value = serde_json::from_str(r#"["--device=/dev/fuse", "--cap-add=SYS_ADMIN", "--security-opt", "seccomp=unconfined", "-e", "A=1", "--memory=2g", "--cpus", "1.5", "--network=host", "-p", "127.0.0.1:8080:80", "--tmpfs", "/scratch:size=64m", "--privileged", "--init", "--hostname", "x"]"#).unwrap();
        let mut d = Draft::default();
        let mut skipped = Vec::new();
        apply(Some(&v), &mut d, &mut |k, r| skipped.push((k, r)));
        assert_eq!(d.devices, ["/dev/fuse"]);
        assert_eq!(d.env, [("A".to_string(), "1".to_string())]);
        assert_eq!(d.resources.memory.as_deref(), Some("2g"));
        assert_eq!(d.resources.cpus, Some(1.5));
        assert_eq!(d.network_mode.as_deref(), Some("host"));
        assert_eq!((d.ports[0].host, d.ports[0].guest), (8080, 80));
        assert_eq!(d.mounts[0].target, "/scratch");
        let keys: Vec<&str> = skipped.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "runArgs[1]",
                "runArgs[2]",
                "runArgs[14]",
                "runArgs[15]",
                "runArgs[16]"
            ]
        );
        assert!(skipped[0].1.contains("--privileged"), "{skipped:?}");
    }
}
