//! The residual unit (Eq. 1-2) with its placements and shortcut variants.

pub mod ctx;
pub mod ops;
pub mod residual;
pub mod shortcut;
pub mod spec;

pub use ctx::ForwardCtx;
pub use ops::{Fusion, Op, OpCache};
pub use residual::{ResidualUnit, UnitCache, UnitParts};
pub use spec::{Placement, Projection, ShortcutKind, Step};
