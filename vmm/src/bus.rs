//! Address-range dispatch for port I/O and MMIO exits: each device owns a range and sees
//! offsets relative to its base.

use std::sync::{Arc, Mutex};

/// A device on the port-I/O or MMIO bus.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Debug, thiserror::Error)]
#[error("bus range {base:#x}+{len:#x} overlaps an existing device or is empty")]
pub struct BusOverlap {
    pub base: u64,
    pub len: u64,
}

/// Sorted, non-overlapping ranges.
#[derive(Default, Clone)]
pub struct Bus {
    ranges: Vec<(u64, u64, SharedDevice)>,
}

impl Bus {
    pub fn insert(&mut self, base: u64, len: u64, dev: SharedDevice) -> Result<(), BusOverlap> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusOverlap { base, len })?;
        if self.ranges.iter().any(|(b, l, _)| base < b + l && *b < end) {
            return Err(BusOverlap { base, len });
        }
        let pos = self.ranges.partition_point(|(b, _, _)| *b < base);
        self.ranges.insert(pos, (base, len, dev));
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &SharedDevice)> {
        let idx = self
            .ranges
            .partition_point(|(b, _, _)| *b <= addr)
            .checked_sub(1)?;
        let (b, l, d) = &self.ranges[idx];
        (addr < b + l).then_some((addr - b, d))
    }

    /// Dispatches a read; returns false (and leaves `data` all ones, like an empty bus) when no
    /// device claims the address.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((off, dev)) => {
                lock(dev).read(off, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write; returns false when no device claims the address.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((off, dev)) => {
                lock(dev).write(off, data);
                true
            }
            None => false,
        }
    }
}

/// A poisoned device lock means a device panicked in another vCPU thread; its state is still
/// the best there is, so keep going rather than cascade the panic.
fn lock(dev: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_with_offsets() {
        let mut bus = Bus::default();
        let a = Arc::new(Mutex::new(Recorder(vec![])));
        let b = Arc::new(Mutex::new(Recorder(vec![])));
        bus.insert(0x3f8, 8, a.clone()).unwrap();
        bus.insert(0x60, 5, b.clone()).unwrap();
        assert!(bus.write(0x3f9, &[7]));
        assert!(bus.write(0x64, &[0xfe]));
        assert!(!bus.write(0x65, &[1]));
        let mut d = [0u8; 1];
        assert!(bus.read(0x3fd, &mut d));
        assert_eq!(d, [5]);
        assert!(!bus.read(0x400, &mut d));
        assert_eq!(d, [0xff]);
        assert_eq!(a.lock().unwrap().0, vec![(1, vec![7])]);
        assert_eq!(b.lock().unwrap().0, vec![(4, vec![0xfe])]);
    }

    #[test]
    fn rejects_overlaps_and_empty_ranges() {
        let mut bus = Bus::default();
        let d = Arc::new(Mutex::new(Recorder(vec![])));
        bus.insert(0x100, 0x10, d.clone()).unwrap();
        assert!(bus.insert(0x10f, 1, d.clone()).is_err());
        assert!(bus.insert(0xf8, 9, d.clone()).is_err());
        assert!(bus.insert(0x200, 0, d.clone()).is_err());
        assert!(bus.insert(u64::MAX, 2, d.clone()).is_err());
        bus.insert(0x110, 1, d).unwrap();
    }
}
