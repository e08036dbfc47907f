"""Shared command-line plumbing for the jobs: ``--config FILE [dotted.key=value ...]`` and Ray start-up."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys

from sa2va_ray.config import Config, ConfigError, load_config

log = logging.getLogger("sa2va_ray")


def parse_job_args(description: str, argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    """Parse a job's command line into a validated :class:`Config`.

    Unknown keys and wrong types exit with status 2 and a one-line message before any work starts.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="YAML config file (see configs/)")
    parser.add_argument("--strict", action="store_true", help="any invalid record or failed sample is an error")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. train.max_steps=10")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides).resolve_paths()
    except ConfigError as e:
        parser.exit(2, f"config error: {e}\n")
    if args.strict:
        cfg.data.strict = True
        cfg.eval.strict = True
    setup_logging()
    return cfg, args


def command_line() -> str:
    """The command that started this process, for headers of written configs."""
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def setup_logging(level: int = logging.INFO) -> None:
    """Plain, timestamped console logging once per process."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def init_ray(num_cpus: int | None = None) -> None:
    """Connect to ``RAY_ADDRESS`` when set (``ray job submit`` sets it), else start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A busy 2-core machine (or a big model's imports) can take more than Ray Train's default 60 s to start a
    # worker group; a local Ray started here inherits these.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    # Workers import the package from the working dir (ray job submit --working-dir .) or the install.
    if os.environ.get("RAY_ADDRESS"):
        log.info("connecting to Ray at %s", os.environ["RAY_ADDRESS"])
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
    else:
        log.info("starting a local Ray (set RAY_ADDRESS to use a cluster)")
        ray.init(num_cpus=num_cpus, dashboard_host="127.0.0.1", log_to_driver=True)
