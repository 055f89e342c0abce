//! The converters (`compose`, `devcontainer`) never panic, whatever the text: arbitrary
//! strings, and mutations of real-shaped files (the corpus), with the variables and features
//! they name present. What they write always parses as TOML.

use std::path::Path;

use envfile_spec::draft::{FeatureFiles, MemorySources};
use envfile_spec::{compose, devcontainer};
use proptest::prelude::*;

const COMPOSE: &str =
    include_str!("devcontainer-corpus/node-postgres/.devcontainer/docker-compose.yml");
const GO: &str = include_str!("devcontainer-corpus/go-features/.devcontainer/devcontainer.json");
const NODE: &str =
    include_str!("devcontainer-corpus/node-postgres/.devcontainer/devcontainer.json");
const EXTRA: &str = "services:\n  app:\n    build: {context: ., args: [A=1]}\n    ports: ['127.0.0.1:8000-8001:8000-8001/udp', {target: 1, published: '2'}]\n    environment: {X: ${X:-a}, 'Y': $$y}\n    depends_on: {db: {condition: service_healthy}}\n    command: \"sh -c 'echo \\\"hi\\\"'\"\n  db:\n    image: x\n    healthcheck: {test: [CMD-SHELL, 'true'], interval: 1m30.5s}\n    tmpfs: [/run]\n";

fn sources(compose_text: &str) -> MemorySources {
    MemorySources {
        files: [
            (
                ".devcontainer/docker-compose.yml".to_string(),
                compose_text.to_string(),
            ),
            (".devcontainer/.env".to_string(), "A=1\n".to_string()),
            (
                "devcontainer-template.json".to_string(),
                r#"{"options": {"v": {"default": "x"}}}"#.to_string(),
            ),
        ]
        .into(),
        env: [("USER".to_string(), "ann".to_string())].into(),
        features: [(
            "ghcr.io/devcontainers/features/node:1".to_string(),
            FeatureFiles {
                folder: "f".into(),
                metadata: r#"{"options": {"version": {"default": "lts"}}}"#.into(),
            },
        )]
        .into(),
    }
}

fn check_compose(text: &str) {
    let s = sources(text);
    for service in [None, Some("app"), Some("db")] {
        if let Ok(c) = compose::convert("dc.yml", text, Path::new("/p/proj"), service, &s) {
            c.toml
                .parse::<toml_edit::DocumentMut>()
                .unwrap_or_else(|e| panic!("{e}\n{}", c.toml));
        }
    }
}

fn check_devcontainer(text: &str, compose_text: &str) {
    let s = sources(compose_text);
    let ctx = devcontainer::Context {
        project_dir: Path::new("/p/proj"),
        json_path: ".devcontainer/devcontainer.json",
        host_uid: Some(1000),
    };
    if let Ok(c) = devcontainer::convert(text, &ctx, &s) {
        c.toml
            .parse::<toml_edit::DocumentMut>()
            .unwrap_or_else(|e| panic!("{e}\n{}", c.toml));
    }
}

/// `text` with bytes at `positions` replaced (kept valid UTF-8 by working on chars).
fn mutate(text: &str, edits: &[(usize, char)]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for &(at, c) in edits {
        if chars.is_empty() {
            break;
        }
        let i = at % chars.len();
        chars[i] = c;
    }
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn arbitrary_text(s in "\\PC{0,200}") {
        check_compose(&s);
        check_devcontainer(&s, &s);
    }

    #[test]
    fn variable_noise(s in "[$\\{\\}:?+\\-a-zA-Z_€ ]{0,40}") {
        check_compose(&format!("services:\n  app:\n    image: \"{s}\"\n    environment: [\"A={s}\"]\n"));
        check_devcontainer(&format!("{{\"image\": \"{s}\", \"containerEnv\": {{\"A\": \"{s}\"}}, \"mounts\": [\"source={s},target=/x\"]}}"), COMPOSE);
    }

    #[test]
    fn braced_operators(s in "\\$\\{[A-Z]{0,3}[€:?+\\-/=]{0,3}[a-z€$]{0,3}\\}?") {
        check_compose(&format!("services:\n  app:\n    image: \"{s}\"\n"));
    }

    #[test]
    fn mutated_files(edits in proptest::collection::vec((0usize..4000, prop::sample::select(vec![':', '"', '[', ']', '{', '}', ',', '-', ' ', '\n', '$', 'x', '€', '\'', '#']) ), 1..6)) {
        check_compose(&mutate(COMPOSE, &edits));
        check_compose(&mutate(EXTRA, &edits));
        check_devcontainer(&mutate(GO, &edits), COMPOSE);
        check_devcontainer(&mutate(NODE, &edits), &mutate(COMPOSE, &edits));
    }
}
