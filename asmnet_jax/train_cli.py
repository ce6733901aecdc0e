"""``asmnet-train``: absl flags and ml_collections config overrides around
:func:`asmnet_jax.train.train_and_evaluate`.

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

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config_base.py")

_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "Training config file (a Python file with get_config()); "
    "override keys with --config.KEY=VALUE.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics; "
                               "a run resumes from it.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "HOST:PORT of process 0, for multi-process training.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with "
                                 "the cluster's auto-detected settings.")


def _initialize_distributed() -> None:
    import jax

    if _COORDINATOR.value is None and not _DISTRIBUTED.value:
        return
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if _COORDINATOR.value is not None:
        jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                                   num_processes=_NUM_PROCESSES.value,
                                   process_id=_PROCESS_ID.value)
    else:
        jax.distributed.initialize()


def _main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _WORKDIR.value is None:
        raise app.UsageError("--workdir is required")
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax", "orbax", "grain", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger(__name__).info(hugepages.status())
    _initialize_distributed()

    from asmnet_jax import init as init_lib
    from asmnet_jax import train

    try:
        summary = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (train.ConfigError, train.TrainingDiverged, init_lib.InitError,
            FileNotFoundError) as err:
        print(f"asmnet-train: error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


def main() -> None:
    # Before anything else: glibc reads GLIBC_TUNABLES only at start-up (asmnet_jax/hugepages.py).
    hugepages.reexec_with_thp()
    app.run(_main)


if __name__ == "__main__":
    main()
