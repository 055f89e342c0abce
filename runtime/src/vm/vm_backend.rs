//! `VmBackend`: start, connect to, stop and inspect an environment's VM, whichever provider
//! runs it. State lives in the environment folder:
//!
//! ```text
//! envs/<id>/vm.json        VmState: provider, VMM pid + start time, kernel, boot time
//! envs/<id>/disk.qcow2     the environment's copy-on-write root disk (qemu)
//! envs/<id>/disk.img       the same for berth's VMM
//! envs/<id>/control.sock   control channel to the agent (one client at a time)
//! envs/<id>/qmp.sock       qemu's machine protocol (pauses the VM for disk snapshots)
//! envs/<id>/logs/console.log  the guest's serial console
//! envs/<id>/fs-<n>.sock    virtiofsd's socket for shared folder n (qemu)
//! envs/<id>/logs/virtiofsd-<n>.log  its messages
//! envs/<id>/network.json   the tap, lease and ports of a networked VM of berth's VMM
//! ```
//!
//! The caller (the CLI) holds the environment's lock around `start` and `stop`.

use std::path::Path;
use std::time::Duration;

use super::kernel::Mirror;
use super::vm_record::{vm_json, VmState, VmStatus};
use super::{Provider, VmError};
use crate::net::{Network, NetworkOptions};
use crate::state::{self, BerthHome};

pub struct VmBackend {
    pub(super) home: BerthHome,
    /// Where kernels come from: found on first use (a VM start), not by every command that
    /// opens the backends (`Environments::open`: `berth run` of a container read the host's
    /// apt sources for nothing).
    mirror: std::sync::OnceLock<Mirror>,
    net_options: NetworkOptions,
}

impl VmBackend {
    /// The berth home this backend keeps its VMs in.
    pub fn home(&self) -> &BerthHome {
        &self.home
    }

    pub(super) fn network(&self) -> Network {
        Network::new(&self.home, self.net_options.clone())
    }

    /// Another bridge for the VMs' taps than berth's default (tests).
    pub fn with_network_options(mut self, options: NetworkOptions) -> Self {
        self.net_options = options;
        self
    }

    /// The environment id of `state_dir` when it is an environment folder of this home (the
    /// key of its network record and lease).
    pub(super) fn env_id(&self, state_dir: &Path) -> Option<String> {
        let name = state_dir.file_name()?.to_str()?;
        (self.home.env_dir(name) == state_dir).then(|| name.to_string())
    }

    pub fn new(home: BerthHome) -> Self {
        VmBackend {
            home,
            mirror: std::sync::OnceLock::new(),
            net_options: NetworkOptions::default(),
        }
    }

    pub fn with_mirror(home: BerthHome, mirror: Mirror) -> Self {
        VmBackend {
            home,
            mirror: std::sync::OnceLock::from(mirror),
            net_options: NetworkOptions::default(),
        }
    }

    /// The Debian mirror kernels are fetched from ([`Mirror::discover`] on first use).
    pub(super) fn mirror(&self) -> &Mirror {
        self.mirror.get_or_init(Mirror::discover)
    }

    pub fn status(&self, state_dir: &Path) -> Result<VmStatus, VmError> {
        let st: Option<VmState> = state::read_json(&vm_json(state_dir))?;
        let running = st
            .as_ref()
            .and_then(|s| s.process)
            .is_some_and(|p| p.alive());
        Ok(VmStatus { running, state: st })
    }

    /// Asks the agent to power off, waits up to `grace`, then kills the VMM. Removes the
    /// control socket and pid file; keeps the disk. Safe to call when the VM is not running
    /// (or its VMM was killed): it cleans up what is left.
    pub fn stop(&self, state_dir: &Path, grace: Duration) -> Result<(), VmError> {
        let Some(st) = state::read_json::<VmState>(&vm_json(state_dir))? else {
            // Also without vm.json: a network left by an interrupted start.
            return self.release_network(state_dir);
        };
        if let Some(p) = st.process.filter(|p| p.alive()) {
            let asked = self
                .connect_with(&st, Duration::from_secs(2))
                .and_then(|mut c| Ok(c.client.poweroff()?));
            if asked.is_err() || !p.wait_exit(grace) {
                p.terminate(Duration::from_secs(3));
            }
        }
        self.cleanup(state_dir, &st)
    }

    /// Fills the new folder `dest` with a self-contained copy of the environment's disk (see
    /// [`disk_snapshot`](super::disk_snapshot)). A stopped VM's disk is copied as it is. A
    /// running qemu VM is made consistent first: `sync` in the guest writes its caches to the
    /// disk, then qemu pauses the VM (QMP `stop`, which drains and flushes qemu's block layer)
    /// while the disk file is copied, and resumes it (`cont`). What the guest wrote before the
    /// snapshot is in it; a write in flight at that moment is cut as by a power loss, which
    /// ext4's journal recovers from.
    pub fn snapshot_disk(&self, state_dir: &Path, dest: &Path) -> Result<(), VmError> {
        let status = self.status(state_dir)?;
        let Some(st) = status.state.filter(|_| status.running) else {
            let disk = [super::disk_snapshot::QCOW2, super::disk_snapshot::RAW]
                .iter()
                .map(|d| state_dir.join(d))
                .find(|d| d.exists())
                .ok_or_else(|| {
                    VmError::Config(
                        "this VM environment has no disk yet (it was never started); start it with `berth up` first".into(),
                    )
                })?;
            super::disk_snapshot::capture(&disk, dest)?;
            return Ok(());
        };
        let qmp = match (st.provider, &st.qmp_socket) {
            (Provider::Qemu, Some(q)) => q.clone(),
            (Provider::Qemu, None) => return Err(VmError::Config(
                "this VM was started by an older berth that gave qemu no monitor socket; restart it (`berth down`, `berth up`) to snapshot it while it runs, or snapshot it stopped".into(),
            )),
            (Provider::Kvm, _) => return Err(VmError::Config(
                "berth's own VMM cannot pause a running VM for a snapshot yet; stop it with `berth down` first (snapshots of a stopped VM work)".into(),
            )),
        };
        let mut monitor = super::qmp::Qmp::connect(&qmp, Duration::from_secs(30))?;
        // A save that was killed while the VM was paused left it so: resume it first (a
        // no-op on a running VM), or the guest could not run `sync`.
        monitor.execute("cont")?;
        let out = self.exec_capture(state_dir, &["sync"])?;
        if out.status.code != 0 {
            return Err(VmError::Config(format!(
                "`sync` in the guest failed (exit code {}): {}",
                out.status.code,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        monitor.execute("stop")?;
        let copied = super::disk_snapshot::capture(&st.disk, dest);
        let resumed = monitor.execute("cont");
        copied?;
        resumed?;
        Ok(())
    }

    /// Stops the VM (see [`stop`](Self::stop) for `grace`) and deletes the environment's disk
    /// (the cached base image stays).
    pub fn destroy(&self, state_dir: &Path, grace: Duration) -> Result<(), VmError> {
        self.stop(state_dir, grace)?;
        for f in ["disk.qcow2", "disk.img", "vmm.json"] {
            let p = state_dir.join(f);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(VmError::Io { path: p, source: e }),
            }
        }
        super::disk_snapshot::sweep_bases(state_dir)?;
        Ok(())
    }

    /// Removes the VM's tap, its lease, and the bridge and NAT when it was their last user.
    pub fn release_network(&self, state_dir: &Path) -> Result<(), VmError> {
        match self.env_id(state_dir) {
            Some(id) => Ok(self.network().detach(&id)?),
            None => Ok(()),
        }
    }

    pub(super) fn cleanup(&self, state_dir: &Path, st: &VmState) -> Result<(), VmError> {
        // virtiofsd ends when qemu disconnects; one that hangs on is ended here.
        for p in &st.shares {
            if !p.wait_exit(Duration::from_millis(500)) {
                p.terminate(Duration::from_secs(2));
            }
        }
        for i in 0..st.shares.len() {
            let _ = std::fs::remove_file(state_dir.join(format!("fs-{i}.sock")));
        }
        for socket in super::control_sockets(&st.control_socket) {
            let _ = std::fs::remove_file(super::control_lock(&socket));
            let _ = std::fs::remove_file(socket);
        }
        if let Some(v) = &st.vsock_socket {
            let _ = std::fs::remove_file(v);
        }
        if let Some(q) = &st.qmp_socket {
            let _ = std::fs::remove_file(q);
        }
        let _ = std::fs::remove_file(state_dir.join("qemu.pid"));
        let _ = std::fs::remove_file(vm_json(state_dir));
        self.release_network(state_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::startup::guest_net_cmdline;

    #[test]
    fn stop_and_status_without_a_vm() {
        let d = tempfile::tempdir().unwrap();
        let b = VmBackend::with_mirror(BerthHome::at(d.path()).unwrap(), Mirror::unreachable());
        let env = d.path().join("envs/x");
        assert!(!b.status(&env).unwrap().running);
        b.stop(&env, Duration::from_secs(1)).unwrap();
        assert!(matches!(b.connect(&env), Err(VmError::NotRunning)));
    }

    #[test]
    fn dead_vmm_is_reported_and_cleaned_up() {
        let d = tempfile::tempdir().unwrap();
        let b = VmBackend::with_mirror(BerthHome::at(d.path()).unwrap(), Mirror::unreachable());
        let env = d.path().join("env");
        std::fs::create_dir_all(&env).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let st = VmState::stand_in(Provider::Qemu, &env, child.id());
        assert!(st.process.is_some());
        state::write_json(&env.join("vm.json"), &st).unwrap();
        assert!(b.status(&env).unwrap().running);
        child.kill().unwrap();
        child.wait().unwrap();
        let s = b.status(&env).unwrap();
        assert!(!s.running, "kill -9 of the VMM shows as not running");
        assert!(matches!(b.connect(&env), Err(VmError::NotRunning)));
        b.stop(&env, Duration::from_secs(1)).unwrap();
        assert!(!env.join("vm.json").exists());
    }

    #[test]
    fn a_killed_networked_vmm_leaves_no_tap_once_stopped() {
        use crate::net::bridge::veth_name;
        use crate::net::nat::NatRules;
        use crate::net::network::{assert_released, master_of, test_network, DetachOnDrop};
        let d = tempfile::tempdir().unwrap();
        let home = BerthHome::at(d.path()).unwrap();
        let Some(net) = test_network(&home, "b") else {
            return;
        };
        let bridge = net.options().bridge.name.clone();
        let b = VmBackend::with_mirror(home.clone(), Mirror::unreachable())
            .with_network_options(net.options().clone());
        let id = "vmnet-stop";
        let _cleanup = DetachOnDrop {
            net: &net,
            env_id: id,
        };
        let env = home.env_dir(id);
        assert_eq!(b.env_id(&env).as_deref(), Some(id));
        let t = net.plumb_tap(id).unwrap();
        assert_eq!(t.tap, veth_name(id));
        assert_eq!(master_of(&t.tap).as_deref(), Some(bridge.as_str()));
        assert_eq!(net.record(id).unwrap().unwrap().address, Some(t.address));
        assert!(NatRules::exists(&bridge));
        let cmdline = guest_net_cmdline(&t);
        assert!(
            cmdline.contains(&format!("berth.ip={}/{}", t.address, t.prefix))
                && cmdline.contains(&format!("berth.gw={}", t.gateway))
                && cmdline.contains(&format!("berth.dns={}", t.nameservers[0])),
            "{cmdline}"
        );

        // A VMM (stand-in) killed with -9: the tap and lease stay behind it...
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let st = VmState::stand_in(Provider::Kvm, &env, child.id());
        state::write_json(&env.join("vm.json"), &st).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!b.status(&env).unwrap().running);
        assert!(master_of(&t.tap).is_some(), "the tap outlives its VMM");

        // ...until the next stop, which removes tap, lease, NAT and the bridge (its last user).
        b.stop(&env, Duration::from_secs(1)).unwrap();
        assert_released(&net, id, &t.tap);
        // Stopping again finds nothing to do.
        b.stop(&env, Duration::from_secs(1)).unwrap();
    }
}
