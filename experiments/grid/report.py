"""A grid's results: the finished runs' figures aggregated over seeds, and the report that shows
them (ROOT/<grid>.md, .json and .png, and the JSON line a grid prints last)."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shlex
from typing import TYPE_CHECKING, Callable, Dict, List, Mapping, Optional, Sequence

from experiments import common
from experiments.grid.runs import Run, read_json

if TYPE_CHECKING:
    from experiments.grid.cli import Grid


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
            summary = read_json(os.path.join(run.workdir, "metrics.json"))
            info_path = os.path.join(run.workdir, "run_info.json")
            info = read_json(info_path) if os.path.exists(info_path) else {}
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


def number(value, digits=2, suffix=""):
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
            number(f["auc"]["mean"], 3), number(f["pose_yaw"]["mean"]),
            number(f["pose_pitch"]["mean"]), number(f["pose_roll"]["mean"]),
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
        f"- command: `{shlex.join(common.command_line())}`",
        f"- machine: {machine['platform']}, {machine['processor']}, {machine['cpu_count']} CPUs"
        f" (host {machine['host']})" + (f"; runs on {', '.join(devices)}" if devices else ""),
        f"- workdir: `{os.path.abspath(args.workdir)}`; total training wall time "
        f"{total_wall / 60:.1f} min",
    ]
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines)


def summary_line(grid: Grid, results: Mapping, failed: Sequence[str]) -> Dict:
    """The JSON line a grid prints last: the table's figures per cell."""
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
    """Rewrites ROOT/<grid>.md, .json and .png from the finished runs; returns the results."""
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
    common.write_text(os.path.join(root, f"{grid.name}.md"), header + "\n\n" + table + "\n")
    common.write_json(os.path.join(root, f"{grid.name}.json"), {
        "grid": grid.name, "title": grid.title, "config_file": os.path.abspath(args.config),
        "overrides": [f"{k}={v}" for k, v in overrides], "seeds": list(args.seeds),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": common.command_line(), "machine": machine_description(),
        "dataset": dataset_description(runs[0].config), "failed": list(failed),
        "config_of_first_run": runs[0].config, **results})
    grid.plot(os.path.join(root, f"{grid.name}.png"), results["rows"])
    return results
