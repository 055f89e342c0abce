//! One compose service's fields, each read into its berth form: ports, volumes, environment,
//! healthcheck, command/entrypoint, restart, resources. What does not map is reported through
//! the `skip` callback with the key it came from.

use serde_norway::{Mapping, Value};

use crate::draft::{CommandDraft, MountDraft, PortDraft, ReadyDraft, ResourcesDraft};

/// Reports a key that is not converted.
pub type Skip<'a> = dyn FnMut(String, String) + 'a;

/// A scalar as text (`8080`, `true`, `"x"`); `None` for sequences, mappings and null.
pub fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub fn get<'a>(m: &'a Mapping, key: &str) -> Option<&'a Value> {
    m.get(key)
}

/// `ports:` entries (short `[IP:][HOST:]CONTAINER[/PROTO]` with ranges, or the long form).
pub fn ports(v: &Value, key: &str, skip: &mut Skip<'_>) -> Vec<PortDraft> {
    let Value::Sequence(items) = v else {
        skip(key.into(), "not a list".into());
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let k = format!("{key}[{i}]");
        let parsed = match item {
            Value::Mapping(m) => long_port(m),
            other => match scalar(other) {
                Some(s) => short_port(&s),
                None => Err("not a port".into()),
            },
        };
        match parsed {
            Ok(ports) => out.extend(ports),
            Err(why) => skip(k, why),
        }
    }
    out
}

fn short_port(s: &str) -> Result<Vec<PortDraft>, String> {
    let (spec, udp) = match s.rsplit_once('/') {
        Some((spec, "udp")) => (spec, true),
        Some((spec, "tcp")) => (spec, false),
        Some((_, p)) => return Err(format!("protocol {p:?}: berth forwards tcp and udp")),
        None => (s, false),
    };
    // An IPv6 host address is written in brackets: `[::1]:8080:80`.
    let (address, spec) = match spec.strip_prefix('[') {
        Some(r) => match r.split_once("]:") {
            Some((ip, rest)) => (Some(ip.to_string()), rest),
            None => return Err(format!("{s:?} is not a port mapping")),
        },
        None => {
            let parts: Vec<&str> = spec.split(':').collect();
            match parts.len() {
                3 => (Some(parts[0].to_string()), &spec[parts[0].len() + 1..]),
                1 | 2 => (None, spec),
                _ => return Err(format!("{s:?} is not a port mapping")),
            }
        }
    };
    let (host, guest) = match spec.split_once(':') {
        Some((h, g)) if !h.is_empty() => (h, g),
        Some((_, g)) => (g, g),
        None => (spec, spec),
    };
    pairs(host, guest, udp, address.filter(|a| !a.is_empty()), s)
}

fn long_port(m: &Mapping) -> Result<Vec<PortDraft>, String> {
    let target = get(m, "target")
        .and_then(scalar)
        .ok_or("the port has no target")?;
    let published = get(m, "published")
        .and_then(scalar)
        .unwrap_or_else(|| target.clone());
    let udp = match get(m, "protocol").and_then(scalar).as_deref() {
        None | Some("tcp") => false,
        Some("udp") => true,
        Some(p) => return Err(format!("protocol {p:?}: berth forwards tcp and udp")),
    };
    let address = get(m, "host_ip").and_then(scalar);
    pairs(&published, &target, udp, address, &target)
}

fn pairs(
    host: &str,
    guest: &str,
    udp: bool,
    address: Option<String>,
    whole: &str,
) -> Result<Vec<PortDraft>, String> {
    let range = |s: &str| -> Result<(u16, u16), String> {
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        match (a.trim().parse::<u16>(), b.trim().parse::<u16>()) {
            (Ok(a), Ok(b)) if a > 0 && a <= b => Ok((a, b)),
            _ => Err(format!("{whole:?} is not a port or port range")),
        }
    };
    let (h0, h1) = range(host)?;
    let (g0, g1) = range(guest)?;
    if h1 - h0 != g1 - g0 {
        return Err(format!(
            "{whole:?}: the host range {host} is not as long as the container range {guest}"
        ));
    }
    Ok((0..=(g1 - g0))
        .map(|i| PortDraft {
            host: h0 + i,
            guest: g0 + i,
            udp,
            address: address.clone(),
        })
        .collect())
}

/// A volume of a service, before the caller places its source.
#[derive(Debug, PartialEq)]
pub enum VolumeSpec {
    /// A host path as written (relative to the compose file's folder, absolute, or `~/…`).
    Bind {
        source: String,
        target: String,
        readonly: bool,
    },
    /// A named volume (as named in the file; the caller maps it to berth's volume name).
    Named {
        name: String,
        target: String,
        readonly: bool,
    },
    Tmpfs {
        target: String,
    },
}

/// One `volumes:` entry, short (`SRC:DST[:MODE]`, `DST`) or long form.
pub fn volume(v: &Value) -> Result<VolumeSpec, String> {
    match v {
        Value::String(s) => short_volume(s),
        Value::Mapping(m) => {
            let kind = get(m, "type").and_then(scalar).unwrap_or("volume".into());
            let target = get(m, "target")
                .and_then(scalar)
                .ok_or("the volume has no target")?;
            let readonly = matches!(get(m, "read_only"), Some(Value::Bool(true)));
            let source = get(m, "source").and_then(scalar);
            match (kind.as_str(), source) {
                ("bind", Some(source)) => Ok(VolumeSpec::Bind {
                    source,
                    target,
                    readonly,
                }),
                ("volume", Some(name)) => Ok(VolumeSpec::Named {
                    name,
                    target,
                    readonly,
                }),
                ("volume", None) => Err(anonymous(&target)),
                ("tmpfs", _) => Ok(VolumeSpec::Tmpfs { target }),
                ("bind", None) => Err("a bind volume without a source".into()),
                (other, _) => Err(format!("volume type {other:?} has no berth equivalent")),
            }
        }
        _ => Err("neither a string nor a mapping".into()),
    }
}

fn anonymous(target: &str) -> String {
    format!("an anonymous volume on {target}: name it (`NAME:{target}`) to keep its data in a berth volume")
}

fn short_volume(s: &str) -> Result<VolumeSpec, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [t] => return Err(anonymous(t)),
        [s, t] => (*s, *t, ""),
        [s, t, m] => (*s, *t, *m),
        _ => return Err(format!("{s:?} is not SOURCE:TARGET[:MODE]")),
    };
    let readonly = mode.split(',').any(|m| m == "ro");
    let is_path = source.starts_with(['.', '/', '~']);
    Ok(if is_path {
        VolumeSpec::Bind {
            source: source.to_string(),
            target: target.to_string(),
            readonly,
        }
    } else {
        VolumeSpec::Named {
            name: source.to_string(),
            target: target.to_string(),
            readonly,
        }
    })
}

/// `environment:` as a list (`A=1`, `B` taken from the local environment) or a mapping.
pub fn environment(
    v: &Value,
    key: &str,
    local_env: &dyn Fn(&str) -> Option<String>,
    skip: &mut Skip<'_>,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut put = |name: String, value: Option<String>, skip: &mut Skip<'_>| {
        let k = format!("{key}.{name}");
        if !crate::checker::is_env_name(&name) {
            skip(k, "not a valid environment variable name".into());
            return;
        }
        let value = match value.or_else(|| local_env(&name)) {
            Some(v) => v,
            None => {
                skip(k, "takes its value from the environment of `berth init`, where it is not set; set it in berth.toml by hand".into());
                return;
            }
        };
        if value.contains('\0') {
            skip(k, "contains a NUL character".into());
            return;
        }
        crate::draft::set_var(&mut out, &name, value);
    };
    match v {
        Value::Sequence(items) => {
            for item in items {
                match scalar(item) {
                    Some(s) => match s.split_once('=') {
                        Some((n, val)) => put(n.to_string(), Some(val.to_string()), skip),
                        None => put(s, None, skip),
                    },
                    None => skip(key.into(), "an entry is not a string".into()),
                }
            }
        }
        Value::Mapping(m) => {
            for (name, value) in m {
                let Some(name) = scalar(name) else { continue };
                put(name, scalar(value), skip);
            }
        }
        _ => skip(key.into(), "neither a list nor a mapping".into()),
    }
    out
}

/// A `command`/`entrypoint`: a list as is, a string split into words as compose does.
pub fn words(v: &Value) -> Result<Vec<String>, String> {
    match v {
        Value::Sequence(items) => items
            .iter()
            .map(|i| scalar(i).ok_or_else(|| "an entry is not a string".to_string()))
            .collect(),
        Value::String(s) => split_words(s),
        Value::Null => Ok(Vec::new()),
        _ => Err("neither a string nor a list".into()),
    }
}

/// Splits a command line into words like a POSIX shell (quotes and backslashes, no
/// expansion), as compose does for a string `command`.
pub fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(format!("{s:?} has an unclosed single quote")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err(format!("{s:?} ends inside a double quote")),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(format!("{s:?} has an unclosed double quote")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    cur.push(c);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// A compose duration (`1m30s`, `1.5s`, `500ms`, `10us`) in milliseconds.
pub fn duration_ms(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a duration (e.g. \"30s\", \"1m30s\")");
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..u] {
            "h" => 3_600_000.0,
            "m" => 60_000.0,
            "s" => 1000.0,
            "ms" => 1.0,
            "us" | "µs" => 0.001,
            "ns" => 0.000_001,
            _ => return Err(bad()),
        };
        total += number * factor;
        rest = &rest[u..];
    }
    Ok(total.round() as u64)
}

/// `healthcheck:` as a `ready` probe: its test as the command, and as timeout the time after
/// which compose would call the service unhealthy (`start_period + retries × (interval +
/// timeout)`, with compose's defaults 30s, 30s, 3). `Ok(None)`: the check is disabled.
pub fn healthcheck(m: &Mapping, key: &str, skip: &mut Skip<'_>) -> Option<ReadyDraft> {
    if matches!(get(m, "disable"), Some(Value::Bool(true))) {
        return None;
    }
    let command = match get(m, "test") {
        Some(Value::String(s)) => CommandDraft::Shell(s.clone()),
        Some(v @ Value::Sequence(_)) => {
            let w = match words(v) {
                Ok(w) => w,
                Err(why) => {
                    skip(format!("{key}.test"), why);
                    return None;
                }
            };
            match w.split_first() {
                Some((k, rest)) if k == "CMD" && !rest.is_empty() => {
                    CommandDraft::Argv(rest.to_vec())
                }
                Some((k, rest)) if k == "CMD-SHELL" && rest.len() == 1 => {
                    CommandDraft::Shell(rest[0].clone())
                }
                Some((k, _)) if k == "NONE" => return None,
                _ => {
                    skip(
                        format!("{key}.test"),
                        "not [\"CMD\", …], [\"CMD-SHELL\", \"…\"] or [\"NONE\"]".into(),
                    );
                    return None;
                }
            }
        }
        _ => {
            skip(
                key.into(),
                "has no test; the image's own HEALTHCHECK is not read by berth".into(),
            );
            return None;
        }
    };
    let mut ms = |field: &str, default: u64| match get(m, field).and_then(scalar) {
        Some(s) => match duration_ms(&s) {
            Ok(v) => v,
            Err(why) => {
                skip(format!("{key}.{field}"), why);
                default
            }
        },
        None => default,
    };
    let interval = ms("interval", 30_000);
    let timeout = ms("timeout", 30_000);
    let start = ms("start_period", 0);
    let retries = match get(m, "retries") {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(3),
        _ => 3,
    };
    let total = (start + retries.max(1) * (interval + timeout)).max(1000);
    let given: Vec<&str> = [
        "interval",
        "timeout",
        "retries",
        "start_period",
        "start_interval",
    ]
    .into_iter()
    .filter(|f| get(m, f).is_some())
    .collect();
    skip(
        key.into(),
        format!(
            "berth probes until ready and then stops probing{}; ready.timeout = {} (start_period + retries × (interval + timeout)), after which compose would call it unhealthy",
            if given.is_empty() { String::new() } else { format!(" (its own pace, not {})", given.join("/")) },
            crate::draft::duration(total)
        ),
    );
    Some(ReadyDraft {
        command: Some(command),
        tcp: None,
        timeout_ms: Some(total),
    })
}

/// `restart:` as berth's restart policy.
pub fn restart(v: &Value, key: &str, skip: &mut Skip<'_>) -> Option<String> {
    let s = scalar(v)?;
    match s.as_str() {
        "no" | "always" => Some(s),
        "unless-stopped" => Some("always".into()),
        "on-failure" => Some(s),
        other if other.starts_with("on-failure:") => {
            skip(
                key.into(),
                format!("{other:?}: berth restarts on failure without a retry limit"),
            );
            Some("on-failure".into())
        }
        other => {
            skip(key.into(), format!("{other:?} is not a restart policy"));
            None
        }
    }
}

/// `deploy.resources.limits`, `mem_limit`, `cpus`, `pids_limit` as `[resources]`.
pub fn resources(m: &Mapping, key: &str, skip: &mut Skip<'_>) -> ResourcesDraft {
    let mut r = ResourcesDraft::default();
    let limits = get(m, "deploy")
        .and_then(Value::as_mapping)
        .and_then(|d| get(d, "resources"))
        .and_then(Value::as_mapping)
        .and_then(|d| get(d, "limits"))
        .and_then(Value::as_mapping);
    let pick = |name: &str, alt: &str| {
        get(m, alt)
            .or_else(|| limits.and_then(|l| get(l, name)))
            .and_then(scalar)
    };
    if let Some(c) = pick("cpus", "cpus") {
        match c.parse::<f64>() {
            Ok(c) if c > 0.0 && c <= 4096.0 => r.cpus = Some(c),
            _ => skip(
                format!("{key}.cpus"),
                format!("{c:?} is not a number of CPUs"),
            ),
        }
    }
    if let Some(mem) = pick("memory", "mem_limit") {
        // Compose writes `512m`, `1g`, `1gb`: sizes with 1024-based single letters.
        match crate::size::parse_size(&mem) {
            Ok(b) if b > 0 => r.memory = Some(mem),
            _ => skip(format!("{key}.memory"), format!("{mem:?} is not a size")),
        }
    }
    if let Some(p) = pick("pids", "pids_limit") {
        match p.parse::<u64>() {
            Ok(p) if (1..=4_194_304).contains(&p) => r.pids = Some(p),
            _ => skip(
                format!("{key}.pids_limit"),
                format!("{p:?} is not a process limit"),
            ),
        }
    }
    r
}

/// A mount for a tmpfs given as `tmpfs: /run` or `tmpfs: [/run, /tmp:size=64m]`.
pub fn tmpfs(v: &Value) -> Vec<MountDraft> {
    let list: Vec<String> = match v {
        Value::Sequence(items) => items.iter().filter_map(scalar).collect(),
        other => scalar(other).into_iter().collect(),
    };
    list.into_iter()
        .map(|t| MountDraft {
            source: None,
            target: t.split(':').next().unwrap_or("").to_string(),
            kind: "tmpfs".into(),
            readonly: false,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn y(s: &str) -> Value {
        serde_norway::from_str(s).unwrap()
    }

    fn p(host: u16, guest: u16, udp: bool, address: Option<&str>) -> PortDraft {
        PortDraft {
            host,
            guest,
            udp,
            address: address.map(str::to_string),
        }
    }

    #[test]
    fn ports_in_every_form() {
        let mut skipped = Vec::new();
        let got = ports(
            &y(
                r#"[3000, "8080:80", "127.0.0.1:5432:5432", "53:53/udp", "9000-9001:9000-9001", "[::1]:6000:6", {target: 80, published: "8081", protocol: tcp, host_ip: 0.0.0.0}, "1:2:3:4", "5/sctp"]"#,
            ),
            "ports",
            &mut |k, r| skipped.push((k, r)),
        );
        assert_eq!(
            got,
            vec![
                p(3000, 3000, false, None),
                p(8080, 80, false, None),
                p(5432, 5432, false, Some("127.0.0.1")),
                p(53, 53, true, None),
                p(9000, 9000, false, None),
                p(9001, 9001, false, None),
                p(6000, 6, false, Some("::1")),
                p(8081, 80, false, Some("0.0.0.0")),
            ]
        );
        let keys: Vec<&str> = skipped.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["ports[7]", "ports[8]"]);
    }

    #[test]
    fn volumes_short_and_long() {
        assert_eq!(
            volume(&y("./data:/data:ro")),
            Ok(VolumeSpec::Bind {
                source: "./data".into(),
                target: "/data".into(),
                readonly: true
            })
        );
        assert_eq!(
            volume(&y("pg:/var/lib/postgresql/data")),
            Ok(VolumeSpec::Named {
                name: "pg".into(),
                target: "/var/lib/postgresql/data".into(),
                readonly: false
            })
        );
        assert_eq!(
            volume(&y("{type: tmpfs, target: /run}")),
            Ok(VolumeSpec::Tmpfs {
                target: "/run".into()
            })
        );
        assert_eq!(
            volume(&y(
                "{type: bind, source: ../.., target: /workspaces, read_only: true}"
            )),
            Ok(VolumeSpec::Bind {
                source: "../..".into(),
                target: "/workspaces".into(),
                readonly: true
            })
        );
        assert!(volume(&y("/anonymous")).unwrap_err().contains("anonymous"));
        assert!(volume(&y("{type: npipe, source: x, target: /y}")).is_err());
    }

    #[test]
    fn environment_lists_and_maps() {
        let host = |n: &str| (n == "HOME").then(|| "/home/ann".to_string());
        let mut skipped = Vec::new();
        let list = environment(
            &y(r#"["A=1", "B=x=y", "HOME", "MISSING", "bad name=1"]"#),
            "environment",
            &host,
            &mut |k, r| skipped.push((k, r)),
        );
        assert_eq!(
            list,
            [("A", "1"), ("B", "x=y"), ("HOME", "/home/ann")]
                .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        assert_eq!(skipped.len(), 2);
        let map = environment(
            &y("{N: 5, T: true, S: text}"),
            "environment",
            &host,
            &mut |_, _| {},
        );
        assert_eq!(map[0], ("N".to_string(), "5".to_string()));
        assert_eq!(map[1].1, "true");
    }

    #[test]
    fn commands_split_like_a_shell() {
        assert_eq!(
            split_words(r#"redis-server --save "" --requirepass 'a b' x\ y"#).unwrap(),
            ["redis-server", "--save", "", "--requirepass", "a b", "x y"]
        );
        assert!(split_words("echo 'open").is_err());
        assert_eq!(
            words(&y("[sleep, infinity]")).unwrap(),
            ["sleep", "infinity"]
        );
    }

    #[test]
    fn healthchecks_become_ready_probes() {
        let mut skipped = Vec::new();
        let m = y(
            r#"{test: ["CMD", "pg_isready", "-U", "postgres"], interval: 5s, timeout: 1s, retries: 10}"#,
        );
        let r = healthcheck(m.as_mapping().unwrap(), "hc", &mut |k, r| {
            skipped.push((k, r))
        })
        .unwrap();
        assert_eq!(
            r.command,
            Some(CommandDraft::Argv(vec![
                "pg_isready".into(),
                "-U".into(),
                "postgres".into()
            ]))
        );
        assert_eq!(r.timeout_ms, Some(60_000));
        assert!(
            skipped[0].1.contains("interval/timeout/retries"),
            "{skipped:?}"
        );
        let m = y(r#"{test: ["CMD-SHELL", "redis-cli ping | grep PONG"], start_period: 1m30s}"#);
        let r = healthcheck(m.as_mapping().unwrap(), "hc", &mut |_, _| {}).unwrap();
        assert_eq!(
            r.command,
            Some(CommandDraft::Shell("redis-cli ping | grep PONG".into()))
        );
        assert_eq!(r.timeout_ms, Some(90_000 + 180_000));
        let m = y(r#"{test: ["NONE"]}"#);
        assert!(healthcheck(m.as_mapping().unwrap(), "hc", &mut |_, _| {}).is_none());
        let m = y(r#"{test: "curl -f localhost", disable: true}"#);
        assert!(healthcheck(m.as_mapping().unwrap(), "hc", &mut |_, _| {}).is_none());
    }

    #[test]
    fn durations_restart_and_resources() {
        assert_eq!(duration_ms("1m30s"), Ok(90_000));
        assert_eq!(duration_ms("1.5s"), Ok(1500));
        assert_eq!(duration_ms("250ms"), Ok(250));
        assert!(duration_ms("soon").is_err());
        let mut skipped = Vec::new();
        let mut s = |k: String, r: String| skipped.push((k, r));
        assert_eq!(
            restart(&y("unless-stopped"), "r", &mut s).as_deref(),
            Some("always")
        );
        assert_eq!(
            restart(&y("on-failure:3"), "r", &mut s).as_deref(),
            Some("on-failure")
        );
        assert_eq!(restart(&y("sometimes"), "r", &mut s), None);
        let m = y("{mem_limit: 512m, deploy: {resources: {limits: {cpus: '0.5', pids: 100}}}}");
        let r = resources(m.as_mapping().unwrap(), "svc", &mut s);
        assert_eq!(r.cpus, Some(0.5));
        assert_eq!(r.memory.as_deref(), Some("512m"));
        assert_eq!(r.pids, Some(100));
        assert_eq!(skipped.len(), 2);
    }
}
