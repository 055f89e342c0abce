//! Port forwarding benchmark: throughput and per-connection latency through a forwarded port
//! (host loopback → PortForwarder → server inside a fresh network namespace) against a
//! direct loopback connection to the same kind of server, in the same run.
//!
//! Run as root: `cargo run --release -p berth-runtime --example net_bench [MiB] [connections]`
//! (or `bench/net.sh`).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_runtime::net::dialer::NetnsDialer;
use berth_runtime::net::forward::{ForwardSpec, PortForwarder};
use berth_runtime::net::netlink::Netlink;
use berth_runtime::net::netns::run_in_netns;
use envfile_spec::plan::Protocol;

fn new_netns() -> File {
    let f = std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET): run as root");
        File::open("/proc/thread-self/ns/net").expect("open netns")
    })
    .join()
    .unwrap();
    run_in_netns(&f, || {
        let mut nl = Netlink::open().unwrap();
        let lo = nl.link_index("lo").unwrap().unwrap();
        nl.set_up(lo).unwrap();
    })
    .unwrap();
    f
}

/// Serves two kinds of connection: first byte `s` = sink (read to EOF, answer 8-byte count),
/// `p` = ping (answer one byte, close).
fn serve(l: TcpListener) {
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let _ = s.set_nodelay(true);
                let mut kind = [0u8; 1];
                if s.read_exact(&mut kind).is_err() {
                    return;
                }
                if kind[0] == b'p' {
                    let _ = s.write_all(b"k");
                    return;
                }
                let mut buf = vec![0u8; 1 << 18];
                let mut total = 0u64;
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                let _ = s.write_all(&total.to_le_bytes());
            });
        }
    });
}

/// CPU time (user + system) this process has used so far, in seconds: every thread counts,
/// client, forwarder and server alike.
fn cpu_seconds() -> f64 {
    let r = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).unwrap();
    let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    t(r.user_time()) + t(r.system_time())
}

/// (Gbit/s, CPU seconds per GiB moved) of one bulk upload.
fn throughput(addr: SocketAddr, bytes: u64) -> (f64, f64) {
    let cpu0 = cpu_seconds();
    let mut c = TcpStream::connect(addr).unwrap();
    let buf = vec![0x5au8; 1 << 18];
    let start = Instant::now();
    c.write_all(b"s").unwrap();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        c.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    c.shutdown(Shutdown::Write).unwrap();
    let mut count = [0u8; 8];
    c.read_exact(&mut count).unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(u64::from_le_bytes(count), bytes, "server got everything");
    let cpu = (cpu_seconds() - cpu0) / (bytes as f64 / (1u64 << 30) as f64);
    (bytes as f64 * 8.0 / secs / 1e9, cpu)
}

/// Microseconds per connect + 1-byte request + 1-byte answer, sorted.
fn latencies(addr: SocketAddr, n: usize) -> Vec<f64> {
    let mut v: Vec<f64> = (0..n)
        .map(|_| {
            let start = Instant::now();
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_nodelay(true).unwrap();
            c.write_all(b"p").unwrap();
            let mut b = [0u8; 1];
            c.read_exact(&mut b).unwrap();
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

/// A copy of `f`'s descriptor without close-on-exec, for a child to open as /proc/self/fd/N.
fn inheritable_dup(f: &File) -> i32 {
    // SAFETY: dup of a descriptor we own; the copy stays open for the whole run on purpose.
    unsafe { libc::dup(std::os::fd::AsRawFd::as_raw_fd(f)) }
}

fn latencies_try(addr: SocketAddr) -> bool {
    (|| -> std::io::Result<()> {
        let mut c = TcpStream::connect(addr)?;
        c.write_all(b"p")?;
        let mut b = [0u8; 1];
        c.read_exact(&mut b)
    })()
    .is_ok()
}

fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() - 1) as f64 * p) as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2048);
    let conns: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let bytes = mib << 20;

    let direct = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let direct_addr = direct.local_addr().unwrap();
    serve(direct);

    let ns = new_netns();
    let inside = run_in_netns(&ns, || {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 5201)).unwrap()
    })
    .unwrap();
    serve(inside);
    let fwd = PortForwarder::start(
        &[ForwardSpec {
            protocol: Protocol::Tcp,
            host: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            guest_port: 5201,
            shared: false,
        }],
        Arc::new(NetnsDialer::new(&ns, "bench namespace").unwrap()),
    )
    .unwrap();
    let fwd_addr = fwd.ports()[0].bound;

    // pasta's own forwarder (splice as well) on the same namespace, as a reference.
    let pasta_port = 15201u16;
    let mut pasta = std::process::Command::new("pasta")
        .args(["--foreground", "--quiet", "--runas", "0", "--netns"])
        .arg(format!("/proc/self/fd/{}", inheritable_dup(&ns)))
        .args([
            "-t",
            &format!("127.0.0.1/{pasta_port}:5201"),
            "-u",
            "none",
            "-T",
            "none",
            "-U",
            "none",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .ok();
    let pasta_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, pasta_port));
    let pasta_ok = pasta.is_some()
        && (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            latencies_try(pasta_addr)
        });

    // Warm up both paths.
    throughput(direct_addr, 64 << 20);
    throughput(fwd_addr, 64 << 20);
    latencies(direct_addr, 100);
    latencies(fwd_addr, 100);

    let (mut d_tp, mut f_tp, mut p_tp) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        d_tp.push(throughput(direct_addr, bytes));
        f_tp.push(throughput(fwd_addr, bytes));
        if pasta_ok {
            p_tp.push(throughput(pasta_addr, bytes));
        }
    }
    let best = |v: &[(f64, f64)]| v.iter().map(|x| x.0).fold(0.0, f64::max);
    let cpu = |v: &[(f64, f64)]| {
        let mut c: Vec<f64> = v.iter().map(|x| x.1).collect();
        c.sort_by(|a, b| a.total_cmp(b));
        c[c.len() / 2]
    };
    let (d, f) = (best(&d_tp), best(&f_tp));
    println!("throughput, {mib} MiB per run, best of 3 (Gbit/s):");
    println!("  direct loopback   {d:8.2}");
    println!("  forwarded         {f:8.2}");
    if pasta_ok {
        println!("  pasta -t (reference) {:5.2}", best(&p_tp));
    }
    println!("  ratio forwarded/direct: {:.2}", f / d);
    println!(
        "CPU time per GiB moved, all threads, median (s): direct {:.3}, forwarded {:.3} (forwarder adds {:.3}){}",
        cpu(&d_tp),
        cpu(&f_tp),
        cpu(&f_tp) - cpu(&d_tp),
        if pasta_ok { " [pasta runs in its own process: not counted]" } else { "" }
    );

    let dl = latencies(direct_addr, conns);
    let fl = latencies(fwd_addr, conns);
    println!("connection latency, connect + 1-byte request/answer, {conns} sequential (µs):");
    println!(
        "  direct loopback   median {:7.1}  p90 {:7.1}  p99 {:7.1}",
        pct(&dl, 0.5),
        pct(&dl, 0.9),
        pct(&dl, 0.99)
    );
    println!(
        "  forwarded         median {:7.1}  p90 {:7.1}  p99 {:7.1}",
        pct(&fl, 0.5),
        pct(&fl, 0.9),
        pct(&fl, 0.99)
    );
    if pasta_ok {
        let pl = latencies(pasta_addr, conns);
        println!(
            "  pasta -t (ref.)   median {:7.1}  p90 {:7.1}  p99 {:7.1}",
            pct(&pl, 0.5),
            pct(&pl, 0.9),
            pct(&pl, 0.99)
        );
    }
    println!(
        "  added by forwarding: median {:.1} µs (ratio {:.2})",
        pct(&fl, 0.5) - pct(&dl, 0.5),
        pct(&fl, 0.5) / pct(&dl, 0.5)
    );
    drop(fwd);
    if let Some(p) = pasta.as_mut() {
        let _ = p.kill();
        let _ = p.wait();
    }
    std::thread::sleep(Duration::from_millis(10));
}
