//! Port forwarding benchmark: throughput (upload: the client sends; download: the server
//! sends) and per-connection latency through a forwarded port into a server listening on the
//! loopback of a fresh network namespace, against a direct loopback connection to the same
//! kind of server, all in the same run and interleaved:
//!
//! - kernel: berth as root, the namespace on a bridge of berth's (`Network::plumb`) and the
//!   port forwarded by nftables DNAT (`Network::forward_in_kernel`), the forwarder behind it;
//! - splice: berth's userspace forwarder (`PortForwarder`, rootless containers and the
//!   fallback), dialing into the namespace;
//! - pasta `-t` on the same namespace, as a reference (when pasta is installed);
//! - veth, no NAT: straight to the namespace's address on the bridge (a server there on
//!   `0.0.0.0`), the floor of any path into another namespace: the kernel path less its two
//!   address rewrites (host DNAT + masquerade, the namespace's redirect to its loopback);
//! - the same floor with 64 KiB packets: a second namespace on a second bridge whose bridge
//!   and veth pair are set back to the kernel's default largest packet (as before
//!   `bridge::ENV_LINK_PACKET`), to show what BIG TCP gives in the same run.
//!
//! With `NET_BENCH_HOLD=1` it sets everything up, prints each mode's address and waits until
//! its stdin closes, for profiling one path at a time with other tools (`perf`, `ss`).
//!
//! Run as root: `cargo run --release -p berth-runtime --example net_bench [MiB] [connections]`
//! (or `bench/net.sh`).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_runtime::net::bridge::{veth_name, BridgeConfig};
use berth_runtime::net::dialer::NetnsDialer;
use berth_runtime::net::forward::{ForwardSpec, PortForwarder};
use berth_runtime::net::netlink::Netlink;
use berth_runtime::net::netns::run_in_netns;
use berth_runtime::net::{EnvNamespaces, Network, NetworkOptions};
use berth_runtime::state::BerthHome;
use envfile_spec::plan::{NetworkMode, Protocol};

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

/// Serves three kinds of connection: first byte `s` = sink (read to EOF, answer 8-byte
/// count), `d` = source (read an 8-byte count, send that many bytes, close), `p` = ping
/// (answer one byte, close).
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
                if kind[0] == b'd' {
                    let mut count = [0u8; 8];
                    if s.read_exact(&mut count).is_err() {
                        return;
                    }
                    let mut left = u64::from_le_bytes(count);
                    buf.fill(0x5a);
                    while left > 0 {
                        let n = left.min(buf.len() as u64) as usize;
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                        left -= n as u64;
                    }
                    return;
                }
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

/// Which way the bytes of a throughput run go.
#[derive(Clone, Copy, PartialEq)]
enum Direction {
    /// The client (on the host) sends, the server (in the namespace) reads.
    Upload,
    /// The server sends, the client reads: a server answering through the forwarded port.
    Download,
}

/// (Gbit/s, CPU seconds per GiB moved) of one bulk transfer.
fn throughput(addr: SocketAddr, bytes: u64, direction: Direction) -> (f64, f64) {
    let cpu0 = cpu_seconds();
    let mut c = TcpStream::connect(addr).unwrap();
    let mut buf = vec![0x5au8; 1 << 18];
    let start = Instant::now();
    if direction == Direction::Download {
        c.write_all(b"d").unwrap();
        c.write_all(&bytes.to_le_bytes()).unwrap();
        let mut got = 0u64;
        loop {
            let n = c.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        assert_eq!(got, bytes, "client got everything");
    } else {
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
        assert_eq!(u64::from_le_bytes(count), bytes, "server got everything");
    }
    let secs = start.elapsed().as_secs_f64();
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

/// The namespace `ns` on a bridge of its own (a bench home, bridge `berthbench`), with the
/// guest port forwarded from a free 127.0.0.1 port by the kernel, the forwarder serving the
/// same socket behind it as berth's supervisor does. Detached on drop.
struct KernelPath {
    net: Network,
    env: &'static str,
    _home: tempfile::TempDir,
    _forwarder: PortForwarder,
    addr: SocketAddr,
    /// The namespace's own address on the bridge.
    env_address: Ipv4Addr,
}

impl KernelPath {
    /// `env`: the environment id on `bridge`; `packet`: when set, the largest IPv4 packet of
    /// the bridge and both ends of the veth pair is set back to it after berth made them.
    fn start(
        ns: &File,
        guest: u16,
        env: &'static str,
        bridge: &str,
        packet: Option<u32>,
    ) -> KernelPath {
        let home_dir = tempfile::tempdir().unwrap();
        let home = BerthHome::at(home_dir.path()).unwrap();
        let net = Network::new(
            &home,
            NetworkOptions {
                bridge: BridgeConfig {
                    name: bridge.into(),
                    nft_table: bridge.into(),
                    subnet: None,
                },
                user_mode: Some(false),
                ..NetworkOptions::default()
            },
        );
        let plumbing = net
            .plumb(
                env,
                EnvNamespaces {
                    net: ns,
                    user: None,
                },
                NetworkMode::Isolated,
                &[],
            )
            .expect("plumb the bench namespace onto bridge berthbench");
        let env_address = plumbing.address.expect("an address on the bridge");
        if let Some(bytes) = packet {
            let mut nl = Netlink::open().unwrap();
            for dev in [veth_name(env), bridge.to_string()] {
                let index = nl.link_index(&dev).unwrap().expect("berth's interface");
                nl.set_ipv4_packet_size(index, bytes).unwrap();
            }
            run_in_netns(ns, || {
                let mut nl = Netlink::open().unwrap();
                let index = nl.link_index("eth0").unwrap().expect("eth0 inside");
                nl.set_ipv4_packet_size(index, bytes).unwrap();
            })
            .unwrap();
        }
        let fwd = PortForwarder::start(
            &[ForwardSpec {
                protocol: Protocol::Tcp,
                host: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                guest_port: guest,
                shared: false,
            }],
            Arc::new(NetnsDialer::new(ns, "bench namespace").unwrap()),
        )
        .unwrap();
        let kernel = net
            .forward_in_kernel(env, ns, fwd.ports())
            .expect("install the kernel port forwarding");
        assert!(kernel, "the kernel forwards nothing");
        let addr = fwd.ports()[0].bound;
        KernelPath {
            net,
            env,
            _home: home_dir,
            _forwarder: fwd,
            addr,
            env_address,
        }
    }
}

impl Drop for KernelPath {
    fn drop(&mut self) {
        let _ = self.net.detach(self.env);
    }
}

struct Mode {
    name: &'static str,
    addr: SocketAddr,
    /// (Gbit/s, CPU s per GiB) of each upload run, then of each download run.
    up: Vec<(f64, f64)>,
    down: Vec<(f64, f64)>,
    lat: Vec<f64>,
    /// Median latency of each interleaved round (for differences paired by round).
    lat_rounds: Vec<f64>,
    /// CPU seconds (all threads of this process, user + system) spent on the connections.
    lat_cpu: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median of the per-round ratios of `a`'s throughput to `b`'s.
fn ratio(a: &[(f64, f64)], b: &[(f64, f64)]) -> f64 {
    median(a.iter().zip(b).map(|(x, y)| x.0 / y.0).collect())
}

fn print_throughput(modes: &[Mode], direction: Direction, mib: u64, rounds: usize) {
    let runs = |m: &Mode| -> Vec<(f64, f64)> {
        match direction {
            Direction::Upload => m.up.clone(),
            Direction::Download => m.down.clone(),
        }
    };
    let what = match direction {
        Direction::Upload => "upload (the host's client sends)",
        Direction::Download => "download (the namespace's server sends)",
    };
    println!("throughput, {what}, {mib} MiB per run, {rounds} interleaved rounds, median (Gbit/s; ratio to direct, median of per-round ratios; CPU s per GiB, all threads of this process, and its ratio to direct's):");
    let direct = runs(&modes[0]);
    let direct_cpu = median(direct.iter().map(|x| x.1).collect());
    for m in modes {
        let r = runs(m);
        let cpu = median(r.iter().map(|x| x.1).collect());
        println!(
            "  {:<28} {:8.2}   ratio {:.2}   cpu {:.3} ({:.2}x){}",
            m.name,
            median(r.iter().map(|x| x.0).collect()),
            ratio(&r, &direct),
            cpu,
            cpu / direct_cpu,
            if m.name.starts_with("pasta") {
                " [pasta's own process not counted]"
            } else {
                ""
            }
        );
    }
    println!(
        "  kernel DNAT / veth floor {:.2} (what the two address rewrites cost; the rest of the gap to direct is crossing into the namespace)",
        ratio(&runs(&modes[KERNEL]), &runs(&modes[FLOOR]))
    );
}

/// Where the modes are in the list.
const KERNEL: usize = 1;
const FLOOR: usize = 3;

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
    let on_eth0 = run_in_netns(&ns, || {
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, 5202)).unwrap()
    })
    .unwrap();
    serve(on_eth0);
    let kernel = KernelPath::start(&ns, 5201, "net-bench", "berthbench", None);
    // The floor again in a namespace of its own, on a bridge with 64 KiB packets.
    let ns_64k = new_netns();
    let on_eth0_64k = run_in_netns(&ns_64k, || {
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, 5202)).unwrap()
    })
    .unwrap();
    serve(on_eth0_64k);
    let floor_64k = KernelPath::start(&ns_64k, 5201, "net-bench-64k", "berthbench64k", Some(65536));
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

    let mode = |name, addr| Mode {
        name,
        addr,
        up: Vec::new(),
        down: Vec::new(),
        lat: Vec::new(),
        lat_rounds: Vec::new(),
        lat_cpu: 0.0,
    };
    let mut modes = vec![
        mode("direct loopback", direct_addr),
        mode("kernel DNAT (root)", kernel.addr),
        mode("splice (rootless)", fwd.ports()[0].bound),
        mode(
            "veth, no NAT (floor)",
            SocketAddr::from((kernel.env_address, 5202)),
        ),
        mode(
            "floor, 64 KiB packets",
            SocketAddr::from((floor_64k.env_address, 5202)),
        ),
    ];
    if pasta_ok {
        modes.push(mode("pasta -t (ref.)", pasta_addr));
    }
    if std::env::var_os("NET_BENCH_HOLD").is_some() {
        // For profiling one path at a time with outside tools: every mode's address, then
        // wait until stdin closes.
        for m in &modes {
            println!("{}\t{}", m.name, m.addr);
        }
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        return;
    }
    // Warm up every path.
    for m in &modes {
        throughput(m.addr, 64 << 20, Direction::Upload);
        throughput(m.addr, 64 << 20, Direction::Download);
        latencies(m.addr, 100);
    }
    // Interleaved: each round measures every mode once each way, starting one mode later
    // each time, so load from other work on the machine hits all of them alike.
    let rounds = 5;
    for r in 0..rounds {
        for i in 0..modes.len() {
            let k = (i + r) % modes.len();
            let t = throughput(modes[k].addr, bytes, Direction::Upload);
            modes[k].up.push(t);
            let t = throughput(modes[k].addr, bytes, Direction::Download);
            modes[k].down.push(t);
        }
    }
    let per_round = conns.div_ceil(10).max(1);
    for r in 0..10 {
        for i in 0..modes.len() {
            let k = (i + r) % modes.len();
            let cpu0 = cpu_seconds();
            let l = latencies(modes[k].addr, per_round);
            modes[k].lat_cpu += cpu_seconds() - cpu0;
            modes[k].lat_rounds.push(pct(&l, 0.5));
            modes[k].lat.extend(l);
        }
    }
    for m in &mut modes {
        m.lat.sort_by(|a, b| a.total_cmp(b));
    }
    print_throughput(&modes, Direction::Upload, mib, rounds);
    print_throughput(&modes, Direction::Download, mib, rounds);
    println!("connection latency, connect + 1-byte request/answer, {} sequential per mode, interleaved in 10 rounds (µs; added: median of all minus direct's, and the median over rounds of each round's difference of medians, which load changing between rounds moves less; CPU µs per connection of this process, which the load of other work does not inflate as much):", per_round * 10);
    let d50 = pct(&modes[0].lat, 0.5);
    let dcpu = modes[0].lat_cpu / modes[0].lat.len() as f64 * 1e6;
    for m in &modes {
        let cpu = m.lat_cpu / m.lat.len() as f64 * 1e6;
        println!(
            "  {:<28} median {:7.1}  p90 {:7.1}  p99 {:7.1}   added (median) {:+6.1}, by round {:+6.1}   cpu {:6.1} ({:+6.1}){}",
            m.name,
            pct(&m.lat, 0.5),
            pct(&m.lat, 0.9),
            pct(&m.lat, 0.99),
            pct(&m.lat, 0.5) - d50,
            median(
                m.lat_rounds
                    .iter()
                    .zip(&modes[0].lat_rounds)
                    .map(|(a, d)| a - d)
                    .collect()
            ),
            cpu,
            cpu - dcpu,
            if m.name.starts_with("pasta") { " [without pasta's process]" } else { "" }
        );
    }
    drop(fwd);
    drop(floor_64k);
    drop(kernel);
    if let Some(p) = pasta.as_mut() {
        let _ = p.kill();
        let _ = p.wait();
    }
    std::thread::sleep(Duration::from_millis(10));
}
