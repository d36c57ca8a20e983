//! Progress of a long restore on a terminal: the phase it is in and, while
//! bytes move, how many of the dump's bytes have been streamed. Drawn to
//! stderr only when stderr is a terminal; otherwise (tests, CI, logs,
//! `--json`) it draws nothing, so the output is exactly as without it.

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A cheap handle (clones share one bar).
#[derive(Debug, Clone)]
pub struct Progress {
    bar: ProgressBar,
}

impl Default for Progress {
    fn default() -> Self {
        Progress::hidden()
    }
}

impl Progress {
    /// Draws nothing.
    pub fn hidden() -> Progress {
        Progress {
            bar: ProgressBar::hidden(),
        }
    }

    /// Draws on stderr if it is a terminal (with a usable `TERM`), else nothing.
    pub fn on_terminal() -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress::hidden();
        }
        // A style before anything is drawn, or indicatif draws its default bar.
        let progress = Progress {
            bar: ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(spinner_style()),
        };
        progress.phase("starting");
        progress.bar.enable_steady_tick(Duration::from_millis(120));
        progress
    }

    /// A phase without a known amount of work: a spinner and its name.
    pub fn phase(&self, name: &str) {
        self.bar.set_style(spinner_style());
        self.bar.unset_length();
        self.bar.set_message(name.to_owned());
    }

    /// A phase that moves `total` bytes: a bar of bytes streamed.
    pub fn bytes(&self, name: &str, total: u64) {
        self.bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}, {eta} left",
            )
            .expect("a valid progress template")
            .progress_chars("=> "),
        );
        self.bar.set_length(total);
        self.bar.set_position(0);
        self.bar.set_message(name.to_owned());
    }

    /// `count` more bytes of the current phase are done.
    pub fn advance(&self, count: u64) {
        self.bar.inc(count);
    }

    /// Removes the bar, so the report that follows starts on a clean line.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("a valid progress template")
}
