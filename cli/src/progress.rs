//! Progress output shared by the commands that pull, build or start: one indicatif bar per
//! transfer on a terminal, plain lines otherwise, nothing with `--quiet`.

use std::io::IsTerminal;
use std::sync::Arc;

use berth_runtime::image::{
    LineProgress, Progress, ProgressReporter, QuietProgress, TransferProgress,
};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::global_args::GlobalArgs;

/// Progress bars on a terminal: one bar per transfer.
struct BarProgress {
    multi: MultiProgress,
}

struct Bar(ProgressBar);

impl ProgressReporter for BarProgress {
    fn message(&self, text: &str) {
        let _ = self.multi.println(text);
    }
    fn start(&self, label: &str, total: Option<u64>) -> Box<dyn TransferProgress> {
        let bar = match total {
            Some(t) => ProgressBar::new(t),
            None => ProgressBar::new_spinner(),
        };
        let style = ProgressStyle::with_template(
            "{msg:32} {bar:30} {bytes:>10}/{total_bytes:10} {bytes_per_sec}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        let bar = self
            .multi
            .add(bar.with_style(style).with_message(label.to_string()));
        Box::new(Bar(bar))
    }
}

impl TransferProgress for Bar {
    fn advance(&mut self, bytes: u64) {
        self.0.inc(bytes);
    }
    fn finish(&mut self, note: &str) {
        let msg = format!("{} {note}", self.0.message());
        self.0.finish_with_message(msg);
    }
}

pub fn progress(g: &GlobalArgs) -> Progress {
    if g.quiet {
        Arc::new(QuietProgress)
    } else if std::io::stderr().is_terminal() {
        Arc::new(BarProgress {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
        })
    } else {
        Arc::new(LineProgress)
    }
}
