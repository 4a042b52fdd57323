//! The tidy CSV read back: rows of strings with typed column access.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

use crate::schema::col::*;
use crate::schema::{Cells, Column};

/// One variant's rows, grouped by unit (one row per replicate).
pub type UnitRows<'a> = BTreeMap<usize, Vec<&'a Vec<String>>>;

#[derive(Debug, Clone)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// The key columns that label a variant (see [`Table::variant`]), found once.
    varying: Vec<Column>,
}

/// Whether `field` is what a column of `kind` holds; `Err` says what was expected.
fn check_cell(field: &str, kind: Cells) -> Result<(), &'static str> {
    let whole = |f: &str| f.bytes().all(|b| b.is_ascii_digit()) && f.parse::<usize>().is_ok();
    let ok = match kind {
        Cells::Text => true,
        // What `parse_f64` reads: empty, or a float in Rust's syntax (`inf`, `NaN` included).
        Cells::Number => field.is_empty() || field.parse::<f64>().is_ok(),
        Cells::Whole => whole(field),
        Cells::WholeOrEmpty => field.is_empty() || whole(field),
    };
    if ok {
        Ok(())
    } else {
        Err(match kind {
            Cells::Number => "a number (such as 1.5e-3, inf or NaN) or empty",
            _ => "a whole number of 0 or more",
        })
    }
}

/// A float field; empty is `None`, `inf`/`NaN` parse as such.
pub fn parse_f64(s: &str) -> Option<f64> {
    if s.is_empty() {
        None
    } else {
        s.parse().ok()
    }
}

impl Table {
    pub fn read(path: &Path) -> Result<Table> {
        let bytes = crate::input::read(path, crate::input::MAX_TABLE_BYTES, "CSV")?;
        let mut r = csv::Reader::from_reader(bytes.as_slice());
        let header: Vec<String> = r
            .headers()
            .with_context(|| format!("malformed CSV '{}'", path.display()))?
            .iter()
            .map(String::from)
            .collect();
        // Every cell of a column resprop writes is checked against what the column holds
        // (`Column::cells`): text in a number's column is refused naming the file, the line
        // and the column, never read as "no value" and left out of a chart.
        let kinds: Vec<Option<Cells>> = header
            .iter()
            .map(|h| Column::named(h).map(Column::cells))
            .collect();
        let mut rows = Vec::new();
        for rec in r.records() {
            let rec = rec.with_context(|| format!("malformed CSV '{}'", path.display()))?;
            let line = rec.position().map_or(0, |p| p.line());
            for (field, (name, kind)) in rec.iter().zip(header.iter().zip(&kinds)) {
                if let Some(kind) = kind {
                    check_cell(field, *kind).map_err(|expected| {
                        anyhow!(
                            "'{}' line {line}, column '{name}': '{}' is not {expected}",
                            path.display(),
                            field.escape_debug()
                        )
                    })?;
                }
            }
            rows.push(rec.iter().map(String::from).collect());
        }
        let t = Table::new(header, rows);
        for column in [EXPERIMENT, CELL, PLACEMENT, SHORTCUT, NET, REPLICATE] {
            t.col(column).map_err(|e| {
                anyhow!("'{}' is not a resprop experiment CSV: {e}", path.display())
            })?;
        }
        if t.rows.is_empty() {
            bail!("'{}' has no rows", path.display());
        }
        // The name becomes the charts' file names: it must be one name, and no path.
        let name = t.experiment();
        crate::schema::check_name(name)
            .map_err(|e| anyhow!("'{}': its experiment column holds {e}", path.display()))?;
        if let Some(other) = t
            .rows
            .iter()
            .map(|r| t.get(r, EXPERIMENT))
            .find(|n| *n != name)
        {
            bail!(
                "'{}' holds two experiments ('{name}' and '{other}'): plot draws one",
                path.display()
            );
        }
        Ok(t)
    }

    /// A table from its header and rows.
    pub fn new(header: Vec<String>, rows: Vec<Vec<String>>) -> Table {
        let mut t = Table {
            header,
            rows,
            varying: Vec::new(),
        };
        t.varying = t.varying_columns();
        t
    }

    pub fn col(&self, name: Column) -> Result<usize> {
        self.header
            .iter()
            .position(|h| h == name.name())
            .ok_or_else(|| anyhow!("column '{name}' missing"))
    }

    pub fn has(&self, name: Column) -> bool {
        self.header.iter().any(|h| h == name.name())
    }

    pub fn get<'a>(&self, row: &'a [String], name: Column) -> &'a str {
        &row[self.col(name).expect("column checked by caller")]
    }

    pub fn f(&self, row: &[String], name: Column) -> Option<f64> {
        parse_f64(self.get(row, name))
    }

    /// The experiment's name (first row).
    pub fn experiment(&self) -> &str {
        self.get(&self.rows[0], EXPERIMENT)
    }

    /// The key columns that differ across the table (net, placement, shortcut, projection,
    /// units), in that order. The projection counts only where it varies on its own: a grid of
    /// placements that each get their own convention is labelled by the placement alone.
    fn varying_columns(&self) -> Vec<Column> {
        if self.rows.is_empty() {
            return Vec::new();
        }
        let varies = |c: Column| {
            self.has(c)
                && self
                    .rows
                    .iter()
                    .any(|r| self.get(r, c) != self.get(&self.rows[0], c))
        };
        let others = |r: &[String]| -> Vec<String> {
            [
                NET, PLACEMENT, SHORTCUT, NORM, INIT, WARMUP, BASE_LR, RECIPE, PRECISION, UNITS,
            ]
            .into_iter()
            .filter(|&c| self.has(c))
            .map(|c| self.get(r, c).to_string())
            .collect()
        };
        let projection_on_its_own = varies(PROJECTION) && {
            let mut seen: BTreeMap<Vec<String>, &str> = BTreeMap::new();
            self.rows.iter().any(|r| {
                let p = self.get(r, PROJECTION);
                *seen.entry(others(r)).or_insert(p) != p
            })
        };
        // A descendant's recipe sets its warm-up: where the warm-up varies only with the
        // recipe, the recipe names it.
        let warmup_by_recipe = varies(RECIPE) && {
            let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
            self.rows.iter().all(|r| {
                let (recipe, warmup) = (self.get(r, RECIPE), self.get(r, WARMUP));
                *seen.entry(recipe).or_insert(warmup) == warmup
            })
        };
        [
            NET, PLACEMENT, SHORTCUT, NORM, INIT, WARMUP, BASE_LR, RECIPE, PRECISION, PROJECTION,
            UNITS,
        ]
        .into_iter()
        .filter(|&c| {
            if c == PROJECTION {
                projection_on_its_own
            } else if c == WARMUP && warmup_by_recipe {
                false
            } else {
                varies(c)
            }
        })
        .collect()
    }

    /// Variant label of a row: its values in the key columns that differ across the table.
    pub fn variant(&self, row: &[String]) -> String {
        self.variant_except(row, None)
    }

    /// As [`Table::variant`], leaving one key column out of the label (e.g. the depth, for a
    /// chart whose x axis is the depth).
    pub fn variant_except(&self, row: &[String], skip: Option<Column>) -> String {
        let varying: Vec<Column> = self
            .varying
            .iter()
            .copied()
            .filter(|&c| Some(c) != skip)
            .collect();
        if varying.is_empty() {
            let (placement, shortcut) = (self.get(row, PLACEMENT), self.get(row, SHORTCUT));
            // An imported model's rows name it by its file alone.
            if placement.is_empty() && shortcut.is_empty() {
                return self.get(row, NET).to_string();
            }
            return format!("{placement} {shortcut}");
        }
        varying
            .iter()
            .map(|&c| {
                if c == UNITS {
                    format!("L={}", self.get(row, c))
                } else if c == NORM {
                    format!("norm {}", self.get(row, c))
                } else if c == INIT {
                    format!("init {}", self.get(row, c))
                } else if c == WARMUP {
                    match self.get(row, c) {
                        "" => "default warm-up".to_string(),
                        w => format!("warm-up {w}"),
                    }
                } else if c == BASE_LR {
                    format!("lr {}", self.get(row, c))
                } else if c == RECIPE {
                    match self.get(row, c) {
                        "" => "no recipe set".to_string(),
                        r => format!("{r} recipe"),
                    }
                } else if c == PROJECTION {
                    format!("projection {}", self.get(row, c))
                } else {
                    self.get(row, c).to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Variants in first-appearance order, each with its rows grouped by unit (one row per
    /// replicate).
    pub fn by_variant(&self) -> Vec<(String, UnitRows<'_>)> {
        self.by_variant_on(UNIT)
    }

    /// Variants in first-appearance order, each with its rows grouped by an integer column
    /// (`unit`, `step`, `epoch`; 0 where the column is missing).
    pub fn by_variant_on(&self, column: Column) -> Vec<(String, UnitRows<'_>)> {
        let key_col = self.col(column).ok();
        let mut order: Vec<String> = Vec::new();
        let mut groups: BTreeMap<String, UnitRows<'_>> = BTreeMap::new();
        for row in &self.rows {
            let v = self.variant(row);
            if !groups.contains_key(&v) {
                order.push(v.clone());
            }
            let key: usize = key_col.and_then(|c| row[c].parse().ok()).unwrap_or(0);
            groups
                .entry(v)
                .or_default()
                .entry(key)
                .or_default()
                .push(row);
        }
        order
            .into_iter()
            .map(|v| {
                let g = groups.remove(&v).unwrap();
                (v, g)
            })
            .collect()
    }
}

/// Geometric mean over replicates; `NaN` if any value is non-finite, `0` if any is 0, and the
/// least value if any is negative (which has no geometric mean: the group then shows a value
/// that no log axis draws, and the chart's note counts it as negative, not as 0).
pub fn geo_mean(values: &[f64]) -> f64 {
    if values.iter().any(|v| !v.is_finite()) {
        return f64::NAN;
    }
    if values.iter().any(|&v| v < 0.0) {
        return values.iter().copied().fold(f64::INFINITY, f64::min);
    }
    if values.contains(&0.0) {
        return 0.0;
    }
    let g = (values.iter().map(|v| v.ln()).sum::<f64>() / values.len() as f64).exp();
    // The mean of the logs is at most the largest log: only rounding can carry exp() past
    // f64::MAX, and the mean of finite values is then the largest.
    if g.is_finite() {
        g
    } else {
        values.iter().copied().fold(0.0, f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::{geo_mean, Table};

    #[test]
    fn a_warm_up_that_the_recipe_sets_is_named_by_the_recipe() {
        let header: Vec<String> = [
            "experiment",
            "net",
            "placement",
            "shortcut",
            "warmup",
            "recipe",
        ]
        .map(String::from)
        .to_vec();
        let row = |shortcut: &str, warmup: &str, recipe: &str| -> Vec<String> {
            ["e", "mlp", "original", shortcut, warmup, recipe]
                .map(String::from)
                .to_vec()
        };
        let t = Table::new(
            header.clone(),
            vec![row("identity", "", "common"), row("identity", "0", "fixup")],
        );
        assert_eq!(t.variant(&t.rows[1]), "fixup recipe");
        // A warm-up swept apart from the recipe keeps its label; the default one says so.
        let t = Table::new(
            header,
            vec![
                row("identity", "", "common"),
                row("identity", "5", "common"),
                row("identity", "0", "fixup"),
            ],
        );
        assert_eq!(t.variant(&t.rows[0]), "default warm-up common recipe");
        assert_eq!(t.variant(&t.rows[1]), "warm-up 5 common recipe");
    }

    #[test]
    fn the_geometric_mean_keeps_zero_and_negative_apart() {
        assert!((geo_mean(&[1.0, 4.0]) - 2.0).abs() < 1e-15);
        assert_eq!(geo_mean(&[0.0, 4.0]), 0.0);
        // A negative value has no geometric mean: the least value, not 0, so a chart's note
        // counts it as negative.
        assert_eq!(geo_mean(&[-3.5, 4.0, 0.0]), -3.5);
        assert!(geo_mean(&[f64::NAN, 1.0]).is_nan());
        assert!(geo_mean(&[f64::MAX, f64::MAX]).is_finite());
    }
}
