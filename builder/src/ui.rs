//! What the user sees while rampart works, on stderr, never machine-readable
//! output. On a terminal: indicatif spinners and bars with elapsed time for
//! the long steps (fetch, package stage, disk, each machine's boot and each
//! check), and one line per finished step. Elsewhere (a CI log): plain lines,
//! each stamped with the UTC time, and no escape codes. `--quiet` keeps
//! warnings and errors only; `--verbose` adds every command rampart runs
//! with its wall time.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    Quiet = 0,
    Normal = 1,
    Verbose = 2,
}

static VERBOSITY: AtomicU8 = AtomicU8::new(Verbosity::Normal as u8);
/// The live spinner or bar, if any: lines printed meanwhile go above it.
static LIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

pub fn set_verbosity(verbosity: Verbosity) {
    VERBOSITY.store(verbosity as u8, Ordering::Relaxed);
}

pub fn verbosity() -> Verbosity {
    match VERBOSITY.load(Ordering::Relaxed) {
        0 => Verbosity::Quiet,
        1 => Verbosity::Normal,
        _ => Verbosity::Verbose,
    }
}

fn terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// `line` as it goes to a log: the UTC time in front.
fn stamped(line: &str, seconds_since_1970: i64) -> String {
    let (year, month, day, hour, minute, second) = crate::secureboot::efivars::civil_time(seconds_since_1970);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z {line}")
}

/// A line that is shown whatever the verbosity.
pub fn line(line: &str) {
    if !terminal() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default();
        eprintln!("{}", stamped(line, now));
        return;
    }
    match LIVE.lock().ok().and_then(|live| live.clone()) {
        Some(bar) => bar.suspend(|| eprintln!("{line}")),
        None => eprintln!("{line}"),
    }
}

pub fn step(message: &str) {
    if verbosity() >= Verbosity::Normal {
        line(&format!("rampart: {message}"));
    }
}

/// Shown with `--verbose` only.
pub fn detail(message: &str) {
    if verbosity() >= Verbosity::Verbose {
        line(&format!("rampart: {message}"));
    }
}

pub fn warn(message: &str) {
    line(&format!("rampart: warning: {message}"));
}

/// A live indicator on a terminal (none in quiet mode or in a log); it is
/// the one that `line` prints above until it is cleared.
fn live(bar: ProgressBar) -> Option<ProgressBar> {
    if verbosity() == Verbosity::Quiet || !terminal() {
        return None;
    }
    bar.set_draw_target(ProgressDrawTarget::stderr());
    bar.enable_steady_tick(Duration::from_millis(120));
    if let Ok(mut slot) = LIVE.lock() {
        *slot = Some(bar.clone());
    }
    Some(bar)
}

fn clear(bar: Option<ProgressBar>) {
    if let Some(bar) = bar {
        bar.finish_and_clear();
        if let Ok(mut slot) = LIVE.lock() {
            *slot = None;
        }
    }
}

fn spinner(message: &str) -> Option<ProgressBar> {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    bar.set_style(ProgressStyle::with_template("{spinner} rampart: {msg} ({elapsed})").expect("a valid template"));
    bar.set_message(message.to_string());
    live(bar)
}

/// A count that grows towards a total: a bar on a terminal, a line per
/// quarter in a log.
pub struct Progress {
    what: String,
    total: usize,
    shown: usize,
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn new(what: &str, total: usize) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::hidden());
        bar.set_style(ProgressStyle::with_template("rampart: {msg} [{bar:30}] {pos}/{len} ({elapsed})").expect("a valid template").progress_chars("=> "));
        bar.set_message(what.to_string());
        Progress { what: what.to_string(), total, shown: 0, bar: live(bar) }
    }

    pub fn show(&mut self, done: usize) {
        let done = done.min(self.total);
        if done == self.shown {
            return;
        }
        let quarter = |n: usize| (n * 4).checked_div(self.total).unwrap_or(0);
        match &self.bar {
            Some(bar) => bar.set_position(done as u64),
            None if quarter(done) > quarter(self.shown) => step(&format!("{} {done}/{}", self.what, self.total)),
            None => {}
        }
        self.shown = done;
    }

    pub fn finish(self) {
        clear(self.bar);
    }
}

/// A step that reports how long it took when it finishes; a spinner with
/// the elapsed time while it runs, on a terminal.
pub struct Timed {
    what: String,
    started: Instant,
    bar: Option<ProgressBar>,
}

impl Timed {
    pub fn start(what: &str) -> Timed {
        let bar = spinner(what);
        if bar.is_none() {
            step(&format!("{what}..."));
        }
        Timed { what: what.to_string(), started: Instant::now(), bar }
    }

    /// A spinner only, on a terminal: for a wait whose end the caller
    /// reports itself (a machine's boot, a check's verdict).
    pub fn quietly(what: &str) -> Timed {
        Timed { what: what.to_string(), started: Instant::now(), bar: spinner(what) }
    }

    /// Clears the spinner; says nothing.
    pub fn end(self) -> f64 {
        clear(self.bar);
        self.started.elapsed().as_secs_f64()
    }

    pub fn done(self) -> f64 {
        let what = self.what.clone();
        let seconds = self.end();
        step(&format!("{what} done in {seconds:.1} s"));
        seconds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_carries_the_utc_time() {
        assert_eq!(stamped("rampart: package stage", 1_796_529_612), "2026-12-06T04:00:12Z rampart: package stage");
        assert_eq!(stamped("x", 0), "1970-01-01T00:00:00Z x");
    }

    #[test]
    fn verbosity_orders_quiet_below_verbose() {
        assert!(Verbosity::Quiet < Verbosity::Normal && Verbosity::Normal < Verbosity::Verbose);
    }
}
