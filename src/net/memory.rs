//! How much memory a run will need, estimated from the network's description before anything
//! is allocated, so an impossible size fails at once with a one-line error instead of
//! driving the machine out of memory.
//!
//! The model (f64 everywhere, 8 bytes a value):
//!
//! ```text
//! bytes = 8 (P c + N A k + N I) + 50 MB
//! ```
//!
//! - `P`: parameters and BatchNorm buffers; `c` copies live at once: 1 for a profile, 4 for a
//!   check (the network, its frozen copy and the perturbed copies of the parallel
//!   finite-difference jobs), 4 when training (weights, gradients, momentum, one temporary).
//! - `A`: the values of every unit's output for one sample (`sum_l` of `x_{l+1}`'s size);
//!   `k` tensors of that size stay in the caches per unit: measured with peak RSS on ResNet-110,
//!   ResNet-164, a 16x16 ResNet and two MLPs (`docs/checks.md`): about 8.7 for the
//!   post-activation placements and 7 for the pre-activation ones (units of two weight layers),
//!   7.7 and 5.5 for bottleneck units (whose inner tensors are a quarter of the output); 2 more
//!   when weight gradients keep the weight layers' inputs; with `--low-memory` 4.5 (the unit
//!   inputs, every `dE/dx_l` and direct part of the record) plus one unit's caches.
//! - `I`: the input batch's values per sample; `N` the batch.
//! - 50 MB: the program, its libraries and its thread stacks.

use anyhow::{bail, Result};

use super::resnet::{parse_resnet_name, Block, STAGE_WIDTHS};
use super::{NetChoice, NetSizes};
use crate::unit::{Placement, ShortcutKind};

/// What the memory is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Profile { low_memory: bool },
    Check,
    Train,
}

/// The estimate and its parts, in bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub parameters: f64,
    pub activations: f64,
    pub total: f64,
}

const FIXED_BYTES: f64 = 50e6;

/// Parameters (with BN buffers) and per-sample unit-output values of a network, in f64 so
/// that absurd sizes give a large number instead of an overflow.
fn sizes_of(
    choice: &NetChoice,
    sizes: &NetSizes,
    shortcut: ShortcutKind,
) -> (f64, f64, f64, Block) {
    let bn = |c: f64| 4.0 * c;
    let shortcut_params = |c_in: f64, c_out: f64| match shortcut {
        ShortcutKind::Gate { .. } | ShortcutKind::ShortcutGate { .. } => c_in * c_in + c_in,
        ShortcutKind::Conv1x1 => c_in * c_out,
        _ => 0.0,
    };
    match choice {
        NetChoice::Mlp => {
            let (w, l) = (sizes.width as f64, sizes.units as f64);
            let unit = 2.0 * w * w + 3.0 * bn(w) + shortcut_params(w, w);
            let params = sizes.input_dim as f64 * w
                + bn(w)
                + l * unit
                + bn(w)
                + w * sizes.classes as f64
                + sizes.classes as f64;
            (params, l * w, sizes.input_dim as f64, Block::Basic)
        }
        NetChoice::Resnet { name, .. } => {
            let (n, block) = parse_resnet_name(name).unwrap_or((1, Block::Basic));
            let n = n as f64;
            let mut side = sizes.image_size as f64;
            let mut c_in = STAGE_WIDTHS[0] as f64;
            let mut params = 9.0 * sizes.input_channels as f64 * c_in + bn(c_in);
            let mut outputs = 0.0;
            for (stage, &width) in STAGE_WIDTHS.iter().enumerate() {
                let c = width as f64;
                if stage > 0 {
                    side = ((side - 1.0) / 2.0).floor() + 1.0;
                }
                let c_out = match block {
                    Block::Basic => c,
                    Block::Bottleneck => 4.0 * c,
                };
                let unit = |c_in: f64| match block {
                    Block::Basic => 9.0 * c_in * c + 9.0 * c * c + 3.0 * bn(c),
                    Block::Bottleneck => c_in * c + 9.0 * c * c + c * c_out + 3.0 * bn(c_out),
                };
                // The first unit of a stage may change the shape: a projection (or a pad).
                params += unit(c_in) + c_in * c_out + bn(c_out) + shortcut_params(c_in, c_out);
                params += (n - 1.0) * (unit(c_out) + shortcut_params(c_out, c_out));
                outputs += n * c_out * side * side;
                c_in = c_out;
            }
            params += bn(c_in) + c_in * sizes.classes as f64 + sizes.classes as f64;
            let input = sizes.input_channels as f64 * (sizes.image_size as f64).powi(2);
            (params, outputs, input, block)
        }
    }
}

/// Estimates the peak memory of `purpose` on the named network with batch `batch`.
pub fn estimate(
    choice: &NetChoice,
    sizes: &NetSizes,
    placement: Placement,
    shortcut: ShortcutKind,
    batch: usize,
    purpose: Purpose,
) -> Estimate {
    let (params, outputs, input, block) = sizes_of(choice, sizes, shortcut);
    let kept = match (block, placement.is_preact()) {
        (Block::Basic, false) => 8.7,
        (Block::Basic, true) => 7.0,
        (Block::Bottleneck, false) => 7.7,
        (Block::Bottleneck, true) => 5.5,
    };
    let units = match choice {
        NetChoice::Mlp => sizes.units.max(1) as f64,
        NetChoice::Resnet {
            units_per_stage, ..
        } => 3.0 * *units_per_stage as f64,
    };
    let (copies, per_unit) = match purpose {
        Purpose::Profile { low_memory: false } => (1.0, kept),
        // The unit inputs, every dE/dx_l and direct part of the record, plus the caches of
        // the unit being recomputed: measured 3.8-5.2 tensors per unit.
        Purpose::Profile { low_memory: true } => (1.0, 4.5 + kept / units),
        Purpose::Check => (4.0, kept + 2.0),
        Purpose::Train => (4.0, kept + 2.0),
    };
    let n = batch as f64;
    let parameters = 8.0 * params * copies;
    let activations = 8.0 * n * (outputs * per_unit + input);
    Estimate {
        parameters,
        activations,
        total: parameters + activations + FIXED_BYTES,
    }
}

/// Memory the system can give this process now (Linux: `MemAvailable`), in bytes.
pub fn available() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

/// "1.2 GB", "340 MB", "6.4e10 GB".
pub fn human(bytes: f64) -> String {
    if bytes >= 1e12 {
        format!("{:.1e} GB", bytes / 1e9)
    } else if bytes >= 1e9 {
        format!("{:.1} GB", bytes / 1e9)
    } else {
        format!("{:.0} MB", bytes / 1e6)
    }
}

/// Refuses a run whose estimate exceeds the memory available, naming the estimate.
pub fn ensure_fits(e: &Estimate, what: &str) -> Result<()> {
    let Some(avail) = available() else {
        return Ok(());
    };
    if e.total > avail {
        bail!(
            "{what} would need about {} ({} for parameters, {} for activations), more than the {} this machine has available; use a smaller width, depth or batch{}",
            human(e.total),
            human(e.parameters),
            human(e.activations),
            human(avail),
            if e.activations > e.parameters {
                " (or --low-memory for a profile)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_sizes_give_a_large_estimate_not_an_overflow() {
        let sizes = NetSizes {
            units: 2,
            width: 4_000_000_000,
            input_dim: 64,
            image_size: 32,
            input_channels: 3,
            classes: 10,
        };
        let e = estimate(
            &NetChoice::Mlp,
            &sizes,
            Placement::Original,
            ShortcutKind::Identity,
            4,
            Purpose::Profile { low_memory: false },
        );
        assert!(e.total > 1e20 && e.total.is_finite(), "{e:?}");
        assert!(ensure_fits(&e, "this").is_err());
    }

    #[test]
    fn resnet110_parameters_match_the_paper() {
        let sizes = NetSizes {
            units: 54,
            width: 64,
            input_dim: 64,
            image_size: 32,
            input_channels: 3,
            classes: 10,
        };
        let (params, outputs, _, _) = sizes_of(
            &"resnet110".parse().unwrap(),
            &sizes,
            ShortcutKind::Identity,
        );
        // 1.73M weights (the paper's 1.7M) plus BatchNorm state.
        assert!((1.7e6..1.8e6).contains(&params), "{params}");
        assert_eq!(outputs, 18.0 * (16.0 * 1024.0 + 32.0 * 256.0 + 64.0 * 64.0));
    }
}
