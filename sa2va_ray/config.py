"""Typed configuration: one schema for every job, YAML files plus dotted ``key=value`` overrides.

Every job (`jobs/*.py`) calls :func:`load_config`. An unknown key or a value of the wrong type is a
:class:`ConfigError` raised before any work starts; the resolved config is written to
``output_dir/config.yaml`` by :func:`save_config`. Each field's docstring (the string under it) documents it.

The sections are named ``*Section`` (``ScalingSection``, ``LoraSection``, ``DeepSpeedSection``, ...), never after the
Ray, PEFT or DeepSpeed classes they feed (``ray.train.ScalingConfig``, ``peft.LoraConfig``, ...).

Example::

    cfg = load_config("configs/demo.yaml", ["train.max_steps=20", "scaling.num_workers=2"])
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A configuration file or override is invalid (unknown key, wrong type, bad value)."""


def _check_val_metric(key: str, name: str) -> str:
    """The direction (max/min) of validation metric ``name``; a ConfigError listing the valid ones otherwise."""
    from sa2va_ray.train.val_metrics import metric_mode

    try:
        return metric_mode(name)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None


@dataclass
class SyntheticSection:
    """Procedural synthetic angiography set, made on first use when ``enabled``."""

    enabled: bool = False
    """Make the set under `out` when data.annotations does not exist."""
    out: str = "data/synthetic"
    """Directory: out/images/*.jpg + out/annotations.json."""
    patients: int = 12
    """Patients (each its own vessel tree)."""
    frames: int = 6
    """Frames per patient."""
    size: int = 256
    """Image side in pixels."""
    seed: int = 0
    """Seed of the procedural generator (same seed, same images)."""

    def __post_init__(self) -> None:
        if self.patients < 2 or self.frames < 1 or self.size < 32:
            raise ConfigError("data.synthetic needs patients >= 2, frames >= 1, size >= 32")


@dataclass
class DataSection:
    """Where the records are and how they are split."""

    annotations: str = ""
    """Official-format annotations.json (training records, or all records to split)."""
    val_annotations: str = ""
    """Validation records; empty: split `annotations` by patient."""
    images_dir: str = ""
    """Directory holding the image files named in the annotations."""
    val_fraction: float = 0.25
    """Fraction of patients held out when splitting."""
    split_seed: int = 0
    """Seed of the patient-level split."""
    group_regex: str = ""
    """Regex whose first group is the patient id; empty: the built-in default."""
    run_regex: str = ""
    """Regex with named groups ``run`` and ``frame`` finding a frame's run (cine sequence) in its image name; empty:
    the run is the name before ``_frame_``, the frame number the digits after it (``sa2va_ray.data.runs``)."""
    strict: bool = False
    """Any invalid record fails the job before work starts."""
    allow_symlinks_outside: bool = False
    """Accept image symlinks that lead out of images_dir (else the record is refused as ``unsafe_path``)."""
    pseudonymise: bool = False
    """Replace patient names/ids with salted hashes in every output."""
    salt_file: str = ""
    """File whose first line is the secret salt; empty: the SA2VA_SALT environment variable."""
    salt: str = ""
    """Refused when set: a salt in a config or command line would be written to config.yaml and logs."""
    deterministic: bool = False
    """Ray Data keeps row order, so the same seed sees the same batches (slower)."""
    synthetic: SyntheticSection = field(default_factory=SyntheticSection)
    """The synthetic set made on first use."""

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.run_regex:
            from sa2va_ray.data.runs import compile_run_regex

            try:
                compile_run_regex(self.run_regex)
            except ValueError as e:
                raise ConfigError(f"data.run_regex: {e}") from None
        if self.salt:
            raise ConfigError("data.salt: the salt must stay secret, and configs and command lines are written to "
                              "config.yaml, checkpoints and job logs; put it in data.salt_file=FILE or SA2VA_SALT")


@dataclass
class ModelSection:
    """Which Sa2VA to build or load."""

    path: str = ""
    """Model directory or training checkpoint; empty: build from `preset`."""
    preset: str = "tiny"
    """``tiny`` | ``internvl_sam2`` (native InternVL3 dir + Meta SAM2 ckpt) | ``official`` (Sa2VA HF dir)."""
    internvl_path: str = ""
    """Native InternVL3 directory (preset internvl_sam2)."""
    sam2_checkpoint: str = ""
    """Meta SAM2 checkpoint, e.g. sam2.1_hiera_large.pt (preset internvl_sam2)."""
    sam2_config: str = "sam2.1_hiera_l"
    """SAM2 architecture preset or config YAML path."""
    official_path: str = ""
    """Official Sa2VA HF checkpoint directory (preset official)."""
    seed: int = 0
    """Init seed of freshly built modules."""
    max_tiles: int = 1
    """InternVL dynamic tiles per image."""
    gradient_checkpointing: bool = False
    """Recompute LLM activations in backward (less memory, ~30% slower)."""

    def __post_init__(self) -> None:
        if self.preset not in {"tiny", "internvl_sam2", "official"}:
            raise ConfigError(f"model.preset must be tiny, internvl_sam2 or official, got {self.preset!r}")


@dataclass
class LoraSection:
    """LoRA on every Linear of the LLM (not lm_head) and which module groups train in full.

    The ``train_*`` switches are the fields of :class:`sa2va_ray.model.lora.TrainPolicy`, name for name (a unit test
    keeps them equal); each turns one parameter group of :func:`sa2va_ray.model.groups.module_group` on or off.
    """

    enabled: bool = True
    """LoRA adapters on the LLM; false: no adapters (the ``train_*`` switches still apply)."""
    r: int = 8
    """LoRA rank."""
    alpha: int = 16
    """LoRA alpha (the adapters are scaled by alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA input."""
    train_embeddings: bool = True
    """``embed_tokens`` and ``lm_head`` in full (they hold the new special tokens); group ``llm_embeddings``."""
    train_projector: bool = True
    """InternVL's pixel-shuffle MLP projector ``mlp1``; group ``projector``."""
    train_text_fcs: bool = True
    """The ``[SEG]`` -> SAM2 prompt projection ``text_hidden_fcs``; group ``text_hidden_fcs``."""
    train_mask_decoder: bool = True
    """SAM2 mask decoder; group ``sam2_decoder``."""
    train_prompt_encoder: bool = False
    """SAM2 prompt encoder (no-mask and padding-point embeddings); group ``sam2_prompt_encoder``."""
    train_vision_tower: bool = False
    """InternViT; group ``vision_tower``."""
    train_image_encoder: bool = False
    """SAM2 Hiera image encoder + FPN (frozen, it runs without autograd); group ``sam2_encoder``."""
    train_llm_base: bool = False
    """The base LLM weights in full (full fine-tuning; normally false with LoRA); group ``llm_base``."""

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha <= 0 or not 0.0 <= self.dropout < 1.0:
            raise ConfigError("lora needs r >= 1, alpha > 0, 0 <= dropout < 1")


@dataclass
class LossSection:
    """Loss weights (official Sa2VA defaults) and the point-sampled mask loss."""

    mask_weight: float = 2.0
    """Sigmoid BCE on mask logits."""
    dice_weight: float = 0.5
    """Dice loss on mask probabilities."""
    lm_weight: float = 1.0
    """Language-model cross-entropy on the answer."""
    cldice_weight: float = 0.0
    """Soft clDice (centreline Dice, Shit et al. 2021) on the full low-res mask maps; 0: not computed."""
    cldice_iterations: int = 3
    """Soft-skeleton erosions of the clDice loss (at least half the thickest vessel, in low-res pixels)."""
    num_points: int = 0
    """Importance-sampled points for the mask losses; 0: every low-res pixel (clDice always uses the full map)."""

    def __post_init__(self) -> None:
        if min(self.mask_weight, self.dice_weight, self.lm_weight, self.cldice_weight) < 0:
            raise ConfigError("loss weights must be >= 0")
        if self.cldice_iterations < 1:
            raise ConfigError(f"loss.cldice_iterations must be >= 1, got {self.cldice_iterations}")


@dataclass
class HealthSection:
    """Training health monitor (the seeds' 'weights stopped changing' failure)."""

    min_update_ratio: float = 1e-7
    """||dθ||/||θ|| below this counts as 'not changing'."""
    patience: int = 20
    """Consecutive such steps before warning."""
    fail_on_unchanged: bool = True
    """Fail the job when final trainable weights equal the initial ones."""

    def __post_init__(self) -> None:
        if self.patience < 1 or self.min_update_ratio < 0:
            raise ConfigError("train.health needs patience >= 1 and min_update_ratio >= 0")


@dataclass
class TrainSection:
    """The training loop (shared by train and tune)."""

    max_steps: int = 100
    """Optimizer steps; the loop stops at max_steps or after `epochs`."""
    epochs: int = 1000
    """Passes over the training split at most."""
    micro_batch_size: int = 2
    """Samples per worker per forward."""
    clip_frames: int = 0
    """k >= 2 adds clips to the stream: k consecutive frames of one run with one text, the LLM sees all k and the
    `[SEG]` drives a mask on each (official video training); images stay in the stream. 0: images only."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step."""
    lr: float = 2e-4
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.05
    """AdamW weight decay."""
    warmup_steps: int = 10
    """Linear warm-up steps before the cosine decay."""
    min_lr_ratio: float = 0.0
    """Cosine decays to lr * min_lr_ratio."""
    clip_grad: float = 1.0
    """Gradient norm clipping; 0: off."""
    seed: int = 0
    """Seed of data order, dropout and LoRA init."""
    val_every: int = 50
    """Steps between validations (and checkpoints); 0: only at the end."""
    val_max_samples: int = 0
    """Validation samples per validation; 0: the whole validation split."""
    checkpoint_every: int = 0
    """Steps between checkpoints; 0: same as val_every."""
    num_to_keep: int = 2
    """Checkpoints kept (the best by `best_metric` among them)."""
    best_metric: str = "val/dice"
    """Validation metric that picks the best checkpoint (val/dice, val/iou, val/ciou, val/recall, val/cldice,
    val/betti0_error, val/dice_at_best_threshold); its direction is known (betti0_error: lower is better)."""
    hard_mining: bool = False
    """Oversample hard training rows: those whose last measured Dice (from the training forward) is below
    `hard_mining_threshold` replace a share `hard_mining_fraction` of each micro-batch's rows."""
    hard_mining_threshold: float = 0.75
    """A row is hard while its last measured training Dice is below this."""
    hard_mining_every: int = 10
    """Steps between refreshes of the hard set (measurements of all ranks are pooled at each refresh)."""
    hard_mining_fraction: float = 0.25
    """Expected share of a micro-batch's rows replaced by hard rows (deterministic per seed, step and rank)."""
    log_every: int = 5
    """Steps between progress lines."""
    export_best: bool = True
    """Write the best-by-`best_metric` model to output_dir/model (else the final one)."""
    fail_at_step: int = 0
    """Fault drill: the last rank dies once at this step (tests Ray Train's failure recovery); 0: off."""
    health: HealthSection = field(default_factory=HealthSection)
    """The training health monitor."""

    def __post_init__(self) -> None:
        for key in ("max_steps", "epochs", "micro_batch_size", "grad_accum", "log_every", "num_to_keep"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("lr", "weight_decay", "warmup_steps", "clip_grad", "val_every", "val_max_samples",
                    "checkpoint_every", "fail_at_step"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key} must be >= 0, got {getattr(self, key)}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.clip_frames == 1 or self.clip_frames < 0:
            raise ConfigError(f"train.clip_frames must be 0 (images only) or >= 2, got {self.clip_frames}")
        _check_val_metric("train.best_metric", self.best_metric)
        if not 0.0 <= self.hard_mining_threshold <= 1.0 or not 0.0 < self.hard_mining_fraction <= 1.0:
            raise ConfigError("train.hard_mining_threshold must be in [0, 1] and hard_mining_fraction in (0, 1]")
        if self.hard_mining_every < 1:
            raise ConfigError(f"train.hard_mining_every must be >= 1, got {self.hard_mining_every}")


@dataclass
class ScalingSection:
    """Ray Train scaling: going to GPUs changes only `use_gpu` (and the precision)."""

    num_workers: int = 2
    """Ray Train workers (one GPU each with use_gpu)."""
    use_gpu: bool = False
    """Workers and predictor actors on GPUs."""
    cpus_per_worker: float = 1.0
    """CPUs each worker reserves."""
    gpus_per_worker: float = 1.0
    """GPUs each worker reserves (with use_gpu)."""
    placement_strategy: str = "PACK"
    """PACK | SPREAD | STRICT_PACK | STRICT_SPREAD."""
    max_failures: int = 1
    """Worker failures Ray Train recovers from (from the last checkpoint); -1: unlimited."""
    wait_for_resources_s: float = 0.0
    """Autoscaling cluster: seconds to wait for it to grow big enough; 0: fail at once."""

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ConfigError("scaling.num_workers must be >= 1")
        if self.cpus_per_worker <= 0 or (self.use_gpu and self.gpus_per_worker <= 0):
            raise ConfigError("scaling.cpus_per_worker (and gpus_per_worker with use_gpu) must be > 0")
        if self.max_failures < -1 or self.wait_for_resources_s < 0:
            raise ConfigError("scaling.max_failures must be >= -1 (-1: unlimited), wait_for_resources_s >= 0")
        if self.placement_strategy not in {"PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"}:
            raise ConfigError(f"scaling.placement_strategy: unknown {self.placement_strategy!r}")


@dataclass
class DeepSpeedSection:
    """What the generated DeepSpeed JSON says."""

    zero_stage: int = 2
    """ZeRO stage 0..3 (2: optimizer states and gradients sharded)."""
    precision: str = "fp32"
    """``fp32`` | ``bf16`` | ``fp16`` (bf16 on RTX 3090)."""
    offload_optimizer: bool = False
    """ZeRO-Offload of optimizer states to CPU."""
    offload_params: bool = False
    """ZeRO-3 parameter offload to CPU."""
    reduce_bucket_size: int = 0
    """Elements per gradient bucket; 0: DeepSpeed's default (5e8; 2e8 saves ~1 GiB)."""

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"deepspeed.zero_stage must be 0..3, got {self.zero_stage}")
        if self.precision not in {"fp32", "bf16", "fp16"}:
            raise ConfigError(f"deepspeed.precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.offload_params and self.zero_stage != 3:
            raise ConfigError("deepspeed.offload_params needs zero_stage=3")


@dataclass
class EvalSection:
    """Ray Data batch evaluation."""

    batch_size: int = 8
    """Images per predictor call."""
    num_actors: int = 2
    """Predictor actors (one GPU each when scaling.use_gpu)."""
    mode: str = "teacher_forced"
    """``teacher_forced`` | ``generate`` (frame by frame) | ``sequence`` (each run as a video: the LLM on
    `sequence_k` frames, SAM2's memory through the rest; rows gain ``run_id``, ``frame``; ``eval/runs.parquet``)."""
    sequence_k: int = 5
    """eval.mode=sequence: frames of a run the LLM sees (and SAM2 is prompted on)."""
    sequence_sampling: str = "uniform"
    """eval.mode=sequence: ``uniform`` (spread over the run, Sa2VA-i) | ``first`` (the official code)."""
    sequence_offload: bool = False
    """eval.mode=sequence: keep SAM2's memory bank (and features computed ahead) in CPU memory; the GPU holds only
    what one memory-attention step reads, during that step. Same masks; saves GPU memory, costs transfers."""
    sequence_chunk: int = 64
    """eval.mode=sequence: most frames per Ray Data item; a longer run is split into chunks overlapping by
    `sequence_overlap` frames, each predicted on its own (LLM on its own k frames); 0: never split."""
    sequence_overlap: int = 4
    """eval.mode=sequence: frames a chunk shares with the one before (they warm its memory up; their rows come from
    the earlier chunk). 0 <= overlap < sequence_chunk."""
    vessel_metrics: bool = True
    """Also clDice, HD95 and Betti errors per sample."""
    num_overlays: int = 4
    """Overlays of each kind: worst, best and random samples by Dice."""
    n_boot: int = 1000
    """Bootstrap resamples for confidence intervals."""
    strict: bool = False
    """Any failed sample fails the job."""
    threshold: str = "model"
    """Mask threshold: ``model`` (the model's calibrated ``postprocess.json``, else the official 0.5) or a number in
    (0, 1). The summary says which threshold produced it and on what set it was chosen."""
    same_set_threshold: bool = False
    """Use the model's calibrated threshold even on the very set it was chosen on (the summary flags the numbers as
    optimistic). Off: that set is scored at 0.5, and the calibrated value is shown beside it, flagged."""
    calibrate_metric: str = "dice"
    """jobs/calibrate.py: the threshold maximising this mean metric (dice, iou, cldice, precision, recall)."""
    tta: str = "none"
    """Test-time augmentation: ``none`` or ``flip`` (mean probability of the image and its horizontal flip)."""
    save_masks: str = "none"
    """``none`` | ``png`` (``eval/masks/<image stem>.png``, the image's own size) | ``coco``
    (``eval/coco_results.json``, RLE, beside ``eval/coco_gt.json``: score it with pycocotools' COCOeval)."""
    save_probs: bool = False
    """Write each sample's probability map (float16, compressed ``probs/*.npz``, indexed in ``probs/index.csv``)."""

    def __post_init__(self) -> None:
        if self.threshold != "model":
            try:
                value = float(self.threshold)
            except ValueError:
                raise ConfigError(f"eval.threshold must be 'model' or a number in (0, 1), got {self.threshold!r}") \
                    from None
            if not 0.0 < value < 1.0:
                raise ConfigError(f"eval.threshold must be in (0, 1), got {value}")
        if self.calibrate_metric not in {"dice", "iou", "cldice", "precision", "recall"}:
            raise ConfigError(f"eval.calibrate_metric must be dice, iou, cldice, precision or recall, "
                              f"got {self.calibrate_metric!r}")
        if self.save_masks not in {"none", "png", "coco"}:
            raise ConfigError(f"eval.save_masks must be none, png or coco, got {self.save_masks!r}")
        if self.tta not in {"none", "flip"}:
            raise ConfigError(f"eval.tta must be none or flip, got {self.tta!r}")
        if self.mode not in {"teacher_forced", "generate", "sequence"}:
            raise ConfigError(f"eval.mode must be teacher_forced, generate or sequence, got {self.mode!r}")
        if self.sequence_k < 1 or self.sequence_sampling not in {"uniform", "first"}:
            raise ConfigError("eval.sequence_k must be >= 1 and eval.sequence_sampling uniform or first")
        if self.sequence_chunk < 0 or self.sequence_overlap < 0 or (
                self.sequence_chunk and self.sequence_overlap >= self.sequence_chunk):
            raise ConfigError(f"eval.sequence_chunk must be >= 0 (0: never split) and 0 <= eval.sequence_overlap < "
                              f"sequence_chunk, got chunk {self.sequence_chunk}, overlap {self.sequence_overlap}")
        if self.batch_size < 1 or self.num_actors < 1:
            raise ConfigError("eval.batch_size and eval.num_actors must be >= 1")
        if self.num_overlays < 0 or self.n_boot < 0:
            raise ConfigError("eval.num_overlays and eval.n_boot must be >= 0")


@dataclass
class TuneSection:
    """Ray Tune sweep over loss weights (and optionally lr / LoRA rank)."""

    search: str = "random"
    """``grid`` | ``random`` | ``optuna``."""
    num_samples: int = 4
    """Trials (random/optuna) or repeats of the grid."""
    metric: str = "val/dice"
    """Validation metric the sweep optimises (never the train loss): any `train.best_metric` name."""
    mode: str = "auto"
    """``auto`` (the metric's own direction: val/betti0_error min, the others max) | ``max`` | ``min``."""
    space: dict[str, Any] = field(default_factory=dict)
    """Dotted key -> ``{type: loguniform|uniform|choice|grid, ...}``."""
    grace_period: int = 1
    """ASHA: validations before a trial may be stopped."""
    reduction_factor: int = 2
    """ASHA: fraction 1/reduction_factor of trials kept at each rung."""
    max_concurrent_trials: int = 0
    """Trials at once; 0: derived from cluster resources and per-trial scaling."""
    export_best: bool = True
    """Export the best trial's model to output_dir/model."""

    def __post_init__(self) -> None:
        if self.search not in {"grid", "random", "optuna"}:
            raise ConfigError(f"tune.search must be grid, random or optuna, got {self.search!r}")
        if self.mode not in {"auto", "max", "min"}:
            raise ConfigError(f"tune.mode must be auto, max or min, got {self.mode!r}")
        own = _check_val_metric("tune.metric", self.metric)
        if self.mode != "auto" and self.mode != own:
            raise ConfigError(f"tune.mode={self.mode} contradicts {self.metric} (better when {own}imised); "
                              "leave tune.mode out (auto)")

    @property
    def direction(self) -> str:
        """``max`` or ``min``: `mode` with ``auto`` resolved from the metric."""
        return _check_val_metric("tune.metric", self.metric) if self.mode == "auto" else self.mode


@dataclass
class CompareSection:
    """Paired comparison of two evaluations (eval dirs) or two models on one data set."""

    a: str = ""
    """Eval directory (with samples.parquet) or model path."""
    b: str = ""
    """Eval directory or model path of the second side."""
    tolerance: float = 1e-6
    """An absolute difference below this counts as a tie."""


@dataclass
class ExportSection:
    """Export of a training checkpoint to a Hugging Face model directory."""

    checkpoint: str = ""
    """Training checkpoint directory; empty: model.path."""
    out: str = ""
    """Output directory; empty: output_dir/model."""
    adapter: bool = False
    """Also write the LoRA adapter alone in PEFT layout."""
    source: str = "auto"
    """Trained tensors from: ``auto`` | ``safetensors`` | ``deepspeed`` (the shards alone)."""
    format: str = "hf"
    """``hf`` (our Hugging Face layout) | ``official`` (Sa2VA remote-code layout, ``Sa2VAChatModel``)."""
    official_code_from: str = ""
    """With format=official: an official Sa2VA checkpoint dir whose remote-code .py files are copied."""

    def __post_init__(self) -> None:
        if self.source not in {"auto", "safetensors", "deepspeed"}:
            raise ConfigError(f"export.source must be auto, safetensors or deepspeed, got {self.source!r}")
        if self.format not in {"hf", "official"}:
            raise ConfigError(f"export.format must be hf or official, got {self.format!r}")


@dataclass
class PredictSection:
    """``jobs/predict.py``: masks for a folder of unlabeled images (or one run of it) and one text."""

    images: str = ""
    """Folder of the images (read only there; symlinks leading out are refused like in the data)."""
    text: str = ""
    """The referring text, e.g. ``blood vessel``."""
    glob: str = "*"
    """Which files of the folder (non-recursive); only image files are taken."""
    run: str = ""
    """Only the frames of this run (``data.run_regex``'s rule), in frame order; empty: every image."""
    out: str = ""
    """Output directory; empty: output_dir/predict."""


@dataclass
class Config:
    """Root of every job's configuration."""

    output_dir: str = "outputs/run"
    """Every file a run writes goes under this directory."""
    run_name: str = ""
    """Run name; empty: the output_dir's name. Re-running the same name resumes."""
    storage_path: str = ""
    """Ray Train/Tune storage (shared path on a cluster); empty: output_dir/ray."""
    data: DataSection = field(default_factory=DataSection)
    """The ``data:`` section."""
    model: ModelSection = field(default_factory=ModelSection)
    """The ``model:`` section."""
    lora: LoraSection = field(default_factory=LoraSection)
    """The ``lora:`` section."""
    loss: LossSection = field(default_factory=LossSection)
    """The ``loss:`` section."""
    train: TrainSection = field(default_factory=TrainSection)
    """The ``train:`` section."""
    scaling: ScalingSection = field(default_factory=ScalingSection)
    """The ``scaling:`` section."""
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    """The ``deepspeed:`` section."""
    eval: EvalSection = field(default_factory=EvalSection)
    """The ``eval:`` section."""
    tune: TuneSection = field(default_factory=TuneSection)
    """The ``tune:`` section."""
    compare: CompareSection = field(default_factory=CompareSection)
    """The ``compare:`` section."""
    export: ExportSection = field(default_factory=ExportSection)
    """The ``export:`` section."""
    predict: PredictSection = field(default_factory=PredictSection)
    """The ``predict:`` section."""

    @property
    def name(self) -> str:
        """The run name (resumes when reused)."""
        return self.run_name or Path(self.output_dir).name

    def resolve_paths(self, base: str | os.PathLike | None = None) -> Config:
        """Make every local path absolute (Ray workers run in other directories); URIs are left alone."""
        root = Path(base or os.getcwd())

        def fix(p: str) -> str:
            return p if not p or "://" in p or os.path.isabs(p) else str((root / p).resolve())

        self.output_dir = fix(self.output_dir)
        self.storage_path = fix(self.storage_path)
        d, m = self.data, self.model
        d.annotations, d.val_annotations, d.images_dir = fix(d.annotations), fix(d.val_annotations), fix(d.images_dir)
        d.synthetic.out, d.salt_file = fix(d.synthetic.out), fix(d.salt_file)
        m.path, m.internvl_path, m.sam2_checkpoint = fix(m.path), fix(m.internvl_path), fix(m.sam2_checkpoint)
        m.official_path = fix(m.official_path)
        if m.sam2_config.endswith((".yaml", ".yml")):
            m.sam2_config = fix(m.sam2_config)
        self.compare.a, self.compare.b = fix(self.compare.a), fix(self.compare.b)
        self.export.checkpoint, self.export.out = fix(self.export.checkpoint), fix(self.export.out)
        self.predict.images, self.predict.out = fix(self.predict.images), fix(self.predict.out)
        return self

    @property
    def storage(self) -> str:
        """Absolute Ray storage path."""
        if self.storage_path:
            return self.storage_path if "://" in self.storage_path else os.path.abspath(self.storage_path)
        return os.path.abspath(os.path.join(self.output_dir, "ray"))


def _build(base: DictConfig, overrides: list[str]) -> Config:
    try:
        merged = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(merged)  # runs every __post_init__ check
    except OmegaConfBaseException as e:  # unknown key, wrong type
        raise ConfigError(str(e).splitlines()[0] + _where(e)) from None


def _where(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None)
    return f" (key: {key})" if key else ""


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML config onto the schema and apply dotted overrides.

    Args:
        path: YAML file, or None for the schema defaults.
        overrides: ``["train.max_steps=5", ...]``; values are parsed as YAML scalars.

    Returns:
        The validated :class:`Config`.

    Raises:
        ConfigError: missing file, unknown key, wrong type or a failed check.
    """
    schema = OmegaConf.structured(Config)
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            schema = OmegaConf.merge(schema, OmegaConf.load(path))
        except OmegaConfBaseException as e:
            raise ConfigError(f"{path}: {str(e).splitlines()[0]}{_where(e)}") from None
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form dotted.key=value")
    return _build(schema, list(overrides))


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain containers (for Ray, Tune and YAML)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def config_from_dict(d: dict[str, Any]) -> Config:
    """Rebuild (and re-validate) a config from :func:`config_to_dict` output."""
    return _build(OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(d)), [])


def save_config(cfg: Config, path: str | os.PathLike | None = None, command: str | None = None) -> Path:
    """Write the resolved config as YAML (default ``output_dir/config.yaml``), opening with its command."""
    out = Path(path) if path else Path(cfg.output_dir) / "config.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    head = f"# {command}\n" if command else ""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # a reader never sees half a file
    tmp.write_text(head + OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    os.replace(tmp, out)
    return out


def with_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """A copy of ``cfg`` with dotted-key overrides given as a dict (used by sweeps)."""
    base = OmegaConf.structured(cfg)
    for key, value in overrides.items():
        try:
            OmegaConf.update(base, key, value, merge=False)
        except OmegaConfBaseException as e:
            raise ConfigError(f"{key}: {str(e).splitlines()[0]}") from None
    return _build(base, [])
