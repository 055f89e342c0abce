//! The `RUN --mount=…` flag (BuildKit's syntax): `type=cache` (a folder kept across
//! builds), `type=bind` (a part of the build context, or of a stage or image with
//! `from=`), `type=tmpfs`, `type=secret` (a `[secrets]` value as a file) and `type=ssh`
//! (the host's SSH agent as a socket). This module only reads the flag's text into a
//! [`MountRequest`]; [`super::run_mount_stage`] prepares what each mounts for one step.

/// One `--mount`, its options checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountRequest {
    Cache {
        target: String,
        /// Folder id (default: the target).
        id: Option<String>,
    },
    Bind {
        target: String,
        /// Path in the context (or in `from`); default its root.
        source: String,
        /// A stage (name or number) or an image; `None`: the build context.
        from: Option<String>,
        /// `rw`: writable, what the step writes there is thrown away afterwards.
        writable: bool,
    },
    Tmpfs {
        target: String,
        /// Bytes; `None`: the kernel's default (half the memory).
        size: Option<u64>,
    },
    Secret {
        /// The name in `[secrets]` (or `--secret id=`).
        id: String,
        /// Default `/run/secrets/<id>`.
        target: String,
        required: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Ssh {
        id: String,
        /// Default `/run/buildkit/ssh_agent.<n>`.
        target: Option<String>,
        required: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

impl MountRequest {
    /// Where it is mounted inside (`None`: an ssh mount's default, numbered later).
    pub fn target(&self) -> Option<&str> {
        match self {
            MountRequest::Cache { target, .. }
            | MountRequest::Bind { target, .. }
            | MountRequest::Tmpfs { target, .. }
            | MountRequest::Secret { target, .. } => Some(target),
            MountRequest::Ssh { target, .. } => target.as_deref(),
        }
    }
}

/// What a parse error says and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountError {
    pub message: String,
    pub hint: String,
}

fn err(message: impl Into<String>, hint: impl Into<String>) -> MountError {
    MountError {
        message: message.into(),
        hint: hint.into(),
    }
}

/// Reads the value of one `--mount=` (variables already expanded). A relative target is
/// taken from `workdir`, as BuildKit does.
pub fn parse_mount(spec: &str, workdir: &str) -> Result<MountRequest, MountError> {
    let mut kind = "bind".to_string();
    let mut opts: Vec<(String, Option<String>)> = Vec::new();
    for part in spec.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = match part.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.to_string())),
            None => (part.trim().to_ascii_lowercase(), None),
        };
        if k == "type" {
            kind = v.unwrap_or_default();
        } else {
            opts.push((k, v));
        }
    }
    let allowed: &[&str] = match kind.as_str() {
        "cache" => &[
            "target",
            "id",
            "sharing",
            "mode",
            "uid",
            "gid",
            "from",
            "source",
            "ro",
            "readonly",
            "rw",
            "readwrite",
        ],
        "bind" => &[
            "target",
            "source",
            "from",
            "ro",
            "readonly",
            "rw",
            "readwrite",
        ],
        "tmpfs" => &["target", "size"],
        "secret" => &["id", "target", "required", "mode", "uid", "gid", "env"],
        "ssh" => &["id", "target", "required", "mode", "uid", "gid"],
        other => {
            return Err(err(
                format!("--mount=type={other} is not a mount type"),
                "use type=cache, bind, tmpfs, secret or ssh",
            ))
        }
    };
    let mut target: Option<String> = None;
    let get = |name: &str| -> Option<Option<String>> {
        opts.iter()
            .rev()
            .find(|(k, _)| canonical(k) == name)
            .map(|(_, v)| v.clone())
    };
    for (k, _) in &opts {
        if !allowed.contains(&canonical(k)) {
            return Err(err(
                format!("--mount=type={kind} has no option `{k}`"),
                format!("type={kind} accepts {}", allowed.join(", ")),
            ));
        }
    }
    if let Some(t) = get("target") {
        target = Some(value("target", t)?);
    }
    let absolute = |t: String| {
        if t.starts_with('/') {
            t
        } else {
            format!("{}/{t}", workdir.trim_end_matches('/'))
        }
    };
    let need_target = |t: Option<String>| {
        t.filter(|t| !t.is_empty()).map(absolute).ok_or_else(|| {
            err(
                format!("a type={kind} mount needs target=PATH"),
                format!("write --mount=type={kind},target=/path"),
            )
        })
    };
    let flag = |name: &str, v: Option<Option<String>>| -> Result<Option<bool>, MountError> {
        match v {
            None => Ok(None),
            Some(None) => Ok(Some(true)),
            Some(Some(s)) => match s.to_ascii_lowercase().as_str() {
                "true" | "1" => Ok(Some(true)),
                "false" | "0" => Ok(Some(false)),
                _ => Err(err(
                    format!("{name}={s} is not true or false"),
                    format!("write {name}=true or {name}=false"),
                )),
            },
        }
    };
    let number = |name: &str, v: Option<Option<String>>, radix: u32, default: u32| match v {
        None => Ok(default),
        Some(v) => {
            let s = v.unwrap_or_default();
            u32::from_str_radix(&s, radix).map_err(|_| {
                err(
                    format!("{name}={s} is not a number"),
                    if radix == 8 {
                        format!("write {name}=0400 (octal)")
                    } else {
                        format!("write {name}=1000 (a numeric id)")
                    },
                )
            })
        }
    };
    let writable = match (flag("ro", get("ro"))?, flag("rw", get("rw"))?) {
        (Some(true), Some(true)) => {
            return Err(err("a mount cannot be both ro and rw", "keep one of them"))
        }
        (_, Some(rw)) => rw,
        (Some(ro), None) => !ro,
        (None, None) => false,
    };
    match kind.as_str() {
        "cache" => {
            if let Some(Some(s)) = get("sharing") {
                // A step holds its cache folders' locks while it runs (one step at a time
                // uses a folder), so every sharing mode behaves as `locked`.
                if !matches!(s.as_str(), "locked" | "shared" | "private") {
                    return Err(err(
                        format!("sharing={s} is not a sharing mode"),
                        "write sharing=locked, shared or private",
                    ));
                }
            }
            for unsupported in ["from", "source", "mode", "uid", "gid"] {
                if get(unsupported).is_some() {
                    return Err(err(
                        format!("berth's cache mounts do not support `{unsupported}`"),
                        "remove it: the cache folder starts empty and belongs to the step's root",
                    ));
                }
            }
            if get("ro").is_some() && !writable {
                return Err(err(
                    "a read-only cache mount is not supported",
                    "remove `ro`: a cache mount is writable",
                ));
            }
            let id = get("id").flatten().filter(|i| !i.is_empty());
            Ok(MountRequest::Cache {
                target: need_target(target)?,
                id,
            })
        }
        "bind" => {
            let source = get("source").flatten().unwrap_or_default();
            let from = get("from").flatten().filter(|f| !f.is_empty());
            Ok(MountRequest::Bind {
                target: need_target(target)?,
                source,
                from,
                writable,
            })
        }
        "tmpfs" => {
            let size = match get("size") {
                None => None,
                Some(v) => Some(parse_size(&v.unwrap_or_default()).ok_or_else(|| {
                    err(
                        "size= is not a size",
                        "write size=64m (bytes, or with k, m or g)",
                    )
                })?),
            };
            Ok(MountRequest::Tmpfs {
                target: need_target(target)?,
                size,
            })
        }
        "secret" => {
            if get("env").is_some() {
                return Err(err(
                    "secret mounts as variables (`env=`) are not supported",
                    "read the file instead: `RUN --mount=type=secret,id=X sh -c 'TOKEN=$(cat /run/secrets/X) …'`",
                ));
            }
            let id = get("id").flatten().filter(|i| !i.is_empty());
            let target = target.filter(|t| !t.is_empty()).map(absolute);
            let (id, target) = match (id, target) {
                (Some(id), Some(t)) => (id, t),
                (Some(id), None) => {
                    let t = format!("/run/secrets/{id}");
                    (id, t)
                }
                // BuildKit: the id defaults to the target's last segment.
                (None, Some(t)) => (
                    t.rsplit('/').find(|s| !s.is_empty()).unwrap_or("").to_string(),
                    t,
                ),
                (None, None) => {
                    return Err(err(
                        "a secret mount needs id=NAME",
                        "write --mount=type=secret,id=NAME (NAME from [secrets] in berth.toml, or --secret id=NAME for berth image build)",
                    ))
                }
            };
            valid_id(&id)?;
            Ok(MountRequest::Secret {
                id,
                target,
                required: flag("required", get("required"))?.unwrap_or(false),
                mode: number("mode", get("mode"), 8, 0o400)?,
                uid: number("uid", get("uid"), 10, 0)?,
                gid: number("gid", get("gid"), 10, 0)?,
            })
        }
        _ => {
            let id = get("id").flatten().filter(|i| !i.is_empty());
            let id = id.unwrap_or_else(|| "default".to_string());
            if id != "default" {
                return Err(err(
                    format!("ssh id `{id}`: berth forwards only the host's own agent (`default`)"),
                    "remove id= or write id=default",
                ));
            }
            Ok(MountRequest::Ssh {
                id,
                target: target.filter(|t| !t.is_empty()).map(absolute),
                required: flag("required", get("required"))?.unwrap_or(false),
                mode: number("mode", get("mode"), 8, 0o600)?,
                uid: number("uid", get("uid"), 10, 0)?,
                gid: number("gid", get("gid"), 10, 0)?,
            })
        }
    }
}

/// The option name BuildKit's aliases stand for.
fn canonical(k: &str) -> &str {
    match k {
        "dst" | "destination" => "target",
        "src" => "source",
        "readonly" => "ro",
        "readwrite" => "rw",
        k => k,
    }
}

fn value(name: &str, v: Option<String>) -> Result<String, MountError> {
    v.ok_or_else(|| {
        err(
            format!("`{name}` needs a value"),
            format!("write {name}=VALUE"),
        )
    })
}

/// A secret id names a file: letters, digits, `_`, `-`, `.`, no path.
fn valid_id(id: &str) -> Result<(), MountError> {
    let ok = !id.is_empty()
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(err(
            format!("`{id}` is not a secret id"),
            "secret ids hold letters, digits, `_`, `-` and `.`",
        ))
    }
}

/// `64m`, `1g`, `4096` → bytes.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (num, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1u64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> MountRequest {
        parse_mount(s, "/app").unwrap()
    }

    fn e(s: &str) -> String {
        parse_mount(s, "/app").unwrap_err().message
    }

    #[test]
    fn each_type_with_its_defaults_and_aliases() {
        assert_eq!(
            p("type=cache,target=/root/.cache,sharing=locked"),
            MountRequest::Cache {
                target: "/root/.cache".into(),
                id: None
            }
        );
        assert_eq!(
            p("type=bind,src=go.mod,dst=go.mod"),
            MountRequest::Bind {
                target: "/app/go.mod".into(),
                source: "go.mod".into(),
                from: None,
                writable: false
            }
        );
        assert_eq!(
            p("target=/src,from=build,source=/out,rw"),
            MountRequest::Bind {
                target: "/src".into(),
                source: "/out".into(),
                from: Some("build".into()),
                writable: true
            }
        );
        assert_eq!(
            p("type=tmpfs,target=/tmp/t,size=64m"),
            MountRequest::Tmpfs {
                target: "/tmp/t".into(),
                size: Some(64 << 20)
            }
        );
        assert_eq!(
            p("type=secret,id=npm_token"),
            MountRequest::Secret {
                id: "npm_token".into(),
                target: "/run/secrets/npm_token".into(),
                required: false,
                mode: 0o400,
                uid: 0,
                gid: 0
            }
        );
        assert_eq!(
            p("type=secret,target=/root/.npmrc,required,mode=0440,uid=1000,gid=100"),
            MountRequest::Secret {
                id: ".npmrc".into(),
                target: "/root/.npmrc".into(),
                required: true,
                mode: 0o440,
                uid: 1000,
                gid: 100
            }
        );
        assert_eq!(
            p("type=ssh"),
            MountRequest::Ssh {
                id: "default".into(),
                target: None,
                required: false,
                mode: 0o600,
                uid: 0,
                gid: 0
            }
        );
        assert_eq!(
            p("type=ssh,required=true,target=/agent").target(),
            Some("/agent")
        );
    }

    #[test]
    fn bad_options_say_what_is_wrong() {
        assert!(e("type=volume,target=/x").contains("not a mount type"));
        assert!(e("type=tmpfs,target=/x,source=y").contains("no option `source`"));
        assert!(e("type=cache").contains("needs target=PATH"));
        assert!(e("type=secret").contains("needs id=NAME"));
        assert!(e("type=secret,id=../etc/passwd").contains("not a secret id"));
        assert!(e("type=secret,id=a,mode=rw").contains("mode=rw is not a number"));
        assert!(e("type=secret,id=a,required=maybe").contains("not true or false"));
        assert!(e("type=secret,id=a,env=A").contains("`env=`"));
        assert!(e("type=ssh,id=work").contains("only the host's own agent"));
        assert!(e("type=bind,target=/x,ro,rw").contains("both ro and rw"));
        assert!(e("type=tmpfs,target=/x,size=lots").contains("not a size"));
        assert!(e("type=cache,target=/x,sharing=all").contains("sharing=all"));
        assert!(e("type=cache,target=/x,from=base").contains("`from`"));
    }
}
