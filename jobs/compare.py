"""Paired comparison of two models or two evaluations on the same samples.

    python jobs/compare.py --config configs/demo.yaml compare.a=outputs/run_a compare.b=outputs/run_b
    python jobs/compare.py --config configs/demo.yaml compare.a=outputs/a/model compare.b=outputs/b/model

``compare.a``/``compare.b``: an evaluation directory (with samples.parquet), a run's output_dir containing
``eval/``, or a model path (model directory or training checkpoint), which is then evaluated on the config's data
into ``output_dir/compare/{a,b}_eval``. Writes ``output_dir/compare/summary.md`` and ``paired.csv``; the printed
verdict line contains ``identical`` or ``differ``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sa2va_ray.checkpoint.integrity import check_model_path  # noqa: E402
from sa2va_ray.cli import command_line, init_ray, job_main, parse_job_args  # noqa: E402
from sa2va_ray.config import save_config, with_overrides  # noqa: E402


@job_main
def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_job_args(__doc__.splitlines()[0], argv)
    from sa2va_ray.evaluate.compare import (
        compare_tables,
        find_eval_dir,
        format_comparison,
        load_evaluation,
        write_comparison,
    )

    sides = {"a": cfg.compare.a, "b": cfg.compare.b}
    for name, path in sides.items():
        if not path:
            print(f"config error: compare.{name} is empty (an eval dir, a run output_dir or a model path)",
                  file=sys.stderr)
            return 2
        if not Path(path).exists():
            print(f"config error: compare.{name}={path} does not exist", file=sys.stderr)
            return 2
        if find_eval_dir(path) is None:
            check_model_path(path, key=f"compare.{name}")
    out = Path(cfg.output_dir) / "compare"
    eval_dirs = {}
    for name, path in sides.items():
        found = find_eval_dir(path)
        if found is None:
            from sa2va_ray.evaluate.pipeline import run_evaluation

            init_ray()
            print(f"[compare] {name}: evaluating model {path} into {out / f'{name}_eval'}", flush=True)
            found = run_evaluation(with_overrides(cfg, {"model.path": str(path)}), out / f"{name}_eval").out_dir
        else:
            print(f"[compare] {name}: using the evaluation in {found}", flush=True)
        eval_dirs[name] = found
    (ta, sa), (tb, sb) = load_evaluation(eval_dirs["a"]), load_evaluation(eval_dirs["b"])
    result = compare_tables(ta, tb, sa, sb, n_boot=cfg.eval.n_boot, tolerance=cfg.compare.tolerance,
                            labels=(str(sides["a"]), str(sides["b"])))
    write_comparison(result, out)
    save_config(cfg, command=command_line())
    print(format_comparison(result), flush=True)
    print(f"[compare] written: {out / 'summary.md'}, {out / 'paired.csv'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
