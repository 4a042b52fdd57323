//! A request to stop long work early (Ctrl-C in a notebook): set from one thread, checked by
//! the work at its safe points (between training steps, before an experiment's next cell).

use std::sync::atomic::{AtomicBool, Ordering};

/// The error a stopped computation returns: where it stopped, for the caller's message.
#[derive(Debug, thiserror::Error)]
#[error("interrupted {0}")]
pub struct Interrupted(pub String);

/// Set once, never reset; [`Interrupt::check`] fails from then on.
#[derive(Debug, Default)]
pub struct Interrupt(AtomicBool);

impl Interrupt {
    pub fn new() -> Interrupt {
        Interrupt::default()
    }

    /// Asks the work to stop at its next check.
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// `Err(Interrupted(where_()))` once a stop was requested.
    pub fn check(&self, where_: impl FnOnce() -> String) -> Result<(), Interrupted> {
        if self.requested() {
            Err(Interrupted(where_()))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_seen_by_every_later_check() {
        let i = Interrupt::new();
        assert!(i.check(|| "at step 0".into()).is_ok());
        i.request();
        let e = i.check(|| "after step 3 of 10".into()).unwrap_err();
        assert_eq!(e.to_string(), "interrupted after step 3 of 10");
        assert!(i.check(String::new).is_err());
    }
}
