//! How a running VM is asked to stop, from a device (i8042 reset), a vCPU (HLT without an
//! interrupt controller, triple fault) or the host (shutdown).

use std::sync::{Condvar, Mutex};

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset the machine (i8042 reset): a clean reboot or poweroff.
    Reset,
    /// A vCPU halted with no interrupt controller to wake it (tiny guests).
    Halted,
    /// Triple fault or KVM shutdown exit, with the vCPU's registers as KVM reports them at
    /// that exit ([`crate::vcpu::cpu_state`], for the log: where the guest was on Intel, the
    /// reset state on AMD).
    Shutdown(String),
    /// The host asked the VM to stop.
    Stopped,
    /// A vCPU failed.
    Error(String),
}

/// First stop request wins; waiters are woken.
#[derive(Default)]
pub struct ExitSignal {
    reason: Mutex<Option<ExitReason>>,
    cond: Condvar,
}

impl ExitSignal {
    pub fn request(&self, reason: ExitReason) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            *r = Some(reason);
            self.cond.notify_all();
        }
    }

    pub fn is_requested(&self) -> bool {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Blocks until a stop is requested.
    pub fn wait(&self) -> ExitReason {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(reason) = r.clone() {
                return reason;
            }
            r = self.cond.wait(r).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_request_wins_and_wakes_waiter() {
        let s = Arc::new(ExitSignal::default());
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.wait());
        s.request(ExitReason::Reset);
        s.request(ExitReason::Stopped);
        assert_eq!(t.join().unwrap(), ExitReason::Reset);
        assert!(s.is_requested());
    }
}
