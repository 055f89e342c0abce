//! From parsed instructions to stages: the global `ARG`s before the first `FROM`, each
//! stage's base (an image, `scratch` or an earlier stage), the stages the target needs and
//! the order to build them in. Every instruction and flag is checked here, before anything
//! runs: an unknown or unsupported one is an error at its line, never skipped.

use std::collections::BTreeMap;

use super::error::{Located, Pos};
use super::parse::{Args, Dockerfile, Instruction};
use super::words;

/// Where a stage starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// `FROM scratch`: no layers.
    Scratch,
    /// An image reference, as berth's `from` (a registry reference).
    Image(String),
    /// An earlier (or later) stage, by index.
    Stage(usize),
}

#[derive(Debug, Clone)]
pub struct Stage {
    pub index: usize,
    /// `AS name`, lower case.
    pub name: Option<String>,
    pub base: Base,
    /// The `FROM` instruction.
    pub from: Instruction,
    /// The instructions after `FROM`.
    pub instructions: Vec<Instruction>,
}

#[derive(Debug, Clone)]
pub struct BuildPlan {
    pub escape: char,
    /// Global `ARG`s (before the first `FROM`) with their values (build argument, else
    /// default; `None`: declared without either).
    pub global_args: Vec<(String, Option<String>)>,
    pub stages: Vec<Stage>,
    /// The stages to build, each after the ones it needs; the last is the target.
    pub order: Vec<usize>,
    /// For each stage of `order`, the stages it needs (its base, `COPY --from`,
    /// `RUN --mount=…,from=`): stages that do not need each other build at once.
    pub needs: BTreeMap<usize, Vec<usize>>,
}

/// The flags each instruction accepts.
fn allowed_flags(keyword: &str) -> &'static [&'static str] {
    match keyword {
        "FROM" => &["platform"],
        "RUN" => &["mount", "network"],
        "COPY" => &["from", "chown", "chmod", "link"],
        "ADD" => &["chown", "chmod", "checksum", "link"],
        "HEALTHCHECK" => &[
            "interval",
            "timeout",
            "start-period",
            "start-interval",
            "retries",
        ],
        _ => &[],
    }
}

const SUPPORTED: [&str; 18] = [
    "FROM",
    "ARG",
    "ENV",
    "RUN",
    "COPY",
    "ADD",
    "WORKDIR",
    "USER",
    "LABEL",
    "EXPOSE",
    "ENTRYPOINT",
    "CMD",
    "VOLUME",
    "HEALTHCHECK",
    "STOPSIGNAL",
    "SHELL",
    "MAINTAINER",
    "ONBUILD",
];

/// Checks `file` and plans the build of `target` (a stage name; `None`: the last stage).
pub fn plan(
    file: &Dockerfile,
    build_args: &BTreeMap<String, String>,
    target: Option<&str>,
) -> Result<BuildPlan, Located> {
    let mut global_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for ins in &file.instructions {
        check_instruction(ins)?;
        if ins.keyword == "FROM" {
            stages.push(Stage {
                index: stages.len(),
                name: None,
                base: Base::Scratch,
                from: ins.clone(),
                instructions: Vec::new(),
            });
            continue;
        }
        match stages.last_mut() {
            Some(s) => s.instructions.push(ins.clone()),
            None if ins.keyword == "ARG" => {
                let lookup = |n: &str| lookup_args(&global_args, n);
                for (name, default) in arg_decls(ins, file.escape, &lookup)? {
                    let value = build_args.get(&name).cloned().or(default);
                    global_args.push((name, value));
                }
            }
            None => {
                return Err(Located::new(
                    ins.pos,
                    format!("{} before the first FROM", ins.keyword),
                    "only ARG may come before FROM; start the stage with `FROM image`",
                ))
            }
        }
    }
    if stages.is_empty() {
        return Err(Located::new(
            Pos { line: 1, col: 1 },
            "the Dockerfile has no FROM instruction",
            "start it with `FROM image` (e.g. `FROM debian:bookworm`)",
        ));
    }
    // Names first (a FROM may name any stage), then bases.
    for stage in &mut stages {
        let lookup = |n: &str| lookup_args(&global_args, n);
        let (image, name) = from_parts(&stage.from, file.escape, &lookup)?;
        stage.name = name;
        stage.base = if image.eq_ignore_ascii_case("scratch") {
            Base::Scratch
        } else {
            Base::Image(image)
        };
    }
    let names: BTreeMap<String, usize> = stages
        .iter()
        .filter_map(|s| s.name.clone().map(|n| (n, s.index)))
        .collect();
    for stage in &mut stages {
        if let Base::Image(image) = &stage.base {
            if let Some(&i) = names.get(&image.to_ascii_lowercase()) {
                stage.base = Base::Stage(i);
            }
        }
    }
    let target_index = match target {
        None => stages.len() - 1,
        Some(t) => *names.get(&t.to_ascii_lowercase()).ok_or_else(|| {
            Located::new(
                Pos { line: 1, col: 1 },
                format!("no stage named `{t}` (target)"),
                format!(
                    "stages: {}; fix `target`",
                    if names.is_empty() {
                        "none named".to_string()
                    } else {
                        names.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                ),
            )
        })?,
    };
    let mut order = Vec::new();
    let mut state = vec![Visit::New; stages.len()];
    let mut needs = BTreeMap::new();
    let lookup = |n: &str| lookup_args(&global_args, n);
    visit(
        target_index,
        &stages,
        &names,
        file.escape,
        &lookup,
        &mut state,
        &mut (&mut order, &mut needs),
    )?;
    Ok(BuildPlan {
        escape: file.escape,
        global_args,
        stages,
        order,
        needs,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Visit {
    New,
    Active,
    Done,
}

/// Depth-first over the stages `i` needs; a stage met again while active closes a cycle.
fn visit(
    i: usize,
    stages: &[Stage],
    names: &BTreeMap<String, usize>,
    escape: char,
    vars: words::Lookup<'_>,
    state: &mut Vec<Visit>,
    out: &mut (&mut Vec<usize>, &mut BTreeMap<usize, Vec<usize>>),
) -> Result<(), Located> {
    state[i] = Visit::Active;
    let deps = stage_deps(&stages[i], stages.len(), names, escape, vars)?;
    let mut needed: Vec<usize> = deps.iter().map(|(d, _)| *d).collect();
    needed.sort_unstable();
    needed.dedup();
    for (dep, pos) in deps {
        match state[dep] {
            Visit::Done => {}
            Visit::Active => {
                return Err(Located::new(
                    pos,
                    format!(
                        "stage `{}` depends on itself through stage `{}` (a cycle)",
                        stage_label(&stages[i]),
                        stage_label(&stages[dep])
                    ),
                    "a stage can only use stages that do not use it; reorder the FROM/COPY --from",
                ))
            }
            Visit::New => visit(dep, stages, names, escape, vars, state, out)?,
        }
    }
    state[i] = Visit::Done;
    out.0.push(i);
    out.1.insert(i, needed);
    Ok(())
}

fn stage_label(s: &Stage) -> String {
    s.name.clone().unwrap_or_else(|| s.index.to_string())
}

/// The stages `stage` needs (its base, `COPY --from`), with where each is named.
fn stage_deps(
    stage: &Stage,
    count: usize,
    names: &BTreeMap<String, usize>,
    escape: char,
    vars: words::Lookup<'_>,
) -> Result<Vec<(usize, Pos)>, Located> {
    let mut out = Vec::new();
    if let Base::Stage(b) = stage.base {
        out.push((b, stage.from.args_pos));
    }
    for ins in &stage.instructions {
        // `COPY --from=X` and `RUN --mount=type=bind,from=X` (a mount the run step cannot
        // read yet, e.g. one naming a stage's own variable, is reported by that step).
        let from: Vec<(String, Pos)> = match ins.keyword.as_str() {
            "COPY" => ins
                .flags
                .iter()
                .filter(|f| f.name == "from")
                .map(|f| Ok((flag_value(f, escape, vars)?, f.pos)))
                .collect::<Result<_, Located>>()?,
            "RUN" => ins
                .flags
                .iter()
                .filter(|f| f.name == "mount")
                .filter_map(|f| {
                    let v = flag_value(f, escape, vars).ok()?;
                    match super::run_mount::parse_mount(&v, "/").ok()? {
                        super::run_mount::MountRequest::Bind { from: Some(s), .. } => {
                            Some((s, f.pos))
                        }
                        _ => None,
                    }
                })
                .collect(),
            _ => continue,
        };
        for (v, pos) in from {
            if let Some(&i) = names.get(&v.to_ascii_lowercase()) {
                out.push((i, pos));
            } else if let Ok(i) = v.parse::<usize>() {
                if i >= count {
                    return Err(Located::new(
                        pos,
                        format!("--from={i}: the Dockerfile has only {count} stages"),
                        "name an earlier stage by its number (from 0) or its `AS` name",
                    ));
                }
                out.push((i, pos));
            }
        }
    }
    Ok(out)
}

/// A flag's value with variables expanded.
pub fn flag_value(
    f: &super::parse::Flag,
    escape: char,
    vars: words::Lookup<'_>,
) -> Result<String, Located> {
    let raw = f.value.as_deref().ok_or_else(|| {
        Located::new(
            f.pos,
            format!("--{} needs a value", f.name),
            format!("write --{}=VALUE", f.name),
        )
    })?;
    words::word(raw, escape, vars).map_err(|e| Located::new(f.pos, e, "fix the quoting"))
}

pub fn lookup_args(args: &[(String, Option<String>)], name: &str) -> Option<String> {
    args.iter()
        .rev()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.clone())
}

/// `FROM image [AS name]` → (image, name).
fn from_parts(
    ins: &Instruction,
    escape: char,
    vars: words::Lookup<'_>,
) -> Result<(String, Option<String>), Located> {
    let text = ins.args.text();
    let w = words::words(&text, escape, vars)
        .map_err(|e| Located::new(ins.args_pos, e, "fix the FROM line"))?;
    match w.as_slice() {
        [image] if !image.is_empty() => Ok((image.clone(), None)),
        [image, as_, name] if as_.eq_ignore_ascii_case("as") => {
            let name = name.to_ascii_lowercase();
            let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !ok {
                return Err(Located::new(
                    ins.args_pos,
                    format!("`{name}` is not a valid stage name"),
                    "stage names start with a letter and hold letters, digits, `_`, `.` or `-`",
                ));
            }
            Ok((image.clone(), Some(name)))
        }
        _ => Err(Located::new(
            ins.args_pos,
            format!("FROM expects `IMAGE [AS NAME]`, got `{text}`"),
            "write e.g. `FROM debian:bookworm AS build`",
        )),
    }
}

/// `ARG NAME[=default] ...` → declarations, defaults expanded.
pub fn arg_decls(
    ins: &Instruction,
    escape: char,
    vars: words::Lookup<'_>,
) -> Result<Vec<(String, Option<String>)>, Located> {
    let text = ins.args.text();
    let mut out = Vec::new();
    for raw in text.split_whitespace() {
        let (name, default) = match raw.split_once('=') {
            Some((n, v)) => {
                let v = words::word(v, escape, vars)
                    .map_err(|e| Located::new(ins.args_pos, e, "fix the ARG default"))?;
                (n.to_string(), Some(v))
            }
            None => (raw.to_string(), None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Located::new(
                ins.args_pos,
                format!("`{raw}` is not a valid ARG"),
                "write `ARG NAME` or `ARG NAME=default`",
            ));
        }
        out.push((name, default));
    }
    if out.is_empty() {
        return Err(Located::new(
            ins.pos,
            "ARG needs a name",
            "write `ARG NAME`",
        ));
    }
    Ok(out)
}

/// The instruction of an `ONBUILD` trigger, checked (errors at `pos`, where the trigger
/// is written or the `FROM` that runs it).
pub fn onbuild_trigger(text: &str, pos: Pos) -> Result<Instruction, Located> {
    let at = |l: Located| Located::new(pos, format!("ONBUILD `{text}`: {}", l.message), l.hint);
    let parsed = super::parse::parse(text).map_err(at)?;
    let [ins] = parsed.instructions.as_slice() else {
        return Err(Located::new(
            pos,
            "ONBUILD needs one instruction",
            "write e.g. `ONBUILD COPY . /app`",
        ));
    };
    if matches!(ins.keyword.as_str(), "ONBUILD" | "FROM" | "MAINTAINER") {
        return Err(Located::new(
            pos,
            format!("ONBUILD {} is not allowed", ins.keyword),
            "an ONBUILD trigger is any other instruction (Docker's rule)",
        ));
    }
    check_instruction(ins).map_err(at)?;
    let mut ins = ins.clone();
    ins.pos = pos;
    ins.args_pos = pos;
    for f in &mut ins.flags {
        f.pos = pos;
    }
    Ok(ins)
}

/// Known instruction, accepted flags, arguments present.
fn check_instruction(ins: &Instruction) -> Result<(), Located> {
    if !SUPPORTED.contains(&ins.keyword.as_str()) {
        return Err(Located::new(
            ins.pos,
            format!("unknown instruction `{}`", ins.keyword),
            "berth builds FROM, ARG, ENV, RUN, COPY, ADD, WORKDIR, USER, LABEL, EXPOSE, ENTRYPOINT, CMD, VOLUME, HEALTHCHECK, STOPSIGNAL, SHELL; fix the spelling or remove the line",
        ));
    }
    if ins.keyword == "ONBUILD" {
        onbuild_trigger(&ins.args.text(), ins.args_pos)?;
    }
    for f in &ins.flags {
        if !allowed_flags(&ins.keyword).contains(&f.name.as_str()) {
            let allowed = allowed_flags(&ins.keyword);
            return Err(Located::new(
                f.pos,
                format!("{} does not support the flag --{}", ins.keyword, f.name),
                if allowed.is_empty() {
                    format!("{} takes no flags; remove it", ins.keyword)
                } else {
                    format!(
                        "{} accepts {}; remove or replace it",
                        ins.keyword,
                        allowed
                            .iter()
                            .map(|a| format!("--{a}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
            ));
        }
    }
    let empty = match &ins.args {
        Args::Shell(s) => s.trim().is_empty(),
        Args::Exec(v) => v.is_empty() && !matches!(ins.keyword.as_str(), "CMD" | "ENTRYPOINT"),
    };
    if empty && ins.heredocs.is_empty() {
        return Err(Located::new(
            ins.pos,
            format!("{} needs arguments", ins.keyword),
            "see docs/dockerfile.md for the forms berth accepts",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::parse::parse;
    use super::*;

    fn plan_of(s: &str, target: Option<&str>) -> Result<BuildPlan, Located> {
        plan(&parse(s).unwrap(), &BTreeMap::new(), target)
    }

    #[test]
    fn stages_args_before_from_and_build_order() {
        let mut args = BTreeMap::new();
        args.insert("TAG".to_string(), "12".to_string());
        let f = parse("ARG TAG=11\nARG REG=r:5000\nFROM $REG/debian:$TAG AS base\nRUN x\nFROM base AS build\nRUN make\nFROM scratch AS unused\nFROM r/run\nCOPY --from=build /out /out\n").unwrap();
        let p = plan(&f, &args, None).unwrap();
        assert_eq!(p.stages[0].base, Base::Image("r:5000/debian:12".into()));
        assert_eq!(p.stages[1].base, Base::Stage(0));
        assert_eq!(p.stages[2].base, Base::Scratch);
        assert_eq!(p.order, [0, 1, 3], "the unused stage is not built");
        assert_eq!(p.needs[&3], [1], "{:?}", p.needs);
        assert_eq!(p.needs[&1], [0]);
        assert!(p.needs[&0].is_empty());

        let p = plan(&f, &args, Some("BUILD")).unwrap();
        assert_eq!(p.order, [0, 1]);
        assert!(plan(&f, &args, Some("nope"))
            .unwrap_err()
            .message
            .contains("no stage named `nope`"));
        let f2 = parse("FROM r/a AS a\nFROM r/b AS b\nRUN --mount=type=bind,from=a,target=/a x\nFROM r/c\nCOPY --from=b /x /x\nCOPY --from=a /y /y\n").unwrap();
        let p2 = plan(&f2, &args, None).unwrap();
        assert_eq!(p2.needs[&1], [0], "a mount's from= is a dependency");
        assert_eq!(p2.needs[&2], [0, 1]);
    }

    #[test]
    fn cycles_unknown_instructions_and_flags_are_errors_at_their_line() {
        let e = plan_of(
            "FROM x AS a\nCOPY --from=b /x /x\nFROM x AS b\nCOPY --from=a /y /y\n",
            Some("a"),
        )
        .unwrap_err();
        assert!(e.message.contains("cycle"), "{e:?}");
        assert_eq!(e.pos.line, 4);
        let e = plan_of("FROM x\nRUN a\nFOO bar\n", None).unwrap_err();
        assert_eq!((e.pos.line, e.pos.col), (3, 1));
        assert!(e.message.contains("unknown instruction `FOO`"));
        let e = plan_of("FROM x\nRUN --security=insecure a\n", None).unwrap_err();
        assert_eq!((e.pos.line, e.pos.col), (2, 5));
        assert!(e.message.contains("--security"), "{e:?}");
        let e = plan_of("FROM x\nONBUILD ONBUILD RUN a\n", None).unwrap_err();
        assert!(
            e.message.contains("ONBUILD ONBUILD is not allowed"),
            "{e:?}"
        );
        assert_eq!((e.pos.line, e.pos.col), (2, 9));
        let e = plan_of("FROM x\nONBUILD FROM y\n", None).unwrap_err();
        assert!(e.message.contains("ONBUILD FROM is not allowed"), "{e:?}");
        let e = plan_of("FROM x\nONBUILD COPY --nope a b\n", None).unwrap_err();
        assert!(
            e.message
                .contains("ONBUILD `COPY --nope a b`: COPY does not support the flag --nope"),
            "{e:?}"
        );
        assert!(plan_of(
            "FROM x\nONBUILD RUN echo $HOME\nONBUILD COPY . /app\n",
            None
        )
        .is_ok());
        let e = plan_of("RUN a\nFROM x\n", None).unwrap_err();
        assert!(e.message.contains("before the first FROM"));
        let e = plan_of(
            "FROM x AS a\nFROM a AS a2\nFROM x\nCOPY --from=7 /a /a\n",
            None,
        )
        .unwrap_err();
        assert!(e.message.contains("only 3 stages"), "{e:?}");
    }
}
