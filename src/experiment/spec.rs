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

use crate::layers::Mode;
use crate::net::{NetChoice, NetSizes};
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
    grid: RawGrid,
    #[serde(default = "default_task")]
    task: String,
    train: Option<RawTrain>,
    /// The paper's numbers for the variants, to compare orderings in the report.
    #[serde(default)]
    paper: Option<RawPaper>,
    /// Run every cell with the plain layer-by-layer interpreter instead of the fused engine.
    #[serde(default)]
    unfused: bool,
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
    #[serde(default = "default_nets")]
    nets: Vec<String>,
    placements: Vec<String>,
    shortcuts: Vec<String>,
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
}

fn default_nets() -> Vec<String> {
    vec!["mlp".into()]
}

fn default_replicates() -> Vec<u64> {
    vec![0]
}

/// What each cell records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Measure {
    /// The per-unit gradient record.
    Profile,
    /// The record plus the per-unit errors of the formula checks (O(L^2) VJPs per cell).
    Verification,
}

/// What each cell does.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "task", rename_all = "lowercase")]
pub enum Task {
    /// One gradient profile at initialisation.
    Profile,
    /// Training with SGD; losses, errors and per-unit gradients over the run.
    Train(TrainSpec),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainSpec {
    pub data: String,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub record_every: usize,
}

/// The paper's numbers for comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PaperValues {
    pub source: String,
    pub values: Vec<(String, f64)>,
}

/// Chart kinds an experiment can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChartKind {
    /// ||dE/dx_l|| / ||dE/dx_L|| against l, one line per variant.
    GradRatio,
    /// Direct part and rest against l, one panel per variant.
    DirectRest,
    /// Measured direct ratio with prod(lambda) dashed over it.
    LambdaSweep,
    /// ||x_l|| against l.
    Forward,
    /// Per-sample gradient ratios: min / median / max band per unit.
    SampleBands,
    /// Per-unit verification errors with the tolerances.
    Verification,
    /// Training loss (log) and test error against the step, one line per variant.
    TrainCurves,
    /// log10 ||dE/dx_l|| over (step, unit), one panel per variant.
    GradHeatmap,
    /// Gradient ratio against the unit at the first, middle and last recorded steps.
    GradRatioSteps,
    /// Test minus training loss and error over training, per variant.
    Generalisation,
    /// Variance of every weight layer's input against the unit, at the start and the end.
    WeightInputs,
    /// Forward signal propagation: the channel variance of x_l and of the branch term against
    /// the unit, with the predictions that apply dashed over them.
    Signal,
}

impl ChartKind {
    pub const ALL: [(&'static str, ChartKind); 12] = [
        ("grad_ratio", ChartKind::GradRatio),
        ("direct_rest", ChartKind::DirectRest),
        ("lambda_sweep", ChartKind::LambdaSweep),
        ("forward", ChartKind::Forward),
        ("sample_bands", ChartKind::SampleBands),
        ("verification", ChartKind::Verification),
        ("train_curves", ChartKind::TrainCurves),
        ("grad_heatmap", ChartKind::GradHeatmap),
        ("grad_ratio_steps", ChartKind::GradRatioSteps),
        ("generalisation", ChartKind::Generalisation),
        ("weight_inputs", ChartKind::WeightInputs),
        ("signal", ChartKind::Signal),
    ];

    /// Charts drawn from a training run's CSVs rather than a profile's.
    pub fn needs_training(self) -> bool {
        self.table() != "profile"
    }

    /// The table (`<name>.csv` of the experiment's results) the chart is drawn from.
    pub fn table(self) -> &'static str {
        match self {
            ChartKind::TrainCurves | ChartKind::Generalisation => "train",
            ChartKind::GradHeatmap | ChartKind::GradRatioSteps => "grads",
            ChartKind::WeightInputs => "signal",
            _ => "profile",
        }
    }

    pub fn name(self) -> &'static str {
        ChartKind::ALL.iter().find(|(_, k)| *k == self).unwrap().0
    }
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
    pub task: Task,
    pub paper: Option<PaperValues>,
    /// Every cell runs the plain interpreter (`unfused = true`); left out of the resolved
    /// spec when false, so existing specs read as before.
    #[serde(skip_serializing_if = "is_false")]
    pub unfused: bool,
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
    pub net: NetChoice,
    pub placement: Placement,
    pub shortcut: ShortcutKind,
    /// The shape-changing units' shortcut, resolved (ResNets); `None` for the MLP.
    pub projection: Option<Projection>,
    pub norm: NormKind,
    pub init: Init,
    pub units: usize,
    pub replicate: u64,
}

impl Spec {
    /// How the cells run their networks.
    pub fn fusion(&self) -> crate::unit::Fusion {
        crate::unit::Fusion::from_unfused(self.unfused)
    }

    /// Every combination, in a fixed order (nets, placements, shortcuts, norms, inits,
    /// projections, units, replicates).
    pub fn cells(&self) -> Vec<Cell> {
        let mut cells = Vec::new();
        for net in &self.nets {
            for &placement in &self.placements {
                for &shortcut in &self.shortcuts {
                    for &norm in &self.norms {
                        for &init in &self.inits {
                            self.push_cells(&mut cells, net, placement, shortcut, norm, init);
                        }
                    }
                }
            }
        }
        cells
    }

    /// The cells of one (net, placement, shortcut, norm, init): projections apply to the
    /// ResNets' shape-changing units, MLP depth sweeps to the MLP (a ResNet's depth is in its
    /// name).
    fn push_cells(
        &self,
        cells: &mut Vec<Cell>,
        net: &NetChoice,
        placement: Placement,
        shortcut: ShortcutKind,
        norm: NormKind,
        init: Init,
    ) {
        let (projections, depths): (Vec<Option<Projection>>, &[usize]) = if *net == NetChoice::Mlp {
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
                for &replicate in &self.replicates {
                    cells.push(Cell {
                        index: cells.len(),
                        net: net.clone(),
                        placement,
                        shortcut,
                        projection,
                        norm,
                        init,
                        units,
                        replicate,
                    });
                }
            }
        }
    }

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
    if raw.name.is_empty()
        || !raw
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        bail!(
            "name: '{}' must be non-empty letters, digits, '-' or '_' (it names the output folder)",
            raw.name
        );
    }
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
    let nets = parse_each(&raw.grid.nets, "grid.nets", |s| s.parse::<NetChoice>())?;
    let placements = parse_each(&raw.grid.placements, "grid.placements", |s| {
        s.parse::<Placement>()
    })?;
    let shortcuts = parse_each(&raw.grid.shortcuts, "grid.shortcuts", |s| {
        s.parse::<ShortcutKind>()
    })?;
    let projections = if raw.grid.projections.is_empty() {
        Vec::new()
    } else {
        parse_each(&raw.grid.projections, "grid.projections", |s| {
            s.parse::<Projection>()
        })?
    };
    let norms = if raw.grid.norms.is_empty() {
        vec![NormKind::Batch]
    } else {
        parse_each(&raw.grid.norms, "grid.norms", |s| s.parse::<NormKind>())?
    };
    let inits = if raw.grid.inits.is_empty() {
        vec![Init::He]
    } else {
        parse_each(&raw.grid.inits, "grid.inits", |s| s.parse::<Init>())?
    };
    // Combinations that cannot be built are refused before anything runs.
    for &shortcut in &shortcuts {
        for &placement in &placements {
            shortcut
                .check_placement(placement)
                .map_err(|e| anyhow!("grid.shortcuts: {e}"))?;
        }
    }
    if inits.contains(&Init::Fixup) && norms.iter().any(|&n| n != NormKind::None) {
        bail!("grid.inits: 'fixup' replaces normalisation, so grid.norms must be [\"none\"]");
    }
    if !projections.is_empty() && nets.iter().all(|n| *n == NetChoice::Mlp) {
        bail!("grid.projections: applies to the ResNets' shape-changing units, and this grid has only the MLP");
    }
    let units = if raw.grid.units.is_empty() {
        vec![units]
    } else {
        raw.grid.units.clone()
    };
    if let Some(&0) = units.iter().find(|&&u| u == 0) {
        bail!("grid.units: depths must be at least 1, got 0");
    }
    if raw.grid.replicates.is_empty() {
        bail!("grid.replicates: the list is empty");
    }
    if raw.batch < 2 && bn_mode == Mode::Train && nets.contains(&NetChoice::Mlp) {
        bail!(
            "batch: {} is too small for an MLP with BatchNorm in training mode (needs 2)",
            raw.batch
        );
    }
    let task = match (raw.task.as_str(), raw.train) {
        ("profile", None) => Task::Profile,
        ("profile", Some(_)) => bail!("train: a [train] table needs task = \"train\""),
        ("train", None) => bail!("task: \"train\" needs a [train] table with at least epochs"),
        ("train", Some(t)) => {
            if t.epochs == 0 || t.batch < 2 || t.record_every == 0 {
                bail!("train: epochs and record_every must be at least 1 and batch at least 2 (got {}, {}, {})", t.epochs, t.record_every, t.batch);
            }
            if !(t.lr > 0.0 && t.lr.is_finite()) {
                bail!("train.lr: must be a positive number, got {}", t.lr);
            }
            if let Err(e) = t.data.parse::<crate::data::DataSpec>() {
                bail!("train.data: {e}");
            }
            Task::Train(TrainSpec {
                data: t.data,
                epochs: t.epochs,
                batch: t.batch,
                lr: t.lr,
                record_every: t.record_every,
            })
        }
        (other, _) => bail!("task: unknown value '{other}' (expected 'profile' or 'train')"),
    };
    for c in &charts {
        if c.needs_training() != matches!(task, Task::Train(_)) {
            bail!("charts: '{}' does not fit task '{}'", c.name(), raw.task);
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
        nets,
        placements,
        shortcuts,
        projections,
        norms,
        inits,
        units,
        replicates: raw.grid.replicates,
        unfused: raw.unfused,
    })
}

/// Reads and validates an experiment file; errors start with the file's path.
pub fn load_spec(path: &Path) -> Result<Spec> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read '{}'", path.display()))?;
    parse_spec(&text).map_err(|e| anyhow!("{}: {e:#}", path.display()))
}

/// The charts a results folder's resolved spec (`spec.toml` beside `csv`) asks for, and its
/// claim.
pub fn charts_of_results(csv: &Path) -> Result<(Vec<ChartKind>, String)> {
    let spec_path = csv.with_file_name("spec.toml");
    let text = std::fs::read_to_string(&spec_path).with_context(|| {
        format!(
            "cannot read '{}' (written next to the CSV by 'resprop run')",
            spec_path.display()
        )
    })?;
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
        assert_eq!(cells[0].placement, Placement::Original);
        assert_eq!(cells[7].replicate, 1);
        assert!(cells.iter().all(|c| c.units == 4));
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
