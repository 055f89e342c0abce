//! `berth open`: installs the `Host berth-NAME` entries into ~/.ssh, prints the IDE's
//! command, and runs the IDE's launcher when it is on PATH (a recorded stand-in for `code`:
//! no real IDE runs here).

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use berth_e2e::project::Project;
use berth_e2e::{require_root, text, Berth};

const TOML: &str = r#"
name = "{name}"
[image]
from = "rootfs:./rootfs"
[shell]
user = "root"
workdir = "/srv/my app"
"#;

#[test]
fn open_installs_the_ssh_entries_and_runs_the_ides_launcher() {
    require_root!();
    let p = Project::new("berth-proj-", "open-", TOML);
    std::fs::create_dir_all(p.path().join("rootfs/srv/my app")).unwrap();
    let b = Berth::new();
    let home = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    let record = bin.path().join("args");
    let code = bin.path().join("code");
    std::fs::write(
        &code,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\n",
            record.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&code, std::fs::Permissions::from_mode(0o755)).unwrap();
    let open = |args: &[&str], path: &str| {
        b.cmd()
            .current_dir(p.path())
            .args(args)
            .env("HOME", home.path())
            .env("PATH", path)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    // Not running: a clear error, nothing launched.
    let o = open(
        &["open"],
        &format!("{}:/usr/bin:/bin", bin.path().display()),
    );
    assert!(!o.status.success() && !record.exists(), "{:?}", text(&o));
    b.ok(p.path(), &["up"]);

    let uri = format!("vscode-remote://ssh-remote+berth-{}/srv/my%20app", p.name);
    let o = open(
        &["open"],
        &format!("{}:/usr/bin:/bin", bin.path().display()),
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert_eq!(out, format!("code --folder-uri {uri}\n"));
    assert_eq!(
        std::fs::read_to_string(&record).unwrap(),
        format!("--folder-uri\n{uri}\n")
    );
    let entries = std::fs::read_to_string(home.path().join(".ssh/berth_config")).unwrap();
    assert!(
        entries.contains(&format!("Host berth-{}\n", p.name)) && entries.contains("ProxyCommand"),
        "{entries}"
    );
    let config = std::fs::read_to_string(home.path().join(".ssh/config")).unwrap();
    assert!(config.contains("berth_config"), "{config}");

    // No launcher on PATH: the command is printed, with a note, and nothing fails.
    let o = open(&["open", "--ide", "jetbrains"], "/usr/bin:/bin");
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(
        out.starts_with(&format!(
            "gateway jetbrains-gateway://connect#type=ssh&deploy=true&host=berth-{}&port=22&projectPath=/srv/my%20app&user=root",
            p.name
        )),
        "{out}"
    );
    assert!(err.contains("gateway is not on PATH"), "{err}");
    // Still one Include line after a second install.
    let config = std::fs::read_to_string(home.path().join(".ssh/config")).unwrap();
    assert_eq!(config.matches("Include ").count(), 1, "{config}");
    // An unknown IDE is a usage error.
    let o = open(&["open", "--ide", "emacs"], "/usr/bin:/bin");
    assert!(!o.status.success() && text(&o).1.contains("code, cursor, zed, jetbrains"));

    b.ok(p.path(), &["destroy"]);
}
