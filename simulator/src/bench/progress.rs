//! A progress bar on standard error for the longer steps of a bench: how far, how fast,
//! redrawn a few times a second. Drawn only when standard error is a terminal, so logs
//! and CI output stay clean.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Width of the bar in characters.
const WIDTH: usize = 30;
/// How often the bar is redrawn.
const REDRAW: Duration = Duration::from_millis(200);

/// A running bar. Progress is counted through [`Progress::counter`]; the bar is erased
/// on [`Progress::finish`] or drop.
pub struct Progress {
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    drawer: Option<JoinHandle<()>>,
}

/// What a bar fills towards.
#[derive(Debug, Clone, Copy)]
enum End {
    /// A count of units.
    Count(u64),
    /// A length of time; the units are counted alongside.
    Time(Duration),
}

impl Progress {
    /// Starts a bar for `total` units named `unit`, labelled `label`.
    pub fn start(label: &str, total: u64, unit: &'static str) -> Progress {
        Progress::towards(label, End::Count(total), unit)
    }

    /// Starts a bar that fills over `duration`, counting units named `unit`.
    pub fn timed(label: &str, duration: Duration, unit: &'static str) -> Progress {
        Progress::towards(label, End::Time(duration), unit)
    }

    fn towards(label: &str, end: End, unit: &'static str) -> Progress {
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let drawer = std::io::stderr().is_terminal().then(|| {
            let (done, stop, label) = (done.clone(), stop.clone(), label.to_owned());
            std::thread::spawn(move || draw(&label, end, unit, &done, &stop))
        });
        Progress { done, stop, drawer }
    }

    /// The counter to add progress to (shared with worker tasks).
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.done.clone()
    }

    /// Sets the progress to `value`.
    pub fn set(&self, value: u64) {
        self.done.store(value, Ordering::Relaxed);
    }

    /// Erases the bar.
    pub fn finish(mut self) {
        self.stop_drawing();
    }

    fn stop_drawing(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(drawer) = self.drawer.take() {
            let _ = drawer.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop_drawing();
    }
}

fn draw(label: &str, end: End, unit: &str, done: &AtomicU64, stop: &AtomicBool) {
    let started = Instant::now();
    let mut err = std::io::stderr();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(REDRAW);
        let now = done.load(Ordering::Relaxed);
        let elapsed = started.elapsed();
        let (fraction, of) = match end {
            End::Count(0) => (1.0, "/0".to_owned()),
            End::Count(total) => (now as f64 / total as f64, format!("/{total}")),
            End::Time(d) => (elapsed.as_secs_f64() / d.as_secs_f64().max(1e-3), String::new()),
        };
        let fraction = fraction.min(1.0);
        let filled = (fraction * WIDTH as f64) as usize;
        let rate = now as f64 / elapsed.as_secs_f64().max(1e-3);
        let _ = write!(
            err,
            "\r  {label} [{}{}] {:>3.0}% {now}{of} {unit}, {} {unit}/s   ",
            "#".repeat(filled),
            "-".repeat(WIDTH - filled),
            fraction * 100.0,
            super::number(rate),
        );
        let _ = err.flush();
    }
    let _ = write!(err, "\r{}\r", " ".repeat(WIDTH + label.len() + 60));
    let _ = err.flush();
}
