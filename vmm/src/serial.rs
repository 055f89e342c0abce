//! The 8250 UART at 0x3f8 (vm-superio's model). The guest's console output goes to a sink:
//! the environment's log file, or a buffer in tests.

use std::io::Write;

use vm_superio::Serial;

use super::bus::BusDevice;
use super::irq::IrqLine;

pub type ConsoleSink = Box<dyn Write + Send>;

pub struct SerialPort {
    inner: Serial<IrqLine, vm_superio::serial::NoEvents, ConsoleSink>,
}

impl SerialPort {
    pub fn new(irq: IrqLine, sink: ConsoleSink) -> Self {
        SerialPort {
            inner: Serial::new(irq, sink),
        }
    }
}

impl BusDevice for SerialPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.inner.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&b), Ok(off)) = (data.first(), u8::try_from(offset)) {
            // A failing sink (full disk) must not stop the guest; the byte is lost.
            let _ = self.inner.write(off, b);
            let _ = self.inner.writer_mut().flush();
        }
    }
}
