//! The language templates end to end on a machine that reaches only the Debian mirror (and the
//! language registries): `berth init --template X`, `berth up`, then the language's own test
//! runner on a tiny project, in the environment (`exec`) and in a throw-away one (`run`).
//! Each test starts from the shared `debootstrap:bookworm` base (`berth_e2e::debian`); the
//! packages come from the mirror during `up`.

use std::time::Instant;

use berth_e2e::{require_debian, Berth};

/// `berth init --template NAME` in a fresh folder holding `files`, `up`, then `test` inside
/// the environment and in a `berth run`; each output must contain `expect`.
fn template_runs_its_tests(template: &str, files: &[(&str, &str)], test: &[&str], expect: &str) {
    // A checkout of root's in a private workspace (mode 0700), as a CI job running as root
    // has it: the environment's root may write there (build outputs such as cargo's target/).
    let workspace = tempfile::Builder::new()
        .prefix("berth-tpl-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(
        workspace.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let dir = workspace.path().join("project");
    std::fs::create_dir(&dir).unwrap();
    for (path, body) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    let b = Berth::new();
    berth_e2e::debian::seed_bookworm(&b);
    let name = format!("tpl-{template}-{}", std::process::id());
    b.ok_combined(&dir, &["init", "--template", template, "--name", &name]);
    let toml = std::fs::read_to_string(dir.join("berth.toml")).unwrap();
    assert!(toml.contains("debootstrap:bookworm"), "{toml}");
    let t0 = Instant::now();
    b.ok_combined(&dir, &["up", "--publish-auto"]);
    eprintln!(
        "{template}: up (packages from the mirror) took {:?}",
        t0.elapsed()
    );
    let mut exec = vec!["exec", "--"];
    exec.extend_from_slice(test);
    let out = b.ok_combined(&dir, &exec);
    assert!(out.contains(expect), "{template} test inside:\n{out}");
    // The template's ports are taken by the running environment: a run picks others.
    let mut run = vec!["run", "--publish-auto", "--"];
    run.extend_from_slice(test);
    let out = b.ok_combined(&dir, &run);
    assert!(out.contains(expect), "{template} test in berth run:\n{out}");
    eprintln!("{template}: everything took {:?}", t0.elapsed());
    b.ok_combined(&dir, &["destroy", "--volumes"]);
}

#[test]
fn python_template_runs_unittest() {
    require_debian!();
    template_runs_its_tests(
        "python",
        &[
            ("hello.py", "def greet(n):\n    return f\"hello {n}\"\n"),
            (
                "test_hello.py",
                "import unittest\nfrom hello import greet\n\nclass T(unittest.TestCase):\n    def test_greet(self):\n        self.assertEqual(greet('berth'), 'hello berth')\n",
            ),
        ],
        &["python3", "-m", "unittest", "-v"],
        "Ran 1 test",
    );
}

#[test]
fn node_template_runs_node_test() {
    require_debian!();
    template_runs_its_tests(
        "node",
        &[
            (
                "package.json",
                "{\"name\": \"hello\", \"version\": \"1.0.0\", \"scripts\": {\"test\": \"node --test\"}}\n",
            ),
            (
                "test/hello.test.js",
                "const test = require('node:test');\nconst assert = require('node:assert');\ntest('greets', () => { assert.strictEqual(`hello ${'berth'}`, 'hello berth'); });\n",
            ),
        ],
        &["npm", "test"],
        "# pass 1",
    );
}

#[test]
fn rust_template_runs_cargo_test() {
    require_debian!();
    template_runs_its_tests(
        "rust",
        &[
            (
                "Cargo.toml",
                "[package]\nname = \"hello\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
            ),
            (
                "src/lib.rs",
                "pub fn greet(n: &str) -> String { format!(\"hello {n}\") }\n\n#[test]\nfn greets() { assert_eq!(greet(\"berth\"), \"hello berth\"); }\n",
            ),
        ],
        &["cargo", "test", "--offline"],
        "test greets ... ok",
    );
}

#[test]
fn go_template_runs_go_test() {
    require_debian!();
    template_runs_its_tests(
        "go",
        &[
            ("go.mod", "module example.com/hello\n\ngo 1.19\n"),
            (
                "hello.go",
                "package hello\n\nfunc Greet(n string) string { return \"hello \" + n }\n",
            ),
            (
                "hello_test.go",
                "package hello\n\nimport \"testing\"\n\nfunc TestGreet(t *testing.T) {\n\tif Greet(\"berth\") != \"hello berth\" {\n\t\tt.Fatal(\"bad\")\n\t}\n}\n",
            ),
        ],
        &["go", "test", "-v", "./..."],
        "--- PASS: TestGreet",
    );
}
