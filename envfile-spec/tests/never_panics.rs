//! The parser never panics, whatever the bytes: arbitrary input, TOML-like noise, mutations of
//! valid files, and pathological shapes (deep nesting, huge numbers, long lines).

use std::path::PathBuf;

use envfile_spec::{parse, templates};
use proptest::prelude::*;

fn file() -> PathBuf {
    std::env::temp_dir().join("berth-proptest-project/berth.toml")
}

/// Parses and renders; every diagnostic must point inside the text.
fn check(bytes: &[u8]) {
    let path = file();
    match parse(bytes, &path) {
        Ok(loaded) => {
            let _ = loaded.plan.hash();
            let _ = loaded.warnings.render(true);
        }
        Err(report) => {
            assert!(
                !report.diagnostics.is_empty(),
                "an error report without diagnostics"
            );
            for d in &report.diagnostics {
                assert!(d.span.start <= d.span.end && d.span.end <= report.source.len());
                assert!(d.line >= 1 && d.column >= 1);
            }
            let _ = report.render(true);
            let _ = report.render(false);
        }
    }
}

const FULL: &str = r#"name = "web"
backend = "vm"
on_up = ["./migrate"]
[image]
from = "docker.io/library/debian:bookworm@sha256:0000000000000000000000000000000000000000000000000000000000000000"
packages = ["git"]
setup = ["make"]
[env]
A = "1"
[[mounts]]
source = "."
target = "/work"
type = "sync"
ignore = ["target"]
[[mounts]]
target = "/t"
type = "tmpfs"
size = "1G"
[[ports]]
host = 8080
guest = 80
protocol = "udp"
address = "0.0.0.0"
[resources]
memory = "2GiB"
cpus = 1.5
pids = 100
[network]
mode = "isolated"
[shell]
user = "dev"
workdir = "/work"
command = ["/bin/bash", "-l"]
[services.db]
command = "postgres"
restart = "always"
env = { X = "1" }
workdir = "/"
[vm]
kernel = "debian:linux-image-amd64"
memory = "1GiB"
vcpus = 2
vmm = "kvm"
"#;

#[derive(Debug, Clone)]
enum Mutation {
    Insert(usize, u8),
    Delete(usize),
    Replace(usize, u8),
    Duplicate(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting = prop::sample::select(b"[]{}=\"'\n.,#\\0-9 az\xff\x00".to_vec());
    prop_oneof![
        (any::<usize>(), interesting.clone()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
        (any::<usize>(), interesting).prop_map(|(i, b)| Mutation::Replace(i, b)),
        (any::<usize>(), 0usize..64).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ]
}

fn apply(base: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let mut v = base.to_vec();
    for m in muts {
        let n = v.len().max(1);
        match *m {
            Mutation::Insert(i, b) => v.insert(i % (v.len() + 1), b),
            Mutation::Delete(i) if !v.is_empty() => {
                v.remove(i % n);
            }
            Mutation::Replace(i, b) if !v.is_empty() => v[i % n] = b,
            Mutation::Duplicate(i, len) if !v.is_empty() => {
                let start = i % n;
                let end = (start + len).min(v.len());
                let chunk = v[start..end].to_vec();
                v.splice(start..start, chunk);
            }
            _ => {}
        }
    }
    v
}

fn bases() -> Vec<&'static str> {
    let mut b: Vec<&'static str> = templates::list().iter().map(|t| t.text).collect();
    b.push(FULL);
    b
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        check(&bytes);
    }

    #[test]
    fn toml_like_noise(text in "[\\[\\]{}a-z_ =\"',.\n0-9#-]{0,300}") {
        check(text.as_bytes());
    }

    #[test]
    fn mutated_valid_files(
        which in 0usize..8,
        muts in prop::collection::vec(mutation(), 1..8),
    ) {
        let all = bases();
        let base = all[which % all.len()];
        check(&apply(base.as_bytes(), &muts));
    }

    #[test]
    fn values_of_every_type_in_every_key(
        key in prop::sample::select(envfile_spec::keys::KEYS.iter().map(|k| k.path).collect::<Vec<_>>()),
        value in prop::sample::select(vec![
            "1", "-1", "0", "65536", "9223372036854775807", "-9223372036854775808", "1.5", "nan",
            "-inf", "true", "\"\"", "\"x\"", "\"/\"", "\"..\"", "\"\\u0000\"", "[]", "[1]", "[\"\"]",
            "{}", "{ a = 1 }", "1979-05-27T07:32:00Z", "[[1]]", "\"debian:\"", "\"rootfs:\"",
            "\"tar:/\"", "\"~\"", "\"9999999999TiB\"", "\"1.5.5G\"",
        ]),
    ) {
        // Put the value where the key lives.
        let (table, leaf) = match key.rsplit_once('.') {
            Some((t, l)) => (t.replace("[]", "").replace(".*", ".s"), l),
            None => (String::new(), key),
        };
        let header = if table.is_empty() {
            String::new()
        } else if table == "mounts" || table == "ports" {
            format!("[[{table}]]\n")
        } else {
            format!("[{table}]\n")
        };
        let text = format!("{leaf} = {value}\n[image]\nfrom = \"a\"\n{header}{leaf} = {value}\n");
        check(text.as_bytes());
    }
}

#[test]
fn pathological_shapes() {
    let deep_arrays = format!("a = {}{}\n", "[".repeat(5000), "]".repeat(5000));
    let deep_tables = format!("a = {}{}\n", "{ b = ".repeat(3000), "}".repeat(3000));
    let long_key = format!("[image]\nfrom = \"a\"\n{} = 1\n", "k".repeat(100_000));
    let many_mounts = "[image]\nfrom = \"a\"\n".to_string()
        + &"[[mounts]]\ntarget = \"/same\"\ntype = \"tmpfs\"\n".repeat(2000);
    let dotted = format!("{} = 1\n", vec!["a"; 2000].join("."));
    let cases: Vec<Vec<u8>> = vec![
        deep_arrays.into_bytes(),
        deep_tables.into_bytes(),
        long_key.into_bytes(),
        many_mounts.into_bytes(),
        dotted.into_bytes(),
        b"[image]\nfrom = \"a\"\n[resources]\ncpus = 1e400\n".to_vec(),
        b"[image]\nfrom = \"a\"\n[resources]\nmemory = \"18446744073709551616\"\n".to_vec(),
        vec![0xff; 1000],
        vec![0; 1000],
        b"\xef\xbb\xbf".to_vec(),
        "\u{2028}\u{feff}é = 1\n".as_bytes().to_vec(),
    ];
    for c in cases {
        check(&c);
    }
}
