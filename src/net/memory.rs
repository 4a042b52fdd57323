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

/// What the estimates need to know of a network, counted in f64 so that absurd sizes give a
/// large number instead of an overflow.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counts {
    /// Parameters, with the BatchNorm buffers.
    params: f64,
    /// Values of every unit's output for one sample.
    outputs: f64,
    /// Values of one input sample.
    input: f64,
    /// Multiply-adds of one sample's forward pass through the weight layers.
    macs: f64,
    block: Block,
}

fn counts(choice: &NetChoice, sizes: &NetSizes, shortcut: ShortcutKind) -> Counts {
    let bn = |c: f64| 4.0 * c;
    let shortcut_params = |c_in: f64, c_out: f64| match shortcut {
        ShortcutKind::Gate { .. } | ShortcutKind::ShortcutGate { .. } => c_in * c_in + c_in,
        ShortcutKind::Conv1x1 => c_in * c_out,
        _ => 0.0,
    };
    match choice {
        NetChoice::Mlp => {
            let (w, l) = (sizes.width as f64, sizes.units as f64);
            let weights = sizes.input_dim as f64 * w
                + l * (2.0 * w * w + shortcut_params(w, w))
                + w * sizes.classes as f64;
            let params = weights + bn(w) + l * 3.0 * bn(w) + bn(w) + sizes.classes as f64;
            Counts {
                params,
                outputs: l * w,
                input: sizes.input_dim as f64,
                macs: weights,
                block: Block::Basic,
            }
        }
        NetChoice::Resnet { name, .. } => {
            let (n, block) = parse_resnet_name(name).unwrap_or((1, Block::Basic));
            let n = n as f64;
            let mut side = sizes.image_size as f64;
            let mut c_in = STAGE_WIDTHS[0] as f64;
            let stem = 9.0 * sizes.input_channels as f64 * c_in;
            let mut params = stem + bn(c_in);
            let mut macs = stem * side * side;
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
                let weights = |c_in: f64| match block {
                    Block::Basic => 9.0 * c_in * c + 9.0 * c * c,
                    Block::Bottleneck => c_in * c + 9.0 * c * c + c * c_out,
                };
                let unit_bn = 3.0 * bn(c_out);
                // The first unit of a stage may change the shape: a projection (or a pad).
                let first = weights(c_in) + c_in * c_out + shortcut_params(c_in, c_out);
                let others = (n - 1.0) * (weights(c_out) + shortcut_params(c_out, c_out));
                params += first + bn(c_out) + unit_bn + others + (n - 1.0) * unit_bn;
                macs += (first + others) * side * side;
                outputs += n * c_out * side * side;
                c_in = c_out;
            }
            let classifier = c_in * sizes.classes as f64;
            params += bn(c_in) + classifier + sizes.classes as f64;
            macs += classifier;
            let input = sizes.input_channels as f64 * (sizes.image_size as f64).powi(2);
            Counts {
                params,
                outputs,
                input,
                macs,
                block,
            }
        }
    }
}

/// The work of `passes` forward and backward passes of the network over `batch` samples:
/// about 3 forward passes' worth of multiply-adds each (the backward pass takes the input and
/// the weight gradient of every layer), 2 operations each.
pub fn pass_work(
    choice: &NetChoice,
    sizes: &NetSizes,
    batch: usize,
    passes: f64,
) -> crate::budget::Work {
    let units = match choice {
        NetChoice::Mlp => sizes.units as f64,
        NetChoice::Resnet {
            units_per_stage, ..
        } => 3.0 * *units_per_stage as f64,
    };
    work_of(
        counts(choice, sizes, ShortcutKind::Identity).macs,
        units,
        batch,
        passes,
    )
}

/// The work of `passes` forward and backward passes of a network of `units` residual units and
/// `macs` multiply-adds per sample over `batch` samples.
pub fn work_of(macs: f64, units: f64, batch: usize, passes: f64) -> crate::budget::Work {
    crate::budget::Work {
        flops: passes * 3.0 * 2.0 * macs * batch as f64,
        passes,
        unit_passes: passes * units,
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
    let Counts {
        params,
        outputs,
        input,
        block,
        ..
    } = counts(choice, sizes, shortcut);
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

/// Memory the system can give this process now, in bytes (Linux): the least of the machine's
/// `MemAvailable`, what the process's address-space limit (`ulimit -v`) leaves beyond what it
/// has mapped, and what its cgroup's `memory.max` leaves beyond `memory.current` (a container's
/// or a Slurm job's limit).
pub fn available() -> Option<f64> {
    let kb_field = |text: &str, key: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? * 1024.0)
    };
    let machine = kb_field(
        &std::fs::read_to_string("/proc/meminfo").ok()?,
        "MemAvailable:",
    )?;
    let mut limits = vec![machine];
    if let Some(limit) = address_space_limit() {
        let mapped = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| kb_field(&s, "VmSize:"))
            .unwrap_or(0.0);
        limits.push((limit - mapped).max(0.0));
    }
    if let Some(room) = cgroup_room() {
        limits.push(room);
    }
    limits.into_iter().reduce(f64::min)
}

/// The soft `RLIMIT_AS` of this process, from `/proc/self/limits` (`None`: unlimited).
fn address_space_limit() -> Option<f64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))?;
    line["Max address space".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `memory.max - memory.current` of this process's cgroup (v2), when it has a limit.
fn cgroup_room() -> Option<f64> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = std::path::Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    let read = |f: &str| -> Option<f64> {
        std::fs::read_to_string(dir.join(f))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    // "max" (no limit) does not parse.
    Some((read("memory.max")? - read("memory.current")?).max(0.0))
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
            "{what} would need about {} ({} for parameters, {} for activations), more than the {} available to this process (the machine's free memory, ulimit -v and the cgroup's limit); use a smaller width, depth or batch{}",
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
        let c = counts(
            &"resnet110".parse().unwrap(),
            &sizes,
            ShortcutKind::Identity,
        );
        // 1.73M weights (the paper's 1.7M) plus BatchNorm state.
        assert!((1.7e6..1.8e6).contains(&c.params), "{}", c.params);
        assert_eq!(
            c.outputs,
            18.0 * (16.0 * 1024.0 + 32.0 * 256.0 + 64.0 * 64.0)
        );
        // The paper's ResNet-110 takes 0.25 GFLOPs (multiply-adds) per 32x32 image.
        assert!((0.24e9..0.26e9).contains(&c.macs), "{}", c.macs);
    }
}
