//! How long a run will take at the least, estimated before it starts, so that a count typed
//! one order of magnitude too large (`--sample 18446744073709551615`, `--depths 100000`) fails
//! at once with a one-line estimate instead of running for years; `--force` lets it run.
//!
//! The estimate counts floating-point operations (`Network::pass_flops` for a network's passes)
//! and divides them by [`FLOPS_PER_SECOND`], more than this engine reaches on any machine it
//! has been measured on, and adds [`SECONDS_PER_PASS`] per pass through a network and
//! [`SECONDS_PER_UNIT_PASS`] per residual unit passed, less than the smallest networks take;
//! so the time it gives is a lower bound: a run it refuses cannot finish within
//! [`LIMIT_SECONDS`], whatever the machine.

use anyhow::{bail, Result};

/// Operations per second, above the engine's best: 113 GFLOP/s for W1's GEMMs on the two
/// cores of the development machine, much less for the rest of a step.
pub const FLOPS_PER_SECOND: f64 = 2e11;

/// The least a forward and backward pass takes, whatever the network: a 2-unit MLP of width 8
/// takes about 55 µs per training step on the development machine.
pub const SECONDS_PER_PASS: f64 = 1e-5;

/// The least a forward and backward pass through one residual unit takes: about 35 µs on the
/// development machine for a unit of width 8 (a profile of 5,000 such units, batch 4).
pub const SECONDS_PER_UNIT_PASS: f64 = 2e-6;

/// The arithmetic of a run: its floating-point operations, its passes through a network and
/// through residual units.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Work {
    pub flops: f64,
    pub passes: f64,
    pub unit_passes: f64,
}

impl Work {
    /// The least time it takes, in seconds.
    pub fn seconds(&self) -> f64 {
        self.flops / FLOPS_PER_SECOND
            + self.passes * SECONDS_PER_PASS
            + self.unit_passes * SECONDS_PER_UNIT_PASS
    }
}

impl std::ops::Add for Work {
    type Output = Work;
    fn add(self, other: Work) -> Work {
        Work {
            flops: self.flops + other.flops,
            passes: self.passes + other.passes,
            unit_passes: self.unit_passes + other.unit_passes,
        }
    }
}

impl std::iter::Sum for Work {
    fn sum<I: Iterator<Item = Work>>(iter: I) -> Work {
        iter.fold(Work::default(), |a, b| a + b)
    }
}

/// The longest run that starts without `--force`: a day.
pub const LIMIT_SECONDS: f64 = 24.0 * 3600.0;

/// "3.2 hours", "41 days", "1.2e9 years".
pub fn human_seconds(s: f64) -> String {
    const DAY: f64 = 86400.0;
    const YEAR: f64 = 365.25 * DAY;
    if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7200.0 {
        format!("{:.0} minutes", s / 60.0)
    } else if s < 2.0 * DAY {
        format!("{:.1} hours", s / 3600.0)
    } else if s < YEAR {
        format!("{:.0} days", s / DAY)
    } else if s < 1e4 * YEAR {
        format!("{:.0} years", s / YEAR)
    } else {
        format!("{:.1e} years", s / YEAR)
    }
}

/// Refuses `work` that cannot finish within [`LIMIT_SECONDS`], unless `force`; `what` names
/// the flags that set its size.
pub fn ensure_feasible(what: &str, work: Work, force: bool) -> Result<()> {
    let seconds = work.seconds();
    let within = seconds.is_finite() && seconds <= LIMIT_SECONDS;
    if !force && !within {
        bail!(
            "{what}: {} passes through the network, {} floating-point operations: at least {} (more than {}); use smaller values, or --force to run it anyway",
            count(work.passes),
            count(work.flops),
            human_seconds(seconds),
            human_seconds(LIMIT_SECONDS)
        );
    }
    Ok(())
}

/// A count as a person reads it: whole below a million, `1.2e9` above.
fn count(x: f64) -> String {
    if x < 1e6 {
        format!("{x:.0}")
    } else {
        format!("{x:.1e}")
    }
}

/// Refuses a count above `max` (a bound on what a run could use, past which it only costs
/// memory and time), naming the flag.
pub fn ensure_at_most(flag: &str, value: u64, max: u64) -> Result<()> {
    if value > max {
        bail!("{flag}: at most {max}, got {value}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_passes_and_more_is_refused_unless_forced() {
        let flops = |f: f64| Work {
            flops: f,
            ..Work::default()
        };
        assert!(ensure_feasible("--x", flops(FLOPS_PER_SECOND * LIMIT_SECONDS), false).is_ok());
        let e = ensure_feasible("--x 9", flops(FLOPS_PER_SECOND * 1e9), false)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--x 9: 0 passes"), "{e}");
        assert!(e.contains("at least 32 years"), "{e}");
        assert!(ensure_feasible("--x", flops(FLOPS_PER_SECOND * 1e9), true).is_ok());
        assert!(ensure_feasible("--x", flops(f64::INFINITY), false).is_err());
        assert!(ensure_feasible("--x", flops(f64::NAN), false).is_err());
        // Many small passes add up too.
        let passes = Work {
            passes: 2.0 * LIMIT_SECONDS / SECONDS_PER_PASS,
            ..Work::default()
        };
        assert!(ensure_feasible("--x", passes, false).is_err());
        let deep = Work {
            unit_passes: 2.0 * LIMIT_SECONDS / SECONDS_PER_UNIT_PASS,
            ..Work::default()
        };
        assert!(ensure_feasible("--x", deep, false).is_err());
    }
}
