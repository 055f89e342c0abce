//! `[secrets]`: values read on the host at `up` (a variable, a file, a command), readable
//! inside at /run/secrets/NAME (a tmpfs, 0400, the shell user's) and as variables when
//! asked, found nowhere under the berth home (state, logs, writable layer, image store), in
//! `status --json`, `berth up`'s or `berth logs`' output.

use std::process::Stdio;

use berth_e2e::host::files_containing;
use berth_e2e::project::Project;
use berth_e2e::{require_root, text, Berth};

const TOML: &str = r#"
name = "{name}"
[image]
from = "rootfs:./rootfs"
[shell]
user = "dev"
[secrets]
TOKEN = { env = "BERTH_TEST_TOKEN", as_env = true }
FILE_SECRET = { file = "secret.txt" }
CMD_SECRET = { command = ["sh", "-c", "echo cmd-$BERTH_TEST_MARK"] }
[services.probe]
command = ["sh", "-c", "[ -n \"$TOKEN\" ] && echo token-set; [ -r /run/secrets/CMD_SECRET ] && echo file-readable; exec sleep 1000"]
"#;

fn project(toml: &str) -> Project {
    let p = Project::new("berth-proj-", "secrets-", toml);
    let rootfs = p.path().join("rootfs");
    let mut passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    passwd.push_str("dev:x:1000:1000::/tmp:/bin/sh\neve:x:1001:1001::/tmp:/bin/sh\n");
    std::fs::write(rootfs.join("etc/passwd"), passwd).unwrap();
    p
}

#[test]
fn secrets_are_readable_inside_and_written_nowhere() {
    require_root!();
    let mark = format!("mark{}x", std::process::id());
    let (env_secret, file_secret, cmd_secret) = (
        format!("env-{mark}"),
        format!("file-{mark}"),
        format!("cmd-{mark}"),
    );
    let p = project(TOML);
    std::fs::write(p.path().join("secret.txt"), &file_secret).unwrap();
    let b = Berth::new();
    let before = p.snapshot(&b);
    let berth = |args: &[&str], token: &str| {
        let o = b
            .cmd()
            .current_dir(p.path())
            .args(args)
            .env("BERTH_TEST_TOKEN", token)
            .env("BERTH_TEST_MARK", &mark)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let (out, err) = text(&o);
        assert!(o.status.success(), "berth {args:?}: {out}\n{err}");
        format!("{out}{err}")
    };
    let mut printed = berth(&["up"], &env_secret);

    let out = berth(
        &[
            "exec",
            "--",
            "sh",
            "-c",
            "for s in TOKEN FILE_SECRET CMD_SECRET; do cat /run/secrets/$s; echo; done; \
             stat -c '%a %U' /run/secrets/TOKEN; echo \"env=$TOKEN file-env=${FILE_SECRET:-unset}\"; \
             grep ' /run/secrets ' /proc/mounts | cut -d' ' -f3",
        ],
        "",
    );
    assert_eq!(
        out,
        format!("{env_secret}\n{file_secret}\n{cmd_secret}\n400 dev\nenv={env_secret} file-env=unset\ntmpfs\n")
    );
    // Another user inside cannot read them.
    let out = berth(
        &[
            "exec",
            "--user",
            "eve",
            "--",
            "sh",
            "-c",
            "cat /run/secrets/TOKEN 2>&1; true",
        ],
        "",
    );
    assert!(
        out.contains("Permission denied") && !out.contains(&mark),
        "{out}"
    );
    // The service got the variable and the files before it started.
    let logs = b.log_once_it_shows(p.path(), "probe", "file-readable");
    assert!(
        logs.contains("token-set") && logs.contains("file-readable"),
        "{logs}"
    );
    printed.push_str(&logs);

    // A changed value reaches the files at the next `up`, and they survive down/up.
    let rotated = format!("rotated-{mark}");
    printed.push_str(&berth(&["up"], &rotated));
    assert_eq!(
        berth(&["exec", "--", "cat", "/run/secrets/TOKEN"], ""),
        rotated
    );
    printed.push_str(&berth(&["down"], ""));
    printed.push_str(&berth(&["up"], &rotated));
    assert_eq!(
        berth(&["exec", "--", "cat", "/run/secrets/TOKEN"], ""),
        rotated
    );

    // Nowhere under the berth home (records, spec, logs, writable layer, image store), nor in
    // what berth printed or `status --json`.
    printed.push_str(&berth(&["status", "--json"], ""));
    printed.push_str(&berth(&["status"], ""));
    assert!(
        !printed.contains(&mark),
        "berth printed a secret:\n{printed}"
    );
    let control = files_containing(p.path(), &mark);
    assert!(!control.is_empty(), "the search does not find secret.txt");
    let found = files_containing(b.home.path(), &mark);
    assert!(found.is_empty(), "a secret was written to {found:?}");

    berth(&["destroy"], "");
    p.snapshot(&b).assert_nothing_leaked(&before);
}

#[test]
fn a_secret_that_cannot_be_read_stops_up_before_anything_starts() {
    require_root!();
    let p = project(
        r#"
name = "{name}"
[image]
from = "rootfs:./rootfs"
[secrets]
API = { command = ["sh", "-c", "printf 'leaked-%s' output-marker; exit 3"] }
"#,
    );
    let b = Berth::new();
    let before = p.snapshot(&b);
    let o = b.run_in(p.path(), &["up"]);
    let (out, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("secret API")
            && err.contains("failed")
            && !err.contains("leaked-output-marker"),
        "{out}\n{err}"
    );
    p.write(
        r#"
name = "{name}"
[image]
from = "rootfs:./rootfs"
[secrets]
API = { env = "BERTH_TEST_SURELY_UNSET" }
"#,
    );
    let o = b.run_in(p.path(), &["up"]);
    let err = text(&o).1;
    assert!(
        !o.status.success() && err.contains("BERTH_TEST_SURELY_UNSET is not set"),
        "{err}"
    );
    assert!(
        !b.home.path().join("envs").exists()
            || std::fs::read_dir(b.home.path().join("envs"))
                .unwrap()
                .next()
                .is_none(),
        "a failed first up left an environment"
    );
    p.snapshot(&b).assert_nothing_leaked(&before);
}
