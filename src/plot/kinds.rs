//! What an experiment can chart: the kinds of chart, each drawn from one of the tables an
//! experiment writes ([`TableKind`]), and the paper's numbers a chart or report section is set
//! against.

use serde::Serialize;

use crate::schema::TableKind;

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
    /// Final training loss and test error against the base learning rate (a grid's `lrs`),
    /// median and range over replicates, per variant.
    LrSweep,
    /// Test minus training loss and error over training, per variant.
    Generalisation,
    /// Variance of every weight layer's input against the unit, at the start and the end.
    WeightInputs,
    /// Forward signal propagation: the channel variance of x_l and of the branch term against
    /// the unit, with the predictions that apply dashed over them.
    Signal,
    /// ||dE/dW||_F of each weight layer against the unit, one panel per variant (Xiong et al.
    /// 2020, Fig. 3).
    WeightGrads,
    /// The last unit's last branch weight's gradient norm against the depth L, log-log, with
    /// the fitted slope per variant and Xiong et al.'s Theorem 1 dashed.
    LastWeightGrad,
    /// E||x_l||^2 / d against the unit, with Xiong et al.'s Lemma 2 bounds for Pre-LN.
    SquaredNorm,
    /// The input's gradient by path length: exact ||G_k(0)|| and Veit's sampled estimate
    /// against k, and the cumulative share.
    PathLengths,
    /// Test error with each single unit deleted, against the unit.
    LesionUnits,
    /// Test error with k random units deleted, against k (mean and range over the draws).
    LesionCount,
    /// Autocorrelation of the input gradient over the sweep, per family and depth, with white
    /// and brown noise.
    Shatter,
}

impl ChartKind {
    pub const ALL: [(&'static str, ChartKind); 20] = [
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
        ("lr_sweep", ChartKind::LrSweep),
        ("weight_inputs", ChartKind::WeightInputs),
        ("signal", ChartKind::Signal),
        ("weight_grads", ChartKind::WeightGrads),
        ("last_weight_grad", ChartKind::LastWeightGrad),
        ("squared_norm", ChartKind::SquaredNorm),
        ("path_lengths", ChartKind::PathLengths),
        ("lesion_units", ChartKind::LesionUnits),
        ("lesion_count", ChartKind::LesionCount),
        ("shatter", ChartKind::Shatter),
    ];

    /// The table (`<name>.csv` of the experiment's results) the chart is drawn from.
    /// Columns the chart reads beyond its table's required ones (`TableKind::required_columns`).
    pub fn extra_columns(self) -> Vec<crate::schema::Column> {
        match self {
            ChartKind::Verification => vec![crate::schema::col::ADDITIVE_BACKWARD_ERROR],
            // No other chart reads beyond its table.
            ChartKind::GradRatio
            | ChartKind::DirectRest
            | ChartKind::LambdaSweep
            | ChartKind::Forward
            | ChartKind::SampleBands
            | ChartKind::TrainCurves
            | ChartKind::LrSweep
            | ChartKind::GradHeatmap
            | ChartKind::GradRatioSteps
            | ChartKind::Generalisation
            | ChartKind::WeightInputs
            | ChartKind::Signal
            | ChartKind::WeightGrads
            | ChartKind::LastWeightGrad
            | ChartKind::SquaredNorm
            | ChartKind::PathLengths
            | ChartKind::LesionUnits
            | ChartKind::LesionCount
            | ChartKind::Shatter => Vec::new(),
        }
    }

    pub fn table(self) -> TableKind {
        use ChartKind::*;
        match self {
            GradRatio | DirectRest | LambdaSweep | Forward | SampleBands | Verification
            | Signal | SquaredNorm => TableKind::PROFILE,
            TrainCurves | Generalisation | LrSweep => TableKind::TRAIN,
            GradHeatmap | GradRatioSteps => TableKind::GRADS,
            WeightInputs => TableKind::SIGNAL,
            WeightGrads | LastWeightGrad => TableKind::WEIGHT_GRADS,
            PathLengths => TableKind::PATHS,
            LesionUnits | LesionCount => TableKind::LESION,
            Shatter => TableKind::SHATTER,
        }
    }

    pub fn name(self) -> &'static str {
        ChartKind::ALL.iter().find(|(_, k)| *k == self).unwrap().0
    }
}
