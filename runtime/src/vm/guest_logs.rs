//! `berth logs` for a VM: the services' output lives in the guest
//! ([`SERVICE_LOG_DIR`](berth_agent_proto::SERVICE_LOG_DIR)`/<name>.log`, written by the agent),
//! so it is read there with the guest's `tail`, run like any `exec`. Lines are prefixed with
//! the service name when several services are shown, as for containers.

use berth_agent_proto::SERVICE_LOG_DIR;

/// Positional parameters: log dir, line count (`+1` = all), follow (1/0), prefix (1/0), then
/// the service names. Names are never spliced into the script.
const SCRIPT: &str = r#"dir=$1; n=$2; follow=$3; prefix=$4; shift 4
show() {
  while IFS= read -r line; do
    if [ "$prefix" = 1 ]; then printf '%s | %s\n' "$1" "$line"; else printf '%s\n' "$line"; fi
  done
}
for s; do
  f="$dir/$s.log"
  if [ "$follow" = 1 ]; then
    (tail -n "$n" -F "$f" 2>/dev/null | show "$s") &
  elif [ -f "$f" ]; then
    tail -n "$n" "$f" | show "$s"
  fi
done
wait"#;

/// The command that prints (or with `follow`, keeps printing) the last `tail` lines (all when
/// `None`) of each service's log in the guest.
pub fn logs_argv(services: &[String], tail: Option<usize>, follow: bool) -> Vec<String> {
    logs_argv_in(SERVICE_LOG_DIR, services, tail, follow)
}

fn logs_argv_in(dir: &str, services: &[String], tail: Option<usize>, follow: bool) -> Vec<String> {
    let mut argv: Vec<String> = vec![
        "/bin/sh".into(),
        "-c".into(),
        SCRIPT.into(),
        "berth-logs".into(),
        dir.into(),
        tail.map(|n| n.to_string()).unwrap_or_else(|| "+1".into()),
        if follow { "1" } else { "0" }.into(),
        if services.len() > 1 { "1" } else { "0" }.into(),
    ];
    argv.extend(services.iter().cloned());
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(argv: &[String]) -> String {
        let out = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn tails_each_service_with_a_prefix_when_several() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_str().unwrap();
        std::fs::write(d.path().join("web.log"), "a\nb\nc\n").unwrap();
        std::fs::write(d.path().join("db.log"), "x y\n").unwrap();
        let one = |n| logs_argv_in(dir, &["web".to_string()], n, false);
        assert_eq!(run(&one(None)), "a\nb\nc\n");
        assert_eq!(run(&one(Some(2))), "b\nc\n");
        let both = logs_argv_in(
            dir,
            &["db".to_string(), "web".to_string(), "none".to_string()],
            Some(1),
            false,
        );
        assert_eq!(run(&both), "db | x y\nweb | c\n");
        // A name with shell syntax stays a name.
        let odd = logs_argv_in(dir, &["$(touch pwned)".to_string()], None, false);
        assert_eq!(run(&odd), "");
        assert!(!std::path::Path::new("pwned").exists());
    }
}
