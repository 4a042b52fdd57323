//! Which network, as the front ends ask for it: [`NetDescription`] (defined with the builders,
//! in [`crate::net::description`], so that everything below the request layer can build from
//! it too) and what a command line and a checkpoint need of it: its architecture read from a
//! checkpoint's run configuration, adopted where the command line left the default, and the
//! trained weights loaded only into a network of the same architecture.

use std::path::Path;

use anyhow::{anyhow, Result};

use super::Given;
use crate::net::{NetChoice, Network};
use crate::train::checkpoint::RunConfig;

pub use crate::net::description::{InputSizes, NetDescription};

impl InputSizes {
    /// The sizes that fit a dataset: an MLP's input dimension is an image's pixel count, a
    /// ResNet takes the images' channels and size.
    pub fn of_data(data: &crate::data::Split) -> InputSizes {
        InputSizes::of(&crate::train::sizes_for(data, 0, 0))
    }
}

impl NetDescription {
    /// The architecture a checkpoint's run configuration records.
    pub fn of_run_config(config: &RunConfig) -> Result<NetDescription> {
        fn field<T: std::str::FromStr<Err = String>>(name: &str, s: &str) -> Result<T> {
            s.parse()
                .map_err(|e| anyhow!("--weights: the checkpoint's {name}: {e}"))
        }
        Ok(NetDescription {
            net: field("net", &config.net)?,
            units: config.units,
            width: config.width,
            placement: field("placement", &config.placement)?,
            shortcut: field("shortcut", &config.shortcut)?,
            projection: match config.projection.as_str() {
                "" => None,
                p => Some(field("projection", p)?),
            },
            norm: field("norm", &config.norm)?,
            init: field("init", &config.init)?,
        })
    }

    /// Loads the trained weights of the checkpoint at `path` into `net`, built from `self`:
    /// a checkpoint of another architecture is refused in one line naming each setting and
    /// both values. `data`: the `--data` the network was sized for, if given.
    pub fn load_weights(
        &self,
        path: &Path,
        net: &mut Network,
        data: Option<&str>,
    ) -> Result<RunConfig> {
        crate::train::checkpoint::load_weights(
            path,
            net,
            |config| Ok(NetDescription::of_run_config(config)?.differences(self)),
            data,
        )
    }

    /// With a checkpoint's configuration: every setting not [`Given::set`] (against
    /// `defaults`, the command's) takes the checkpoint's value; one set to a third value is a
    /// conflict, `--flag: checkpoint A, asked B`. The units and width are adopted for an MLP;
    /// a ResNet's projection left to its convention takes the checkpoint's.
    pub fn adopt_checkpoint(
        &self,
        config: &RunConfig,
        given: &Given,
        defaults: &NetDescription,
    ) -> Result<(NetDescription, Vec<String>)> {
        let mut out = self.clone();
        let mut conflicts = Vec::new();
        fn adopt<T: PartialEq + Clone + std::fmt::Display>(
            name: &str,
            now: &mut T,
            given: bool,
            saved: Result<T, String>,
            conflicts: &mut Vec<String>,
        ) -> Result<()> {
            let saved = saved.map_err(|e| anyhow!("--weights: the checkpoint's {name}: {e}"))?;
            if !given {
                *now = saved;
            } else if *now != saved {
                conflicts.push(format!("--{name}: checkpoint {saved}, asked {now}"));
            }
            Ok(())
        }
        // Without a command line (the library, Python) nothing counts as given: a value other
        // than the default does.
        let set = |id: &str, differs: bool| given.set(id, differs);
        let d = defaults;
        adopt(
            "net",
            &mut out.net,
            set("net", self.net != d.net),
            config.net.parse(),
            &mut conflicts,
        )?;
        adopt(
            "placement",
            &mut out.placement,
            set("placement", self.placement != d.placement),
            config.placement.parse(),
            &mut conflicts,
        )?;
        adopt(
            "shortcut",
            &mut out.shortcut,
            set("shortcut", self.shortcut != d.shortcut),
            config.shortcut.parse(),
            &mut conflicts,
        )?;
        adopt(
            "norm",
            &mut out.norm,
            set("norm", self.norm != d.norm),
            config.norm.parse(),
            &mut conflicts,
        )?;
        adopt(
            "init",
            &mut out.init,
            set("init", self.init != d.init),
            config.init.parse(),
            &mut conflicts,
        )?;
        if out.net == NetChoice::Mlp {
            adopt(
                "units",
                &mut out.units,
                set("units", self.units != d.units),
                Ok(config.units),
                &mut conflicts,
            )?;
            adopt(
                "width",
                &mut out.width,
                set("width", self.width != d.width),
                Ok(config.width),
                &mut conflicts,
            )?;
        } else if out.projection.is_none() && !config.projection.is_empty() {
            out.projection = Some(
                config
                    .projection
                    .parse()
                    .map_err(|e| anyhow!("--weights: the checkpoint's projection: {e}"))?,
            );
        }
        Ok((out, conflicts))
    }
}
