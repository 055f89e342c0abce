//! A stage's state while it builds (layers, image config, arguments in scope, shell, cache
//! key) and the instructions that change only the config: `ARG`, `ENV`, `LABEL`,
//! `MAINTAINER`, `USER`, `EXPOSE`, `ENTRYPOINT`, `CMD`, `VOLUME`, `HEALTHCHECK`,
//! `STOPSIGNAL`, `SHELL`. Each of them still chains the cache key (later steps depend on
//! the config), but makes no layer.

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

use super::super::image_store::LayerRecord;
use super::super::manifest::{EmptyObject, Healthcheck, Platform, RunConfig};
use super::error::Located;
use super::parse::{Args, Instruction};
use super::plan::{arg_decls, flag_value, lookup_args};
use super::words;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The hash of `parent` and `parts`: a step's cache key.
pub fn chain(parent: &str, parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    h.update(parent.as_bytes());
    for p in parts {
        h.update(b"\0");
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

#[derive(Debug, Clone)]
pub struct StageState {
    pub layers: Vec<LayerRecord>,
    pub config: RunConfig,
    pub key: String,
    /// `ARG`s declared in this stage, with their values.
    pub args: Vec<(String, Option<String>)>,
    pub shell: Vec<String>,
    /// `CMD` given in this stage (an `ENTRYPOINT` then keeps it).
    pub cmd_set: bool,
}

impl StageState {
    pub fn new(layers: Vec<LayerRecord>, config: RunConfig, key: String) -> Self {
        StageState {
            layers,
            config,
            key,
            args: Vec::new(),
            shell: vec!["/bin/sh".into(), "-c".into()],
            cmd_set: false,
        }
    }

    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.config
            .env
            .iter()
            .flatten()
            .map(|e| match e.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (e.clone(), String::new()),
            })
            .collect()
    }

    /// A variable for expansion: the environment first, then the arguments in scope.
    pub fn lookup(&self, name: &str) -> Option<String> {
        self.env_pairs()
            .into_iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .or_else(|| lookup_args(&self.args, name))
    }

    fn set_env(&mut self, k: &str, v: &str) {
        let env = self.config.env.get_or_insert_with(Vec::new);
        env.retain(|e| e.split_once('=').map_or(e.as_str(), |(n, _)| n) != k);
        env.push(format!("{k}={v}"));
    }

    /// The folder commands run in.
    pub fn workdir(&self) -> String {
        self.config
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into())
    }

    /// The environment of a `RUN`: the image's variables (a default `PATH` when it has
    /// none) and the arguments in scope that no variable shadows.
    pub fn run_env(&self) -> Vec<(String, String)> {
        let mut env = self.env_pairs();
        if !env.iter().any(|(k, _)| k == "PATH") {
            env.push(("PATH".into(), DEFAULT_PATH.into()));
        }
        for (k, v) in &self.args {
            if let Some(v) = v {
                if !env.iter().any(|(e, _)| e == k) {
                    env.push((k.clone(), v.clone()));
                }
            }
        }
        env
    }
}

/// BuildKit's automatic platform arguments.
pub fn platform_arg(name: &str) -> Option<String> {
    let p = Platform::host();
    Some(match name {
        "TARGETPLATFORM" | "BUILDPLATFORM" => format!("{}/{}", p.os, p.architecture),
        "TARGETOS" | "BUILDOS" => p.os,
        "TARGETARCH" | "BUILDARCH" => p.architecture,
        "TARGETVARIANT" | "BUILDVARIANT" => p.variant.unwrap_or_default(),
        _ => return None,
    })
}

/// What the config instructions need besides the stage.
pub struct Scope<'a> {
    pub escape: char,
    pub global_args: &'a [(String, Option<String>)],
    pub build_args: &'a BTreeMap<String, String>,
    /// Where the Dockerfile is, for notices (`Dockerfile:LINE`).
    pub file: &'a str,
}

/// Applies a config instruction; `Ok(false)` for one that makes a layer (not handled here).
pub fn apply(
    st: &mut StageState,
    ins: &Instruction,
    scope: &Scope<'_>,
    notices: &mut Vec<String>,
) -> Result<bool, Located> {
    let escape = scope.escape;
    let text = ins.args.text();
    let bad = |e: String| Located::new(ins.args_pos, e, "fix the quoting or the variable");
    let vars_of = |st: &StageState| {
        let st = st.clone();
        move |n: &str| st.lookup(n)
    };
    let canon: String;
    match ins.keyword.as_str() {
        "ARG" => {
            let lookup = vars_of(st);
            for (name, default) in arg_decls(ins, escape, &lookup)? {
                let value = scope
                    .build_args
                    .get(&name)
                    .cloned()
                    .or(default)
                    .or_else(|| lookup_args(scope.global_args, &name))
                    .or_else(|| platform_arg(&name));
                st.args.push((name, value));
            }
            // Arguments count in a step's key where they are used: in the expanded text
            // of an instruction, or in a `RUN`'s environment.
            return Ok(true);
        }
        "ENV" => {
            let lookup = vars_of(st);
            let pairs = words::pairs(&text, escape, &lookup, true).map_err(bad)?;
            for (k, v) in &pairs {
                st.set_env(k, v);
            }
            canon = serde_json::to_string(&pairs).unwrap_or_default();
        }
        "LABEL" | "MAINTAINER" => {
            let lookup = vars_of(st);
            let pairs = if ins.keyword == "MAINTAINER" {
                vec![("maintainer".to_string(), text.trim().to_string())]
            } else {
                words::pairs(&text, escape, &lookup, true).map_err(bad)?
            };
            let labels = st.config.labels.get_or_insert_with(BTreeMap::new);
            for (k, v) in &pairs {
                labels.insert(k.clone(), v.clone());
            }
            canon = serde_json::to_string(&pairs).unwrap_or_default();
        }
        "USER" => {
            let user = words::word(text.trim(), escape, &vars_of(st)).map_err(bad)?;
            st.config.user = Some(user.clone());
            canon = user;
        }
        "EXPOSE" => {
            let ports = words::words(&text, escape, &vars_of(st)).map_err(bad)?;
            let mut normal = Vec::new();
            for p in ports {
                let (num, proto) = p.split_once('/').unwrap_or((&p, "tcp"));
                let proto = proto.to_ascii_lowercase();
                let valid = num
                    .split('-')
                    .all(|n| n.parse::<u16>().is_ok_and(|n| n > 0))
                    && matches!(proto.as_str(), "tcp" | "udp" | "sctp");
                if !valid {
                    return Err(Located::new(
                        ins.args_pos,
                        format!("`{p}` is not a port"),
                        "write EXPOSE PORT[/tcp|udp]",
                    ));
                }
                normal.push(format!("{num}/{proto}"));
            }
            let map = st.config.exposed_ports.get_or_insert_with(BTreeMap::new);
            for p in &normal {
                map.insert(p.clone(), EmptyObject {});
            }
            let first = normal[0].split(['/', '-']).next().unwrap_or("").to_string();
            notices.push(format!(
                "{}:{}: EXPOSE {} is recorded in the image only; to reach it from the host add [[ports]] to berth.toml, e.g. `[[ports]]` with `host = {first}` and `container = {first}`",
                scope.file,
                ins.pos.line,
                normal.join(" ")
            ));
            canon = normal.join(" ");
        }
        "ENTRYPOINT" | "CMD" => {
            let argv = match &ins.args {
                Args::Exec(v) => v.clone(),
                Args::Shell(s) => {
                    let mut v = st.shell.clone();
                    v.push(s.clone());
                    v
                }
            };
            if ins.keyword == "CMD" {
                st.config.cmd = Some(argv.clone());
                st.cmd_set = true;
            } else {
                st.config.entrypoint = Some(argv.clone());
                if !st.cmd_set {
                    st.config.cmd = None;
                }
            }
            canon = serde_json::to_string(&argv).unwrap_or_default();
        }
        "VOLUME" => {
            let vols = match &ins.args {
                Args::Exec(v) => v.clone(),
                Args::Shell(s) => words::words(s, escape, &vars_of(st)).map_err(bad)?,
            };
            let map = st.config.volumes.get_or_insert_with(BTreeMap::new);
            for v in &vols {
                map.insert(v.clone(), EmptyObject {});
            }
            canon = vols.join(" ");
        }
        "STOPSIGNAL" => {
            let sig = words::word(text.trim(), escape, &vars_of(st)).map_err(bad)?;
            st.config.stop_signal = Some(sig.clone());
            canon = sig;
        }
        "SHELL" => {
            let Args::Exec(v) = &ins.args else {
                return Err(Located::new(
                    ins.args_pos,
                    "SHELL needs the JSON form",
                    "write e.g. SHELL [\"/bin/bash\", \"-o\", \"pipefail\", \"-c\"]",
                ));
            };
            if v.is_empty() {
                return Err(Located::new(
                    ins.args_pos,
                    "SHELL needs a command",
                    "write e.g. SHELL [\"/bin/bash\", \"-c\"]",
                ));
            }
            st.shell = v.clone();
            canon = serde_json::to_string(v).unwrap_or_default();
        }
        "ONBUILD" => {
            // Kept as written, expanded when a later FROM runs it (as Docker).
            let trigger = text.trim().to_string();
            st.config
                .on_build
                .get_or_insert_with(Vec::new)
                .push(trigger.clone());
            canon = trigger;
        }
        "HEALTHCHECK" => {
            let hc = healthcheck(ins, st, scope)?;
            canon = serde_json::to_string(&hc).unwrap_or_default();
            st.config.healthcheck = Some(hc);
        }
        _ => return Ok(false),
    }
    st.key = chain(&st.key, &[ins.keyword.as_bytes(), canon.as_bytes()]);
    Ok(true)
}

fn healthcheck(
    ins: &Instruction,
    st: &StageState,
    scope: &Scope<'_>,
) -> Result<Healthcheck, Located> {
    let lookup = |n: &str| st.lookup(n);
    let mut hc = Healthcheck::default();
    for f in &ins.flags {
        let v = flag_value(f, scope.escape, &lookup)?;
        let dur = || {
            duration_ns(&v).ok_or_else(|| {
                Located::new(
                    f.pos,
                    format!("`{v}` is not a duration"),
                    "write e.g. 30s, 1m30s or 500ms",
                )
            })
        };
        match f.name.as_str() {
            "interval" => hc.interval = Some(dur()?),
            "timeout" => hc.timeout = Some(dur()?),
            "start-period" => hc.start_period = Some(dur()?),
            "start-interval" => hc.start_interval = Some(dur()?),
            _ => {
                hc.retries = Some(v.parse().map_err(|_| {
                    Located::new(
                        f.pos,
                        format!("`{v}` is not a number"),
                        "write e.g. --retries=3",
                    )
                })?)
            }
        }
    }
    match &ins.args {
        Args::Shell(s) if s.trim().eq_ignore_ascii_case("none") => {
            hc.test = vec!["NONE".into()];
        }
        Args::Shell(s) => {
            let rest = s.trim_start();
            let Some(cmd) = rest
                .get(..3)
                .filter(|k| k.eq_ignore_ascii_case("cmd"))
                .map(|_| rest[3..].trim_start())
            else {
                return Err(Located::new(
                    ins.args_pos,
                    "HEALTHCHECK expects CMD or NONE",
                    "write HEALTHCHECK [OPTIONS] CMD command, or HEALTHCHECK NONE",
                ));
            };
            match serde_json::from_str::<Vec<String>>(cmd) {
                Ok(v) if cmd.starts_with('[') => {
                    hc.test = std::iter::once("CMD".to_string()).chain(v).collect()
                }
                _ => hc.test = vec!["CMD-SHELL".into(), cmd.to_string()],
            }
        }
        Args::Exec(_) => {
            return Err(Located::new(
                ins.args_pos,
                "HEALTHCHECK expects CMD or NONE",
                "write HEALTHCHECK [OPTIONS] CMD [\"cmd\", \"arg\"]",
            ))
        }
    }
    Ok(hc)
}

/// Go's duration syntax (`1h2m3s`, `500ms`, `1.5s`) in nanoseconds.
pub fn duration_ns(s: &str) -> Option<u64> {
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    Some(total as u64)
}

#[cfg(test)]
mod tests {
    use super::super::parse::parse;
    use super::*;

    fn run(src: &str) -> (StageState, Vec<String>) {
        let f = parse(src).unwrap();
        let mut st = StageState::new(Vec::new(), RunConfig::default(), "k".into());
        let mut notices = Vec::new();
        let build_args = BTreeMap::from([("V".to_string(), "from-cli".to_string())]);
        let global = vec![("G".to_string(), Some("global".to_string()))];
        let scope = Scope {
            escape: '\\',
            global_args: &global,
            build_args: &build_args,
            file: "Dockerfile",
        };
        for ins in &f.instructions {
            assert!(
                apply(&mut st, ins, &scope, &mut notices).unwrap(),
                "{ins:?}"
            );
        }
        (st, notices)
    }

    #[test]
    fn config_instructions_fill_the_image_config() {
        let (st, notices) = run("ARG V=default\nARG G\nENV A=1 B=\"$V x\"\nENV OLD legacy $G\nLABEL org.x=\"y z\"\nUSER app:app\nEXPOSE 8080 53/udp\nCMD [\"serve\"]\nENTRYPOINT /bin/app\nVOLUME /data\nSTOPSIGNAL SIGINT\nSHELL [\"/bin/bash\", \"-c\"]\nHEALTHCHECK --interval=1m30s --retries=3 CMD curl -f localhost\n");
        let env = st.config.env.clone().unwrap();
        assert_eq!(env, ["A=1", "B=from-cli x", "OLD=legacy global"]);
        assert_eq!(st.config.labels.as_ref().unwrap()["org.x"], "y z");
        assert_eq!(st.config.user.as_deref(), Some("app:app"));
        let ports: Vec<_> = st
            .config
            .exposed_ports
            .as_ref()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(ports, ["53/udp", "8080/tcp"]);
        assert!(
            notices[0].contains("Dockerfile:7") && notices[0].contains("[[ports]]"),
            "{notices:?}"
        );
        assert_eq!(
            st.config.cmd,
            Some(vec!["serve".to_string()]),
            "CMD before ENTRYPOINT in the same stage stays"
        );
        assert_eq!(
            st.config.entrypoint,
            Some(vec!["/bin/sh".into(), "-c".into(), "/bin/app".into()])
        );
        assert!(st.config.volumes.as_ref().unwrap().contains_key("/data"));
        assert_eq!(st.config.stop_signal.as_deref(), Some("SIGINT"));
        assert_eq!(st.shell, ["/bin/bash", "-c"]);
        let hc = st.config.healthcheck.clone().unwrap();
        assert_eq!(hc.test, ["CMD-SHELL", "curl -f localhost"]);
        assert_eq!(hc.interval, Some(90_000_000_000));
        assert_eq!(hc.retries, Some(3));
        assert!(st.run_env().contains(&("V".into(), "from-cli".into())));
        assert_ne!(st.key, "k");
    }

    #[test]
    fn an_entrypoint_resets_an_inherited_cmd() {
        let f = parse("ENTRYPOINT [\"/app\"]\n").unwrap();
        let mut st = StageState::new(
            Vec::new(),
            RunConfig {
                cmd: Some(vec!["bash".into()]),
                ..RunConfig::default()
            },
            "k".into(),
        );
        let scope = Scope {
            escape: '\\',
            global_args: &[],
            build_args: &BTreeMap::new(),
            file: "D",
        };
        apply(&mut st, &f.instructions[0], &scope, &mut Vec::new()).unwrap();
        assert_eq!(st.config.cmd, None);
    }

    #[test]
    fn onbuild_records_its_trigger_as_written_and_changes_the_key() {
        let f = parse("ONBUILD RUN echo $HOME\nONBUILD COPY . /app\n").unwrap();
        let mut st = StageState::new(Vec::new(), RunConfig::default(), "k".into());
        let scope = Scope {
            escape: '\\',
            global_args: &[],
            build_args: &BTreeMap::new(),
            file: "D",
        };
        for ins in &f.instructions {
            assert!(apply(&mut st, ins, &scope, &mut Vec::new()).unwrap());
        }
        assert_eq!(
            st.config.on_build,
            Some(vec![
                "RUN echo $HOME".to_string(),
                "COPY . /app".to_string()
            ])
        );
        assert_ne!(st.key, "k");
        let json = serde_json::to_value(&st.config).unwrap();
        assert_eq!(json["OnBuild"][1], "COPY . /app");
    }

    #[test]
    fn go_durations() {
        assert_eq!(duration_ns("30s"), Some(30_000_000_000));
        assert_eq!(duration_ns("500ms"), Some(500_000_000));
        assert_eq!(duration_ns("1h"), Some(3_600_000_000_000));
        assert_eq!(duration_ns("5x"), None);
    }
}
