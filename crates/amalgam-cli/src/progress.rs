//! What a long command shows while it runs: its phase, the time since it started, and for the
//! tensor work a bar with an ETA.
//!
//! All of it goes to stderr and only when stderr is a terminal: a log file or a pipe gets the
//! final summary line and nothing else, so scripts never see carriage returns or escape codes.
//! Phases are also logged at `info` level, which is what `-v` shows when there is no bar.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// True when stderr is a terminal: the only case where a bar or colour is drawn.
pub(crate) fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// Colour for log lines: only on a terminal, and never when `NO_COLOR` is set to a non-empty
/// value (<https://no-color.org>).
pub(crate) fn color_enabled() -> bool {
    stderr_is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The bar being drawn, if any, so that log lines can be printed above it instead of through it.
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// The writer of log lines (`tracing_subscriber`'s `with_writer`): stderr, with the bar, when
/// one is drawn, lifted out of the way for the line.
pub(crate) fn log_writer() -> LogWriter {
    LogWriter
}

/// See [`log_writer`].
pub(crate) struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = ACTIVE.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match bar {
            Some(pb) => pb.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The progress display of one command run.
pub(crate) struct Progress {
    /// `None` when nothing is drawn (`--quiet`, or stderr is not a terminal).
    pb: Option<ProgressBar>,
    started: Instant,
}

/// Spinner line shown while a phase has no measurable amount of work (resolving, planning).
const SPINNER: &str = "{spinner} {msg} [{elapsed_precise}]";

/// The tensor phase: as wide as the terminal allows. `steady_eta` replaces indicatif's `eta`
/// (see [`steady_eta`]).
const BAR: &str = "{msg} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ETA {steady_eta}";

impl Progress {
    /// A display that draws only if `enabled` and stderr is a terminal.
    pub(crate) fn new(enabled: bool) -> Self {
        let pb = (enabled && stderr_is_terminal()).then(|| {
            let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            pb.set_style(style(SPINNER));
            pb.enable_steady_tick(Duration::from_millis(120));
            *ACTIVE.lock().unwrap_or_else(|p| p.into_inner()) = Some(pb.clone());
            pb
        });
        Progress {
            pb,
            started: Instant::now(),
        }
    }

    /// Starts a phase without a measurable amount of work.
    pub(crate) fn phase(&self, what: &str) {
        tracing::info!("{what}");
        if let Some(pb) = &self.pb {
            pb.set_style(style(SPINNER));
            pb.set_message(what.to_string());
        }
    }

    /// Starts the tensor phase: a bar over `total_bytes` of output. The returned callback is
    /// the engine's progress hook; once every byte is done it switches to the `then` phase
    /// (the side files are written after the last tensor, inside the same engine call).
    pub(crate) fn tensors(
        &self,
        what: &str,
        total_bytes: u64,
        tensors: usize,
        then: &str,
    ) -> Option<amalgam_engine::ProgressFn> {
        tracing::info!("{what}: {tensors} tensors, {total_bytes} bytes");
        let pb = self.pb.clone()?;
        pb.set_length(total_bytes);
        pb.set_position(0);
        pb.set_style(style(BAR));
        pb.set_message(format!("{what} 0/{tensors} tensors"));
        let (what, then) = (what.to_string(), then.to_string());
        Some(Arc::new(move |bytes: u64, done: usize| {
            pb.set_position(bytes);
            if bytes >= total_bytes && done >= tensors {
                pb.set_style(style(SPINNER));
                pb.set_message(then.clone());
            } else {
                pb.set_message(format!("{what} {done}/{tensors} tensors"));
            }
        }))
    }

    /// Prints a line to stderr above the bar.
    pub(crate) fn note(&self, line: &str) {
        match &self.pb {
            Some(pb) => pb.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// Time since the command started.
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Removes the bar (before the summary line is printed).
    pub(crate) fn finish(&self) {
        if let Some(pb) = &self.pb {
            pb.finish_and_clear();
            *ACTIVE.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }
}

impl Drop for Progress {
    /// An error path must not leave a half-drawn bar above the error message.
    fn drop(&mut self) {
        self.finish();
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key("steady_eta", steady_eta)
}

/// ETA from the average rate since the phase started: remaining bytes / (bytes done / time).
///
/// indicatif's own estimate follows the recent rate, which swings wildly when progress arrives
/// in large steps: a method that is not elementwise (ties, dare...) reports a whole tensor at
/// once, and an embedding matrix can be a hundred times a norm vector. Progress is counted in
/// output bytes, so a big tensor weighs what it costs, and the average over the run is stable.
fn steady_eta(state: &ProgressState, w: &mut dyn std::fmt::Write) {
    let total = state.len().unwrap_or(0);
    let done = state.pos().min(total);
    let secs = state.elapsed().as_secs_f64();
    // Too early to tell: under 1 % done or under a second in.
    if total == 0 || done.saturating_mul(100) < total || secs < 1.0 {
        let _ = w.write_str("?");
        return;
    }
    let left = secs * (total - done) as f64 / done as f64;
    let _ = write!(w, "{}", format_secs(left));
}

/// `42s`, `3m05s`, `1h02m`: short and of constant shape, so the line does not jump.
pub(crate) fn format_secs(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::format_secs;

    #[test]
    fn durations() {
        assert_eq!(format_secs(0.2), "0s");
        assert_eq!(format_secs(59.4), "59s");
        assert_eq!(format_secs(185.0), "3m05s");
        assert_eq!(format_secs(3720.0), "1h02m");
        assert_eq!(format_secs(-1.0), "0s");
    }
}
