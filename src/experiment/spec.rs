//! Experiment files: TOML read into a raw layer (serde, unknown keys rejected), then validated
//! into a [`Spec`] that cannot describe an invalid run. Every error names the file, the key
//! and the bad value.
//!
//! ```toml
//! name = "scaling"
//! claim = "With h(x) = lambda x and f = identity the direct term is prod lambda (Eq. 8)."
//! seed = 1              # cell seeds derive from (seed, replicate)
//! batch = 32
//! measure = "profile"   # or "verification" (adds the per-unit errors of Eq. 4/5/7/8)
//! charts = ["grad_ratio", "lambda_sweep"]
//!
//! [net]                 # sizes; which nets run is in the grid
//! units = 100           # MLP units (overridden by grid.units)
//! width = 64
//!
//! [grid]                # the cells: every combination
//! nets = ["mlp"]
//! placements = ["full-preact"]
//! shortcuts = ["scale:0.5", "identity"]
//! replicates = [0, 1, 2]
//! ```

use crate::layers::NormKind;
use crate::net::Init;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::float::Precision;
use crate::layers::Mode;
use crate::net::{NetChoice, NetDescription, NetSizes};
pub use crate::plot::kinds::{ChartKind, PaperValues};
use crate::schema::TableKind;
pub use crate::schema::{check_name, Measure};
use crate::train::{OptimizerKind, Recipe};
use crate::unit::{Placement, Projection, ShortcutKind};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: String,
    claim: String,
    #[serde(default)]
    seed: u64,
    #[serde(default = "default_batch")]
    batch: usize,
    #[serde(default = "default_measure")]
    measure: String,
    #[serde(default)]
    charts: Vec<String>,
    #[serde(default)]
    net: RawNet,
    /// One grid (`[grid]`) or several (`[[grid]]`): the cells are their union, in order.
    grid: toml::Value,
    #[serde(default = "default_task")]
    task: String,
    train: Option<RawTrain>,
    /// The paper's numbers for the variants, to compare orderings in the report.
    #[serde(default)]
    paper: Option<RawPaper>,
    /// Run every cell with the plain layer-by-layer interpreter instead of the fused engine.
    #[serde(default)]
    unfused: bool,
    /// Profiles: also record ||dE/dW||_F of every weight layer (`weight_grads.csv`).
    #[serde(default)]
    weight_grads: bool,
    /// `task = "paths"`: Veit's sampled estimate alongside the exact decomposition.
    #[serde(default)]
    paths: Option<RawPaths>,
    /// `task = "lesion"`: draws of k random units.
    #[serde(default)]
    lesion: Option<RawLesion>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPaths {
    /// Single paths sampled per path length (0: the exact decomposition only).
    #[serde(default)]
    sample: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLesion {
    #[serde(default = "default_draws")]
    draws: usize,
}

fn default_draws() -> usize {
    5
}

fn default_task() -> String {
    "profile".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrain {
    #[serde(default = "default_data")]
    data: String,
    epochs: usize,
    #[serde(default = "default_train_batch")]
    batch: usize,
    #[serde(default = "default_lr")]
    lr: f64,
    #[serde(default = "default_record_every")]
    record_every: usize,
    #[serde(default)]
    optimizer: Option<String>,
    #[serde(default = "default_weight_decay")]
    weight_decay: f64,
    #[serde(default)]
    weight_decay_mode: Option<String>,
    /// Train on this many images of the training split (`--train-subset`).
    #[serde(default)]
    train_subset: Option<usize>,
    /// Evaluate on this many images of the test split (`--test-subset`).
    #[serde(default)]
    test_subset: Option<usize>,
    /// Average F x F pixel blocks of every image (`--downsample`).
    #[serde(default)]
    downsample: Option<usize>,
    /// Every cell's warm-up (unless the grid sweeps `warmups`); absent: SGD's until-error
    /// rule, no warm-up for Adam.
    #[serde(default)]
    warmup_steps: Option<usize>,
}

fn default_weight_decay() -> f64 {
    1e-4
}

fn default_data() -> String {
    "digits".into()
}
fn default_train_batch() -> usize {
    64
}
fn default_lr() -> f64 {
    0.1
}
fn default_record_every() -> usize {
    10
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPaper {
    /// What the numbers are (e.g. "CIFAR-10 test error %, Table 1").
    source: String,
    /// Variant label (as the charts name it) -> the paper's number; lower is better.
    values: std::collections::BTreeMap<String, f64>,
}

fn default_batch() -> usize {
    32
}

fn default_measure() -> String {
    "profile".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNet {
    units: Option<usize>,
    width: Option<usize>,
    input_dim: Option<usize>,
    image_size: Option<usize>,
    classes: Option<usize>,
    bn_mode: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrid {
    /// Built-in networks (default: the MLP); a grid names these or `models`.
    #[serde(default)]
    nets: Option<Vec<String>>,
    #[serde(default)]
    placements: Option<Vec<String>>,
    #[serde(default)]
    shortcuts: Option<Vec<String>>,
    /// ONNX models (paths as given, from the working directory): each profiled as
    /// `resprop profile --model` does, on the spec's batch size and BN mode.
    #[serde(default)]
    models: Vec<String>,
    /// ResNets: shortcuts of the shape-changing units (default: each placement's convention).
    #[serde(default)]
    projections: Vec<String>,
    /// What fills the normalisation slots (default: batch).
    #[serde(default)]
    norms: Vec<String>,
    /// How the weights start (default: he).
    #[serde(default)]
    inits: Vec<String>,
    #[serde(default)]
    units: Vec<usize>,
    #[serde(default = "default_replicates")]
    replicates: Vec<u64>,
    /// Training: warm-up lengths in steps (default: `train.warmup_steps`).
    #[serde(default)]
    warmups: Vec<usize>,
    /// Training: base learning rates (default: `train.lr`), a sweep of the recipe's rate.
    #[serde(default)]
    lrs: Vec<f64>,
    /// Training: the recipes (`common`, the default: the `[train]` table's; `fixup`,
    /// `rezero`: a descendant's own, see [`crate::train::Recipe`]).
    #[serde(default)]
    recipes: Vec<String>,
    /// Profiles: the element types, `f64` (the default) and/or `f32`.
    #[serde(default)]
    precisions: Vec<String>,
}

fn default_nets() -> Vec<String> {
    vec!["mlp".into()]
}

fn is_empty(v: &[String]) -> bool {
    v.is_empty()
}

fn default_replicates() -> Vec<u64> {
    vec![0]
}

/// What each cell does.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "task", rename_all = "lowercase")]
pub enum Task {
    /// One gradient profile at initialisation.
    Profile,
    /// Training with SGD; losses, errors and per-unit gradients over the run.
    Train(TrainSpec),
    /// The gradient by path length (`resprop paths`) at initialisation and, with `[train]`,
    /// after training (on a seeded batch of the training split, the same before and after).
    Paths {
        train: Option<TrainSpec>,
        /// Single paths sampled per length for Veit's estimate (0: none).
        sample: usize,
    },
    /// Lesions of the trained network (`resprop lesion`).
    Lesion { train: TrainSpec, draws: usize },
    /// Shattered gradients (`resprop shatter`): each cell one MLP of a scalar input, its
    /// depth the grid's `units`, its family the shortcut (identity or none) and the norm.
    Shatter,
}

impl Task {
    /// The training recipe the cells follow, if they train.
    pub fn train_spec(&self) -> Option<&TrainSpec> {
        match self {
            Task::Train(t) | Task::Lesion { train: t, .. } => Some(t),
            Task::Paths { train, .. } => train.as_ref(),
            Task::Profile | Task::Shatter => None,
        }
    }

    /// The name in the spec file.
    pub fn name(&self) -> &'static str {
        match self {
            Task::Profile => "profile",
            Task::Train(_) => "train",
            Task::Paths { .. } => "paths",
            Task::Lesion { .. } => "lesion",
            Task::Shatter => "shatter",
        }
    }

    /// The tables its cells write, the main one first.
    /// The report's section for this task's results.
    pub fn report_section(&self) -> crate::plot::report::Section {
        use crate::plot::report::Section;
        match self {
            Task::Profile => Section::Profile,
            Task::Train(_) => Section::Training,
            Task::Paths { .. } => Section::Paths,
            Task::Lesion { .. } => Section::Lesion,
            Task::Shatter => Section::Shatter,
        }
    }

    pub fn tables(&self, weight_grads: bool) -> Vec<TableKind> {
        match self {
            Task::Profile if weight_grads => vec![TableKind::PROFILE, TableKind::WEIGHT_GRADS],
            Task::Profile => vec![TableKind::PROFILE],
            Task::Train(_) => vec![TableKind::TRAIN, TableKind::GRADS, TableKind::SIGNAL],
            Task::Paths { .. } => vec![TableKind::PATHS],
            Task::Lesion { .. } => vec![TableKind::LESION],
            Task::Shatter => vec![TableKind::SHATTER],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainSpec {
    pub data: String,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub record_every: usize,
    /// SGD with momentum 0.9 (the paper's), or Adam; left out of fingerprints when SGD so
    /// that the paper's cells keep theirs (likewise the two below at their defaults).
    #[serde(skip_serializing_if = "is_sgd")]
    pub optimizer: crate::train::OptimizerKind,
    #[serde(skip_serializing_if = "is_default_decay")]
    pub weight_decay: f64,
    #[serde(skip_serializing_if = "is_decoupled")]
    pub weight_decay_mode: crate::train::WeightDecayMode,
    /// The images used (`train_subset = N`, `test_subset = N`); absent: all of them. The
    /// cells' fingerprints hold the data's digest, which a subset changes.
    #[serde(flatten)]
    pub subsets: crate::data::Subsets,
}

fn is_sgd(o: &crate::train::OptimizerKind) -> bool {
    *o == crate::train::OptimizerKind::Sgd
}

fn is_default_decay(w: &f64) -> bool {
    *w == default_weight_decay()
}

fn is_decoupled(m: &crate::train::WeightDecayMode) -> bool {
    *m == crate::train::WeightDecayMode::Decoupled
}

/// A validated experiment.
#[derive(Debug, Clone, Serialize)]
pub struct Spec {
    pub name: String,
    pub claim: String,
    pub seed: u64,
    pub batch: usize,
    pub measure: Measure,
    pub charts: Vec<ChartKind>,
    pub sizes: NetSizes,
    #[serde(serialize_with = "crate::util::serialize_display")]
    pub bn_mode: Mode,
    /// The grids whose union the cells are (one for most experiments).
    #[serde(rename = "grid")]
    pub grids: Vec<Grid>,
    pub task: Task,
    pub paper: Option<PaperValues>,
    /// Every cell runs the plain interpreter (`unfused = true`); left out of the resolved
    /// spec when false, so existing specs read as before.
    #[serde(skip_serializing_if = "is_false")]
    pub unfused: bool,
    /// Profile cells also write every weight layer's gradient norm (`weight_grads = true`).
    #[serde(skip_serializing_if = "is_false")]
    pub weight_grads: bool,
}

/// One grid: every combination of its lists.
#[derive(Debug, Clone, Serialize)]
pub struct Grid {
    #[serde(serialize_with = "serialize_displays")]
    pub nets: Vec<NetChoice>,
    #[serde(serialize_with = "serialize_displays")]
    pub placements: Vec<Placement>,
    #[serde(serialize_with = "serialize_displays")]
    pub shortcuts: Vec<ShortcutKind>,
    /// Shortcuts of the ResNets' shape-changing units; empty: each placement's convention
    /// ([`Projection::default_for`]).
    #[serde(serialize_with = "serialize_displays")]
    pub projections: Vec<Projection>,
    /// What fills the normalisation slots, and how the weights start (one entry each,
    /// batch and he, unless the grid sweeps them).
    #[serde(
        serialize_with = "serialize_displays",
        skip_serializing_if = "only_batch"
    )]
    pub norms: Vec<NormKind>,
    #[serde(serialize_with = "serialize_displays", skip_serializing_if = "only_he")]
    pub inits: Vec<Init>,
    /// MLP depths (one entry, the `net.units` size, unless the grid sweeps them).
    pub units: Vec<usize>,
    pub replicates: Vec<u64>,
    /// Training cells' warm-up lengths (`[None]`: the optimizer's default; profiles).
    #[serde(skip_serializing_if = "only_none")]
    pub warmups: Vec<Option<usize>>,
    /// Training cells' base learning rates (`[None]`: `train.lr`; profiles).
    #[serde(skip_serializing_if = "only_none_lr")]
    pub lrs: Vec<Option<f64>>,
    /// Training cells' recipes (`[common]` unless the grid names them; `[None]` for profiles).
    #[serde(
        skip_serializing_if = "only_none_recipe",
        serialize_with = "serialize_recipes"
    )]
    pub recipes: Vec<Option<Recipe>>,
    /// The element types of the cells' passes (`[f64]` unless the grid names them).
    #[serde(
        skip_serializing_if = "only_f64",
        serialize_with = "serialize_displays"
    )]
    pub precisions: Vec<Precision>,
    /// ONNX models (a grid of models has no built-in axis but the replicates).
    #[serde(skip_serializing_if = "is_empty")]
    pub models: Vec<String>,
}

fn only_none(v: &[Option<usize>]) -> bool {
    v == [None]
}

fn only_none_lr(v: &[Option<f64>]) -> bool {
    v == [None]
}

fn only_none_recipe(v: &[Option<Recipe>]) -> bool {
    v == [None] || v == [Some(Recipe::Common)]
}

fn serialize_recipes<S: serde::Serializer>(v: &[Option<Recipe>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().flatten().map(|r| r.to_string()))
}

fn only_f64(v: &[Precision]) -> bool {
    v == [Precision::F64]
}

fn is_false(b: &bool) -> bool {
    !b
}

fn only_batch(v: &[NormKind]) -> bool {
    v == [NormKind::Batch]
}

fn only_he(v: &[Init]) -> bool {
    v == [Init::He]
}

fn serialize_displays<T: std::fmt::Display, S: serde::Serializer>(
    v: &[T],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|x| x.to_string()))
}

/// One run: a point of the grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub index: usize,
    /// The cell's network: its grid point (the projection resolved for ResNets, `None` for
    /// the MLP; a ResNet's units are the grid's first, which its name overrides), the
    /// spec's width.
    pub arch: NetDescription,
    /// Training: the warm-up's length in steps, when set (else the optimizer's default).
    pub warmup: Option<usize>,
    /// Training: the base learning rate, when the grid sweeps it (else `train.lr`).
    pub lr: Option<f64>,
    /// Training: the recipe (common unless the grid names another, whose warm-up is then in
    /// `warmup`); `None` for the other tasks.
    pub recipe: Option<Recipe>,
    /// The element type of the cell's passes.
    pub precision: Precision,
    pub replicate: u64,
    /// An imported model's path (its `arch` is then the default and describes nothing).
    pub model: Option<String>,
}

impl Spec {
    /// How the cells run their networks.
    pub fn fusion(&self) -> crate::unit::Fusion {
        crate::unit::Fusion::from_unfused(self.unfused)
    }

    /// Every combination of each grid, the grids in order (within one: nets, placements,
    /// shortcuts, norms, inits, projections, units, warm-ups, learning rates, replicates).
    pub fn cells(&self) -> Vec<Cell> {
        let mut cells = Vec::new();
        for grid in &self.grids {
            grid.push_cells(&mut cells, self.sizes.width);
        }
        cells
    }
}

/// The most cells one experiment file may hold (the bundled ones hold at most a few hundred).
pub const MAX_CELLS: usize = 100_000;

impl Grid {
    /// How many cells [`Grid::push_cells`] makes, without making them (saturating).
    fn cell_count(&self) -> usize {
        if !self.models.is_empty() {
            return self.models.len().saturating_mul(self.replicates.len());
        }
        let per_variant = |net: &NetChoice| {
            let (projections, depths) = if *net == NetChoice::Mlp {
                (1, self.units.len())
            } else {
                (self.projections.len().max(1), 1)
            };
            [
                projections,
                depths,
                self.warmups.len(),
                self.lrs.len(),
                self.recipes.len(),
                self.precisions.len(),
                self.replicates.len(),
                self.placements.len(),
                self.shortcuts.len(),
                self.norms.len(),
                self.inits.len(),
            ]
            .into_iter()
            .fold(1usize, usize::saturating_mul)
        };
        self.nets
            .iter()
            .map(per_variant)
            .fold(0usize, usize::saturating_add)
    }

    fn push_cells(&self, cells: &mut Vec<Cell>, width: usize) {
        for model in &self.models {
            for &replicate in &self.replicates {
                cells.push(Cell {
                    index: cells.len(),
                    arch: NetDescription::default(),
                    warmup: None,
                    lr: None,
                    recipe: None,
                    precision: Precision::F64,
                    replicate,
                    model: Some(model.clone()),
                });
            }
        }
        for net in &self.nets {
            for &placement in &self.placements {
                for &shortcut in &self.shortcuts {
                    for &norm in &self.norms {
                        for &init in &self.inits {
                            let arch = NetDescription {
                                net: net.clone(),
                                units: 0,
                                width,
                                placement,
                                shortcut,
                                projection: None,
                                norm,
                                init,
                            };
                            self.push_variant(cells, &arch);
                        }
                    }
                }
            }
        }
    }

    /// The cells of one (net, placement, shortcut, norm, init): projections apply to the
    /// ResNets' shape-changing units, MLP depth sweeps to the MLP (a ResNet's depth is in its
    /// name).
    fn push_variant(&self, cells: &mut Vec<Cell>, variant: &NetDescription) {
        let (placement, norm) = (variant.placement, variant.norm);
        let (projections, depths): (Vec<Option<Projection>>, &[usize]) =
            if variant.net == NetChoice::Mlp {
                (vec![None], &self.units)
            } else if self.projections.is_empty() {
                (
                    vec![Some(crate::net::default_projection(placement, norm))],
                    &self.units[..1],
                )
            } else {
                (
                    self.projections.iter().map(|&p| Some(p)).collect(),
                    &self.units[..1],
                )
            };
        for projection in projections {
            for &units in depths {
                for &warmup in &self.warmups {
                    for &lr in &self.lrs {
                        for &recipe in &self.recipes {
                            for &precision in &self.precisions {
                                for &replicate in &self.replicates {
                                    cells.push(Cell {
                                        index: cells.len(),
                                        arch: NetDescription {
                                            units,
                                            projection,
                                            ..variant.clone()
                                        },
                                        // A descendant's recipe sets its own warm-up.
                                        warmup: recipe.and_then(Recipe::warmup).or(warmup),
                                        lr,
                                        recipe,
                                        precision,
                                        replicate,
                                        model: None,
                                    });
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

impl Spec {
    /// The resolved spec as TOML, saved next to the results.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).context("serialising the resolved spec")
    }
}

/// One-line form of a TOML error: `line L: message`.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
    let msg = e.message().trim().replace('\n', " ");
    match line {
        Some(l) => format!("line {l}: {msg}"),
        None => msg,
    }
}

fn parse_each<T>(
    values: &[String],
    key: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>> {
    if values.is_empty() {
        bail!("{key}: the list is empty");
    }
    values
        .iter()
        .map(|v| parse(v).map_err(|e| anyhow!("{key}: {e}")))
        .collect()
}

/// Parses and validates the text of an experiment file.
pub fn parse_spec(text: &str) -> Result<Spec> {
    let raw: RawSpec = toml::from_str(text).map_err(|e| anyhow!(toml_error(text, &e)))?;
    check_name(&raw.name).map_err(|e| anyhow!("name: {e}"))?;
    if raw.batch == 0 {
        bail!("batch: must be at least 1, got 0");
    }
    let measure = match raw.measure.as_str() {
        "profile" => Measure::Profile,
        "verification" => Measure::Verification,
        other => bail!("measure: unknown value '{other}' (expected 'profile' or 'verification')"),
    };
    let charts = parse_charts(&raw.charts).map_err(|e| anyhow!("charts: {e}"))?;
    let positive = |key: &str, v: Option<usize>, default: usize| -> Result<usize> {
        match v {
            Some(0) => bail!("{key}: must be at least 1, got 0"),
            Some(v) => Ok(v),
            None => Ok(default),
        }
    };
    let units = positive("net.units", raw.net.units, 54)?;
    let sizes = NetSizes {
        units,
        width: positive("net.width", raw.net.width, 64)?,
        input_dim: positive("net.input_dim", raw.net.input_dim, 64)?,
        image_size: positive("net.image_size", raw.net.image_size, 32)?,
        input_channels: 3,
        classes: positive("net.classes", raw.net.classes, 10)?,
    };
    if sizes.classes < 2 {
        bail!("net.classes: must be at least 2, got {}", sizes.classes);
    }
    let bn_mode = match &raw.net.bn_mode {
        None => Mode::Train,
        Some(m) => m.parse().map_err(|e| anyhow!("net.bn_mode: {e}"))?,
    };
    let mut warmup_default = None;
    let train = match raw.train {
        None => None,
        Some(t) => {
            warmup_default = t.warmup_steps;
            Some(parse_train(t)?)
        }
    };
    let task = match (raw.task.as_str(), train) {
        ("profile", None) => Task::Profile,
        ("profile" | "shatter", Some(_)) => bail!(
            "train: a [train] table needs task = \"train\", \"paths\" or \"lesion\""
        ),
        ("train", None) => bail!("task: \"train\" needs a [train] table with at least epochs"),
        ("train", Some(t)) => Task::Train(t),
        ("paths", train) => Task::Paths {
            train,
            sample: raw.paths.as_ref().map_or(0, |p| p.sample),
        },
        ("lesion", None) => bail!("task: \"lesion\" deletes units of a trained net: it needs a [train] table"),
        ("lesion", Some(t)) => {
            let draws = raw.lesion.as_ref().map_or(default_draws(), |l| l.draws);
            if draws == 0 {
                bail!("lesion.draws: at least 1");
            }
            Task::Lesion { train: t, draws }
        }
        ("shatter", None) => Task::Shatter,
        (other, _) => bail!("task: unknown value '{other}' (expected 'profile', 'train', 'paths', 'lesion' or 'shatter')"),
    };
    if raw.paths.is_some() && !matches!(task, Task::Paths { .. }) {
        bail!("paths: a [paths] table needs task = \"paths\"");
    }
    if raw.lesion.is_some() && !matches!(task, Task::Lesion { .. }) {
        bail!("lesion: a [lesion] table needs task = \"lesion\"");
    }
    let training = task.train_spec().is_some();
    if task != Task::Profile && raw.weight_grads {
        bail!(
            "weight_grads: applies to profiles (a training run records its gradients in grads.csv)"
        );
    }
    let raw_grids: Vec<(String, toml::Value)> = match raw.grid {
        toml::Value::Array(a) if a.is_empty() => bail!("grid: the list of grids is empty"),
        toml::Value::Array(a) => a
            .into_iter()
            .enumerate()
            .map(|(i, g)| (format!("grid[{i}]"), g))
            .collect(),
        g => vec![("grid".to_string(), g)],
    };
    let mut grids = Vec::new();
    for (key, value) in raw_grids {
        let raw_grid = RawGrid::deserialize(value)
            .map_err(|e| anyhow!("{key}: {}", e.message().trim().replace('\n', " ")))?;
        grids.push(parse_grid(
            raw_grid,
            &key,
            units,
            warmup_default,
            task.train_spec(),
        )?);
    }
    if grids.iter().any(|g| !g.models.is_empty()) {
        if task != Task::Profile {
            bail!(
                "grid.models: a grid of models runs profiles (task = \"profile\"), not {}",
                task.name()
            );
        }
        if raw.unfused {
            bail!("unfused: an imported model always runs the plain interpreter");
        }
        if grids.iter().all(|g| !g.models.is_empty()) {
            let n = &raw.net;
            for (name, given) in [
                ("units", n.units.is_some()),
                ("width", n.width.is_some()),
                ("input_dim", n.input_dim.is_some()),
                ("image_size", n.image_size.is_some()),
                ("classes", n.classes.is_some()),
            ] {
                if given {
                    bail!("net.{name}: the grid has only models, whose files give their sizes");
                }
            }
        }
    }
    if raw.batch < 2
        && bn_mode == Mode::Train
        && grids
            .iter()
            .any(|g| g.nets.contains(&NetChoice::Mlp) && g.norms.contains(&NormKind::Batch))
    {
        bail!(
            "batch: {} is too small for an MLP with BatchNorm in training mode (needs 2)",
            raw.batch
        );
    }
    // A size the grid's networks do not take is refused, not ignored.
    let has_mlp = grids.iter().any(|g| g.nets.contains(&NetChoice::Mlp));
    let has_resnet = grids
        .iter()
        .any(|g| g.nets.iter().any(|n| *n != NetChoice::Mlp));
    let from_data = training || task == Task::Shatter;
    let only_resnets = "sizes the MLP, and the grid has only ResNets";
    let only_mlps = "sizes a ResNet's input images, and the grid has only MLPs";
    let refusals = [
        (
            "net.units",
            raw.net.units,
            (!has_mlp).then_some(only_resnets),
        ),
        (
            "net.width",
            raw.net.width,
            (!has_mlp).then_some(only_resnets),
        ),
        (
            "net.input_dim",
            raw.net.input_dim,
            if !has_mlp {
                Some(only_resnets)
            } else {
                from_data.then_some("the MLP's input here comes from the data")
            },
        ),
        (
            "net.image_size",
            raw.net.image_size,
            if !has_resnet {
                Some(only_mlps)
            } else {
                from_data.then_some("the images here come from the data")
            },
        ),
        (
            "net.classes",
            raw.net.classes,
            from_data.then_some("the classes here come from the data"),
        ),
    ];
    for (key, given, why) in refusals {
        if let (Some(_), Some(why)) = (given, why) {
            bail!("{key}: {why}");
        }
    }
    let cells: usize = grids
        .iter()
        .map(Grid::cell_count)
        .fold(0usize, usize::saturating_add);
    if cells > MAX_CELLS {
        bail!(
            "grid: {cells} cells, more than {MAX_CELLS} in one experiment; split it into several files (each can be sharded)"
        );
    }
    for c in &charts {
        if c.table() == TableKind::WEIGHT_GRADS && task == Task::Profile && !raw.weight_grads {
            bail!(
                "charts: '{}' draws the weight gradients: set weight_grads = true",
                c.name()
            );
        }
        if !task.tables(raw.weight_grads).contains(&c.table()) {
            bail!("charts: '{}' does not fit task '{}'", c.name(), raw.task);
        }
        if *c == ChartKind::LrSweep && grids.iter().all(|g| g.lrs.len() < 2) {
            bail!("charts: 'lr_sweep' draws a sweep of learning rates: give a grid at least two `lrs`");
        }
    }
    if grids
        .iter()
        .any(|g| g.precisions.iter().any(|p| !p.is_f64()))
    {
        if !matches!(task, Task::Profile | Task::Train(_)) {
            bail!(
                "grid.precisions: f32 runs profile and training cells; {} runs in f64",
                task.name()
            );
        }
        if measure == Measure::Verification {
            bail!("grid.precisions: the verification's tolerances need f64; measure the profile in f32");
        }
    }
    if task == Task::Shatter {
        for g in &grids {
            if g.nets.iter().any(|n| *n != NetChoice::Mlp)
                || g.shortcuts
                    .iter()
                    .any(|s| !matches!(s, ShortcutKind::Identity | ShortcutKind::None))
            {
                bail!("grid: shatter compares MLPs (nets = [\"mlp\"]) with the identity shortcut or none");
            }
        }
    }
    let paper = raw.paper.map(|p| PaperValues {
        source: p.source,
        values: p.values.into_iter().collect(),
    });
    Ok(Spec {
        task,
        paper,
        name: raw.name,
        claim: raw.claim,
        seed: raw.seed,
        batch: raw.batch,
        measure,
        charts,
        sizes,
        bn_mode,
        grids,
        unfused: raw.unfused,
        weight_grads: raw.weight_grads,
    })
    .and_then(|spec| {
        refuse_repeated_cells(&spec)?;
        Ok(spec)
    })
}

/// Validates a `[train]` table.
fn parse_train(t: RawTrain) -> Result<TrainSpec> {
    if t.epochs == 0 || t.batch < 2 || t.record_every == 0 {
        bail!("train: epochs and record_every must be at least 1 and batch at least 2 (got {}, {}, {})", t.epochs, t.record_every, t.batch);
    }
    if !(t.lr > 0.0 && t.lr.is_finite()) {
        bail!("train.lr: must be a positive number, got {}", t.lr);
    }
    crate::train::check_weight_decay(t.weight_decay, t.lr)
        .map_err(|e| anyhow!("train.weight_decay: {e}"))?;
    if let Err(e) = t.data.parse::<crate::data::DataSpec>() {
        bail!("train.data: {e}");
    }
    let optimizer = match &t.optimizer {
        None => crate::train::OptimizerKind::Sgd,
        Some(o) => o.parse().map_err(|e| anyhow!("train.optimizer: {e}"))?,
    };
    let weight_decay_mode = match &t.weight_decay_mode {
        None => crate::train::WeightDecayMode::Decoupled,
        Some(_) if optimizer == crate::train::OptimizerKind::Sgd => bail!(
            "train.weight_decay_mode: applies to Adam (SGD adds the decay to the gradient); set optimizer = \"adam\""
        ),
        Some(m) => m.parse().map_err(|e| anyhow!("train.weight_decay_mode: {e}"))?,
    };
    Ok(TrainSpec {
        data: t.data,
        epochs: t.epochs,
        batch: t.batch,
        lr: t.lr,
        record_every: t.record_every,
        optimizer,
        weight_decay: t.weight_decay,
        weight_decay_mode,
        subsets: crate::data::Subsets {
            train_subset: t.train_subset,
            test_subset: t.test_subset,
            downsample: t.downsample,
        },
    })
}

/// Two grids that share a cell would run it twice and count it twice in the statistics.
fn refuse_repeated_cells(spec: &Spec) -> Result<()> {
    let mut seen = std::collections::BTreeMap::new();
    for c in spec.cells() {
        let key = format!(
            "{:?} {} {} {} {:?} {} {} {:?} {:?} {:?} {} {} {}",
            c.model,
            c.arch.net,
            c.arch.placement,
            c.arch.shortcut,
            c.arch.projection,
            c.arch.norm,
            c.arch.init,
            c.warmup,
            c.lr,
            c.recipe,
            c.arch.units,
            c.precision,
            c.replicate
        );
        if let Some(first) = seen.insert(key, c.index) {
            let what = match &c.model {
                Some(m) => format!("model {m}"),
                None => format!("{} {} {}", c.arch.net, c.arch.placement, c.arch.shortcut),
            };
            bail!(
                "grid: cells {first} and {} are the same ({what}, replicate {}): a cell may appear in one grid only",
                c.index, c.replicate
            );
        }
    }
    Ok(())
}

/// Validates one grid; `key` (`grid` or `grid[i]`) prefixes its errors.
fn parse_grid(
    raw: RawGrid,
    key: &str,
    default_units: usize,
    warmup_default: Option<usize>,
    train: Option<&TrainSpec>,
) -> Result<Grid> {
    let training = train.is_some();
    let k = |name: &str| format!("{key}.{name}");
    if !raw.models.is_empty() {
        return parse_model_grid(raw, key);
    }
    let missing = |name: &str| anyhow!("{key}: missing field `{name}`");
    let nets = parse_each(&raw.nets.unwrap_or_else(default_nets), &k("nets"), |s| {
        s.parse::<NetChoice>()
    })?;
    let placements = parse_each(
        &raw.placements.ok_or_else(|| missing("placements"))?,
        &k("placements"),
        |s| s.parse::<Placement>(),
    )?;
    let shortcuts = parse_each(
        &raw.shortcuts.ok_or_else(|| missing("shortcuts"))?,
        &k("shortcuts"),
        |s| s.parse::<ShortcutKind>(),
    )?;
    let projections = if raw.projections.is_empty() {
        Vec::new()
    } else {
        parse_each(&raw.projections, &k("projections"), |s| {
            s.parse::<Projection>()
        })?
    };
    let norms = if raw.norms.is_empty() {
        vec![NormKind::Batch]
    } else {
        parse_each(&raw.norms, &k("norms"), |s| s.parse::<NormKind>())?
    };
    let inits = if raw.inits.is_empty() {
        vec![Init::He]
    } else {
        parse_each(&raw.inits, &k("inits"), |s| s.parse::<Init>())?
    };
    // Combinations that cannot be built are refused before anything runs.
    for &shortcut in &shortcuts {
        for &placement in &placements {
            for &norm in &norms {
                shortcut
                    .check_combination(placement, norm)
                    .map_err(|e| anyhow!("{}: {e}", k("shortcuts")))?;
            }
        }
    }
    if inits.contains(&Init::Fixup) && norms.iter().any(|&n| n != NormKind::None) {
        bail!(
            "{}: 'fixup' replaces normalisation, so {} must be [\"none\"]",
            k("inits"),
            k("norms")
        );
    }
    if !projections.is_empty() && nets.iter().all(|n| *n == NetChoice::Mlp) {
        bail!(
            "{}: applies to the ResNets' shape-changing units, and this grid has only the MLP",
            k("projections")
        );
    }
    let units = if raw.units.is_empty() {
        vec![default_units]
    } else {
        raw.units.clone()
    };
    if units.contains(&0) {
        bail!("{}: depths must be at least 1, got 0", k("units"));
    }
    if units.len() > 1 && !nets.contains(&NetChoice::Mlp) {
        bail!(
            "{}: several depths apply to the MLP, and this grid has only ResNets (whose depth is in their name)",
            k("units")
        );
    }
    if raw.replicates.is_empty() {
        bail!("{}: the list is empty", k("replicates"));
    }
    let warmups = match (training, raw.warmups.is_empty()) {
        (_, true) => vec![warmup_default],
        (true, false) => raw.warmups.iter().map(|&w| Some(w)).collect(),
        (false, false) => bail!(
            "{}: warm-ups apply to training (task = \"train\")",
            k("warmups")
        ),
    };
    let lrs = match train {
        _ if raw.lrs.is_empty() => vec![None],
        None => bail!(
            "{}: learning rates apply to training (a [train] table)",
            k("lrs")
        ),
        Some(t) => {
            let mut lrs = Vec::new();
            for &lr in &raw.lrs {
                if !(lr > 0.0 && lr.is_finite()) {
                    bail!("{}: each must be a positive number, got {lr}", k("lrs"));
                }
                crate::train::check_weight_decay(t.weight_decay, lr)
                    .map_err(|e| anyhow!("{}: at {lr}, train.weight_decay: {e}", k("lrs")))?;
                if lrs.contains(&Some(lr)) {
                    bail!("{}: {lr} appears twice", k("lrs"));
                }
                lrs.push(Some(lr));
            }
            lrs
        }
    };
    let recipes = parse_recipes(&raw.recipes, key, train)?;
    if recipes.iter().flatten().any(|r| r.warmup().is_some()) && !raw.warmups.is_empty() {
        bail!(
            "{}: a descendant's recipe sets its own warm-up (none); sweep warm-ups in a grid without one",
            k("warmups")
        );
    }
    for recipe in recipes.iter().flatten() {
        for net in &nets {
            for &placement in &placements {
                for &shortcut in &shortcuts {
                    for &norm in &norms {
                        for &init in &inits {
                            let arch = NetDescription {
                                net: net.clone(),
                                placement,
                                shortcut,
                                norm,
                                init,
                                ..NetDescription::default()
                            };
                            let optimizer = train.map_or(OptimizerKind::Sgd, |t| t.optimizer);
                            recipe
                                .check(&arch, optimizer)
                                .map_err(|e| anyhow!("{}: {e}", k("recipes")))?;
                        }
                    }
                }
            }
        }
    }
    let precisions = if raw.precisions.is_empty() {
        vec![Precision::F64]
    } else {
        let p = parse_each(&raw.precisions, &k("precisions"), |s| {
            s.parse::<Precision>()
        })?;
        if p.len() == 2 && p[0] == p[1] {
            bail!("{}: {} appears twice", k("precisions"), p[0]);
        }
        p
    };
    Ok(Grid {
        nets,
        placements,
        shortcuts,
        projections,
        norms,
        inits,
        units,
        replicates: raw.replicates,
        warmups,
        lrs,
        recipes,
        precisions,
        models: Vec::new(),
    })
}

/// A grid's recipes: `[common]` for training when it names none (`[None]` for the other
/// tasks); training only, each once.
fn parse_recipes(
    names: &[String],
    key: &str,
    train: Option<&TrainSpec>,
) -> Result<Vec<Option<Recipe>>> {
    let k = format!("{key}.recipes");
    if names.is_empty() {
        return Ok(vec![train.map(|_| Recipe::Common)]);
    }
    if train.is_none() {
        bail!("{k}: recipes apply to training (a [train] table)");
    }
    let mut out = Vec::new();
    for name in names {
        let r = name.parse::<Recipe>().map_err(|e| anyhow!("{k}: {e}"))?;
        if out.contains(&Some(r)) {
            bail!("{k}: {r} appears twice");
        }
        out.push(Some(r));
    }
    Ok(out)
}

/// Validates a grid of ONNX models: the files describe the networks, so no built-in axis
/// applies (an empty list, as a resolved spec writes them, is no axis).
fn parse_model_grid(raw: RawGrid, key: &str) -> Result<Grid> {
    let k = |name: &str| format!("{key}.{name}");
    let given = |v: &Option<Vec<String>>| v.as_ref().is_some_and(|v| !v.is_empty());
    for (name, set) in [
        ("nets", given(&raw.nets)),
        ("placements", given(&raw.placements)),
        ("shortcuts", given(&raw.shortcuts)),
        ("projections", !raw.projections.is_empty()),
        ("norms", !raw.norms.is_empty()),
        ("inits", !raw.inits.is_empty()),
        ("units", !raw.units.is_empty()),
        ("warmups", !raw.warmups.is_empty()),
        ("lrs", !raw.lrs.is_empty()),
        ("recipes", !raw.recipes.is_empty()),
        ("precisions", !raw.precisions.is_empty()),
    ] {
        if set {
            bail!(
                "{}: a grid of models takes only models and replicates (each file describes its network)",
                k(name)
            );
        }
    }
    if let Some(m) = raw.models.iter().find(|m| m.trim().is_empty()) {
        bail!("{}: '{m}' is not a file name", k("models"));
    }
    if raw.replicates.is_empty() {
        bail!("{}: the list is empty", k("replicates"));
    }
    Ok(Grid {
        nets: Vec::new(),
        placements: Vec::new(),
        shortcuts: Vec::new(),
        projections: Vec::new(),
        norms: Vec::new(),
        inits: Vec::new(),
        units: Vec::new(),
        replicates: raw.replicates,
        warmups: vec![None],
        lrs: vec![None],
        recipes: vec![None],
        precisions: vec![Precision::F64],
        models: raw.models,
    })
}

/// Reads and validates an experiment file; errors start with the file's path.
pub fn load_spec(path: &Path) -> Result<Spec> {
    let text = crate::input::read_text(path, crate::input::MAX_SPEC_BYTES, "experiment file")?;
    parse_spec(&text).map_err(|e| anyhow!("{}: {e:#}", path.display()))
}

/// The charts a results folder's resolved spec (`spec.toml` beside `csv`) asks for, and its
/// claim.
pub fn charts_of_results(csv: &Path) -> Result<(Vec<ChartKind>, String)> {
    let spec_path = csv.with_file_name("spec.toml");
    let text = crate::input::read_text(
        &spec_path,
        crate::input::MAX_SPEC_BYTES,
        "the results folder's spec (written next to the CSV by 'resprop run')",
    )?;
    let value: toml::Value =
        toml::from_str(&text).with_context(|| format!("malformed '{}'", spec_path.display()))?;
    let names: Vec<String> = value
        .get("charts")
        .and_then(|c| c.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let claim = value
        .get("claim")
        .and_then(|c| c.as_str())
        .unwrap_or("")
        .to_string();
    Ok((parse_charts(&names)?, claim))
}

/// Chart kinds by name, in order; an unknown name is an error listing the known ones.
pub fn parse_charts(names: &[String]) -> Result<Vec<ChartKind>> {
    names
        .iter()
        .map(|n| {
            ChartKind::ALL
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, c)| *c)
                .ok_or_else(|| {
                    let all: Vec<&str> = ChartKind::ALL.iter().map(|(k, _)| *k).collect();
                    anyhow::anyhow!("unknown chart '{n}' (expected one of: {})", all.join(", "))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_large_experiments_parse_with_their_data_and_subsets() {
        // experiments/large/ is not run by the main job, so nothing else reads these files.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/large");
        let mut cells = std::collections::BTreeMap::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let spec = load_spec(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            let t = spec.task.train_spec().expect("a training study");
            cells.insert(spec.name.clone(), (t.data.clone(), spec.cells().len()));
        }
        // The counts docs/data.md and docs/training.md give.
        assert_eq!(
            cells["fashion_mnist_resnet110"],
            ("fashion-mnist".to_string(), 63)
        );
        assert_eq!(cells["train_depth"], ("digits".to_string(), 14));
        assert_eq!(cells.len(), 2);
    }

    #[test]
    fn train_and_test_subsets_and_the_downsampling_are_read_from_the_train_table() {
        let text = "name = \"t\"\nclaim = \"c\"\ncharts = []\ntask = \"train\"\n[train]\nepochs = 1\ntrain_subset = 300\ntest_subset = 50\ndownsample = 2\n[grid]\nnets = [\"mlp\"]\nplacements = [\"original\"]\nshortcuts = [\"identity\"]\n";
        let spec = parse_spec(text).unwrap();
        let t = spec.task.train_spec().unwrap();
        assert_eq!(
            (
                t.subsets.train_subset,
                t.subsets.test_subset,
                t.subsets.downsample
            ),
            (Some(300), Some(50), Some(2))
        );
    }

    const GOOD: &str = r#"
name = "t"
claim = "c"
charts = ["grad_ratio"]
[net]
units = 4
width = 8
[grid]
placements = ["original", "full-preact"]
shortcuts = ["identity", "scale:0.5"]
replicates = [0, 1]
"#;

    #[test]
    fn good_spec_expands_to_cells() {
        let spec = parse_spec(GOOD).unwrap();
        let cells = spec.cells();
        assert_eq!(cells.len(), 8);
        assert_eq!(cells[0].arch.placement, Placement::Original);
        assert_eq!(cells[7].replicate, 1);
        assert!(cells.iter().all(|c| c.arch.units == 4));
        assert!(spec.to_toml().unwrap().contains("scale:0.5"));
    }

    #[test]
    fn bad_specs_name_key_and_value() {
        let cases = [
            (GOOD.replace("width = 8", "widht = 8"), "widht"),
            (
                GOOD.replace("\"original\"", "\"sideways\""),
                "grid.placements: unknown placement 'sideways'",
            ),
            (
                GOOD.replace("\"scale:0.5\"", "\"scale:x\""),
                "grid.shortcuts: shortcut 'scale:x': lambda 'x'",
            ),
            (
                GOOD.replace("units = 4", "units = 0"),
                "net.units: must be at least 1, got 0",
            ),
            (GOOD.replace("units = 4", "units = \"four\""), "line 6"),
            (
                GOOD.replace("\"grad_ratio\"", "\"pie\""),
                "charts: unknown chart 'pie'",
            ),
            (
                GOOD.replace("name = \"t\"", "name = \"a/b\""),
                "name: 'a/b'",
            ),
            (
                GOOD.replace("replicates = [0, 1]", "replicates = []"),
                "grid.replicates",
            ),
        ];
        for (text, needle) in cases {
            let e = format!("{:#}", parse_spec(&text).unwrap_err());
            assert!(e.contains(needle), "'{needle}' not in: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }
}
