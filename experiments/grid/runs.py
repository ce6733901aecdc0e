"""A grid's runs: their workdirs and status, the subprocess that trains each, and that runner.

Each (cell, seed) run is trained by a fresh ``python -m experiments.grid run-cell CELL_JSON``
through :func:`asmnet_jax.train.train_and_evaluate`, its output going to ``train.log`` in its
workdir, beside ``cell.json`` (what the grid asked for), ``run_info.json`` (written by the
runner: parameter count, devices, versions) and ``attempts.jsonl`` (one line per subprocess:
start, wall time, exit status).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from experiments import common
from experiments.grid.cells import (Cell, GridError, build_config, config_as_dict,
                                    config_differences)


@dataclasses.dataclass
class Run:
    """One (cell, seed) of a grid."""

    cell: Cell
    seed: int
    workdir: str
    config: Dict  # the requested config as config_as_dict gives it
    status: str = "new"  # "new", "partial" (checkpoints or a config, no metrics) or "done"

    @property
    def name(self) -> str:
        return f"{self.cell.label} seed {self.seed}"

    @property
    def log_path(self) -> str:
        return os.path.join(self.workdir, "train.log")


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def run_status(workdir: str, requested: Mapping) -> str:
    """"done", "partial" or "new"; GridError naming ``workdir`` when its saved config differs."""
    config_path = os.path.join(workdir, "config.json")
    metrics_path = os.path.join(workdir, "metrics.json")
    if os.path.exists(config_path):
        try:
            saved = read_json(config_path)
        except (OSError, ValueError) as err:
            raise GridError(f"{workdir}: unreadable config.json ({err}); move the directory "
                            "away or delete it to retrain this run") from None
        diff = config_differences(saved, requested)
        if diff:
            shown = "\n    ".join(diff[:12]) + (f"\n    ... {len(diff) - 12} more"
                                                if len(diff) > 12 else "")
            raise GridError(
                f"{workdir} holds a run with another config:\n    {shown}\n"
                "Use another --workdir for these settings, or delete that directory to retrain "
                "it; runs with different configs are never mixed in one table.")
    elif os.path.exists(metrics_path):
        raise GridError(f"{workdir} has metrics.json but no config.json: cannot tell which "
                        "config it ran; move it away")
    if os.path.exists(metrics_path):
        return "done"
    if os.path.exists(config_path) or os.path.isdir(os.path.join(workdir, "checkpoints")):
        return "partial"
    return "new"


def plan_runs(root: str, cells: Sequence[Cell], seeds: Sequence[int], config_file: str,
              overrides: Sequence[Tuple[str, str]]) -> List[Run]:
    """Every (cell, seed) run with its requested config and status; all config mismatches are
    reported together, before anything runs."""
    runs, errors = [], []
    for cell in cells:
        for seed in seeds:
            config = config_as_dict(build_config(config_file, overrides, cell, seed))
            run = Run(cell, int(seed), os.path.join(root, cell.key, f"seed{seed}"), config)
            try:
                run.status = run_status(run.workdir, config)
            except GridError as err:
                errors.append(str(err))
            runs.append(run)
    if errors:
        raise GridError("\n".join(errors))
    return runs


def last_step(workdir: str) -> Optional[int]:
    """The step of the newest checkpoint of a partial run (None if none)."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return None
    steps = [int(name) for name in os.listdir(directory) if name.isdigit()]
    return max(steps) if steps else None


def run_one(run: Run, spec: Mapping, env: Mapping[str, str], tail_lines: int = 25) -> bool:
    """Trains (or resumes) one run in a fresh subprocess; True on success. A failure is
    reported on stderr with the run's name, its log file and the log's last lines."""
    os.makedirs(run.workdir, exist_ok=True)
    with open(os.path.join(run.workdir, "cell.json"), "w") as f:
        json.dump(spec, f, indent=2)
    command = [sys.executable, "-m", "experiments.grid", "run-cell",
               os.path.join(run.workdir, "cell.json")]
    started = time.time()
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with open(run.log_path, "a") as log:
        log.write(f"\n===== {stamp} {run.name}: {shlex.join(command)}\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env=common.python_env(env), cwd=os.getcwd())
        try:
            returncode = process.wait()
        except KeyboardInterrupt:
            # Ctrl-C reached the runner too (same process group): let it stop, then stop it.
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            _record_attempt(run, stamp, time.time() - started, "interrupted")
            raise
    wall = time.time() - started
    _record_attempt(run, stamp, wall, returncode)
    if returncode == 0 and os.path.exists(os.path.join(run.workdir, "metrics.json")):
        return True
    tail = _tail(run.log_path, tail_lines)
    print(f"\n*** {run.name} FAILED (exit status {returncode}, after {wall:.0f} s); "
          f"workdir {run.workdir}\n*** log: {run.log_path}; its last lines:\n{tail}\n",
          file=sys.stderr, flush=True)
    return False


def _record_attempt(run: Run, started: str, wall: float, status) -> None:
    with open(os.path.join(run.workdir, "attempts.jsonl"), "a") as f:
        f.write(json.dumps({"started": started, "wall_s": round(wall, 2),
                            "exit": status, "host": platform.node()}) + "\n")


def _tail(path: str, lines: int) -> str:
    try:
        with open(path, errors="replace") as f:
            text = f.read().splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:])


def run_cell(spec_path: str) -> int:
    """The runner (``python -m experiments.grid run-cell CELL_JSON``): trains the run that
    ``spec_path`` (its cell.json) describes; the exit status is 0 on success."""
    from asmnet_jax.cli import quiet_logs

    quiet_logs()
    spec = read_json(spec_path)
    workdir = os.path.dirname(os.path.abspath(spec_path))
    cell = Cell(spec["cell"]["key"], spec["cell"]["label"], spec["cell"]["settings"],
                spec["cell"].get("defaults", {}))
    config = build_config(spec["config_file"], [tuple(o) for o in spec["overrides"]], cell,
                          spec["seed"])
    diff = config_differences(spec["config"], config_as_dict(config), ignore=())
    if diff:  # the config file changed since the grid planned this run
        print("the config built here differs from the grid's plan:\n  " + "\n  ".join(diff),
              file=sys.stderr)
        return 3

    import jax
    import jax.numpy as jnp

    from asmnet_jax import train
    from asmnet_jax.models import count_parameters

    try:
        summary = train.train_and_evaluate(config, workdir)
    except (train.ConfigError, train.TrainingDiverged) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    model = train.build_model(config)
    images = jax.ShapeDtypeStruct((1, config.input_size, config.input_size, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)
    devices = jax.devices()
    info = {"params": count_parameters(variables), "jax": jax.__version__,
            "backend": jax.default_backend(), "device_count": len(devices),
            "device_kind": devices[0].device_kind, "host": platform.node(),
            "cpu_count": os.cpu_count()}
    with open(os.path.join(workdir, "run_info.json"), "w") as f:
        json.dump(info, f, indent=2)
    print(json.dumps(summary))
    return 0
