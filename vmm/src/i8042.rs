//! Just enough of the i8042 keyboard controller for Linux: status reads, and the CPU reset
//! command (0xfe to port 0x64) that `reboot=k` uses, which stops the VM cleanly.

use std::sync::Arc;

use super::bus::BusDevice;
use super::exit::ExitSignal;

const COMMAND_OFFSET: u64 = 4;
const CMD_RESET_CPU: u8 = 0xfe;

pub struct I8042 {
    exit: Arc<ExitSignal>,
}

impl I8042 {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        I8042 { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Output buffer empty, input buffer empty: nothing to read, ready for commands.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            self.exit.request(super::exit::ExitReason::Reset);
        }
    }
}
