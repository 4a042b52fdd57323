//! The train job: a network trained with SGD or Adam on real data, recording losses, errors
//! and per-unit gradients (`resprop train`, Python's `train`); with `--checkpoint`, the
//! training state saved after every epoch, and the request it was trained from.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;

use crate::net::NetChoice;
use crate::train::{checkpoint, train_in, History, Resume, TrainConfig};

#[derive(Debug, Clone, Args, Serialize)]
#[command(
    mut_arg("net", |a| {
        a.default_value("resnet:2:basic").help(
            "Network: mlp (sized by --units, --width) or a ResNet (resnet110, resnet:8:basic, ...), \
             built for the data's image size and channels",
        )
    }),
    mut_arg("units", |a| a.default_value("8")),
    mut_arg("placement", |a| a.default_value("full-preact"))
)]
pub struct TrainJob {
    // The network's architecture: --net, --units, --width, --placement, --shortcut,
    // --projection, --norm, --init (the analysis commands' flags, with train's defaults:
    // resnet:2:basic, 8 units, full-preact).
    #[command(flatten)]
    pub arch: crate::jobs::NetDescription,
    /// `digits` (the bundled UCI handwritten digits, 8x8), `fashion-mnist[:DIR]` and
    /// `mnist:DIR` (28x28, IDX files), `cifar10:DIR` (the binary version) or `npz:FILE` (your
    /// arrays: x, y and optionally x_test, y_test); `resprop data` lists them.
    #[arg(long, default_value = "digits", value_parser = |s: &str| s.parse::<crate::data::DataSpec>())]
    #[serde(serialize_with = "crate::util::serialize_display")]
    pub data: crate::data::DataSpec,
    #[command(flatten)]
    #[serde(flatten)]
    pub subsets: crate::data::Subsets,
    /// Passes over the training split.
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Mini-batch size.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Base learning rate (a tenth of it during warm-up; divided by 10 at 50% and 75% of the
    /// steps, the paper's 32k/48k of 64k).
    #[arg(long, default_value_t = 0.1, allow_hyphen_values = true)]
    pub lr: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9, allow_hyphen_values = true)]
    pub momentum: f64,
    /// sgd (with --momentum, L2 weight decay: the paper's) or adam (bias-corrected, betas
    /// 0.9 and 0.999, eps 1e-8, as PyTorch; weight decay per --weight-decay-mode).
    #[arg(long, default_value = "sgd", value_parser = |s: &str| s.parse::<crate::train::OptimizerKind>())]
    #[serde(serialize_with = "crate::util::serialize_display")]
    pub optimizer: crate::train::OptimizerKind,
    /// Warm-up steps (0: none; at most the run's steps). SGD runs them at a tenth of the rate
    /// (the paper's); Adam ramps the rate up linearly, (step + 1) / N of it (the
    /// Transformer's). Default: SGD, the paper's rule (a tenth until a batch's training error
    /// is below 80%, and at least 400/64k of the run); Adam, no warm-up.
    #[arg(long, value_name = "N")]
    pub warmup_steps: Option<usize>,
    /// common (the flags above: the paper's recipe by default), or a descendant's own, as its
    /// authors' code trains it: fixup (init fixup: no warm-up, the scalar biases, multipliers
    /// and the classifier's bias at a tenth of the rate) or rezero (an alpha:A or rezero
    /// shortcut: no warm-up). SGD only; sets the warm-up, so not with --warmup-steps.
    #[arg(long, default_value = "common", value_parser = |s: &str| s.parse::<crate::train::Recipe>())]
    #[serde(serialize_with = "crate::util::serialize_display")]
    pub recipe: crate::train::Recipe,
    /// Weight decay, 0 or more, with --lr x it below 1 (a step shrinks the weights by that
    /// fraction of themselves).
    #[arg(long, default_value_t = 1e-4, allow_hyphen_values = true)]
    pub weight_decay: f64,
    /// Adam's weight decay: decoupled (the weights shrink by lr x decay each step, AdamW) or
    /// l2 (decay x w added to the gradient, PyTorch's Adam). SGD always adds it to the gradient.
    #[arg(long, default_value = "decoupled", value_parser = |s: &str| s.parse::<crate::train::WeightDecayMode>())]
    #[serde(serialize_with = "crate::util::serialize_display")]
    pub weight_decay_mode: crate::train::WeightDecayMode,
    /// Take the per-unit gradient record every K steps (0: never).
    #[arg(long, default_value_t = 10)]
    pub record_every: usize,
    /// Save the complete training state to DIR/checkpoint.npz at the end of every epoch
    /// (atomically). A DIR that already holds a checkpoint is refused without --resume, and
    /// one run at a time holds DIR (a lock on DIR/checkpoint.lock).
    #[arg(long, value_name = "DIR")]
    #[serde(skip)]
    pub checkpoint: Option<PathBuf>,
    /// Continue from the checkpoint in --checkpoint DIR; the result is bit-identical to an
    /// uninterrupted run.
    #[arg(long)]
    #[serde(skip)]
    pub resume: bool,
    /// Stop after this many epochs (of --epochs), as if interrupted: the schedule still
    /// spans --epochs, so --resume can finish the run later (with --resume: more than the
    /// checkpoint's epochs).
    #[arg(long, value_name = "N")]
    #[serde(skip)]
    pub stop_after_epochs: Option<usize>,
    /// Seed of the weights, the data order and the dropout masks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Worker threads (default: all cores). Results do not depend on it.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    #[serde(skip)]
    pub threads: Option<u32>,
    /// Train with the plain layer-by-layer interpreter instead of the fused engine (same
    /// numbers, slower).
    #[arg(long)]
    pub unfused: bool,
    /// The element type of the steps: f64 (the reference) or f32 (faster, half the memory;
    /// the network starts as its f64 twin rounded, the checkpoint holds its values widened).
    #[arg(long, default_value = "f64", value_name = "f32|f64")]
    #[serde(skip_serializing_if = "crate::float::Precision::is_f64")]
    pub precision: crate::float::Precision,
    /// Run even when the training is estimated to take more than a day.
    #[arg(long)]
    #[serde(skip)]
    pub force: bool,
    /// The flags given on the command line (filled after parsing).
    #[arg(skip)]
    #[serde(skip)]
    pub given: super::Given,
}

impl TrainJob {
    /// Every flag at its default value.
    pub fn defaults() -> TrainJob {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            train: TrainJob,
        }
        <Defaults as clap::Parser>::try_parse_from(["resprop"])
            .expect("the defaults parse")
            .train
    }

    /// Refuses values out of range and the flags given that this run cannot use.
    fn refuse_inapplicable(&self) -> Result<()> {
        let (g, d) = (&self.given, TrainJob::defaults());
        if !(0.0..1.0).contains(&self.momentum) {
            bail!("--momentum: a number in [0, 1), got {}", self.momentum);
        }
        crate::train::check_weight_decay(self.weight_decay, self.lr)
            .map_err(|e| anyhow::anyhow!("--weight-decay: {e}"))?;
        match self.optimizer {
            crate::train::OptimizerKind::Adam => {
                g.refuse("momentum", self.momentum != d.momentum, || {
                    "applies to SGD; Adam's betas are 0.9 and 0.999".into()
                })?
            }
            crate::train::OptimizerKind::Sgd => g.refuse(
                "weight_decay_mode",
                self.weight_decay_mode != d.weight_decay_mode,
                || "applies to Adam; SGD adds the decay to the gradient".into(),
            )?,
        }
        if let NetChoice::Resnet { .. } = self.arch.net {
            for (id, differs) in [
                ("units", self.arch.units != d.arch.units),
                ("width", self.arch.width != d.arch.width),
            ] {
                g.refuse(id, differs, || {
                    format!(
                        "sizes the MLP; {} takes its size from its name",
                        self.arch.net
                    )
                })?;
            }
        }
        self.recipe
            .check(&self.arch, self.optimizer)
            .map_err(|e| anyhow::anyhow!("--recipe: {e}"))?;
        if self.recipe.warmup().is_some() && self.warmup_steps.is_some() {
            bail!(
                "--warmup-steps: the {} recipe sets the warm-up (none); leave one of the two out",
                self.recipe
            );
        }
        if let Some(n) = self.stop_after_epochs {
            if n == 0 || n > self.epochs {
                bail!(
                    "--stop-after-epochs: between 1 and --epochs ({}), got {n}",
                    self.epochs
                );
            }
        }
        Ok(())
    }
}

/// A training run set up from the flags: its data, network and recipe, and where it starts.
pub struct Training {
    pub data: crate::data::Split,
    pub net: crate::net::Network,
    pub cfg: TrainConfig,
    /// What a checkpoint records of the run (and a resume must match).
    pub run_config: checkpoint::RunConfig,
    /// The job as JSON (the flags by keyword), saved in every checkpoint as `request_json`.
    pub request_json: Vec<u8>,
    pub resume: Resume,
    /// The lock on the --checkpoint directory, held until the run ends.
    _lock: Option<checkpoint::DirLock>,
}

impl TrainJob {
    /// Checks the flags, loads the data, builds the network and, with `--resume`, restores the
    /// checkpoint: everything `resprop train` does before its first step (also the Python
    /// package's `train`).
    pub fn prepare(&self) -> Result<Training> {
        let args = self;
        if args.epochs == 0 || args.batch == 0 {
            bail!(
                "epochs and batch must be at least 1 (got {} and {})",
                args.epochs,
                args.batch
            );
        }
        if !(args.lr > 0.0 && args.lr.is_finite()) {
            bail!(
                "--lr: the learning rate must be a positive number, got {}",
                args.lr
            );
        }
        if args.resume && args.checkpoint.is_none() {
            bail!("--resume needs --checkpoint DIR, the folder to resume from");
        }
        args.refuse_inapplicable()?;
        let data = crate::data::load(&args.data)?;
        let data = args
            .subsets
            .apply(data, ["--train-subset", "--test-subset", "--downsample"])?;
        if data.train.len() < args.batch {
            bail!(
                "--batch {} is larger than the training split of {} ({} images)",
                args.batch,
                data.name,
                data.train.len()
            );
        }
        let per_epoch = crate::train::steps_per_epoch(data.train.len(), args.batch);
        let arch = &args.arch;
        let input = crate::jobs::InputSizes::of_data(&data);
        crate::net::memory::ensure_fits(
            &arch.memory(
                &input,
                args.batch.max(500),
                crate::net::memory::Purpose::Train,
            ),
            &arch.net.to_string(),
        )?;
        let mut net = arch.build(&input, args.seed)?;
        net.set_fusion(crate::unit::Fusion::from_unfused(args.unfused));
        // A step per batch of the training split each epoch, then a forward pass over the test
        // split.
        let steps = args.epochs as f64 * data.train.len().div_ceil(args.batch) as f64;
        crate::budget::ensure_feasible(
            &format!("--epochs {} of batch {}", args.epochs, args.batch),
            net.pass_work(args.batch, steps)
                + net.pass_work(data.test.len(), args.epochs as f64 / 3.0),
            args.force,
        )?;
        let cfg = TrainConfig {
            epochs: args.epochs,
            batch: args.batch,
            base_lr: args.lr,
            momentum: args.momentum,
            weight_decay: args.weight_decay,
            optimizer: args.optimizer,
            weight_decay_mode: args.weight_decay_mode,
            warmup: crate::train::Warmup::for_optimizer(
                args.optimizer,
                args.recipe.warmup().or(args.warmup_steps),
            ),
            scalar_lr_factor: args.recipe.scalar_lr_factor(),
            record_every: args.record_every,
            signal: false,
            seed: args.seed,
        };
        crate::train::check_warmup(
            cfg.warmup,
            args.epochs,
            per_epoch,
            data.train.len(),
            args.batch,
        )
        .map_err(|e| anyhow::anyhow!("--warmup-steps: {e}"))?;
        let run_config = checkpoint::RunConfig {
            net: arch.net.to_string(),
            units: arch.residual_units(),
            width: arch.mlp_width(),
            placement: arch.placement.to_string(),
            shortcut: arch.shortcut.to_string(),
            projection: arch
                .resolved_projection()
                .map_or(String::new(), |p| p.to_string()),
            epochs: args.epochs,
            batch: args.batch,
            lr: args.lr,
            momentum: args.momentum,
            weight_decay: args.weight_decay,
            optimizer: args.optimizer.to_string(),
            weight_decay_mode: match args.optimizer {
                crate::train::OptimizerKind::Sgd => String::new(),
                crate::train::OptimizerKind::Adam => args.weight_decay_mode.to_string(),
            },
            norm: arch.norm.to_string(),
            init: arch.init.to_string(),
            warmup: cfg.warmup.to_string(),
            recipe: args.recipe.to_string(),
            record_every: args.record_every,
            seed: args.seed,
            data: args.data.to_string(),
            data_sha256: data.fingerprint(),
            precision: args.precision,
        };
        // Last of the checks, so that a run refused for another reason leaves no lock file.
        let lock = args.claim_checkpoint()?;
        let resume = if args.resume {
            let dir = args.checkpoint.as_ref().unwrap();
            let resume =
                checkpoint::load(dir, &mut net, &run_config, cfg.new_optimizer(), per_epoch)?;
            if let Some(n) = args.stop_after_epochs {
                if n <= resume.epoch {
                    bail!(
                        "--stop-after-epochs {n}: the checkpoint in '{}' has {} epoch{} done already, so no step would run; give a number in {}..={} or leave it out",
                        dir.display(),
                        resume.epoch,
                        if resume.epoch == 1 { "" } else { "s" },
                        resume.epoch + 1,
                        args.epochs
                    );
                }
            }
            resume
        } else {
            Resume::default()
        };
        Ok(Training {
            data,
            net,
            cfg,
            run_config,
            request_json: serde_json::to_vec(self)?,
            resume,
            _lock: lock,
        })
    }

    /// With --checkpoint: takes the directory's lock for this run (a second run on it is
    /// refused) and, without --resume, refuses a directory that already holds a checkpoint,
    /// which the run would replace. Creates the directory when it does not exist (without
    /// --resume).
    fn claim_checkpoint(&self) -> Result<Option<checkpoint::DirLock>> {
        let Some(dir) = &self.checkpoint else {
            return Ok(None);
        };
        let file = dir.join(checkpoint::FILE);
        if self.resume {
            // Nothing to hold: loading it says there is no checkpoint.
            if !file.is_file() {
                return Ok(None);
            }
        } else {
            crate::output::create_dir("--checkpoint", dir)?;
        }
        let lock = checkpoint::lock_dir(dir)?;
        if !self.resume && file.exists() {
            bail!(
                "--checkpoint: '{}' already holds a checkpoint ({}), which this run would replace; continue it with --resume, give another directory, or delete '{}'",
                dir.display(),
                checkpoint::describe(&file),
                file.display()
            );
        }
        Ok(Some(lock))
    }

    /// Trains the prepared run up to `--stop-after-epochs`, saving a checkpoint after every
    /// epoch with `--checkpoint`; `progress` follows each step, and an error from it stops the
    /// run.
    pub fn train_prepared(
        &self,
        t: &mut Training,
        progress: impl FnMut(&crate::train::StepRow, usize) -> Result<()>,
    ) -> Result<History> {
        let stop = self.stop_after_epochs.unwrap_or(self.epochs);
        let (run_config, request_json) = (&t.run_config, &t.request_json);
        let save = |epoch: usize,
                    net: &crate::net::Network,
                    optimizer: &crate::train::Optimizer,
                    h: &History|
         -> Result<()> {
            match &self.checkpoint {
                Some(dir) => {
                    checkpoint::save(dir, epoch, net, optimizer, h, run_config, request_json)
                }
                None => Ok(()),
            }
        };
        let resume = std::mem::take(&mut t.resume);
        train_in(
            self.precision,
            &mut t.net,
            &t.data,
            &t.cfg,
            resume,
            stop,
            progress,
            save,
        )
    }
}
