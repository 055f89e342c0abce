//! Real project layouts on a `debootstrap:bookworm` base, working on the first try: a Python
//! package (`pip install -e .` cached in the image through `image.inputs`, `on_create`
//! before services) and a Node package (`npm ci` from its lockfile), with every HTTPS fetch
//! going through the host's TLS-intercepting proxy, trusted through the host's CA
//! certificates (`image.host_ca`). Needs root, debootstrap and the Debian mirror, PyPI and
//! npm reachable (CI has all of them).

use std::fs;
use std::path::Path;

use berth_e2e::{require_debian, require_root, text, Berth};

fn write(dir: &Path, rel: &str, content: &str) {
    let p = dir.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

/// `berth up` in `dir`: (success, stdout + stderr).
fn up(b: &Berth, dir: &Path) -> (bool, String) {
    let o = b.run_in(dir, &["up"]);
    let (out, err) = text(&o);
    (o.status.success(), format!("{out}{err}"))
}

/// `berth exec -- sh -c SCRIPT` in `dir`: stdout, or a panic with everything.
fn exec(b: &Berth, dir: &Path, script: &str) -> String {
    let o = b.run_in(dir, &["exec", "--", "/bin/sh", "-c", script]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "`{script}` failed:\n{out}\n{err}");
    out
}

/// Lines of `up`'s output announcing a build step that ran (not cached): `LABEL …`.
fn steps_run(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter(|l| l.ends_with(" …"))
        .map(|l| l.trim_end_matches(" …"))
        .collect()
}

const PYPROJECT: &str = r#"[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "greeter"
version = "0.1.0"
dependencies = ["six==1.16.0"]

[tool.setuptools.packages.find]
where = ["src"]
"#;

/// The Python package: the dependency install (`pip install -e .`, fetching setuptools and
/// six from PyPI through the proxy) is a cached setup step that sees only the inputs; an edit
/// to the sources rebuilds nothing, an edit to pyproject.toml reruns the step (not the
/// packages); `on_create` runs once per writable layer, before services, with progress lines;
/// with `host_ca = false` the same build fails on the proxy's certificate.
#[test]
fn python_package_with_cached_editable_install_on_create_and_host_cas() {
    require_debian!();
    let b = Berth::new();
    berth_e2e::debian::seed_bookworm(&b);
    let project = tempfile::Builder::new()
        .prefix("berth-py-")
        .tempdir()
        .unwrap();
    let dir = project.path();
    write(dir, "pyproject.toml", PYPROJECT);
    write(dir, "src/greeter/__init__.py", "GREETING = \"hello\"\n");
    write(
        dir,
        "tests/test_greeter.py",
        "import greeter\n\ndef test_greeting():\n    assert greeter.GREETING == \"hello\"\n",
    );
    let berth_toml = r#"on_create = ["python3 -c 'import greeter, six' && echo created >> /root/created.log"]
on_up = ["echo on-up-ran"]

[image]
from = "debootstrap:bookworm"
packages = ["python3-pip"]
inputs = ["pyproject.toml", "src/*/__init__.py"]
setup = ["pip install -e ."]

[env]
PIP_BREAK_SYSTEM_PACKAGES = "1"

[[mounts]]
source = "."
target = "/work"

[services.probe]
command = "if test -e /root/created.log; then echo after-on-create; else echo before-on-create; fi > /tmp/probe; exec sleep 100000"
"#;
    write(dir, "berth.toml", berth_toml);

    // First up: every step runs; pip reached PyPI through the proxy.
    let (ok, out) = up(&b, dir);
    assert!(ok, "first up failed:\n{out}");
    let ran = steps_run(&out);
    assert!(
        ran.contains(&"host CA certificates")
            && ran.contains(&"packages: python3-pip")
            && ran.contains(&"setup[0]: pip install -e ."),
        "{ran:?}\n{out}"
    );
    assert!(
        ran.iter()
            .any(|s| s.starts_with("inputs: pyproject.toml src/greeter/__init__.py → /work")),
        "{out}"
    );
    assert!(out.contains("setup[0]: pip install -e . done in "), "{out}");
    assert!(out.contains("on_create 1/1: python3 -c"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("on_create 1/1: ") && l.contains(": done in ")),
        "{out}"
    );
    assert!(out.contains("on_up 1/1: echo on-up-ran: done in "), "{out}");
    // The editable install runs the live sources of the mount; the service started after
    // on_create; the CA variables are everywhere.
    write(dir, "src/greeter/extra.py", "X = 42\n");
    assert_eq!(
        exec(
            &b,
            dir,
            "python3 -c 'import greeter, greeter.extra, six; print(greeter.GREETING, greeter.extra.X, six.__version__)'"
        )
        .trim(),
        "hello 42 1.16.0"
    );
    assert_eq!(exec(&b, dir, "cat /tmp/probe").trim(), "after-on-create");
    assert_eq!(
        exec(&b, dir, "echo $SSL_CERT_FILE $PIP_CERT $NODE_EXTRA_CA_CERTS").trim(),
        "/etc/berth/ca-certificates.crt /etc/berth/ca-certificates.crt /etc/berth/ca-certificates.crt"
    );
    assert_eq!(exec(&b, dir, "cat /root/created.log").trim(), "created");

    // An edit to the sources (not an input) rebuilds nothing, and on_create does not run
    // again on the same writable layer.
    assert!(b.run_in(dir, &["down"]).status.success());
    write(dir, "src/greeter/extra.py", "X = 43\n");
    write(
        dir,
        "tests/test_greeter.py",
        "def test_nothing():\n    pass\n",
    );
    let (ok, out) = up(&b, dir);
    assert!(ok, "{out}");
    assert!(
        steps_run(&out).is_empty(),
        "rebuilt after a source edit:\n{out}"
    );
    assert!(
        out.contains("build: 3 steps cached, nothing to run"),
        "{out}"
    );
    assert!(
        !out.contains("on_create 1/1"),
        "on_create ran twice:\n{out}"
    );
    assert_eq!(exec(&b, dir, "cat /root/created.log").trim(), "created");

    // An edit to pyproject.toml reruns the steps that see it, not the packages; the new image
    // gets a new writable layer, so on_create runs again.
    write(dir, "pyproject.toml", &PYPROJECT.replace("0.1.0", "0.2.0"));
    let (ok, out) = up(&b, dir);
    assert!(ok, "{out}");
    let ran = steps_run(&out);
    assert!(
        ran.contains(&"setup[0]: pip install -e .")
            && !ran.iter().any(|s| s.starts_with("packages")),
        "{ran:?}\n{out}"
    );
    assert!(out.contains("packages: python3-pip (cached)"), "{out}");
    assert!(out.contains("on_create 1/1: "), "{out}");
    assert_eq!(
        exec(
            &b,
            dir,
            "python3 -c 'import importlib.metadata as m; print(m.version(\"greeter\"))'"
        )
        .trim(),
        "0.2.0"
    );

    // Without the host's certificates, the same pip install fails on the proxy's.
    write(
        dir,
        "berth.toml",
        &berth_toml.replace("[image]\n", "[image]\nhost_ca = false\n"),
    );
    let (ok, out) = up(&b, dir);
    assert!(!ok, "up without the host's CAs succeeded:\n{out}");
    assert!(
        out.contains("CERTIFICATE_VERIFY_FAILED") || out.contains("certificate verify failed"),
        "{out}"
    );
    assert!(
        out.contains("build step `setup[0]: pip install -e .` failed"),
        "{out}"
    );
}

const PACKAGE_JSON: &str = r#"{
  "name": "demo-app",
  "version": "1.0.0",
  "private": true,
  "dependencies": {
    "is-number": "7.0.0"
  }
}
"#;

const PACKAGE_LOCK: &str = r#"{
  "name": "demo-app",
  "version": "1.0.0",
  "lockfileVersion": 3,
  "requires": true,
  "packages": {
    "": {
      "name": "demo-app",
      "version": "1.0.0",
      "dependencies": {
        "is-number": "7.0.0"
      }
    },
    "node_modules/is-number": {
      "version": "7.0.0",
      "resolved": "https://registry.npmjs.org/is-number/-/is-number-7.0.0.tgz",
      "integrity": "sha512-41Cifkg6e8TylSpdtTpeLVMqvSBEVzTttHvERD741+pnZ8ANv0004MRL43QKPDlK9cGvNp6NZWZUBlbGXYxxng==",
      "engines": {
        "node": ">=0.12.0"
      }
    }
  }
}
"#;

/// The Node package: `npm ci` from the lockfile (npm's registry through the proxy) in a
/// setup step that sees `package*.json` in its own workdir (outside the live mount, so the
/// installed `node_modules` is not covered by the project folder); the app runs from the
/// mount with them; `berth run` gets the same image and on_create.
#[test]
fn node_package_npm_ci_cached_in_the_image() {
    require_debian!();
    let b = Berth::new();
    berth_e2e::debian::seed_bookworm(&b);
    let project = tempfile::Builder::new()
        .prefix("berth-node-")
        .tempdir()
        .unwrap();
    let dir = project.path();
    write(dir, "package.json", PACKAGE_JSON);
    write(dir, "package-lock.json", PACKAGE_LOCK);
    write(
        dir,
        "index.js",
        "const isNumber = require('is-number');\nconsole.log('is 5 a number:', isNumber(5));\n",
    );
    write(
        dir,
        "berth.toml",
        r#"on_create = ["node /work/index.js > /root/first-run.txt"]

[image]
from = "debootstrap:bookworm"
packages = ["nodejs", "npm"]
inputs = ["package*.json"]
workdir = "/opt/app"
setup = ["npm ci --no-audit --no-fund"]

[env]
NODE_PATH = "/opt/app/node_modules"

[[mounts]]
source = "."
target = "/work"
"#,
    );
    let (ok, out) = up(&b, dir);
    assert!(ok, "up failed:\n{out}");
    let ran = steps_run(&out);
    assert!(
        ran.contains(&"inputs: package-lock.json package.json → /opt/app")
            && ran.contains(&"setup[0]: npm ci --no-audit --no-fund"),
        "{ran:?}\n{out}"
    );
    assert_eq!(
        exec(&b, dir, "cat /root/first-run.txt").trim(),
        "is 5 a number: true"
    );
    assert_eq!(
        exec(&b, dir, "cd /work && node index.js").trim(),
        "is 5 a number: true"
    );

    // An edit to the app (not an input) rebuilds nothing, in `berth run` too, which runs
    // on_create in its own fresh environment.
    write(
        dir,
        "index.js",
        "const isNumber = require('is-number');\nconsole.log('is x a number:', isNumber('x'));\n",
    );
    let o = b.run_in(
        dir,
        &["run", "--", "/bin/sh", "-c", "cat /root/first-run.txt"],
    );
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout.trim(), "is x a number: false");
    assert!(steps_run(&stderr).is_empty(), "{stderr}");
    assert!(
        stderr.contains("build: 3 steps cached, nothing to run"),
        "{stderr}"
    );
    assert!(
        stderr.contains("on_create 1/1: node /work/index.js"),
        "{stderr}"
    );
}

/// `on_create` on a small image: a failing step fails `up` with its code and output and keeps
/// the services held; the next `up` retries it on the same writable layer and then starts
/// them; a plain restart does not run it; `destroy` (a fresh writable layer) and `berth run`
/// do.
#[test]
fn on_create_is_retried_after_a_failure_and_runs_once_per_writable_layer() {
    require_root!();
    let b = Berth::new();
    let project = tempfile::Builder::new()
        .prefix("berth-create-")
        .tempdir()
        .unwrap();
    let dir = project.path();
    berth_e2e::host::busybox_rootfs(&dir.join("rootfs"));
    write(
        dir,
        "berth.toml",
        r#"on_create = ["echo creating >> /root/created.log", "echo checking; test -e /work/ready"]
on_up = ["echo on-up-ran"]

[image]
from = "rootfs:./rootfs"

[[mounts]]
source = "."
target = "/work"

[services.probe]
command = "date > /tmp/probe; exec sleep 100000"
"#,
    );
    let (ok, out) = up(&b, dir);
    assert!(!ok, "up succeeded with a failing on_create:\n{out}");
    assert!(
        out.contains("on_create 1/2: echo creating >> /root/created.log: done in "),
        "{out}"
    );
    assert!(
        out.contains("checking"),
        "the step's output is shown:\n{out}"
    );
    assert!(
        out.contains("on_create 2/2: echo checking; test -e /work/ready: failed with exit code 1")
            && out.contains("exited with code 1"),
        "{out}"
    );
    assert!(
        !out.contains("on-up-ran"),
        "on_up ran after a failed on_create:\n{out}"
    );
    assert_eq!(
        exec(&b, dir, "test -e /tmp/probe && echo started || echo held").trim(),
        "held"
    );

    write(dir, "ready", "");
    let (ok, out) = up(&b, dir);
    assert!(ok, "{out}");
    assert!(
        out.contains("on_create 2/2: echo checking; test -e /work/ready: done in "),
        "{out}"
    );
    assert!(out.contains("on_up 1/1: echo on-up-ran: done in "), "{out}");
    assert_eq!(
        exec(&b, dir, "cat /root/created.log"),
        "creating\ncreating\n"
    );
    assert_eq!(
        exec(&b, dir, "test -e /tmp/probe && echo started || echo held").trim(),
        "started"
    );

    assert!(b.run_in(dir, &["down"]).status.success());
    let (ok, out) = up(&b, dir);
    assert!(ok, "{out}");
    assert!(
        !out.contains("on_create"),
        "on_create ran on a restart:\n{out}"
    );
    assert!(out.contains("on_up 1/1: "), "{out}");

    assert!(b.run_in(dir, &["destroy"]).status.success());
    let (ok, out) = up(&b, dir);
    assert!(ok, "{out}");
    assert!(out.contains("on_create 1/2: "), "{out}");
    assert_eq!(exec(&b, dir, "cat /root/created.log"), "creating\n");

    let o = b.run_in(dir, &["run", "--", "cat", "/root/created.log"]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout, "creating\n");
    assert!(stderr.contains("on_create 2/2: "), "{stderr}");
}
