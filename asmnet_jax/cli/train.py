"""``asmnet-train``: absl flags and ml_collections config overrides around
:func:`asmnet_jax.train.train_and_evaluate`. A user error (config, data, starting weights,
divergence) is one line ``asmnet-train: error: ...`` and exit status 1.

    asmnet-train --config configs/asmnet_300w.py --workdir runs/x --config.batch_size=32

Without ``--config`` the built-in synthetic default (asmnet_jax/config_base.py) is used.
Several hosts: start one process per host with ``--coordinator_address HOST:PORT
--num_processes N --process_id I`` (on GPUs and TPUs under a cluster manager JAX can find these
itself: pass ``--distributed``).
"""

from __future__ import annotations

import json
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from asmnet_jax import hugepages
from asmnet_jax.cli import error, quiet_logs, run

PROG = "asmnet-train"
_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "config_base.py")

_FLAGS = {}


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
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _FLAGS["workdir"].value is None:
        raise app.UsageError("--workdir is required")
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


def main(argv=None) -> int:
    """``asmnet-train``; ``argv``: the arguments after the program name (default: the command
    line's).

    Does not return: absl's ``app.run`` exits with ``_main``'s status (1 for a user error, printed
    as one line), or 2 for an unknown ``--config.KEY`` or bad usage.
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
    _define_flags()
    app.run(_main, argv=argv)
    return 0  # not reached: app.run exits


if __name__ == "__main__":
    sys.exit(main())
