//! How long operations report progress, without the runtime depending on a terminal
//! library: the CLI plugs in progress bars, tests and pipes get plain lines.

use std::io::Write;
use std::sync::Arc;

/// Receives progress of a pull, import or build.
pub trait ProgressReporter: Send + Sync {
    /// A one-line status message.
    fn message(&self, text: &str);
    /// A transfer of `total` bytes (when known) starts; the handle reports its advance.
    fn start(&self, label: &str, total: Option<u64>) -> Box<dyn TransferProgress>;
}

/// Progress of one transfer (a layer download or unpack).
pub trait TransferProgress: Send {
    fn advance(&mut self, bytes: u64);
    fn finish(&mut self, note: &str);
}

/// Prints plain lines to stderr: one when a transfer starts and one when it ends.
#[derive(Debug, Default, Clone, Copy)]
pub struct LineProgress;

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct QuietProgress;

struct LineTransfer {
    label: String,
    done: u64,
}

impl ProgressReporter for LineProgress {
    fn message(&self, text: &str) {
        let _ = writeln!(std::io::stderr(), "{text}");
    }
    fn start(&self, label: &str, total: Option<u64>) -> Box<dyn TransferProgress> {
        let size = total
            .map(|t| format!(" ({})", human_bytes(t)))
            .unwrap_or_default();
        let _ = writeln!(std::io::stderr(), "{label}{size}: started");
        Box::new(LineTransfer {
            label: label.to_string(),
            done: 0,
        })
    }
}

impl TransferProgress for LineTransfer {
    fn advance(&mut self, bytes: u64) {
        self.done += bytes;
    }
    fn finish(&mut self, note: &str) {
        let _ = writeln!(
            std::io::stderr(),
            "{}: {note} ({})",
            self.label,
            human_bytes(self.done)
        );
    }
}

struct QuietTransfer;

impl ProgressReporter for QuietProgress {
    fn message(&self, _text: &str) {}
    fn start(&self, _label: &str, _total: Option<u64>) -> Box<dyn TransferProgress> {
        Box::new(QuietTransfer)
    }
}

impl TransferProgress for QuietTransfer {
    fn advance(&mut self, _bytes: u64) {}
    fn finish(&mut self, _note: &str) {}
}

/// A shared reporter, as the store's operations take it.
pub type Progress = Arc<dyn ProgressReporter>;

/// `1.5 MB`-style sizes (powers of 1000, like registries and du -h --si).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `0.4s`, `12.3s`, `6m05s`-style durations for progress lines.
pub fn human_duration(d: std::time::Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let whole = d.as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_durations() {
        use std::time::Duration;
        assert_eq!(super::human_duration(Duration::from_millis(400)), "0.4s");
        assert_eq!(super::human_duration(Duration::from_secs(365)), "6m05s");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(super::human_bytes(999), "999 B");
        assert_eq!(super::human_bytes(1_500_000), "1.5 MB");
    }
}
