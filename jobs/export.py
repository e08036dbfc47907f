"""Export a training checkpoint to a verified Hugging Face model directory (LoRA merged, fingerprint.json).

    python jobs/export.py --config configs/demo.yaml model.path=<checkpoint dir> [export.out=DIR] [export.adapter=true]
        [--source auto|safetensors|deepspeed]
    python jobs/export.py --config configs/demo.yaml model.path=<checkpoint or model dir> export.format=official \
        export.official_code_from=<official Sa2VA checkpoint dir>
    ray job submit --working-dir . -- python jobs/export.py --config configs/demo.yaml model.path=<checkpoint dir>

export.format=official writes the official Sa2VA layout (remote code `Sa2VAChatModel`, official key names and
config.json, tokenizer, the remote-code .py files copied from export.official_code_from), verified tensor by tensor.

--source deepspeed rebuilds the trained tensors from the DeepSpeed shards alone (any ZeRO stage 0-3, any number of
ranks, no GPU); auto reads trainable.safetensors and cross-checks it against the shards when both exist.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sa2va_ray.checkpoint.integrity import check_model_path  # noqa: E402
from sa2va_ray.cli import job_main, parse_job_args  # noqa: E402


@job_main
def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_job_args(__doc__.splitlines()[0], argv, add_arguments=lambda ap: ap.add_config_argument(
        "--source", key="export.source", choices=("auto", "safetensors", "deepspeed"),
        help="where the trained tensors come from"))
    from sa2va_ray.checkpoint.layout import is_training_checkpoint
    from sa2va_ray.export.exporter import export_checkpoint
    from sa2va_ray.model.fingerprint import read_fingerprint

    source = cfg.export.source
    checkpoint = cfg.export.checkpoint or cfg.model.path
    if not checkpoint:
        print("export: give the checkpoint as model.path=DIR or export.checkpoint=DIR", file=sys.stderr)
        return 2
    if cfg.export.format == "official":
        return _export_official(cfg, checkpoint, source)
    if not is_training_checkpoint(checkpoint):
        print(f"export: {checkpoint} is not a training checkpoint (no trainable.safetensors, no config.yaml with "
              "DeepSpeed shards)", file=sys.stderr)
        return 2
    check_model_path(checkpoint, key="model.path" if not cfg.export.checkpoint else "export.checkpoint")
    out = cfg.export.out or str(Path(cfg.output_dir) / "model")
    model_dir = export_checkpoint(checkpoint, out, adapter=cfg.export.adapter, source=source)
    fp = read_fingerprint(model_dir)
    extra = f"; adapter in {model_dir / 'adapter'}" if cfg.export.adapter else ""
    print(f"[export] {checkpoint} -> {model_dir} verified (trained tensors from {source}); "
          f"fingerprint {fp['model'][:16]}{extra}", flush=True)
    return 0


def _export_official(cfg, path: str, source: str) -> int:
    from sa2va_ray.export.exporter import export_official
    from sa2va_ray.export.official import official_code_files

    key = "model.path" if not cfg.export.checkpoint else "export.checkpoint"
    check_model_path(path, key=key)
    if cfg.export.official_code_from:
        official_code_files(cfg.export.official_code_from)  # before any model is built
    out = cfg.export.out or str(Path(cfg.output_dir) / "official")
    model_dir = export_official(path, out, cfg.export.official_code_from or None, source=source)
    code = ("remote code from " + cfg.export.official_code_from) if cfg.export.official_code_from else \
        "no remote code (set export.official_code_from=<official Sa2VA dir> for AutoModel.from_pretrained)"
    print(f"[export] {path} -> {model_dir} in the official Sa2VA layout, verified; {code}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
