//! Every table resprop writes, its columns, in one place. The CSV writers, the experiment
//! runner, the checkpoints' history arrays and the charts name a column through the
//! constants of [`col`], and a row type says which [`Schema`] it fills ([`Row`]); a column
//! renamed here is renamed everywhere, and one spelled wrong does not compile. What each
//! column means, with units and formulas, is in `docs/formats.md`.

use anyhow::Result;

/// A column of a table, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Column(&'static str);

impl Column {
    pub const fn name(self) -> &'static str {
        self.0
    }
}

impl std::fmt::Display for Column {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// The columns, one constant each. A name shared by two tables means the same quantity in
/// both (`grad_norm` is `||dE/dx_l||` in a profile and in training's gradient record).
pub mod col {
    use super::Column;

    macro_rules! columns {
        ($($(#[$doc:meta])* $id:ident = $name:literal;)*) => {
            $($(#[$doc])* pub const $id: Column = Column($name);)*
            /// Every column, in the order declared.
            pub const ALL: &[Column] = &[$($id),*];
        };
    }

    columns! {
        // Keys: which cell of which experiment a row belongs to.
        EXPERIMENT = "experiment";
        CELL = "cell";
        NET = "net";
        PLACEMENT = "placement";
        SHORTCUT = "shortcut";
        /// What filled the normalisation slots (batch, layer, none).
        NORM = "norm";
        /// How the weights started (he, fixup).
        INIT = "init";
        /// Training cells: the warm-up's length in steps, when the spec sets it.
        WARMUP = "warmup";
        /// Training cells: the base learning rate, when the grid sweeps it (`lrs`).
        BASE_LR = "base_lr";
        /// Training cells: the recipe, when the grid names it (common, fixup, rezero,
        /// skipinit).
        RECIPE = "recipe";
        PRECISION = "precision";
        PROJECTION = "projection";
        /// Residual units of the network (MLP depth; a ResNet's count).
        UNITS = "units";
        REPLICATE = "replicate";
        /// An imported network's unit, by its module's name (`layer1.0`; `top`: the head's
        /// input).
        NAME = "name";

        // The per-unit record of a gradient profile.
        /// `l`, the unit whose input `x_l` the row describes (row `L`: the head's input).
        UNIT = "unit";
        STAGE = "stage";
        /// The unit where the row's direct part starts (L for the MLP).
        DIRECT_TOP = "direct_top";
        SHAPE_CHANGE = "shape_change";
        ACT_NORM = "act_norm";
        BRANCH_NORM = "branch_norm";
        GRAD_NORM = "grad_norm";
        DIRECT_NORM = "direct_norm";
        REST_NORM = "rest_norm";
        GRAD_RATIO = "grad_ratio";
        DIRECT_RATIO = "direct_ratio";
        PREDICTED_DIRECT_RATIO = "predicted_direct_ratio";
        COS_TOP = "cos_top";
        SAMPLE_RATIO_MIN = "sample_ratio_min";
        SAMPLE_RATIO_MEDIAN = "sample_ratio_median";
        SAMPLE_RATIO_MAX = "sample_ratio_max";
        /// Signal propagation: the average over channels of the squared channel mean of x_l.
        ACT_MEAN_SQ = "act_mean_sq";
        /// The average channel variance of x_l.
        ACT_VAR = "act_var";
        /// The average channel variance of the branch term F'(x_l).
        BRANCH_VAR = "branch_var";

        // Weight gradients, per weight layer.
        /// `||dE/dW||_F` of one weight layer at the profiled batch.
        WEIGHT_GRAD_NORM = "weight_grad_norm";

        // The gradient by path length (`resprop paths`), per (unit input, path length).
        /// Path length: how many branches a path takes above the unit.
        K = "k";
        /// `C(n, k)`: how many paths of that length (n = the units above).
        PATHS = "paths";
        /// `||G_k(l)||`, the gradient all paths of length k carry to x_l.
        EXACT_NORM = "exact_norm";
        /// `||G_k(l)|| / sum_j ||G_j(l)||`.
        EXACT_SHARE = "exact_share";
        /// Veit et al.'s estimate at the input: mean norm over sampled single paths.
        SAMPLED_PATH_NORM = "sampled_path_norm";
        /// `C(n, k)` times it.
        SAMPLED_TOTAL = "sampled_total";

        // Lesions and shattered gradients.
        /// What a lesion deletes: none, single (one unit), random (k drawn units).
        KIND = "kind";
        DRAW = "draw";
        /// The deleted units, space-separated.
        DELETED = "deleted";
        /// Lag (in sweep points) of an autocorrelation.
        LAG = "lag";
        AUTOCORRELATION = "autocorrelation";

        // A verification experiment's checks, per unit.
        FORWARD_SUM_ERROR = "forward_sum_error";
        ADDITIVE_BACKWARD_ERROR = "additive_backward_error";
        PROD_LAMBDA_ERROR = "prod_lambda_error";

        // Training, per step.
        STEP = "step";
        EPOCH = "epoch";
        LR = "lr";
        TRAIN_LOSS = "train_loss";
        TRAIN_ERROR = "train_error";
        TEST_LOSS = "test_loss";
        TEST_ERROR = "test_error";
        TRAIN_EVAL_LOSS = "train_eval_loss";
        TRAIN_EVAL_ERROR = "train_eval_error";

        // The weight layers' input statistics of a training run.
        /// `init` or `trained`.
        WHEN = "when";
        LAYER = "layer";
        MEAN = "mean";
        VAR = "var";
    }
}

/// What a column's cells hold, as a reader checks them (`plot::table::Table::read`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cells {
    /// Names, labels, lists: any text.
    Text,
    /// A float as resprop writes it (`1.5e-3`, `inf`, `-inf`, `NaN`), or empty (not measured).
    Number,
    /// A count or index: a whole number of 0 or more, as the readers parse it (`usize`).
    Whole,
    /// As `Whole`, or empty (the warm-up, when the spec leaves it unset).
    WholeOrEmpty,
}

impl Column {
    /// The column called `name`, if resprop writes one.
    pub fn named(name: &str) -> Option<Column> {
        col::ALL.iter().copied().find(|c| c.0 == name)
    }

    /// What the column's cells hold: every column is a number unless listed here.
    pub fn cells(self) -> Cells {
        use col::*;
        match self {
            EXPERIMENT | NET | PLACEMENT | SHORTCUT | NAME | NORM | INIT | RECIPE | PRECISION
            | PROJECTION | KIND | DELETED | WHEN | LAYER => Cells::Text,
            CELL | UNITS | REPLICATE | UNIT | STAGE | DIRECT_TOP | SHAPE_CHANGE | K | DRAW
            | LAG | STEP | EPOCH => Cells::Whole,
            WARMUP => Cells::WholeOrEmpty,
            _ => Cells::Number,
        }
    }
}

/// A table's name and its columns, in order.
#[derive(Debug)]
pub struct Schema {
    pub name: &'static str,
    pub columns: &'static [Column],
}

impl Schema {
    pub fn names(&self) -> Vec<&'static str> {
        self.columns.iter().map(|c| c.name()).collect()
    }

    pub fn len(&self) -> usize {
        self.columns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// Where `column` sits in a row of this table.
    pub fn index(&self, column: Column) -> Option<usize> {
        self.columns.iter().position(|&c| c == column)
    }
}

use col::*;

/// The key columns an experiment's tables start with.
pub const KEYS: Schema = Schema {
    name: "keys",
    columns: &[
        EXPERIMENT, CELL, NET, PLACEMENT, SHORTCUT, NORM, INIT, WARMUP, BASE_LR, RECIPE,
        PROJECTION, UNITS, REPLICATE,
    ],
};

/// One row per unit input `x_l` of a gradient profile.
pub const PROFILE: Schema = Schema {
    name: "profile",
    columns: &[
        UNIT,
        STAGE,
        DIRECT_TOP,
        SHAPE_CHANGE,
        ACT_NORM,
        BRANCH_NORM,
        GRAD_NORM,
        DIRECT_NORM,
        REST_NORM,
        GRAD_RATIO,
        DIRECT_RATIO,
        PREDICTED_DIRECT_RATIO,
        COS_TOP,
        SAMPLE_RATIO_MIN,
        SAMPLE_RATIO_MEDIAN,
        SAMPLE_RATIO_MAX,
        ACT_MEAN_SQ,
        ACT_VAR,
        BRANCH_VAR,
    ],
};

/// One row per weight layer of every unit (`layer`: `w1`, `w2`, `w3`, `proj`, `gate`).
pub const WEIGHT_GRADS: Schema = Schema {
    name: "weight_grads",
    columns: &[UNIT, LAYER, WEIGHT_GRAD_NORM],
};

/// The checks a verification experiment adds to each profile row.
pub const VERIFICATION: Schema = Schema {
    name: "verification",
    columns: &[
        FORWARD_SUM_ERROR,
        ADDITIVE_BACKWARD_ERROR,
        PROD_LAMBDA_ERROR,
    ],
};

/// One row per (unit input, path length) of the path decomposition.
pub const PATHS_TABLE: Schema = Schema {
    name: "paths",
    columns: &[
        UNIT,
        K,
        PATHS,
        EXACT_NORM,
        EXACT_SHARE,
        SAMPLED_PATH_NORM,
        SAMPLED_TOTAL,
    ],
};

/// One row per lesion of a trained network.
pub const LESIONS: Schema = Schema {
    name: "lesion",
    columns: &[KIND, K, DRAW, DELETED, TEST_ERROR],
};

/// One row per lag of a gradient series' autocorrelation.
pub const SHATTER: Schema = Schema {
    name: "shatter",
    columns: &[LAG, AUTOCORRELATION],
};

/// One row per training step.
pub const STEPS: Schema = Schema {
    name: "train",
    columns: &[
        STEP,
        EPOCH,
        LR,
        TRAIN_LOSS,
        TRAIN_ERROR,
        TEST_LOSS,
        TEST_ERROR,
        TRAIN_EVAL_LOSS,
        TRAIN_EVAL_ERROR,
    ],
};

/// One row per (recorded step, unit) of a training run.
pub const GRADS: Schema = Schema {
    name: "grads",
    columns: &[STEP, UNIT, GRAD_NORM, GRAD_RATIO, DIRECT_RATIO],
};

/// One row per weight layer, at initialisation and after training.
pub const SIGNAL: Schema = Schema {
    name: "signal",
    columns: &[WHEN, UNIT, LAYER, MEAN, VAR],
};

/// A row of a table: which schema it fills, and its fields in that schema's order.
pub trait Row {
    const SCHEMA: &'static Schema;
    fn fields(&self) -> Vec<String>;
}

/// A row whose every field is a number, stored as such in checkpoints (`NaN` for an empty
/// field); `from_numbers` reads back what `numbers` wrote.
pub trait NumericRow: Row + Sized {
    fn numbers(&self) -> Vec<f64>;
    fn from_numbers(v: &[f64]) -> Self;
}

/// `rows` as CSV bytes: the schema's header, then one line per row, each followed by the
/// `extra` columns (named in the header after the schema's columns), which hold one field
/// per row.
pub fn to_csv<R: Row>(rows: &[R], extra: &[(Column, Vec<String>)]) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(
        R::SCHEMA
            .names()
            .into_iter()
            .chain(extra.iter().map(|(c, _)| c.name())),
    )?;
    for (c, v) in extra {
        anyhow::ensure!(
            v.len() == rows.len(),
            "column {c}: {} fields for {} rows",
            v.len(),
            rows.len()
        );
    }
    for (i, r) in rows.iter().enumerate() {
        let fields = r.fields();
        debug_assert_eq!(fields.len(), R::SCHEMA.len(), "{}", R::SCHEMA.name);
        w.write_record(
            fields
                .iter()
                .map(String::as_str)
                .chain(extra.iter().map(|(_, v)| v[i].as_str())),
        )?;
    }
    w.into_inner().map_err(|e| anyhow::anyhow!("csv: {e}"))
}

// ---------------------------------------------------------------------------------------
// The tables of an experiment's results, by kind: each task writes some of them, each chart
// is drawn from one.

/// What each profile cell of an experiment records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Measure {
    /// The per-unit gradient record.
    Profile,
    /// The record plus the per-unit errors of the formula checks (O(L^2) VJPs per cell).
    Verification,
}

/// One of the tables a task writes.
#[derive(Debug, Clone, Copy)]
pub struct TableKind {
    /// File name stem: `<out>/<experiment>/<name>.csv`, `<out>/cells/<fp>.<name>.csv`.
    pub name: &'static str,
    /// The table's own columns (after the keys) when the cells measure this.
    columns: fn(Measure) -> Vec<Column>,
}

impl TableKind {
    pub fn columns(&self, measure: Measure) -> Vec<Column> {
        (self.columns)(measure)
    }

    /// The columns every file of this table holds, whatever the spec: the keys and the
    /// table's own (a profile's verification columns only with `measure = "verification"`).
    pub fn required_columns(&self) -> Vec<Column> {
        let mut c = KEYS.columns.to_vec();
        c.extend((self.columns)(Measure::Profile));
        c
    }
}

fn profile_columns(measure: Measure) -> Vec<Column> {
    let mut h = PROFILE.columns.to_vec();
    if measure == Measure::Verification {
        h.extend(VERIFICATION.columns);
    }
    h
}

impl TableKind {
    pub const PROFILE: TableKind = TableKind {
        name: "profile",
        columns: profile_columns,
    };
    pub const TRAIN: TableKind = TableKind {
        name: "train",
        columns: |_| STEPS.columns.to_vec(),
    };
    pub const GRADS: TableKind = TableKind {
        name: "grads",
        columns: |_| GRADS.columns.to_vec(),
    };
    pub const WEIGHT_GRADS: TableKind = TableKind {
        name: "weight_grads",
        columns: |_| WEIGHT_GRADS.columns.to_vec(),
    };
    pub const PATHS: TableKind = TableKind {
        name: "paths",
        // `when` (init, trained), then the columns of `resprop paths --csv`.
        columns: |_| {
            let mut c = vec![col::WHEN];
            c.extend(PATHS_TABLE.columns);
            c
        },
    };
    pub const LESION: TableKind = TableKind {
        name: "lesion",
        columns: |_| LESIONS.columns.to_vec(),
    };
    pub const SHATTER: TableKind = TableKind {
        name: "shatter",
        columns: |_| SHATTER.columns.to_vec(),
    };
    pub const SIGNAL: TableKind = TableKind {
        name: "signal",
        columns: |_| SIGNAL.columns.to_vec(),
    };
}

/// Two kinds are one table when they name one file.
impl PartialEq for TableKind {
    fn eq(&self, other: &TableKind) -> bool {
        self.name == other.name
    }
}

impl Eq for TableKind {}

impl TableKind {
    /// Every table an experiment can write.
    pub const ALL: [TableKind; 8] = [
        TableKind::PROFILE,
        TableKind::WEIGHT_GRADS,
        TableKind::TRAIN,
        TableKind::GRADS,
        TableKind::SIGNAL,
        TableKind::PATHS,
        TableKind::LESION,
        TableKind::SHATTER,
    ];
}

/// The longest experiment name.
pub const MAX_NAME_BYTES: usize = 200;

/// An experiment's name names its output folder and its charts' files: letters, digits, '-'
/// and '_' only (no path), and not `cells`, the folder of the stored cells.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "'{name}' must be non-empty letters, digits, '-' or '_' (it names the output folder and the charts)"
        ));
    }
    if name == "cells" {
        return Err("'cells' names the folder of the stored cells; choose another name".into());
    }
    // A chart's file is `<name>_<chart>.png` (charts' names have up to 16 bytes), and a file
    // name may have 255 bytes.
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "'{}...' has {} bytes, more than the {MAX_NAME_BYTES} an experiment's name may have (it names files, and a file name has at most 255 bytes)",
            &name[..20],
            name.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No table names a column twice; the keys and a table's own columns never collide
    /// (an experiment's tables are the keys followed by the table).
    #[test]
    fn columns_are_unique_within_each_table() {
        for s in [
            &PROFILE,
            &VERIFICATION,
            &STEPS,
            &GRADS,
            &SIGNAL,
            &WEIGHT_GRADS,
        ] {
            let mut names = KEYS.names();
            names.extend(s.names());
            let mut sorted = names.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), names.len(), "{}: {names:?}", s.name);
        }
        assert_eq!(STEPS.index(TEST_ERROR), Some(6));
        assert_eq!(GRADS.index(TEST_ERROR), None);
    }
}
