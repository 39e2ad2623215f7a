//! What the user sees while rampart works: one line per step on stderr, with
//! elapsed time. Never used for machine-readable output.

use std::time::Instant;

pub fn step(message: &str) {
    eprintln!("rampart: {message}");
}

pub fn warn(message: &str) {
    eprintln!("rampart: warning: {message}");
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
