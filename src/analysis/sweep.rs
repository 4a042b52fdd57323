//! The verifier's own test: `check` on many randomly drawn small networks, counting what it
//! reports. On a correct engine every FAIL is a false alarm; INCONCLUSIVE rows are allowed but
//! should stay rare.

use anyhow::Result;
use rand::Rng;

use super::checks::{run_checks, CheckOptions, Status};
use super::gaussian_batch;
use crate::layers::Mode;
use crate::net::{InputSizes, NetChoice, NetDescription};
use crate::rng::{derive_seed, purpose, rng};
use crate::unit::{ForwardCtx, Placement, Projection, ShortcutKind};

/// One drawn configuration, as the command line would spell it.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    pub arch: NetDescription,
    pub input: InputSizes,
    pub mode: Mode,
    pub batch: usize,
    pub seed: u64,
}

impl SweepConfig {
    /// The `resprop check` command that reproduces it.
    pub fn command(&self) -> String {
        let (a, input) = (&self.arch, &self.input);
        let size = match &a.net {
            NetChoice::Mlp => format!(
                "--units {} --width {} --input-dim {}",
                a.units, a.width, input.input_dim
            ),
            _ => format!("--image-size {}", input.image_size),
        };
        let projection = a
            .projection
            .map_or(String::new(), |p| format!(" --projection {p}"));
        format!(
            "resprop check --net {} {size} --classes {} --batch {} --placement {} --shortcut {}{projection} --bn-mode {} --seed {} --directions 1",
            a.net, input.classes, self.batch, a.placement, a.shortcut, self.mode, self.seed
        )
    }
}

/// The `i`-th configuration of the sweep with seed `seed`: 3 in 4 residual MLPs (2-6 units,
/// width 4-16, batch 2-8, a quarter of them batch 4), 1 in 4 small conv nets (one or two
/// units per stage, basic or bottleneck, 4x4 to 8x8 images, batch 2-4, every projection
/// convention); every placement and shortcut kind with drawn constants; BN in training mode
/// 4 times in 5.
pub fn config(seed: u64, i: u64) -> SweepConfig {
    let mut r = rng(derive_seed(seed, &[purpose::DIRECTIONS, 7, i]));
    let placement = Placement::PAPER[r.random_range(0..5)];
    let shortcut = match r.random_range(0..8) {
        0 => ShortcutKind::Identity,
        1 => ShortcutKind::Scale {
            lambda: r.random_range(0.3..1.2),
            branch: 1.0,
        },
        2 => ShortcutKind::Scale {
            lambda: 0.5,
            branch: 0.5,
        },
        3 => ShortcutKind::Gate {
            bias: r.random_range(-6.0..2.0f64).round(),
        },
        4 => ShortcutKind::ShortcutGate {
            bias: r.random_range(-6.0..2.0f64).round(),
        },
        5 => ShortcutKind::Conv1x1,
        6 => ShortcutKind::Dropout {
            p: 0.3,
            rescale: r.random::<bool>(),
        },
        _ => ShortcutKind::None,
    };
    let mode = if r.random_range(0..5) < 4 {
        Mode::Train
    } else {
        Mode::Eval
    };
    let seed = r.random_range(0..1000);
    if r.random_range(0..4) < 3 {
        let batch = if r.random_range(0..4) == 0 {
            4
        } else {
            [2, 3, 5, 8][r.random_range(0..4)]
        };
        SweepConfig {
            arch: NetDescription {
                net: NetChoice::Mlp,
                units: r.random_range(2..=6),
                width: [4, 8, 12, 16][r.random_range(0..4)],
                placement,
                shortcut,
                projection: None,
                ..NetDescription::default()
            },
            input: InputSizes {
                input_dim: 6,
                image_size: 8,
                input_channels: 3,
                classes: 5,
            },
            mode,
            batch,
            seed,
        }
    } else {
        let name =
            ["resnet:1:basic", "resnet:2:basic", "resnet:1:bottleneck"][r.random_range(0..3)];
        let input = InputSizes {
            input_dim: 6,
            image_size: [4, 6, 8][r.random_range(0..3)],
            // As `resprop check` builds them, so every command reproduces its row.
            input_channels: 3,
            classes: 5,
        };
        SweepConfig {
            arch: NetDescription {
                net: name.parse().expect("a valid name"),
                units: 1,
                width: 8,
                placement,
                shortcut,
                projection: Some(Projection::ALL[r.random_range(0..3)]),
                ..NetDescription::default()
            },
            input,
            mode,
            batch: r.random_range(2..=4),
            seed,
        }
    }
}

/// What `check` said about one configuration.
#[derive(Debug, Clone)]
pub struct SweepResult {
    pub config: SweepConfig,
    pub failed: Vec<String>,
    pub inconclusive: Vec<String>,
}

/// Runs `check` (one direction per target) on configuration `i` of the sweep.
pub fn run_one(seed: u64, i: u64) -> Result<SweepResult> {
    let config = config(seed, i);
    let net = config.arch.build(&config.input, config.seed)?;
    let (input, labels) = gaussian_batch(&net.input_shape, config.batch, net.classes, config.seed);
    let ctx = ForwardCtx::analysis(config.mode, config.seed);
    let report = run_checks(
        &net,
        &input,
        &labels,
        &ctx,
        &CheckOptions {
            directions: 1,
            seed: config.seed,
            force: false,
        },
        &crate::interrupt::Interrupt::new(),
    )?;
    let rows = |f: &dyn Fn(&Status) -> bool| {
        report
            .rows
            .iter()
            .filter(|r| f(&r.status))
            .map(|r| {
                format!(
                    "{}: {} ({:.1e})",
                    r.check,
                    r.what,
                    r.worst.unwrap_or(f64::NAN)
                )
            })
            .collect::<Vec<_>>()
    };
    Ok(SweepResult {
        failed: rows(&|s| *s == Status::Fail),
        inconclusive: rows(&|s| matches!(s, Status::Inconclusive(_))),
        config,
    })
}
