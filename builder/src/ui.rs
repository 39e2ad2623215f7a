//! What the user sees while rampart works: one line per step on stderr, with
//! elapsed time. Never used for machine-readable output.

use std::time::Instant;

pub fn step(message: &str) {
    eprintln!("rampart: {message}");
}

pub fn warn(message: &str) {
    eprintln!("rampart: warning: {message}");
}

/// A count that grows towards a total: a live line on a terminal, a line per
/// quarter in a log.
pub struct Progress {
    what: String,
    total: usize,
    shown: usize,
    terminal: bool,
}

impl Progress {
    pub fn new(what: &str, total: usize) -> Progress {
        use std::io::IsTerminal;
        Progress { what: what.to_string(), total, shown: 0, terminal: std::io::stderr().is_terminal() }
    }

    pub fn show(&mut self, done: usize) {
        let done = done.min(self.total);
        if done == self.shown {
            return;
        }
        let quarter = |n: usize| (n * 4).checked_div(self.total).unwrap_or(0);
        if self.terminal {
            eprint!("\rrampart: {} {done}/{}\x1b[K", self.what, self.total);
        } else if quarter(done) > quarter(self.shown) {
            step(&format!("{} {done}/{}", self.what, self.total));
        }
        self.shown = done;
    }

    pub fn finish(self) {
        if self.terminal && self.shown > 0 {
            eprintln!();
        }
    }
}

/// A step that reports how long it took when it finishes.
pub struct Timed {
    what: String,
    started: Instant,
}

impl Timed {
    pub fn start(what: &str) -> Timed {
        step(&format!("{what}..."));
        Timed { what: what.to_string(), started: Instant::now() }
    }

    pub fn done(self) -> f64 {
        let seconds = self.started.elapsed().as_secs_f64();
        step(&format!("{} done in {seconds:.1} s", self.what));
        seconds
    }
}
