//! Reaching a running VM's agent: [`VmConnection`] over the first free control channel,
//! with the retry and the resume of a VM left paused (a killed `berth snapshot save`).

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use berth_agent_proto::{Client, Output};

use super::vm_record::{vm_json, VmState, PAUSED_NOTICE};
use super::{Provider, VmBackend, VmError};
use crate::state::ENV_LOCK_FILE;
use crate::state::{self, FileLock, LockMode};

/// A connection to a running VM's agent. Its channel's lock lives inside the connection, so
/// the channel stays reserved while the client or any of its session handles exists.
pub struct VmConnection {
    pub client: Client,
}

impl VmConnection {
    /// Runs `argv` and collects its output.
    pub fn run(&mut self, argv: &[&str]) -> Result<Output, VmError> {
        Ok(self.client.run(argv)?)
    }
}

impl VmBackend {
    pub(super) fn connect_with(
        &self,
        st: &VmState,
        timeout: Duration,
    ) -> Result<VmConnection, VmError> {
        // The first free channel; each serves one client.
        for socket in super::control_sockets(&st.control_socket) {
            let Some(lock) =
                FileLock::try_acquire(&super::control_lock(&socket), LockMode::Exclusive)?
            else {
                continue;
            };
            if !socket.exists() {
                continue;
            }
            let stream = UnixStream::connect(&socket).map_err(|e| VmError::Io {
                path: socket.clone(),
                source: e,
            })?;
            let mut client = Client::with_guard(stream, Some(Box::new(lock)))?;
            client.hello(timeout)?;
            return Ok(VmConnection { client });
        }
        Err(VmError::Busy)
    }

    /// Resumes a running qemu VM that was left paused (a `berth snapshot save` killed while
    /// it copied the disk): its guest answers nothing until then. Returns whether it was
    /// paused. The caller holds the environment's lock, so no save is under way.
    pub fn resume_if_paused(&self, state_dir: &Path) -> Result<bool, VmError> {
        let Ok(st) = self.running_state(state_dir) else {
            return Ok(false);
        };
        let (Provider::Qemu, Some(qmp)) = (st.provider, &st.qmp_socket) else {
            return Ok(false);
        };
        let mut monitor = super::qmp::Qmp::connect(qmp, Duration::from_secs(10))?;
        Ok(monitor.resume_if_paused()?)
    }

    /// Connects to the running VM's agent (for exec and shell). An unanswered hello is tried
    /// again on a fresh connection: the agent resets a channel when the host side closes, so a
    /// handshake lost while the previous client was going away gets a clean retry. Before that
    /// retry, a qemu VM left paused is resumed (with a notice) unless another command holds
    /// the environment's lock (a save in progress resumes it itself).
    pub fn connect(&self, state_dir: &Path) -> Result<VmConnection, VmError> {
        let st = self.running_state(state_dir)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.connect_with(&st, Duration::from_secs(4)) {
                Err(VmError::Agent(berth_agent_proto::ClientError::Timeout(_))) if attempt < 3 => {
                    if !self.is_running(state_dir) {
                        return Err(VmError::NotRunning);
                    }
                    // A paused VM does not answer: only then is qemu asked (one QMP round
                    // trip on this rare path instead of on every exec).
                    if st.provider == Provider::Qemu && self.resume_unlocked(state_dir) {
                        eprintln!("berth: notice: {PAUSED_NOTICE}");
                    }
                }
                other => return other,
            }
        }
    }

    /// [`resume_if_paused`](Self::resume_if_paused) when the environment's lock is free (it is
    /// held while checking); whether the VM was paused. A failed check is left to the
    /// connection that follows to report.
    fn resume_unlocked(&self, state_dir: &Path) -> bool {
        let Ok(Some(_lock)) =
            FileLock::try_acquire(&state_dir.join(ENV_LOCK_FILE), LockMode::Exclusive)
        else {
            return false;
        };
        matches!(self.resume_if_paused(state_dir), Ok(true))
    }

    pub(super) fn running_state(&self, state_dir: &Path) -> Result<VmState, VmError> {
        let st: VmState = state::read_json(&vm_json(state_dir))?.ok_or(VmError::NotRunning)?;
        if !st.process.is_some_and(|p| p.alive()) {
            return Err(VmError::NotRunning);
        }
        Ok(st)
    }

    /// Runs `argv` in the VM and collects its output.
    pub fn exec_capture(&self, state_dir: &Path, argv: &[&str]) -> Result<Output, VmError> {
        self.connect(state_dir)?.run(argv)
    }

    pub fn is_running(&self, state_dir: &Path) -> bool {
        self.running_state(state_dir).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::process::ProcessIdentity;
    use crate::state::BerthHome;
    use crate::vm::kernel::Mirror;

    /// A qemu VM left paused by a killed `snapshot save` is resumed by the next connect (or
    /// `up`); while another command holds the environment's lock, connect leaves it alone.
    #[test]
    fn a_vm_left_paused_is_resumed() {
        let d = tempfile::tempdir().unwrap();
        let b = VmBackend::with_mirror(BerthHome::at(d.path()).unwrap(), Mirror::unreachable());
        let env = d.path().join("env");
        std::fs::create_dir_all(&env).unwrap();
        let Some(qemu) = super::super::qmp::TestQemu::start(&env) else {
            return;
        };
        let st = VmState {
            provider: Provider::Qemu,
            accel: "tcg".into(),
            process: ProcessIdentity::of(qemu.child.id() as i32),
            control_socket: env.join("control.sock"),
            console_log: env.join("console.log"),
            disk: env.join("disk.qcow2"),
            vcpus: 1,
            memory: 32 << 20,
            kernel_release: "6.1".into(),
            started_at_ms: 0,
            boot_ms: Some(1),
            vsock_socket: None,
            shares: vec![],
            qmp_socket: Some(qemu.qmp.clone()),
            folders_shared: Some(false),
            image_workdir: None,
            image_user: None,
            agent_streams: true,
        };
        state::write_json(&env.join("vm.json"), &st).unwrap();
        // qemu's monitor serves one client at a time: a connection per step.
        let monitor = || super::super::qmp::Qmp::connect(&qemu.qmp, Duration::from_secs(10));
        let run = |cmd: &str| monitor().unwrap().execute(cmd).unwrap();
        let run_state = || monitor().unwrap().run_state().unwrap();
        run("cont");
        assert!(
            !b.resume_if_paused(&env).unwrap(),
            "a running VM is left alone"
        );
        assert_eq!(run_state(), "running");
        run("stop");

        let lock = FileLock::acquire(&env.join(ENV_LOCK_FILE), LockMode::Exclusive).unwrap();
        assert!(!b.resume_unlocked(&env), "a save may be under way");
        assert_eq!(run_state(), "paused");
        drop(lock);
        assert!(b.resume_unlocked(&env));
        assert_eq!(run_state(), "running");

        run("stop");
        assert!(b.resume_if_paused(&env).unwrap());
        assert_eq!(run_state(), "running");
    }
}
