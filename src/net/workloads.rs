//! The benchmark workloads: fixed networks and batches that `resprop bench` times and
//! `benches/compare.py` runs beside PyTorch. Full pre-activation units, identity shortcuts,
//! He init, BN in training mode, Gaussian inputs, 10 classes, f64.

use anyhow::{bail, Result};

use super::resnet::parse_resnet_name;
use super::{build_mlp, build_resnet, MlpConfig, Network, ResnetConfig};
use crate::unit::{Placement, Projection, ShortcutKind};

pub struct Workload {
    pub id: &'static str,
    pub description: &'static str,
    pub net: Network,
    pub batch: usize,
}

/// What a workload is, without its network.
pub struct About {
    pub id: &'static str,
    pub description: &'static str,
    pub batch: usize,
}

impl Workload {
    pub fn about(&self) -> About {
        About {
            id: self.id,
            description: self.description,
            batch: self.batch,
        }
    }
}

/// The benchmark workloads: full pre-activation units, identity shortcuts, He init,
/// BN in training mode, Gaussian inputs, 10 classes, f64.
pub fn workload(id: &str) -> Result<Workload> {
    let mlp = |units| MlpConfig {
        units,
        width: 256,
        input_dim: 64,
        classes: 10,
        placement: Placement::FullPreact,
        shortcut: ShortcutKind::Identity,
        norm: crate::layers::NormKind::Batch,
        init: crate::net::Init::He,
        seed: 0,
    };
    let resnet_on = |name: &str, image_size: usize, input_channels: usize| -> Result<Network> {
        let (units_per_stage, block) = parse_resnet_name(name).map_err(anyhow::Error::msg)?;
        build_resnet(&ResnetConfig {
            name: name.to_string(),
            units_per_stage,
            block,
            image_size,
            input_channels,
            classes: 10,
            placement: Placement::FullPreact,
            shortcut: ShortcutKind::Identity,
            projection: Projection::Plain,
            norm: crate::layers::NormKind::Batch,
            init: crate::net::Init::He,
            seed: 0,
        })
    };
    let resnet = |name: &str| resnet_on(name, 32, 3);
    let (id, description, net, batch) = match id.to_ascii_uppercase().as_str() {
        "W1" => (
            "W1",
            "residual MLP, 100 units, width 256",
            build_mlp(&mlp(100))?,
            128,
        ),
        "W1B" => (
            "W1b",
            "residual MLP, 1000 units, width 256",
            build_mlp(&mlp(1000))?,
            128,
        ),
        "W2" => ("W2", "CIFAR ResNet-110, 32x32x3", resnet("resnet110")?, 32),
        "W3" => ("W3", "CIFAR ResNet-164, 32x32x3", resnet("resnet164")?, 16),
        "W4" => (
            "W4",
            "CIFAR ResNet-1001, 32x32x3",
            resnet("resnet1001")?,
            16,
        ),
        "D1" => (
            "D1",
            "ResNet-110 on the digits' 1x8x8 images (the training experiments' step)",
            resnet_on("resnet110", 8, 1)?,
            64,
        ),
        "D2" => (
            "D2",
            "ResNet-164 on the digits' 1x8x8 images (the Fig. 1 experiment's step)",
            resnet_on("resnet164", 8, 1)?,
            64,
        ),
        _ => bail!("unknown workload '{id}' (available: W1, W1b, W2, W3, W4, D1, D2)"),
    };
    Ok(Workload {
        id,
        description,
        net,
        batch,
    })
}
