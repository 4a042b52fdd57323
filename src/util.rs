//! Small helpers shared by output code.

use std::fmt::Display;

/// Serialises a value through its `Display` form (placements and shortcuts as the CLI spells them).
pub fn serialize_display<T: Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}
