//! `berth validate`, `berth init` and `berth schema` through the real binary.

use std::path::Path;

use berth_e2e::{text, Berth};

fn project(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().unwrap()
}

const GOOD: &str = "name = \"demo\"\n[image]\nfrom = \"docker.io/library/alpine:3.20\"\n[[mounts]]\nsource = \".\"\ntarget = \"/work\"\n";

const BAD: &str = "name = \"Demo\"\n[imgae]\nfrom = \"alpine\"\n[image]\nfrom = \"alpine\"\n[[ports]]\nhost = 0\nguest = 80\n";

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn validate_good_file_exits_zero() {
    let b = Berth::new();
    let dir = project("berth-val-good-");
    write(dir.path(), "berth.toml", GOOD);
    let out = b.run_in(dir.path(), &["validate"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert_eq!(stdout, "ok: berth.toml (demo)\n");
    assert_eq!(stderr, "");
}

#[test]
fn validate_bad_file_reports_every_error() {
    let b = Berth::new();
    let dir = project("berth-val-bad-");
    write(dir.path(), "berth.toml", BAD);
    let out = b.run_in(dir.path(), &["validate"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stdout, "");
    for expected in [
        "error[bad-name]",
        "--> berth.toml:1:8",
        "1 | name = \"Demo\"",
        "error[unknown-key]: unknown key `imgae`",
        "--> berth.toml:2:2",
        "2 | [imgae]",
        "  |  ^^^^^",
        "= help: did you mean `image`?",
        "error[bad-port]",
        "--> berth.toml:7:8",
        "7 | host = 0",
        "error: berth.toml has 3 errors",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(
        !stderr.contains("\x1b["),
        "NO_COLOR is set and stderr is not a terminal"
    );
}

#[test]
fn validate_json() {
    let b = Berth::new();
    let dir = project("berth-val-json-");
    write(dir.path(), "berth.toml", BAD);
    let out = b.run_in(dir.path(), &["validate", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["file"], "berth.toml");
    let diags = v["diagnostics"].as_array().unwrap();
    let codes: Vec<(&str, u64, u64)> = diags
        .iter()
        .map(|d| {
            (
                d["code"].as_str().unwrap(),
                d["line"].as_u64().unwrap(),
                d["column"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        codes,
        [
            ("bad-name", 1, 8),
            ("unknown-key", 2, 2),
            ("bad-port", 7, 8)
        ]
    );
    assert_eq!(diags[1]["severity"], "error");
    assert_eq!(diags[1]["help"], "did you mean `image`?");
    assert!(diags[1]["message"].as_str().unwrap().contains("imgae"));

    write(dir.path(), "berth.toml", GOOD);
    let out = b.run_in(dir.path(), &["validate", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["name"], "demo");
    assert_eq!(v["diagnostics"], serde_json::json!([]));
}

#[test]
fn validate_shows_warnings_and_still_succeeds() {
    let b = Berth::new();
    let dir = project("berth-val-warn-");
    write(
        dir.path(),
        "berth.toml",
        "[image]\nfrom = \"alpine\"\n[network]\nmode = \"none\"\n[[ports]]\nhost = 80\nguest = 80\n",
    );
    let out = b.run_in(dir.path(), &["validate"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.starts_with("ok: berth.toml ("));
    assert!(stderr.contains("warning[ignored-setting]"), "{stderr}");
    assert!(stderr.contains("--> berth.toml:5:3"), "{stderr}");
}

#[test]
fn discovery_from_a_subfolder_and_the_f_and_c_flags() {
    let b = Berth::new();
    let dir = project("berth-disc-");
    write(dir.path(), "berth.toml", GOOD);
    let sub = dir.path().join("src/deep");
    std::fs::create_dir_all(&sub).unwrap();

    // From a subfolder: the parent's file, shown with its full path.
    let out = b.run_in(&sub, &["validate"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        stdout,
        format!("ok: {} (demo)\n", dir.path().join("berth.toml").display())
    );

    // -C changes folder first.
    let out = b.run_in(
        Path::new("/"),
        &["-C", dir.path().to_str().unwrap(), "validate"],
    );
    assert_eq!(text(&out).0, "ok: berth.toml (demo)\n");

    // -f names a file anywhere, relative to the (possibly -C changed) folder.
    write(&sub, "other.toml", BAD);
    let out = b.run_in(dir.path(), &["-f", "src/deep/other.toml", "validate"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("--> src/deep/other.toml:2:2"), "{stderr}");
    let out = b.run_in(
        Path::new("/"),
        &[
            "-C",
            dir.path().to_str().unwrap(),
            "validate",
            "-f",
            "src/deep/other.toml",
        ],
    );
    assert_eq!(out.status.code(), Some(1));

    // A missing -f file.
    let out = b.run_in(dir.path(), &["validate", "-f", "nope.toml"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("error[unreadable]"), "{stderr}");
}

#[test]
fn no_berth_toml_anywhere_says_what_to_do() {
    let b = Berth::new();
    let dir = project("berth-none-");
    if dir
        .path()
        .ancestors()
        .any(|p| p.join("berth.toml").is_file())
    {
        eprintln!(
            "skipping: a berth.toml exists above {}",
            dir.path().display()
        );
        return;
    }
    let out = b.run_in(dir.path(), &["validate"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains(&format!(
            "no berth.toml in {} or any parent folder; run `berth init` to create one",
            dir.path().display()
        )),
        "{stderr}"
    );
}

#[test]
fn init_writes_a_valid_file_and_refuses_to_overwrite() {
    let b = Berth::new();
    let parent = project("berth-init-");
    let dir = parent.path().join("My App");
    std::fs::create_dir(&dir).unwrap();

    let out = b.run_in(&dir, &["init"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.contains("from template `debian` (environment `my-app`)"),
        "{stdout}"
    );
    let written = std::fs::read_to_string(dir.join("berth.toml")).unwrap();
    assert_eq!(
        written,
        envfile_spec::templates::get("debian").unwrap().text
    );
    assert_eq!(b.run_in(&dir, &["validate"]).status.code(), Some(0));

    // No overwrite without --force, and the file is untouched.
    std::fs::write(dir.join("berth.toml"), "# mine\n").unwrap();
    let out = b.run_in(&dir, &["init", "--template", "rust"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("already exists; pass --force"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(dir.join("berth.toml")).unwrap(),
        "# mine\n"
    );

    let out = b.run_in(
        &dir,
        &["init", "--template", "rust", "--force", "--name", "svc-1"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    let written = std::fs::read_to_string(dir.join("berth.toml")).unwrap();
    assert!(written.contains("name = \"svc-1\""));
    assert!(
        written.contains("from = \"debootstrap:bookworm\""),
        "{written}"
    );
    let out = b.run_in(&dir, &["validate"]);
    assert_eq!(text(&out).0, "ok: berth.toml (svc-1)\n");

    // No temp files left behind.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["berth.toml"]);
}

#[test]
fn init_rejects_bad_names_and_unknown_templates() {
    let b = Berth::new();
    let dir = project("berth-init-bad-");
    let out = b.run_in(dir.path(), &["init", "--name", "Bad Name"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("--name \"Bad Name\""));
    let out = b.run_in(dir.path(), &["init", "--template", "cobol"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("there is no template \"cobol\""));
    assert!(!dir.path().join("berth.toml").exists());
}

#[test]
fn init_list_shows_every_template() {
    let b = Berth::new();
    let dir = project("berth-init-list-");
    let out = b.run_in(dir.path(), &["init", "--list"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out).0;
    for name in [
        "debian",
        "alpine",
        "rust",
        "python",
        "node",
        "go",
        "busybox",
        "rust-docker",
        "python-docker",
        "node-docker",
        "go-docker",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(name)),
            "{name} missing from:\n{stdout}"
        );
    }
    assert!(stdout.contains("(default)"));
    assert!(!dir.path().join("berth.toml").exists());
}

#[test]
fn every_template_through_the_binary() {
    let b = Berth::new();
    for t in envfile_spec::templates::list() {
        let dir = project("berth-init-each-");
        let out = b.run_in(dir.path(), &["init", "-t", t.name]);
        assert_eq!(out.status.code(), Some(0), "{}: {}", t.name, text(&out).1);
        let out = b.run_in(dir.path(), &["validate"]);
        assert_eq!(out.status.code(), Some(0), "{}: {}", t.name, text(&out).1);
    }
}

#[test]
fn init_from_devcontainer() {
    let b = Berth::new();
    let dir = project("berth-devc-");
    std::fs::create_dir(dir.path().join(".devcontainer")).unwrap();
    write(
        &dir.path().join(".devcontainer"),
        "devcontainer.json",
        r#"{
  // Python project
  "name": "Py Tools",
  "image": "mcr.microsoft.com/devcontainers/python:1-3.12-bookworm",
  "features": { "ghcr.io/devcontainers/features/node:1": {} },
  "forwardPorts": [8000],
  "containerEnv": { "PYTHONUNBUFFERED": "1" },
  "mounts": [ "source=pip-cache,target=/home/vscode/.cache/pip,type=volume" ],
  "postCreateCommand": "pip install -r requirements.txt",
  "remoteUser": "vscode",
}"#,
    );
    let out = b.run_in(dir.path(), &["init", "--from-devcontainer"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("created berth.toml from"), "{stdout}");
    assert!(stderr.contains("not converted"), "{stderr}");
    // The feature is fetched from its registry, which this machine cannot reach: listed.
    assert!(
        stderr.contains(
            "  - features.ghcr.io/devcontainers/features/node:1: not converted: cannot fetch it"
        ),
        "{stderr}"
    );
    let written = std::fs::read_to_string(dir.path().join("berth.toml")).unwrap();
    assert!(written.contains("name = \"py-tools\""), "{written}");
    assert!(written.contains("on_create = [\n    \"pip install -r requirements.txt\",\n]"));
    let out = b.run_in(dir.path(), &["validate", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], true, "{v}");

    // Refuses to overwrite; --force with --name and an explicit path.
    std::fs::rename(
        dir.path().join(".devcontainer/devcontainer.json"),
        dir.path().join("dc.json"),
    )
    .unwrap();
    let out = b.run_in(dir.path(), &["init", "--from-devcontainer", "dc.json"]);
    assert_eq!(out.status.code(), Some(1));
    let out = b.run_in(
        dir.path(),
        &[
            "init",
            "--from-devcontainer",
            "dc.json",
            "--force",
            "--name",
            "tools",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    let written = std::fs::read_to_string(dir.path().join("berth.toml")).unwrap();
    assert!(written.contains("name = \"tools\""), "{written}");
    assert!(!written.contains("py-tools"));

    // A broken devcontainer.json is an error and writes nothing new.
    write(dir.path(), "broken.json", "{ \"image\": ");
    let out = b.run_in(
        dir.path(),
        &["init", "--from-devcontainer", "broken.json", "--force"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("broken.json"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("berth.toml")).unwrap(),
        written
    );
}

#[test]
fn schema_prints_json() {
    let b = Berth::new();
    let dir = project("berth-schema-");
    let out = b.run_in(dir.path(), &["schema"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["$schema"], "http://json-schema.org/draft-07/schema#");
    assert!(v["properties"]["image"]["properties"]["from"].is_object());
}

/// Runs `berth validate` in `dir` on a pseudo-terminal (util-linux `script`), returning what
/// the terminal showed; `None` when `script` is not installed.
fn validate_on_a_terminal(b: &Berth, dir: &Path, no_color: Option<&str>) -> Option<String> {
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-q", "-e", "-c"])
        .arg(format!("{} validate", berth_e2e::berth_bin().display()))
        .arg("/dev/null")
        .current_dir(dir)
        .env("BERTH_HOME", b.home.path())
        .stdin(std::process::Stdio::null());
    match no_color {
        Some(v) => cmd.env("NO_COLOR", v),
        None => cmd.env_remove("NO_COLOR"),
    };
    let out = cmd.output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn colors_only_on_a_terminal_without_no_color() {
    let b = Berth::new();
    let dir = project("berth-color-");
    write(dir.path(), "berth.toml", BAD);
    let Some(colored) = validate_on_a_terminal(&b, dir.path(), None) else {
        eprintln!("skipping: util-linux `script` is not installed (apt-get install bsdutils)");
        return;
    };
    assert!(colored.contains("\x1b[1;31merror[bad-name]"), "{colored:?}");
    let plain = validate_on_a_terminal(&b, dir.path(), Some("1")).unwrap();
    assert!(plain.contains("error[bad-name]"), "{plain:?}");
    assert!(!plain.contains("\x1b["), "{plain:?}");
}
