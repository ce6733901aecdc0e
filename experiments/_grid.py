"""The machinery shared by the experiment grids (``ablation.py``, ``asm_accuracy.py``).

A grid is a list of cells (one config change each, e.g. "mnv2 with the ASM loss"), trained for
several seeds from one config file plus ``--set key=value`` overrides. Each (cell, seed) run has
its own workdir ``ROOT/<cell key>/seed<N>`` and is trained by a fresh subprocess (this file run
as ``python _grid.py run-cell SPEC``) through :func:`asmnet_jax.train.train_and_evaluate`, its
output going to ``train.log`` in that workdir. A run whose ``metrics.json`` is present is done and
is skipped; one with checkpoints but no ``metrics.json`` resumes from them; one whose saved
``config.json`` differs from the requested config stops the grid with an error naming the
directory and the keys, before anything is trained. The report (``ROOT/<grid>.md``, ``.json``,
``.png``) is rewritten after every run, from all finished runs of the requested cells and seeds.

Files a run's workdir holds besides those of ``train_and_evaluate``: ``cell.json`` (what the grid
asked for: config file, overrides, cell settings, seed, command line), ``run_info.json`` (written
by the runner: parameter count, devices, versions) and ``attempts.jsonl`` (one line per
subprocess: start, wall time, exit status).

The coordinating process never touches an accelerator (it does not initialise JAX), so a runner
on a GPU has the device to itself.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime
import difflib
import importlib.util
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

#: Config keys whose change does not change a run's results: a finished or partial run with
#: other values of these is still the same run.
RUNTIME_KEYS = ("progress_bar", "num_workers", "log_every_steps", "keep_checkpoints")

POSE_ANGLES = ("yaw", "pitch", "roll")

#: Figures aggregated over seeds (name in the report -> how to read it from metrics.json).
FIGURES = {
    "nme": lambda s: s.get("val_nme"),
    "nme_flip": lambda s: s.get("val_nme_flip"),
    "fr": lambda s: s.get("val_fr"),
    "auc": lambda s: s.get("val_auc"),
    "best_nme": lambda s: s.get("best_val_nme"),
    **{f"pose_{angle}": (lambda s, a=angle: (s.get("val_pose_mae") or {}).get(a))
       for angle in POSE_ANGLES},
    "pose_mean": lambda s: (s.get("val_pose_mae") or {}).get("mean"),
}


class GridError(RuntimeError):
    """A grid that cannot run as asked (bad option, changed config of an existing run)."""


# ----------------------------------------------------------------------------------------------
# Configs


@dataclasses.dataclass(frozen=True)
class Cell:
    """One configuration of a grid.

    ``key``: its directory under the root; ``label``: its name in the report; ``settings``: the
    config keys it sets, which ``--set`` may not touch; ``defaults``: keys it sets unless ``--set``
    gives them; ``extra``: report-only values (e.g. the ASM accuracy as a number, for the plot).
    """

    key: str
    label: str
    settings: Mapping[str, object]
    defaults: Mapping[str, object] = dataclasses.field(default_factory=dict)
    extra: Mapping[str, object] = dataclasses.field(default_factory=dict)


def load_config_file(path: str):
    """``get_config()`` of a Python config file (as ``asmnet-train --config`` reads it)."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise GridError(f"config file {path} does not exist")
    name = "_grid_config_" + "".join(c if c.isalnum() else "_" for c in path)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise GridError(f"config file {path} has no get_config()")
    return module.get_config()


def _lookup(config, key: str):
    """(parent ConfigDict, leaf name) of a dotted key; GridError naming close keys if absent."""
    import ml_collections

    target = config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(target, ml_collections.ConfigDict) or part not in target:
            prefix = ".".join(parts[:depth])
            known = sorted(target.keys()) if isinstance(target, ml_collections.ConfigDict) else []
            close = difflib.get_close_matches(part, known, n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            where = f" in {prefix!r}" if prefix else ""
            raise GridError(f"--set {key}: no config key {part!r}{where}{hint}")
        if depth < len(parts) - 1:
            target = target[part]
    return target, parts[-1]


def parse_value(key: str, raw: str, current):
    """The value of ``--set key=raw``, typed like the key's current value (as absl parses
    ``--config.key=raw``)."""
    import ml_collections

    def fail(what):
        return GridError(f"--set {key}={raw}: {what}")

    if isinstance(current, ml_collections.ConfigDict):
        raise fail("a group of keys; set its keys one by one (key.subkey=value)")
    if isinstance(current, bool):
        lowered = raw.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise fail("expected true or false")
    if isinstance(current, int):
        try:
            return int(raw)
        except ValueError:
            raise fail("expected an integer") from None
    if isinstance(current, float):
        try:
            return float(raw)
        except ValueError:
            raise fail("expected a number") from None
    if isinstance(current, str):
        return raw
    if isinstance(current, (tuple, list)):
        try:
            value = ast.literal_eval(raw)
        except (SyntaxError, ValueError):
            raise fail("expected a Python list or tuple, e.g. '(0.8, 1.2)'") from None
        if not isinstance(value, (tuple, list)):
            raise fail("expected a Python list or tuple, e.g. '(0.8, 1.2)'")
        return type(current)(value)
    try:  # None or another type: a Python literal, else the string itself
        return ast.literal_eval(raw)
    except (SyntaxError, ValueError):
        return raw


def parse_overrides(items: Sequence[str]) -> List[Tuple[str, str]]:
    """``["key=value", ...]`` -> ``[(key, value), ...]`` (the value is still a string)."""
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise GridError(f"--set {item!r}: expected KEY=VALUE, e.g. --set input_size=64")
        out.append((key.strip(), raw))
    return out


def set_key(config, key: str, value) -> None:
    parent, leaf = _lookup(config, key)
    parent[leaf] = value


def build_config(config_file: str, overrides: Sequence[Tuple[str, str]], cell: Cell, seed: int):
    """The config of one run: the file, then the cell's defaults, then ``--set``, then the cell's
    settings and the seed. ``--set`` of a key the cell sets is an error."""
    config = load_config_file(config_file)
    overridden = {key for key, _ in overrides}
    for key, value in cell.defaults.items():
        if key not in overridden:
            set_key(config, key, value)
    for key, raw in overrides:
        if key in cell.settings or key == "seed":
            raise GridError(f"--set {key}: this grid sets {key!r} itself"
                            + (" (use --seeds)" if key == "seed" else ""))
        parent, leaf = _lookup(config, key)
        parent[leaf] = parse_value(key, raw, parent[leaf])
    for key, value in cell.settings.items():
        set_key(config, key, value)
    config.seed = int(seed)
    return config


def config_as_dict(config) -> Dict:
    """The JSON form ``train_and_evaluate`` saves as ``config.json``, read back."""
    return json.loads(config.to_json_best_effort())


def _flatten(tree: Mapping, prefix: str = "") -> Dict[str, object]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(saved: Mapping, requested: Mapping,
                       ignore: Sequence[str] = RUNTIME_KEYS) -> List[str]:
    """Human-readable differences between two config dicts, ignoring ``ignore`` keys. A key the
    saved config lacks is no difference when the requested value is the schema's default: keys
    added to the schema later default to what runs did before them."""
    from asmnet_jax.config_base import base_config

    defaults = _flatten(config_as_dict(base_config()))
    a, b = _flatten(saved), _flatten(requested)
    lines = []
    for key in sorted(set(a) | set(b)):
        if key in ignore:
            continue
        if key not in a and key in defaults and defaults[key] == b[key]:
            continue
        if key not in a:
            lines.append(f"{key}: not in the saved config, requested {b[key]!r}")
        elif key not in b:
            lines.append(f"{key}: saved {a[key]!r}, not a key of the requested config")
        elif a[key] != b[key]:
            lines.append(f"{key}: saved {a[key]!r}, requested {b[key]!r}")
    return lines


# ----------------------------------------------------------------------------------------------
# Runs


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


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def run_status(workdir: str, requested: Mapping) -> str:
    """"done", "partial" or "new"; GridError naming ``workdir`` when its saved config differs."""
    config_path = os.path.join(workdir, "config.json")
    metrics_path = os.path.join(workdir, "metrics.json")
    if os.path.exists(config_path):
        try:
            saved = _read_json(config_path)
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
    command = [sys.executable, os.path.abspath(__file__), "run-cell",
               os.path.join(run.workdir, "cell.json")]
    started = time.time()
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with open(run.log_path, "a") as log:
        log.write(f"\n===== {stamp} {run.name}: {shlex.join(command)}\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env=dict(env), cwd=os.getcwd())
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


def _run_cell_main(spec_path: str) -> int:
    """The runner: trains the run that ``spec_path`` (a cell.json) describes."""
    from asmnet_jax.cli import quiet_logs

    quiet_logs()
    spec = _read_json(spec_path)
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


# ----------------------------------------------------------------------------------------------
# Aggregation


def mean_std(values: Sequence[Optional[float]]) -> Dict[str, Optional[float]]:
    """Mean and sample standard deviation (n - 1 denominator) of the finite values; ``std`` is
    None with fewer than two, both are None with none."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(finite)
    if n == 0:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(finite) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n}


def aggregate(summaries: Sequence[Mapping]) -> Dict[str, Dict[str, Optional[float]]]:
    """Mean and std over seeds of every figure in :data:`FIGURES` from ``metrics.json``
    summaries (one per seed)."""
    return {name: mean_std([read(s) for s in summaries]) for name, read in FIGURES.items()}


def _attempts_wall(workdir: str) -> Optional[float]:
    path = os.path.join(workdir, "attempts.jsonl")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return sum(json.loads(line)["wall_s"] for line in f if line.strip())


def _validation_count(workdir: str) -> Optional[int]:
    path = os.path.join(workdir, "metrics.jsonl")
    count = None
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if '"val"' in line:
                    count = json.loads(line).get("count", count)
    return count


def collect(runs: Sequence[Run], cell_extra: Optional[Callable[[Run], Dict]] = None) -> Dict:
    """Results per cell: the finished runs' summaries, aggregates, parameters, wall times."""
    rows = []
    cells = {run.cell.key: run.cell for run in runs}
    for cell in cells.values():
        cell_runs = [r for r in runs if r.cell.key == cell.key]
        done = [r for r in cell_runs
                if os.path.exists(os.path.join(r.workdir, "metrics.json"))]
        per_seed = []
        for run in done:
            summary = _read_json(os.path.join(run.workdir, "metrics.json"))
            info_path = os.path.join(run.workdir, "run_info.json")
            info = _read_json(info_path) if os.path.exists(info_path) else {}
            wall = _attempts_wall(run.workdir)
            per_seed.append({
                "seed": run.seed, "workdir": run.workdir, "summary": summary,
                "params": (info.get("params") or {}).get("total"),
                "trainable_params": (info.get("params") or {}).get("trainable"),
                "device": (f"{info['backend']}: {info['device_count']} x {info['device_kind']}"
                           if info else None),
                "wall_s": wall if wall is not None else summary.get("wall_s"),
                "validation_faces": _validation_count(run.workdir),
                **(cell_extra(run) if cell_extra else {}),
            })
        figures = aggregate([p["summary"] for p in per_seed])
        figures["wall_s"] = mean_std([p["wall_s"] for p in per_seed])
        params = sorted({p["params"] for p in per_seed if p["params"] is not None})
        rows.append({
            "key": cell.key, "label": cell.label, "settings": dict(cell.settings),
            "defaults": dict(cell.defaults), "extra": dict(cell.extra),
            "seeds_requested": [r.seed for r in cell_runs],
            "seeds_done": [p["seed"] for p in per_seed],
            "params": params[0] if len(params) == 1 else (params or None),
            "figures": figures, "runs": per_seed,
        })
    return {"rows": rows}


# ----------------------------------------------------------------------------------------------
# Report


def _num(value, digits=2, suffix=""):
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def _pm(stats: Mapping, digits=2) -> str:
    if stats["mean"] is None:
        return "-"
    if stats["std"] is None:
        return f"{stats['mean']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def _params(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return " / ".join(_params(v) for v in value)
    return f"{value / 1e6:.2f} M"


def _minutes(seconds) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


def format_row(row: Mapping, first_columns: Sequence[str]) -> List[str]:
    f = row["figures"]
    done, asked = len(row["seeds_done"]), len(row["seeds_requested"])
    return [*first_columns, f"{done}/{asked}", _pm(f["nme"]), _pm(f["nme_flip"]),
            _pm(f["fr"], 1),
            _num(f["auc"]["mean"], 3), _num(f["pose_yaw"]["mean"]),
            _num(f["pose_pitch"]["mean"]), _num(f["pose_roll"]["mean"]),
            _params(row["params"]), _minutes(f["wall_s"]["mean"])]


TABLE_COLUMNS = ["seeds done", "val NME % (mean ± std)", "with flip averaging",
                 "FR % (NME > 10 %)", "AUC@0.1",
                 "yaw MAE °", "pitch MAE °", "roll MAE °", "params", "wall per run"]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A Markdown table; the first ``left`` columns are left-aligned, the others right."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < left else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine_description() -> Dict[str, object]:
    return {"platform": platform.platform(), "processor": platform.processor() or
            platform.machine(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "host": platform.node()}


def dataset_description(config: Mapping) -> str:
    if config["dataset"] == "synthetic":
        s = config["synthetic"]
        return (f"synthetic faces ({config['num_landmarks']} points; train {s['train']}, "
                f"validation {s['validation']}, data seed {s['seed']})")
    where = config.get("data_dir") or "the TFDS default data directory"
    return (f"{config['dataset']} ({config['num_landmarks']} points) from {where}: trained on "
            f"split {config['train_split']!r}, evaluated on split {config['val_split']!r}")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def report_header(title: str, args, overrides, runs: Sequence[Run], results: Mapping,
                  notes: Sequence[str]) -> str:
    config = runs[0].config
    devices = sorted({p["device"] for row in results["rows"] for p in row["runs"]
                      if p["device"]})
    faces = sorted({p["validation_faces"] for row in results["rows"] for p in row["runs"]
                    if p["validation_faces"]})
    machine = machine_description()
    total_wall = sum(p["wall_s"] or 0 for row in results["rows"] for p in row["runs"])
    lines = [
        f"# {title}", "",
        f"- config file: `{args.config}`",
        "- overrides: " + (", ".join(f"`{k}={v}`" for k, v in overrides) or "none"),
        f"- dataset: {dataset_description(config)}"
        + (f"; {', '.join(map(str, faces))} validation faces" if faces else ""),
        f"- input {config['input_size']} px, batch {config['batch_size']}, "
        f"{_plural(config['num_epochs'], 'epoch')}"
        + (f" (max_steps {config['max_steps']})" if config["max_steps"] > 0 else "")
        + f", optimizer {config['optimizer']['name']} lr {config['optimizer']['learning_rate']}"
        f" ({config['optimizer']['schedule']})",
        f"- seeds: {', '.join(str(s) for s in args.seeds)}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"- command: `{shlex.join([os.path.relpath(sys.argv[0])] + list(sys.argv[1:]))}`",
        f"- machine: {machine['platform']}, {machine['processor']}, {machine['cpu_count']} CPUs"
        f" (host {machine['host']})" + (f"; runs on {', '.join(devices)}" if devices else ""),
        f"- workdir: `{os.path.abspath(args.workdir)}`; total training wall time "
        f"{total_wall / 60:.1f} min",
    ]
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines)


def write_json(path: str, payload: Mapping) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, default=str)
    os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_chart(path: str, rows: Sequence[Mapping], title: str,
              color: Optional[Callable[[Mapping], Tuple[str, str]]] = None) -> None:
    """NME mean per row with std error bars; rows without a finished run get no bar.
    ``color(row)`` -> (colour, legend label) groups the bars."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.6 * max(len(rows), 2) + 1.5, 3.6))
    means = [row["figures"]["nme"]["mean"] for row in rows]
    stds = [row["figures"]["nme"]["std"] or 0.0 for row in rows]
    positions = np.arange(len(rows))
    styles = [color(row) if color else ("#4c72b0", None) for row in rows]
    bars = ax.bar(positions, [m if m is not None else 0.0 for m in means], yerr=stds, capsize=5,
                  color=[c for c, _ in styles], error_kw={"elinewidth": 1.2})
    for bar, mean, std in zip(bars, means, stds):
        text = "not run" if mean is None else f"{mean:.2f}"
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, (mean or 0.0) + std),
                    xytext=(0, 3), textcoords="offset points", ha="center", va="bottom",
                    fontsize=8)
    legend = {label: c for c, label in styles if label}
    if legend:
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color=c, label=label) for label, c in legend.items()],
                  fontsize=8, loc="upper left", ncol=len(legend))
    ax.set_xticks(positions, [f"{row['label']}\n(n={len(row['seeds_done'])})" for row in rows])
    ax.set_ylabel("validation NME (%)")
    ax.set_title(title, fontsize=10)
    top = max([(m or 0.0) + s for m, s in zip(means, stds)] + [1e-3])
    ax.set_ylim(0, top * 1.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def line_chart(path: str, rows: Sequence[Mapping], x_key: str, x_label: str, title: str,
               annotate: Optional[Callable[[Mapping], str]] = None) -> None:
    """NME mean (with std error bars) against ``row['extra'][x_key]``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    points = [(row["extra"][x_key], row["figures"]["nme"]["mean"],
               row["figures"]["nme"]["std"] or 0.0, row) for row in rows
              if row["figures"]["nme"]["mean"] is not None]
    points.sort(key=lambda p: p[0])
    if points:
        xs, ys, es, done = zip(*points)
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=4, color="#4c72b0")
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        for x, y, row in zip(xs, ys, done):
            if annotate:
                ax.annotate(annotate(row), (x, y), xytext=(4, 6), textcoords="offset points",
                            fontsize=8)
    else:
        ax.text(0.5, 0.5, "no finished runs", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel(x_label)
    ax.set_ylabel("validation NME (%)")
    ax.set_title(title, fontsize=10)
    ax.margins(x=0.1, y=0.2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# The command line


@dataclasses.dataclass
class Grid:
    """What a grid script provides to :func:`main`."""

    name: str                                   # output stem: ROOT/<name>.md, .json, .png
    title: str
    make_cells: Callable[[argparse.Namespace, object], List[Cell]]  # (args, file config)
    first_columns: Sequence[str]                # titles of the columns naming a row
    row_names: Callable[[Mapping], List[str]]   # a collected row -> those columns' cells
    plot: Callable[[str, Sequence[Mapping]], None]
    notes: Callable[[argparse.Namespace, List[Cell]], List[str]] = lambda args, cells: []
    run_extra: Optional[Callable[[Run], Dict]] = None  # per finished run, into the results
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    description: str = ""


def default_config_file(name: str) -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                        name)


def parser_for(grid: Grid, default_config: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=grid.description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=default_config,
                        help="training config file (default %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config override, repeatable "
                        "(e.g. --set input_size=64 --set optimizer.learning_rate=1e-3)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", required=True,
                        help="root directory: one sub-directory per cell and seed")
    parser.add_argument("--only", nargs="+", default=None, metavar="CELL",
                        help="train only these cells (names as in the table, or directory "
                             "names); the report still shows every finished cell")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (each run, its status and settings) and exit")
    parser.add_argument("--stop-on-failure", action="store_true",
                        help="stop at the first failed run (default: go on with the others)")
    parser.add_argument("--xla-cache", default=None, metavar="DIR",
                        help="persistent XLA compilation cache shared by the runs "
                             "(default ROOT/xla_cache; 'none' disables it)")
    grid.add_arguments(parser)
    return parser


def _select(cells: Sequence[Cell], only: Optional[Sequence[str]]) -> List[Cell]:
    if not only:
        return list(cells)
    names = {}
    for cell in cells:
        names[cell.key.lower()] = cell
        names[cell.label.lower()] = cell
    chosen = []
    for name in only:
        cell = names.get(name.lower())
        if cell is None:
            raise GridError(f"--only {name}: no such cell; the cells are "
                            + ", ".join(f"{c.label} ({c.key})" for c in cells))
        if cell not in chosen:
            chosen.append(cell)
    return chosen


def _child_env(args) -> Dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cache = args.xla_cache or os.path.join(os.path.abspath(args.workdir), "xla_cache")
    if cache.lower() != "none" and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        env["JAX_COMPILATION_CACHE_DIR"] = os.path.abspath(cache)
        # Cache every program: the seeds of a cell compile the same ones, most of them small.
        env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    return env


def _summary_line(grid: Grid, results: Mapping, failed: Sequence[str]) -> Dict:
    rows = []
    for row in results["rows"]:
        f = row["figures"]
        rows.append({
            "cell": row["label"], "key": row["key"], **row["extra"],
            **dict(zip(grid.first_columns[1:], grid.row_names(row)[1:])),
            "seeds_done": row["seeds_done"],
            "nme_mean": f["nme"]["mean"], "nme_std": f["nme"]["std"],
            "nme_flip_mean": f["nme_flip"]["mean"],
            "fr_mean": f["fr"]["mean"], "auc_mean": f["auc"]["mean"],
            "pose_mae": {a: f[f"pose_{a}"]["mean"] for a in POSE_ANGLES},
            "params": row["params"], "wall_s_mean": f["wall_s"]["mean"],
        })
    return {"grid": grid.name, "rows": rows, "failed": list(failed)}


def write_report(grid: Grid, args, overrides, runs, failed: Sequence[str], cells) -> Dict:
    results = collect(runs, grid.run_extra)
    root = os.path.abspath(args.workdir)
    notes = list(grid.notes(args, cells))
    notes.append("NME: mean inter-ocular NME on the validation split at the end of training, "
                 "in %; ± is the sample standard deviation over seeds (n - 1); FR, AUC and pose "
                 "MAE are means over seeds; wall: the runs' subprocess time (startup, "
                 "compilation, training, evaluation), summed over attempts, mean over seeds")
    if failed:
        notes.append("FAILED runs (see their train.log): " + ", ".join(failed))
    header = report_header(grid.title, args, overrides, runs, results, notes)
    table = markdown_table(list(grid.first_columns) + TABLE_COLUMNS,
                           [format_row(row, grid.row_names(row)) for row in results["rows"]],
                           left=len(grid.first_columns))
    write_text(os.path.join(root, f"{grid.name}.md"), header + "\n\n" + table + "\n")
    write_json(os.path.join(root, f"{grid.name}.json"), {
        "grid": grid.name, "title": grid.title, "config_file": os.path.abspath(args.config),
        "overrides": [f"{k}={v}" for k, v in overrides], "seeds": list(args.seeds),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": [sys.argv[0]] + list(sys.argv[1:]), "machine": machine_description(),
        "dataset": dataset_description(runs[0].config), "failed": list(failed),
        "config_of_first_run": runs[0].config, **results})
    grid.plot(os.path.join(root, f"{grid.name}.png"), results["rows"])
    return results


def main(grid: Grid, default_config: str, argv: Optional[Sequence[str]] = None) -> int:
    args = parser_for(grid, default_config).parse_args(argv)
    try:
        return _main(grid, args)
    except GridError as err:
        print(f"{grid.name}: error: {err}", file=sys.stderr)
        return 2


def _main(grid: Grid, args) -> int:
    overrides = parse_overrides(args.overrides)
    if len(set(args.seeds)) != len(args.seeds):
        raise GridError(f"--seeds {args.seeds}: a seed is repeated")
    cells = grid.make_cells(args, load_config_file(args.config))
    selected = _select(cells, args.only)
    root = os.path.abspath(args.workdir)
    runs = plan_runs(root, cells, args.seeds, args.config, overrides)
    todo = [r for r in runs if r.cell in selected and r.status != "done"]

    print(f"{grid.name}: {len(cells)} cells x {len(args.seeds)} seeds in {root}; "
          f"{sum(r.status == 'done' for r in runs)} runs done, {len(todo)} to run"
          + (f" (--only {' '.join(args.only)})" if args.only else ""), flush=True)
    for run in runs:
        status = run.status
        if status == "partial":
            step = last_step(run.workdir)
            status = f"partial, resumes from step {step}" if step else "partial, no checkpoint"
        chosen = "" if run.cell in selected else " (not selected)"
        print(f"  {run.name:<28} {status:<32} {os.path.relpath(run.workdir, root)}{chosen}",
              flush=True)
    if args.dry_run:
        flat = {run.cell.label: _flatten(run.config) for run in runs}
        for run in runs[::len(args.seeds)]:
            keys = [*run.cell.settings, *run.cell.defaults]
            print(f"  {run.cell.label}: " + ", ".join(f"{k}={flat[run.cell.label][k]}"
                                                    for k in keys))
        config = runs[0].config
        print(f"  all: {dataset_description(config)}; input {config['input_size']} px, batch "
              f"{config['batch_size']}, {config['num_epochs']} epochs, max_steps "
              f"{config['max_steps']}")
        return 0

    env = _child_env(args)
    failed: List[str] = []
    os.makedirs(root, exist_ok=True)
    try:
        for index, run in enumerate(todo):
            print(f"[{index + 1}/{len(todo)}] {run.name}: "
                  f"{'resuming' if run.status == 'partial' else 'training'} in {run.workdir} "
                  f"(log {run.log_path})", flush=True)
            spec = {"cell": dataclasses.asdict(run.cell), "seed": run.seed,
                    "config_file": os.path.abspath(args.config), "overrides": overrides,
                    "config": run.config, "command": [sys.argv[0]] + list(sys.argv[1:])}
            started = time.time()
            ok = run_one(run, spec, env)
            if ok:
                summary = _read_json(os.path.join(run.workdir, "metrics.json"))
                print(f"    done in {(time.time() - started) / 60:.1f} min: val NME "
                      f"{_num(summary.get('val_nme'))} %", flush=True)
            else:
                failed.append(run.name)
            write_report(grid, args, overrides, runs, failed, cells)
            if not ok and args.stop_on_failure:
                break
    except KeyboardInterrupt:
        print(f"{grid.name}: interrupted; finished runs are kept, a rerun resumes the others",
              file=sys.stderr)
        write_report(grid, args, overrides, runs, failed, cells)
        return 130
    results = write_report(grid, args, overrides, runs, failed, cells)
    print(f"report: {os.path.join(root, grid.name)}.md / .json / .png", flush=True)
    print(json.dumps(_summary_line(grid, results, failed)), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "run-cell":
        sys.exit(_run_cell_main(sys.argv[2]))
    print("usage: python _grid.py run-cell CELL_JSON (used by ablation.py and asm_accuracy.py)",
          file=sys.stderr)
    sys.exit(2)
