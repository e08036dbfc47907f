"""Every shipped config loads on the typed schema; the schema rejects unknown keys, wrong types and bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from sa2va_ray.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
    with_overrides,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))  # not configs/cluster/: those are Ray cluster-launcher files
REAL_8B = [
    ROOT / "configs" / "vessel_internvl3_8b_lora.yaml",
    ROOT / "configs" / "vessel_internvl3_8b_lora_zero3_offload.yaml",
]


def test_the_shipped_configs_include_the_demo_and_the_8b_recipes():
    names = {p.name for p in CONFIGS}
    assert {"demo.yaml", *(p.name for p in REAL_8B)} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_opens_with_its_launch_command(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    first = path.read_text().splitlines()[0]
    assert first.startswith("#") and "python jobs/" in first, first
    script = first.split("python jobs/")[1].split()[0]
    assert (ROOT / "jobs" / script).is_file(), script


@pytest.mark.parametrize("path", REAL_8B, ids=lambda p: p.name)
def test_8b_recipes_match_the_seed_users_setup(path):
    cfg = load_config(path)
    assert cfg.model.preset == "internvl_sam2" and cfg.model.gradient_checkpointing
    assert cfg.model.internvl_path and cfg.model.sam2_checkpoint
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (64, 128, 0.1)
    assert cfg.train.lr == 2e-5 and cfg.train.weight_decay == 0.05 and cfg.train.clip_grad == 1.0
    assert cfg.train.warmup_steps > 0
    assert cfg.train.micro_batch_size * cfg.train.grad_accum * cfg.scaling.num_workers == 32
    assert cfg.scaling.use_gpu and cfg.scaling.num_workers == 4
    assert cfg.deepspeed.precision == "bf16"
    assert cfg.loss.num_points == 12544
    assert cfg.storage_path  # shared storage for checkpoints on a cluster


def test_overrides_apply_and_are_typed():
    cfg = load_config(ROOT / "configs" / "demo.yaml", ["train.max_steps=7", "scaling.use_gpu=true", "lora.r=4"])
    assert (cfg.train.max_steps, cfg.scaling.use_gpu, cfg.lora.r) == (7, True, 4)


@pytest.mark.parametrize(
    "override,needle",
    [
        ("train.max_step=3", "max_step"),  # unknown key
        ("nonsense=1", "nonsense"),  # unknown top-level key
        ("train.max_steps=many", "max_steps"),  # wrong type
        ("scaling.use_gpu=maybe", "use_gpu"),  # wrong type
        ("train.micro_batch_size=0", "micro_batch_size"),  # __post_init__
        ("deepspeed.zero_stage=5", "zero_stage"),
        ("deepspeed.precision=fp8", "precision"),
        ("model.preset=huge", "preset"),
        ("lora.dropout=1.5", "dropout"),
        ("train.max_steps", "dotted.key=value"),  # not an override
        ("train.epochs=0", "train.epochs"),  # caught only inside Ray once
        ("train.log_every=0", "train.log_every"),
        ("train.num_to_keep=0", "train.num_to_keep"),
        ("train.warmup_steps=-1", "train.warmup_steps"),
        ("train.val_every=-5", "train.val_every"),
        ("train.min_lr_ratio=2", "min_lr_ratio"),
        ("train.health.patience=0", "patience"),
        ("scaling.cpus_per_worker=0", "cpus_per_worker"),
        ("scaling.wait_for_resources_s=-1", "wait_for_resources_s"),
        ("eval.num_overlays=-1", "num_overlays"),
        (r"data.run_regex=(?P<run>.+)_f\d+", "data.run_regex.*frame"),  # lacks the named group frame
    ],
)
def test_bad_overrides_raise_config_error(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(ROOT / "configs" / "demo.yaml", [override])


def test_run_regex_is_checked_and_kept():
    regex = r"(?P<run>case\d+)-f(?P<frame>\d+)"
    assert load_config(None, [f"data.run_regex={regex}"]).data.run_regex == regex


def test_cross_field_check_offload_params_needs_zero3():
    with pytest.raises(ConfigError, match="zero_stage=3"):
        load_config(None, ["deepspeed.offload_params=true", "deepspeed.zero_stage=2"])
    assert load_config(None, ["deepspeed.offload_params=true", "deepspeed.zero_stage=3"]).deepspeed.offload_params


def test_bad_yaml_files_raise_config_error(tmp_path):
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("train:\n  max_steps: 3\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(unknown)
    wrong_type = tmp_path / "wrong.yaml"
    wrong_type.write_text("scaling:\n  num_workers: two\n")
    with pytest.raises(ConfigError, match="num_workers"):
        load_config(wrong_type)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_save_config_round_trips_through_load_config(tmp_path):
    cfg = load_config(REAL_8B[0], ["train.max_steps=11", "tune.space={lora.r: {type: choice, values: [8, 16]}}"])
    out = save_config(cfg, tmp_path / "config.yaml", command="python jobs/train.py --config x.yaml")
    assert out.read_text().splitlines()[0] == "# python jobs/train.py --config x.yaml"
    again = load_config(out)
    assert config_to_dict(again) == config_to_dict(cfg)
    assert again.train.max_steps == 11 and again.tune.space["lora.r"]["values"] == [8, 16]
    assert config_to_dict(config_from_dict(config_to_dict(cfg))) == config_to_dict(cfg)


def test_with_overrides_revalidates():
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    assert with_overrides(cfg, {"loss.dice_weight": 1.5}).loss.dice_weight == 1.5
    with pytest.raises(ConfigError):
        with_overrides(cfg, {"loss.dice_weight": -1.0})


def test_lora_section_and_train_policy_share_their_names_and_defaults():
    """One schema per knob: every ``lora.train_*`` key is a field of the model's TrainPolicy, same default."""
    import dataclasses

    from sa2va_ray.config import LoraSection
    from sa2va_ray.model.lora import POLICY_GROUPS, TrainPolicy

    policy = {f.name: f.default for f in dataclasses.fields(TrainPolicy)}
    section = {f.name: f.default for f in dataclasses.fields(LoraSection) if f.name.startswith("train_")}
    assert section == policy and set(policy) == set(POLICY_GROUPS)
    cfg = load_config(ROOT / "configs" / "demo.yaml", ["lora.train_vision_tower=true", "lora.train_llm_base=true"])
    assert cfg.lora.train_vision_tower and cfg.lora.train_llm_base  # every policy group reachable from YAML


def test_loss_section_names_are_the_model_config_names():
    import dataclasses

    from sa2va_ray.config import LossSection
    from sa2va_ray.model.config import Sa2VAConfig

    model_config = Sa2VAConfig()
    assert all(hasattr(model_config, f.name) for f in dataclasses.fields(LossSection))


def test_every_config_field_has_a_docstring_and_no_section_shadows_a_library_name():
    """litgpt-style: the string literal under each field documents it; sections are ``*Section``."""
    import ast
    import dataclasses

    import sa2va_ray.config as config_module

    tree = ast.parse(Path(config_module.__file__).read_text())
    undocumented = []
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        body = cls.body
        for i, node in enumerate(body):
            if isinstance(node, ast.AnnAssign):
                nxt = body[i + 1] if i + 1 < len(body) else None
                if not (isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                        and isinstance(nxt.value.value, str)):
                    undocumented.append(f"{cls.name}.{node.target.id}")
    assert not undocumented
    sections = [f.type for f in dataclasses.fields(Config) if f.name not in ("output_dir", "run_name", "storage_path")]
    assert sections and all(str(t).endswith("Section") for t in sections)
    for shadowed in ("ScalingConfig", "LoraConfig", "DeepSpeedConfig", "TuneConfig", "TrainConfig", "RunConfig"):
        assert not hasattr(config_module, shadowed)
