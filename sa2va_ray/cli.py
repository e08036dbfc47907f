"""Shared command-line plumbing for the jobs: ``--config FILE [dotted.key=value ...]`` and Ray start-up."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import shlex
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

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
        check_writable(cfg.output_dir, "output_dir")
        if cfg.storage_path and "://" not in cfg.storage_path:
            check_writable(cfg.storage_path, "storage_path")
        if cfg.data.pseudonymise:  # the secret salt is readable and not the public one, before any work starts
            from sa2va_ray.data.pseudonymise import load_salt

            load_salt(cfg.data.salt_file)
    except ConfigError as e:
        parser.exit(2, f"config error: {e}\n")
    if args.strict:
        cfg.data.strict = True
        cfg.eval.strict = True
    setup_logging()
    return cfg, args


def check_writable(path: str, key: str) -> None:
    """Create ``path`` if needed and prove a file can be written in it; else a :class:`ConfigError` naming ``key``."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test_"):
            pass
    except OSError as e:
        raise ConfigError(f"{key}={path} is not writable ({e.strerror or e}); choose another {key}") from None


def check_data_paths(cfg: Config) -> None:
    """The annotation files and image directory the config names exist (unless the synthetic set makes them)."""
    d = cfg.data
    if d.synthetic.enabled:
        return
    for key, path, is_dir in (("data.annotations", d.annotations, False), ("data.val_annotations", d.val_annotations,
                              False), ("data.images_dir", d.images_dir, True)):
        if path and "://" not in path and not (Path(path).is_dir() if is_dir else Path(path).is_file()):
            kind = "directory" if is_dir else "file"
            raise ConfigError(f"{key}={path}: no such {kind}; point {key} at an existing {kind} "
                              "(or set data.synthetic.enabled=true for the demo set)")


def job_main(fn: Callable[..., int]) -> Callable[..., int]:
    """Wrap a job's ``main``: a problem the user can fix (a key, a file, a cluster too small) found before or while
    starting the work is one line on stderr and exit code 2, not a traceback."""

    @functools.wraps(fn)
    def main(*args, **kwargs) -> int:
        from sa2va_ray.checkpoint.integrity import IntegrityError
        from sa2va_ray.checkpoint.safety import CheckpointReadError, UnsafeCheckpointError
        from sa2va_ray.data.annotations import AnnotationFileError
        from sa2va_ray.model.checkpoint import LayoutError
        from sa2va_ray.model.postprocess import PostprocessError
        from sa2va_ray.train.resources import ResourceError

        try:
            return fn(*args, **kwargs)
        except ConfigError as e:
            print(f"config error: {e}", file=sys.stderr, flush=True)
        except (IntegrityError, ResourceError, AnnotationFileError, UnsafeCheckpointError, CheckpointReadError,
                LayoutError, PostprocessError) as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 2

    return main


def command_line() -> str:
    """The command that started this process, for headers of written configs."""
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def setup_logging(level: int = logging.INFO) -> None:
    """Plain, timestamped console logging once per process."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """A ``host:port`` GCS address answers a TCP connect within ``timeout_s`` (Ray itself retries a dead one for
    minutes); other forms (``auto``, ``ray://``) are left to Ray."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ConfigError(f"RAY_ADDRESS={address}: no Ray cluster answers there ({e.strerror or e}); start it, or "
                          "unset RAY_ADDRESS to run on a local Ray") from None


def init_ray(num_cpus: int | None = None) -> None:
    """Connect to ``RAY_ADDRESS`` when set (``ray job submit`` sets it), else start a local Ray.

    Never ``ray.init()`` without an address: that joins whatever Ray's ``ray_current_cluster`` file names, and after
    that head died it retries the dead GCS for minutes. ``address="local"`` always starts a new local instance.
    """
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
        address = os.environ["RAY_ADDRESS"]
        log.info("connecting to Ray at %s", address)
        check_reachable(address)
        ray.init(address=address, log_to_driver=True)
    else:
        from sa2va_ray.train.console import ray_worker_pythonwarnings

        log.info("starting a local Ray (set RAY_ADDRESS to use a cluster)")
        os.environ["PYTHONWARNINGS"] = ray_worker_pythonwarnings()  # Ray's own actors inherit it (known warnings)
        ray.init(address="local", num_cpus=num_cpus, dashboard_host="127.0.0.1", log_to_driver=True)
