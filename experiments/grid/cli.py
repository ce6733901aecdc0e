"""A grid's command line: the options every grid script has, and the loop that plans, trains
and reports the runs (:func:`main`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from experiments import common
from experiments.grid.cells import Cell, GridError, flatten
from experiments.grid.report import dataset_description, number, summary_line, write_report
from experiments.grid.runs import Run, last_step, plan_runs, read_json, run_one


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


def parser_for(grid: Grid, default_config: str) -> argparse.ArgumentParser:
    """The options of every grid, then the grid's own (``grid.add_arguments``)."""
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


def main(grid: Grid, default_config: str, argv: Optional[Sequence[str]] = None) -> int:
    """Runs ``grid`` as its command line (``argv``, default ``sys.argv[1:]``) asks; the exit
    status: 0, 1 if a run failed, 2 for a grid that cannot run as asked (one line on stderr),
    130 when interrupted."""
    args = parser_for(grid, default_config).parse_args(argv)
    try:
        return _main(grid, args)
    except common.ExperimentError as err:
        print(f"{grid.name}: error: {err}", file=sys.stderr)
        return 2


def _main(grid: Grid, args) -> int:
    overrides = common.parse_overrides(args.overrides)
    if len(set(args.seeds)) != len(args.seeds):
        raise GridError(f"--seeds {args.seeds}: a seed is repeated")
    cells = grid.make_cells(args, common.load_config(args.config))
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
        flat = {run.cell.label: flatten(run.config) for run in runs}
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
                    "config": run.config, "command": common.command_line()}
            started = time.time()
            ok = run_one(run, spec, env)
            if ok:
                summary = read_json(os.path.join(run.workdir, "metrics.json"))
                print(f"    done in {(time.time() - started) / 60:.1f} min: val NME "
                      f"{number(summary.get('val_nme'))} %", flush=True)
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
    print(json.dumps(summary_line(grid, results, failed)), flush=True)
    return 1 if failed else 0
