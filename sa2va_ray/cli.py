"""The one argument parser of every job and module CLI, their one-line errors, and Ray start-up.

Jobs (``jobs/*.py``): :func:`parse_job_args` (``--config FILE [--strict] [dotted.key=value ...]``) and
:func:`job_main`. Module CLIs (``python -m sa2va_ray.data.split`` ...): :func:`module_parser` (``--config``,
``--strict``, ``-q/--quiet`` and flags whose defaults are config keys, :meth:`CliParser.add_config_argument`),
:func:`parse_module_args` and :func:`module_main`. Both: a usage error, a bad value or a problem the user can fix is
one line on stderr and exit code 2, never a traceback.
"""

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

from sa2va_ray.config import Config, ConfigError, load_config, with_overrides

log = logging.getLogger("sa2va_ray")


class CliParser(argparse.ArgumentParser):
    """``argparse`` with one-line errors, and flags that stand for config keys (:meth:`add_config_argument`)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.config_keys: dict[str, str] = {}
        """Argument dest -> the dotted config key it sets."""

    def error(self, message: str):
        """A usage error: one line naming the program (argparse's default also prints the whole usage)."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def add_config_argument(self, *flags: str, key: str, help: str, **kwargs) -> argparse.Action:
        """A flag for config key ``key``: given, it overrides the key (checked like a dotted override); not given,
        the value is the key's from ``--config``, else the schema's default. The default is never restated here."""
        default = _config_value(_schema_defaults(), key)
        shown = "on" if default is True else "off" if default is False else repr(default)
        action = self.add_argument(*flags, default=None, help=f"{help} (config {key}; default {shown})", **kwargs)
        self.config_keys[action.dest] = key
        return action


@functools.cache
def _schema_defaults() -> Config:
    return Config()


def _config_value(cfg: Config, key: str):
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _apply_config_flags(parser: CliParser, args: argparse.Namespace, cfg: Config) -> Config:
    """The config with the config flags given on the command line applied (each checked by the schema)."""
    given = {key: getattr(args, dest) for dest, key in parser.config_keys.items() if getattr(args, dest) is not None}
    return with_overrides(cfg, given) if given else cfg


def parse_job_args(description: str, argv: list[str] | None = None,
                   add_arguments: Callable[[CliParser], None] | None = None) -> tuple[Config, argparse.Namespace]:
    """Parse a job's command line into a validated :class:`Config`.

    Unknown keys and wrong types exit with status 2 and a one-line message before any work starts.

    Args:
        description: The job's one-line description (``--help``).
        argv: Arguments (default: ``sys.argv[1:]``).
        add_arguments: Adds the job's own flags to the parser; flags added with
            :meth:`CliParser.add_config_argument` set their config key (e.g. ``--source`` -> ``export.source``).
    """
    parser = CliParser(description=description)
    parser.add_argument("--config", required=True, help="YAML config file (see configs/)")
    parser.add_argument("--strict", action="store_true", help="any invalid record or failed sample is an error")
    if add_arguments is not None:
        add_arguments(parser)
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. train.max_steps=10")
    args = parser.parse_args(argv)
    try:
        cfg = _apply_config_flags(parser, args, load_config(args.config, args.overrides)).resolve_paths()
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


USER_ERRORS = {
    "sa2va_ray.model.safetensors_header": ("IntegrityError",),
    "sa2va_ray.checkpoint.safety": ("CheckpointReadError", "UnsafeCheckpointError"),
    "sa2va_ray.data.annotations": ("AnnotationFileError",),
    "sa2va_ray.data.convert.common": ("ConvertError",),
    "sa2va_ray.model.checkpoint": ("LayoutError",),
    "sa2va_ray.model.postprocess": ("PostprocessError",),
    "sa2va_ray.train.resources": ("ResourceError",),
}
"""Errors a user fixes (a file, a key, a value), by module. :func:`module_main` looks them up only in modules already
imported (an error of a module never imported cannot have been raised), so a data CLI never imports torch for them."""


def _user_error_types() -> tuple[type[BaseException], ...]:
    loaded = [(sys.modules[m], names) for m, names in USER_ERRORS.items() if m in sys.modules]
    return tuple(getattr(module, name) for module, names in loaded for name in names)


def module_parser(prog: str, description: str, *, config: str = "", overrides: bool = False, strict: str = "",
                  strict_key: str = "", **kwargs) -> CliParser:
    """The parser of a module CLI (``python -m sa2va_ray...``) with the options every one of them shares.

    Args:
        prog: The command, e.g. ``"python -m sa2va_ray.data.split"``.
        description: One line for ``--help``.
        config: ``"optional"``: ``--config FILE`` gives the defaults of the config flags (without it, the schema's);
            ``"required"``: the CLI works on a config; ``""``: no config.
        overrides: Also take ``dotted.key=value`` overrides (positional, after the flags).
        strict: Help of ``--strict`` (what is an error then); empty: no ``--strict``.
        strict_key: The config key ``--strict`` sets (its default then comes from the config), e.g. ``data.strict``.
        **kwargs: For :class:`argparse.ArgumentParser` (``epilog``, ``formatter_class``).

    Returns:
        A :class:`CliParser`; add the CLI's own flags, then call :func:`parse_module_args`.
    """
    parser = CliParser(prog=prog, description=description, **kwargs)
    if config:
        parser.add_argument("--config", required=config == "required", default=None,
                            help="YAML config (see configs/)" + ("" if config == "required" else
                                                                 ": the defaults of the flags marked 'config'"))
    if strict and strict_key:
        parser.add_config_argument("--strict", key=strict_key, action="store_true", help=strict)
    elif strict:
        parser.add_argument("--strict", action="store_true", help=strict)
    parser.add_argument("-q", "--quiet", action="store_true", help="print errors only (the exit code tells the rest)")
    if overrides:
        parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. train.micro_batch_size=1")
    return parser


def parse_module_args(parser: CliParser, argv: list[str] | None = None) -> tuple[argparse.Namespace, Config | None]:
    """Parse a module CLI's command line; config flags not given take their key's value from the config.

    Precedence: a flag, then a dotted override, then ``--config``'s file, then the schema's default. A bad value is
    one ``config error:`` line and exit 2 (as in the jobs). Sets up warning-level logging (errors only with ``-q``).

    Returns:
        The arguments and the validated config (``None`` when the parser takes no config and has no config flags).
    """
    args = parser.parse_args(argv)
    cfg = None
    if "config" in args or parser.config_keys:
        try:
            cfg = load_config(getattr(args, "config", None), getattr(args, "overrides", ()))
            cfg = _apply_config_flags(parser, args, cfg)
        except ConfigError as e:
            parser.exit(2, f"config error: {e}\n")
        for dest, key in parser.config_keys.items():
            setattr(args, dest, _config_value(cfg, key))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")  # once per process
    if args.quiet:
        logging.getLogger().setLevel(logging.ERROR)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 -- module_main puts the real stdout back
    return args, cfg


def module_main(fn: Callable[..., int]) -> Callable[..., int]:
    """Wrap a module CLI's ``main``: as :func:`job_main`, a problem the user can fix (:data:`USER_ERRORS`) is one
    line on stderr and exit code 2, not a traceback; other exceptions (bugs) keep theirs. Puts back the stdout that
    ``-q`` silenced."""

    @functools.wraps(fn)
    def main(*args, **kwargs) -> int:
        stdout, level = sys.stdout, logging.getLogger().level
        try:
            return fn(*args, **kwargs)
        except ConfigError as e:
            print(f"config error: {e}", file=sys.stderr, flush=True)
            return 2
        except Exception as e:
            if not isinstance(e, _user_error_types()):
                raise
            print(f"error: {e}", file=sys.stderr, flush=True)
            return 2
        finally:  # what -q changed
            logging.getLogger().setLevel(level)
            if sys.stdout is not stdout:
                sys.stdout.close()
                sys.stdout = stdout

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
