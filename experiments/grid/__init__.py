"""The machinery shared by the experiment grids (``experiments.ablation``,
``experiments.asm_accuracy``, ``experiments.study``).

A grid is a list of cells (one config change each, e.g. "mnv2 with the ASM loss"), trained for
several seeds from one config file plus ``--set KEY=VALUE`` overrides (typed as ``asmnet-train
--config.KEY=VALUE`` types them: :func:`experiments.common.load_config`). Each (cell, seed) run
has its own workdir ``ROOT/<cell key>/seed<N>`` and is trained by a fresh subprocess (``python -m
experiments.grid run-cell CELL_JSON``) through :func:`asmnet_jax.train.train_and_evaluate`, its
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

Modules: :mod:`~experiments.grid.cells` (cells, each run's config, config differences),
:mod:`~experiments.grid.runs` (workdirs, status, the training subprocess and its runner),
:mod:`~experiments.grid.report` (aggregation over seeds, the Markdown and JSON report),
:mod:`~experiments.grid.charts` (the PNG) and :mod:`~experiments.grid.cli` (the options and
:func:`main`). Their public names are importable from here.
"""

from experiments.grid.cells import (RUNTIME_KEYS, Cell, GridError, build_config, config_as_dict,
                                    config_differences, flatten, set_key)
from experiments.grid.charts import bar_chart, line_chart
from experiments.grid.cli import Grid, main, parser_for
from experiments.grid.report import (FIGURES, POSE_ANGLES, TABLE_COLUMNS, aggregate, collect,
                                     dataset_description, format_row, machine_description,
                                     markdown_table, mean_std, report_header, summary_line,
                                     write_report)
from experiments.grid.runs import (Run, last_step, plan_runs, read_json, run_cell, run_one,
                                   run_status)

__all__ = [
    "RUNTIME_KEYS", "Cell", "GridError", "build_config", "config_as_dict", "config_differences",
    "flatten", "set_key", "bar_chart", "line_chart", "Grid", "main", "parser_for", "FIGURES",
    "POSE_ANGLES", "TABLE_COLUMNS", "aggregate", "collect", "dataset_description", "format_row",
    "machine_description", "markdown_table", "mean_std", "report_header", "summary_line",
    "write_report", "Run", "last_step", "plan_runs", "read_json", "run_cell", "run_one",
    "run_status",
]
