//! Memory overhead of berth's VMM: a VM with 256 MiB of guest memory, the in-kernel irqchip,
//! serial, i8042 and three virtio devices (block, console, vsock; with the argument `net` also
//! virtio-net on a throw-away tap, which needs root) runs a two-byte real-mode loop (`jmp $`,
//! safe on any KVM, kvm_pvm included) while this measures the process's RSS, and, as for a
//! booted VM (`vm_up_down`), the RSS minus the resident pages of the guest RAM mapping. Used
//! by bench/vm.sh.

use std::time::Duration;

use berth_runtime::vm::vmm_memory;
use berth_vmm::{DeviceConfig, ExitReason, GuestBoot, Machine, MachineConfig};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        println!("{{\"skipped\":\"/dev/kvm is not usable\"}}");
        return;
    }
    let net = std::env::args().nth(1).as_deref() == Some("net");
    let dir = std::env::temp_dir().join(format!("berth-vmm-overhead-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let before = rss_kib();
    let mut cfg = MachineConfig::new(
        256 << 20,
        GuestBoot::RealMode {
            code: vec![0xeb, 0xfe],
            load_addr: 0x1000,
        },
        Box::new(std::io::sink()),
    );
    cfg.devices = vec![
        DeviceConfig::Block {
            path: disk,
            read_only: false,
        },
        DeviceConfig::Console {
            socket: dir.join("control.sock"),
        },
        DeviceConfig::Vsock {
            cid: 3,
            uds: dir.join("vsock.sock"),
        },
    ];
    if net {
        // Not persistent: the tap goes away with the device.
        cfg.devices.push(DeviceConfig::Net {
            tap: format!("bvovh{}", std::process::id() % 1_000_000),
            mac: [0x02, 0, 0, 0, 0, 1],
        });
    }
    let machine = match Machine::create(cfg) {
        Ok(m) => m,
        Err(e) if net => {
            let _ = std::fs::remove_dir_all(&dir);
            println!(
                "{{\"skipped\":\"virtio-net: {}\"}}",
                e.to_string().replace('"', "'")
            );
            return;
        }
        Err(e) => panic!("create VM: {e}"),
    };
    let exit = machine.exit_signal();
    let t = std::thread::spawn(move || machine.run());
    std::thread::sleep(Duration::from_millis(300));
    let running = rss_kib();
    let mem = vmm_memory::of_process(std::process::id() as i32, &[256 << 20])
        .unwrap_or_else(|e| panic!("{e}"));
    exit.request(ExitReason::Stopped);
    let reason = t.join().unwrap().expect("run");
    let _ = std::fs::remove_dir_all(&dir);
    println!("{{\"virtio_devices\":{},\"process_rss_before_vm_kib\":{before},\"vmm_rss_running_kib\":{running},\"vmm_rss_kib\":{},\"guest_rss_kib\":{},\"vmm_overhead_kib\":{},\"guest_memory_kib\":{},\"exit\":\"{reason:?}\"}}", if net { 4 } else { 3 }, mem.rss_kib, mem.guest_rss_kib, mem.overhead_kib(), 256 << 10);
}
