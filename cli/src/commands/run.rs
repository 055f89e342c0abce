//! `berth run -- CMD…`: a fresh environment from berth.toml, CMD run inside with the
//! caller's stdio, its exit code returned, everything removed afterwards (unless kept).
//! Ctrl-C / SIGTERM stop CMD and clean up; `--timeout` kills the environment and exits 124.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use berth_runtime::backend::ExecRequest;
use berth_runtime::credentials::HostGit;
use berth_runtime::environment::{Environments, Ephemeral, RunPlanOptions, UpOptions};
use berth_runtime::host::process::ProcessIdentity;
use clap::Args;
use envfile_spec::Loaded;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

use crate::commands::exec::{forward_credentials, parse_env};
use crate::envfile::load_plan;
use crate::environment::{
    env_error, environments, human_duration, network_lines, replaced_port_lines,
};
use crate::exit::{CliError, EXIT_USAGE};
use crate::global_args::GlobalArgs;
use crate::progress::progress;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Set an environment variable (KEY=VAL); repeatable.
    #[arg(short = 'e', long = "env", value_name = "KEY=VAL")]
    pub env: Vec<String>,
    /// Working directory inside the environment.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// Kill the environment after this long (e.g. 30s, 5m) and exit 124.
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Keep the environment afterwards (for `berth shell`).
    #[arg(long)]
    pub keep: bool,
    /// Keep the environment only when the command fails.
    #[arg(long)]
    pub keep_on_failure: bool,
    /// Name of the throw-away environment (default: generated).
    #[arg(long)]
    pub name: Option<String>,
    /// Give the run a private copy of the project instead of a live mount.
    #[arg(long)]
    pub copy_source: bool,
    /// Sidecar volumes to use as they are (shared with `up` and other runs, kept
    /// afterwards); the others are empty ones of this run, removed with it.
    #[arg(long = "keep-volumes", value_name = "VOLUME", num_args = 1.., action = clap::ArgAction::Append)]
    pub keep_volumes: Vec<String>,
    /// Pick free host ports when the declared ones are taken (what `run` always does; kept
    /// for scripts that pass it).
    #[arg(long)]
    pub publish_auto: bool,
    #[command(flatten)]
    pub cache: super::cache_args::CacheArgs,
    /// Print a JSON summary at the end.
    #[arg(long)]
    pub json: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Exit code when `--timeout` expired, as timeout(1) uses.
const EXIT_TIMEOUT: i32 = 124;
/// Grace period for CMD after SIGTERM before the environment is killed.
const GRACE: Duration = Duration::from_secs(10);

static SIGNALLED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNALLED.store(sig, Ordering::SeqCst);
}

fn install_signal_handlers() {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
        let _ = unsafe { sigaction(sig, &action) };
    }
}

/// `30s`, `5m`, `1h`, `250ms`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration; write e.g. 30s, 5m, 1h or 500ms"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}; use ms, s, m or h")),
    };
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("{s:?}: the timeout must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[derive(serde::Serialize)]
struct Summary {
    exit_code: i32,
    environment: String,
    kept: bool,
    timed_out: bool,
    /// Forwarded ports with the host addresses actually bound.
    ports: Vec<berth_runtime::net::forward::ForwardedPort>,
    durations_ms: Durations,
}

#[derive(serde::Serialize)]
struct Durations {
    build: u128,
    start: u128,
    run: u128,
    teardown: u128,
    total: u128,
}

pub fn run(g: &GlobalArgs, args: &RunArgs) -> Result<i32, CliError> {
    let t0 = Instant::now();
    let timeout = args
        .timeout
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| CliError::new(EXIT_USAGE, format!("--timeout: {e}")))?;
    let env = parse_env(&args.env)?;
    let Loaded { plan, .. } = load_plan(g)?;
    let envs = environments()?;
    envs.collect_garbage();
    install_signal_handlers();

    let (run_plan, env_id) = envs
        .prepare_run(
            &plan,
            &RunPlanOptions {
                name: args.name.clone(),
                copy_source: args.copy_source,
                keep_volumes: args.keep_volumes.clone(),
            },
        )
        .map_err(env_error)?;
    let owner = ProcessIdentity::current().map(|owner| Ephemeral { owner });
    let opts = UpOptions {
        progress: progress(g),
        env_id: Some(env_id.clone()),
        ephemeral: owner,
        // Removed after this one start unless it may be kept for a look inside.
        throwaway: !args.keep && !args.keep_on_failure,
        // A run next to the project's own running environment (or another run) must not
        // fail on the ports that one holds: publish elsewhere and say where.
        publish_auto: true,
        cache_from: args.cache.cache_from.clone(),
        cache_to: args.cache.cache_to.clone(),
        ..UpOptions::default()
    };
    let up = match envs.up(&run_plan, &opts) {
        Ok(r) => r,
        Err(e) => {
            let _ = envs.destroy(&env_id, false, Duration::from_secs(2));
            return Err(env_error(e));
        }
    };
    // On stderr: stdout belongs to CMD. `--quiet`: nothing but CMD's output and errors.
    let ports = up
        .network
        .as_ref()
        .map(|n| n.ports.clone())
        .unwrap_or_default();
    if !g.quiet {
        for n in &up.notices {
            eprintln!("notice: {n}");
        }
        for line in up.network.iter().flat_map(network_lines) {
            eprintln!("{}: {line}", run_plan.name);
        }
        for line in up.network.iter().flat_map(replaced_port_lines) {
            eprintln!("{}: {line}", run_plan.name);
        }
    }
    let t_run = Instant::now();
    let host_git = up.host_git.clone();
    let (code, timed_out) =
        match run_command(&envs, &env_id, &run_plan, args, env, timeout, host_git) {
            Ok(r) => r,
            Err(e) => {
                let _ = envs.destroy(&env_id, false, Duration::from_secs(2));
                return Err(e);
            }
        };
    let run_elapsed = t_run.elapsed();

    let t_down = Instant::now();
    let keep = !timed_out && (args.keep || (args.keep_on_failure && code != 0));
    if keep {
        envs.keep(&env_id).map_err(env_error)?;
    }
    if keep && !g.quiet {
        eprintln!(
            "kept {}: look inside with `berth --environment {} shell`, remove it with `berth --environment {} destroy`",
            run_plan.name, run_plan.name, run_plan.name
        );
    }
    if !keep {
        envs.remove_run(&env_id, Duration::from_secs(5))
            .map_err(env_error)?;
    }
    let teardown = t_down.elapsed();
    if args.json {
        let s = Summary {
            exit_code: code,
            environment: run_plan.name.clone(),
            kept: keep,
            timed_out,
            ports,
            durations_ms: Durations {
                build: up.image_elapsed.as_millis(),
                start: up.elapsed.saturating_sub(up.image_elapsed).as_millis(),
                run: run_elapsed.as_millis(),
                teardown: teardown.as_millis(),
                total: t0.elapsed().as_millis(),
            },
        };
        println!("{}", serde_json::to_string(&s).unwrap_or_default());
    } else if timed_out {
        eprintln!(
            "berth run: {} timed out after {}; the environment was killed",
            shell_words(&args.command),
            human_duration(timeout.unwrap_or_default())
        );
    }
    Ok(code)
}

fn shell_words(argv: &[String]) -> String {
    argv.join(" ")
}

/// Runs CMD; returns its exit code and whether the deadline killed it.
fn run_command(
    envs: &Environments,
    env_id: &str,
    plan: &envfile_spec::Plan,
    args: &RunArgs,
    env: Vec<String>,
    timeout: Option<Duration>,
    host_git: Option<HostGit>,
) -> Result<(i32, bool), CliError> {
    let record = envs.find(env_id).map_err(env_error)?;
    let mut req = ExecRequest {
        argv: args.command.clone(),
        env,
        cwd: args.workdir.clone().or_else(|| plan.shell.workdir.clone()),
        user: plan.shell.user.clone(),
        tty: false,
        winsize: None,
        forward: None,
    };
    let (i, o, e) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    let stdio: [BorrowedFd<'_>; 3] = [i.as_fd(), o.as_fd(), e.as_fd()];
    // The host's agent and git credentials, as for `exec` (ended with the command).
    let _credentials = forward_credentials(envs, &record, &mut req, host_git);
    let mut session = envs.exec_start(&record, &req, stdio).map_err(env_error)?;
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut term_sent: Option<Instant> = None;
    loop {
        if let Some(code) = session
            .wait_timeout(Duration::from_millis(100))
            .map_err(|e| env_error(e.into()))?
        {
            return Ok((code, false));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = session.signal(libc::SIGKILL);
            return Ok((EXIT_TIMEOUT, true));
        }
        let sig = SIGNALLED.swap(0, Ordering::SeqCst);
        if sig != 0 {
            if term_sent.is_some() {
                // A second Ctrl-C: no more grace.
                let _ = session.signal(libc::SIGKILL);
                return Ok((128 + sig, false));
            }
            let _ = session.signal(libc::SIGTERM);
            term_sent = Some(Instant::now());
        }
        if term_sent.is_some_and(|t| t.elapsed() > GRACE) {
            let _ = session.signal(libc::SIGKILL);
            return Ok((128 + libc::SIGTERM, false));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("3 days").is_err());
    }
}
