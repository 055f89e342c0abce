//! Interrupt lines: an eventfd registered with KVM as an irqfd for one GSI of the in-kernel
//! IOAPIC. A VM without an in-kernel irqchip (the hand-made test guests) gets inert lines.

use std::sync::Arc;

use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use super::VmmError;

#[derive(Clone)]
pub struct IrqLine {
    gsi: u32,
    fd: Option<Arc<EventFd>>,
}

impl IrqLine {
    /// A line wired to `gsi` through an irqfd.
    pub fn wired(vm: &VmFd, gsi: u32) -> Result<Self, VmmError> {
        let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmmError::Kvm {
            what: "create an interrupt eventfd",
            source: kvm_ioctls::Error::new(e.raw_os_error().unwrap_or(libc::EIO)),
        })?;
        vm.register_irqfd(&fd, gsi).map_err(|e| VmmError::Kvm {
            what: "register an irqfd",
            source: e,
        })?;
        Ok(IrqLine {
            gsi,
            fd: Some(Arc::new(fd)),
        })
    }

    /// A line that goes nowhere (no interrupt controller).
    pub fn inert(gsi: u32) -> Self {
        IrqLine { gsi, fd: None }
    }

    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    /// Raises the (edge-triggered) interrupt.
    pub fn trigger(&self) {
        if let Some(fd) = &self.fd {
            // A full eventfd counter already means "pending", so an error changes nothing.
            let _ = fd.write(1);
        }
    }
}

impl vm_superio::Trigger for IrqLine {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        IrqLine::trigger(self);
        Ok(())
    }
}
