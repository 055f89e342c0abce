//! `berth status` and `berth ls`.

use berth_runtime::backend::EnvStatus;
use berth_runtime::image::progress::human_bytes;
use berth_runtime::vm::Provider;

use crate::environment::{env_error, environments, human_duration, network_lines, Current};
use crate::exit::{CliError, EXIT_NOT_RUNNING};
use crate::global_args::GlobalArgs;

fn status_word(s: EnvStatus) -> &'static str {
    match s {
        EnvStatus::Running => "running",
        EnvStatus::Starting => "starting",
        EnvStatus::Stopped => "stopped",
        EnvStatus::Dead => "dead (supervisor or VMM gone; `berth up` or `berth down` repairs it)",
    }
}

pub fn status(g: &GlobalArgs, json: bool) -> Result<i32, CliError> {
    let cur = Current::load(g)?;
    let Some(record) = &cur.record else {
        if json {
            println!(
                "{}",
                serde_json::json!({"name": cur.plan.name, "status": "absent"})
            );
        } else {
            println!("{}: not created; run `berth up`", cur.plan.name);
        }
        return Ok(EXIT_NOT_RUNNING);
    };
    let view = cur
        .envs
        .status(record, Some(&cur.plan))
        .map_err(env_error)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&view).unwrap_or_default()
        );
        return Ok(0);
    }
    let r = &view.report;
    println!("name:     {}", view.name);
    println!("id:       {}", view.env_id);
    println!("file:     {}", view.file.display());
    println!("status:   {}", status_word(r.status));
    if let Some(img) = &view.image {
        println!("image:    {img}");
    }
    if let Some(pid) = r.pid {
        let what = if view.report.vm.is_some() {
            "VMM"
        } else {
            "supervisor"
        };
        println!("pid:      {pid} ({what}, on the host)");
    }
    if let Some(vm) = &view.report.vm {
        let provider = match vm.provider {
            Provider::Qemu => "qemu",
            Provider::Kvm => "berth's VMM",
        };
        println!(
            "vm:       {provider} ({}), {} vCPU(s), {} MiB memory",
            vm.accel,
            vm.vcpus,
            vm.memory >> 20
        );
        println!("kernel:   {}", vm.kernel_release);
        if let Some(ms) = vm.boot_ms {
            println!(
                "boot:     {} from VMM start to agent ready",
                human_duration(std::time::Duration::from_millis(ms))
            );
        }
        println!("console:  {}", vm.console_log.display());
    }
    if let Some(up) = r.uptime {
        println!("uptime:   {}", human_duration(up));
    }
    for (i, line) in view.network.iter().flat_map(network_lines).enumerate() {
        println!("{}{line}", if i == 0 { "network:  " } else { "          " });
    }
    if let Some(u) = &r.usage {
        let mem = u
            .memory_current
            .map(human_bytes)
            .unwrap_or_else(|| "-".into());
        let limit = record
            .plan
            .resources
            .memory
            .map(|m| format!(" of {}", human_bytes(m)))
            .unwrap_or_default();
        let peak = u
            .memory_peak
            .map(|p| format!(", peak {}", human_bytes(p)))
            .unwrap_or_default();
        println!("memory:   {mem}{limit}{peak}");
        if let Some(ns) = u.cpu_usage_ns {
            println!("cpu:      {:.2} s used", ns as f64 / 1e9);
        }
        if let Some(p) = u.pids_current {
            let limit = record
                .plan
                .resources
                .pids
                .map(|m| format!(" of {m}"))
                .unwrap_or_default();
            println!("pids:     {p}{limit}");
        }
        if let Some(k) = u.oom_kills.filter(|k| *k > 0) {
            println!("oom:      {k} process(es) killed for exceeding the memory limit");
        }
    }
    for s in &r.services {
        let state = match (s.pid, s.last_exit) {
            (Some(pid), _) => format!("running (pid {pid} inside)"),
            (None, Some(code)) => format!("exited with {code}"),
            (None, None) => "not started".into(),
        };
        let looping = s
            .crash_loop
            .as_ref()
            .map(|c| format!(" ({})", c.describe()))
            .unwrap_or_default();
        println!(
            "service:  {} {state}, {} restart(s){looping}",
            s.name, s.restarts
        );
    }
    for s in &view.sidecars {
        println!("sidecar:  {}", sidecar_line(s));
    }
    for line in crate::commands::sync::status_lines(&cur.envs, record) {
        println!("sync:     {line}");
    }
    if let Some(e) = &r.last_error {
        println!("last error: {e}");
    }
    if !view.pending_changes.is_empty() {
        let list: Vec<&str> = view.pending_changes.iter().map(|s| s.as_str()).collect();
        println!(
            "pending:  berth.toml changed ({}); run `berth up` to apply",
            list.join(", ")
        );
    }
    Ok(if r.status == EnvStatus::Running {
        0
    } else {
        EXIT_NOT_RUNNING
    })
}

pub fn ls(_g: &GlobalArgs, json: bool) -> Result<i32, CliError> {
    let envs = environments()?;
    let list = envs.list().map_err(env_error)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        );
        return Ok(0);
    }
    if list.is_empty() {
        println!("no environments; run `berth up` in a project folder");
        return Ok(0);
    }
    // One write for the whole table, not one per line: with 1000 environments the lines'
    // writes were a fifth of `ls`'s system calls.
    use std::fmt::Write as _;
    let mut out = format!("{:<24} {:<9} {:<40} FILE\n", "NAME", "STATUS", "IMAGE");
    for e in list {
        let status = match e.status {
            EnvStatus::Dead => "dead",
            s => status_word(s),
        };
        let _ = writeln!(
            out,
            "{:<24} {:<9} {:<40} {}",
            if e.ephemeral {
                format!("{} (run)", e.name)
            } else {
                e.name
            },
            status,
            e.image
                .map(|i| short_image(&i))
                .unwrap_or_else(|| "-".into()),
            e.file.display()
        );
    }
    print!("{out}");
    Ok(0)
}

/// Image names for a table column: built images are named by a 64-hex key; show 12.
fn short_image(name: &str) -> String {
    match name.strip_prefix("build:") {
        Some(key) if key.len() > 12 => format!("build:{}", &key[..12]),
        _ => name.to_string(),
    }
}

/// `db running, ready, 12.3 MiB, from rootfs:/p/redis-rootfs` for one sidecar.
fn sidecar_line(s: &berth_runtime::environment::SidecarView) -> String {
    let r = &s.report;
    let mut parts = vec![format!("{} {}", s.name, status_word(r.status))];
    match s.ready {
        Some(true) => parts.push("ready".into()),
        Some(false) => parts.push("not ready".into()),
        None => {}
    }
    if let Some(m) = r.usage.as_ref().and_then(|u| u.memory_current) {
        parts.push(human_bytes(m));
    }
    if let Some(svc) = r.services.first() {
        if svc.restarts > 0 {
            parts.push(format!("{} restart(s)", svc.restarts));
        }
        if let Some(c) = &svc.crash_loop {
            parts.push(c.describe());
        }
    }
    let mut line = parts.join(", ");
    if let Some(image) = &s.image {
        line.push_str(&format!(" (image {image}; `berth logs {}`)", s.name));
    }
    line
}
