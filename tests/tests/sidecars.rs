//! Sidecar services (`[services.NAME]` with `image`) through the real binary. Their format is
//! built and checked; their lifecycle is not yet, so every command that would start one must
//! refuse the file with `not-built-yet` at the sidecar's `image` before anything exists.

use berth_e2e::project::Project;
use berth_e2e::{text, Berth};

const WITH_SIDECAR: &str = "name = \"{name}\"\n[image]\nfrom = \"rootfs:./rootfs\"\n[services.web]\ncommand = [\"sleep\", \"1000\"]\n[services.cache]\nimage = \"rootfs:./rootfs\"\ncommand = [\"sleep\", \"1000\"]\nmounts = [{ source = \"cache-data\", target = \"/data\", type = \"volume\" }]\nready = { tcp = 6379, timeout = \"10s\" }\n";

#[test]
fn validate_up_and_run_refuse_a_sidecar_at_its_line_and_start_nothing() {
    let b = Berth::new();
    let p = Project::new("berth-sidecar-", "sc-", WITH_SIDECAR);
    for args in [&["validate"][..], &["up"][..], &["run", "--", "true"][..]] {
        let out = b.run_in(p.path(), args);
        let (stdout, stderr) = text(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "berth {args:?}:\n{stdout}\n{stderr}"
        );
        for expected in [
            "error[not-built-yet]: `services.cache.image`",
            "--> berth.toml:7:9",
            "7 | image = \"rootfs:./rootfs\"",
            "= help: for now install the server with [image].packages and run it as a process service",
        ] {
            assert!(
                stderr.contains(expected),
                "berth {args:?}: missing {expected:?} in:\n{stderr}"
            );
        }
    }
    // Nothing was started or recorded: no environment, no volume.
    let ls = b.ok(p.path(), &["ls", "--json"]);
    assert_eq!(ls.trim(), "[]", "{ls}");
    let volumes = b.home.path().join("volumes");
    assert!(
        !volumes.exists() || std::fs::read_dir(&volumes).unwrap().next().is_none(),
        "a volume was made for a refused file"
    );
}

#[test]
fn sidecar_mistakes_are_reported_with_their_lines_in_json() {
    let b = Berth::new();
    let p = Project::new(
        "berth-sidecar-bad-",
        "sc-",
        "[image]\nfrom = \"rootfs:./rootfs\"\n[services.a]\nimage = \"rootfs:./rootfs\"\nafter = [\"b\"]\nready = { tcp = 5432 }\n[services.b]\nimage = \"rootfs:./rootfs\"\nafter = [\"a\"]\nready = { tcp = 5432 }\n[services.web]\ncommand = [\"./app\"]\nready = { tcp = 80 }\n",
    );
    let out = b.run_in(p.path(), &["validate", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let found: Vec<(String, u64, u64)> = report["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["code"].as_str().unwrap().to_string(),
                d["line"].as_u64().unwrap(),
                d["column"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, u64, u64)> = [
        ("not-built-yet", 4, 9),
        ("not-built-yet", 8, 9),
        ("service-cycle", 9, 10),
        ("duplicate-service-port", 10, 17),
        ("misplaced-key", 13, 1),
    ]
    .iter()
    .map(|(c, l, col)| (c.to_string(), *l, *col))
    .collect();
    assert_eq!(found, expected, "{}", String::from_utf8_lossy(&out.stdout));
}
