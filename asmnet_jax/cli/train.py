"""``asmnet-train``: absl flags and ml_collections config overrides around
:func:`asmnet_jax.train.train_and_evaluate`. A user error (config, config file, workdir, data,
starting weights, divergence) is one line ``asmnet-train: error: ...`` and exit status 1; an
unknown ``--config.KEY`` or bad usage, status 2.

    asmnet-train --config configs/asmnet_300w.py --workdir runs/x --config.batch_size=32

Without ``--config`` the built-in synthetic default (asmnet_jax/config_base.py) is used.
Several hosts: start one process per host with ``--coordinator_address HOST:PORT
--num_processes N --process_id I`` (on GPUs and TPUs under a cluster manager JAX can find these
itself: pass ``--distributed``).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
import traceback

from absl import app, flags
from ml_collections import config_flags

from asmnet_jax import hugepages
from asmnet_jax.cli import error, output_dir_problem, quiet_logs, run
from asmnet_jax.errors import AsmnetError

PROG = "asmnet-train"
_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "config_base.py")

_FLAGS = {}


class ConfigFileError(AsmnetError):
    """A ``--config`` file that cannot be loaded; the message names it (and the line)."""


def _define_flags() -> None:
    """Defines the flags. Not at import: ml_collections parses ``--config.KEY`` overrides as soon
    as the config flag exists, and an unknown KEY must first get its one-line error."""
    if _FLAGS:
        return
    _FLAGS["config"] = config_flags.DEFINE_config_file(
        "config", _DEFAULT_CONFIG, "Training config file (a Python file with get_config()); "
        "override keys with --config.KEY=VALUE.", lock_config=True)
    _FLAGS["workdir"] = flags.DEFINE_string(
        "workdir", None, "Directory for checkpoints, logs and metrics; a run resumes from it.")
    _FLAGS["coordinator_address"] = flags.DEFINE_string(
        "coordinator_address", None, "HOST:PORT of process 0, for multi-process training.")
    _FLAGS["num_processes"] = flags.DEFINE_integer("num_processes", None, "Number of processes.")
    _FLAGS["process_id"] = flags.DEFINE_integer("process_id", None, "This process's index.")
    _FLAGS["distributed"] = flags.DEFINE_bool(
        "distributed", False, "Call jax.distributed.initialize() with the cluster's "
        "auto-detected settings.")


def _initialize_distributed() -> None:
    import jax

    if _FLAGS["coordinator_address"].value is None and not _FLAGS["distributed"].value:
        return
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if _FLAGS["coordinator_address"].value is not None:
        jax.distributed.initialize(coordinator_address=_FLAGS["coordinator_address"].value,
                                   num_processes=_FLAGS["num_processes"].value,
                                   process_id=_FLAGS["process_id"].value)
    else:
        jax.distributed.initialize()


def _main(argv) -> int:
    """absl's main: checks the usage, sets up logging and distribution, then trains."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}", exitcode=2)
    if not _FLAGS["workdir"].value:
        raise app.UsageError("--workdir is required", exitcode=2)
    problem = output_dir_problem("--workdir", _FLAGS["workdir"].value)
    if problem:  # before any training work
        return error(PROG, problem)
    quiet_logs()
    logging.getLogger(__name__).info(hugepages.status())
    _initialize_distributed()
    return run(PROG, _train, _FLAGS["workdir"].value)


def _train(workdir: str) -> int:
    """Trains with the parsed config in ``workdir``; prints the summary JSON."""
    from asmnet_jax import train

    summary = train.train_and_evaluate(_FLAGS["config"].value, workdir)
    print(json.dumps(summary))
    return 0


def unknown_override(argv) -> str | None:
    """The message for the first ``--config.KEY`` override whose KEY is not in the schema (absl
    would raise it from deep inside flag parsing, as three chained tracebacks), else None."""
    from asmnet_jax.config_base import config_keys, unknown_key_message

    known = set(config_keys())
    groups = {key.rsplit(".", 1)[0] for key in known if "." in key}
    for arg in argv[1:]:
        if arg == "--":
            break
        if arg.startswith("--config."):
            key = arg[len("--config."):].split("=", 1)[0]
            if key not in known and key not in groups:
                return unknown_key_message(key)
    return None


def _flag_value(argv, name: str):
    """The value of absl flag ``--name`` (or ``-name``; the last one given) in ``argv``, or None."""
    value = None
    args = argv[1:]
    for i, arg in enumerate(args):
        if arg == "--":
            break
        for dashes in ("--", "-"):
            if arg == dashes + name and i + 1 < len(args):
                value = args[i + 1]
            elif arg.startswith(f"{dashes}{name}="):
                value = arg[len(dashes) + len(name) + 1:]
    return value


def _where(err: BaseException, path: str) -> str:
    """``PATH:LINE`` of the deepest frame of ``err``'s traceback in the file ``path``, else
    ``PATH``."""
    target = os.path.abspath(path)
    lines = [f.lineno for f in traceback.extract_tb(err.__traceback__)
             if os.path.abspath(f.filename) == target]
    return f"{path}:{lines[-1]}" if lines else path


def load_config_file(spec: str):
    """Loads the config file ``spec`` (``PATH`` or ``PATH:ARG``, as ``--config`` takes it) and
    returns ``get_config([ARG])``; raises :class:`ConfigFileError` with one line naming the file
    (and line) when that fails: no such file, a syntax error, no ``get_config``, an exception
    while it runs, a result that is not a ConfigDict."""
    import ml_collections

    path, *arg = spec.split(":", 1)  # ml_collections' split: get_config(ARG)
    if not path:
        raise ConfigFileError("--config: no file given")
    if not os.path.exists(path):
        raise ConfigFileError(f"--config: {path}: no such file")
    if os.path.isdir(path):
        raise ConfigFileError(f"--config: {path} is a folder, not a config file (a Python file "
                              "with get_config())")
    name = "_asmnet_train_config_check"
    loader = importlib.machinery.SourceFileLoader(name, path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    sys.modules[name] = module  # as ml_collections loads it (dataclasses look themselves up)
    try:
        loader.exec_module(module)
    except SyntaxError as err:
        mine = err.filename and os.path.abspath(err.filename) == os.path.abspath(path)
        where = f"{err.filename}:{err.lineno}" if err.filename else path
        inside = "" if mine else f" (imported by {path})"
        raise ConfigFileError(f"--config: {where}: {type(err).__name__}: {err.msg}{inside}") \
            from None
    except Exception as err:  # noqa: BLE001 - the user's file: its error is the message
        raise ConfigFileError(f"--config: {_where(err, path)}: {type(err).__name__}: {err}") \
            from None
    finally:
        sys.modules.pop(name, None)
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigFileError(f"--config: {path} defines no get_config(); a config file is a "
                              "Python file whose get_config() returns the training "
                              "ml_collections.ConfigDict")
    call = f"get_config({arg[0]!r})" if arg else "get_config()"
    try:
        config = get_config(*arg)
    except Exception as err:  # noqa: BLE001
        raise ConfigFileError(f"--config: {_where(err, path)}: {call} raised "
                              f"{type(err).__name__}: {err}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        hint = " (a missing return statement?)" if config is None else ""
        raise ConfigFileError(f"--config: {path}: {call} returned {type(config).__name__}, not "
                              f"an ml_collections.ConfigDict{hint}")
    return config


def config_file_problem(argv) -> str | None:
    """The one-line message for a ``--config`` file that cannot be loaded, else None. Checked
    before absl parses the flags: ml_collections loads the file while parsing them and reports a
    failure as a traceback."""
    spec = _flag_value(argv, "config")
    if spec is None:
        return None
    try:
        load_config_file(spec)
    except ConfigFileError as err:
        return str(err)
    return None


def main(argv=None) -> int:
    """``asmnet-train``; ``argv``: the arguments after the program name (default: the command
    line's).

    Does not return: absl's ``app.run`` exits with ``_main``'s status (1 for a user error, printed
    as one line), or 2 for an unknown ``--config.KEY`` or bad usage. A ``--config`` file that
    cannot be loaded is one line and status 1, before absl parses the flags.
    """
    if argv is None:
        # Before anything else: glibc reads GLIBC_TUNABLES only at start-up
        # (asmnet_jax/hugepages.py). Not when called from Python with argv: the restart would
        # repeat the calling process's own command line.
        hugepages.reexec_with_thp()
        argv = sys.argv
    else:
        argv = [PROG] + list(argv)
    message = unknown_override(argv)
    if message:
        error(PROG, message)
        sys.exit(2)
    message = config_file_problem(argv)
    if message:
        sys.exit(error(PROG, message))
    _define_flags()
    app.run(_main, argv=argv)
    return 0  # not reached: app.run exits


if __name__ == "__main__":
    sys.exit(main())
