"""The paper's 2 x 2 ablation (docs/method.md sections 3 and 7): network (ASMNet | full
MobileNetV2) x loss (with | without the ASM term), over several seeds.

    python -m experiments.ablation --config configs/asmnet_300w.py --workdir runs/ablation \\
        --set data_dir=/tmp/tfds_data --set input_size=64 --set num_epochs=10 --seeds 0 1 2

Cells, named as in the paper: ``ASMNet`` (asmnet + ASM loss, directory ``asmnet_asm``),
``ASMNet_nr`` (asmnet, landmark loss only, ``asmnet_mse``), ``mnv2_r`` (MobileNetV2 + ASM loss,
``mnv2_asm``) and ``mnv2`` (MobileNetV2, landmark loss only, ``mnv2_mse``); the landmark loss is
the config's ``landmark_loss`` (the paper's: L2, i.e. MSE). Each cell sets ``model`` and ``asm_loss``; the mnv2
cells also drop the head L2 penalty (the paper's baseline has none) and the ASMNet cells keep the
config file's (0.01 unless the file is an mnv2 config); ``--set head_l2=...`` applies to all four.
Everything else (``asm_variance`` included) comes from the config file and ``--set``.

Writes ROOT/ablation.md (table + header), ROOT/ablation.json and ROOT/ablation.png (NME bars
with std error bars). Finished runs are skipped, interrupted ones resume from their checkpoints;
see experiments.grid. The last stdout line is JSON with the table's figures.
"""

from __future__ import annotations

import sys

from asmnet_jax.config_base import base_config
if __name__ == "__main__" and not __package__:  # run as a file: the imports below would fail
    raise SystemExit("run it from the repository root as: python -m experiments.ablation ...")

from experiments import common, grid

#: (label, directory, model, ASM loss), in the order of the paper's table
#: (docs/method.md section 7).
CELLS = (
    ("mnv2", "mnv2_mse", "mnv2", False),
    ("mnv2_r", "mnv2_asm", "mnv2", True),
    ("ASMNet_nr", "asmnet_mse", "asmnet", False),
    ("ASMNet", "asmnet_asm", "asmnet", True),
)

#: The paper's 300W NME (%) (docs/method.md section 7), for reference in the report.
PAPER_300W = {"mnv2": (3.93, 7.52, 4.70), "mnv2_r": (3.88, 7.35, 4.59),
              "ASMNet_nr": (5.86, 8.80, 6.46), "ASMNet": (4.82, 8.20, 5.50)}


def make_cells(args, file_config):
    asmnet_l2 = file_config.head_l2 if file_config.model == "asmnet" else base_config().head_l2
    cells = []
    for label, key, model, asm_loss in CELLS:
        cells.append(grid.Cell(
            key=key, label=label, settings={"model": model, "asm_loss": asm_loss},
            defaults={"head_l2": asmnet_l2 if model == "asmnet" else 0.0}))
    return cells


def row_names(row):
    return [row["label"], "ASMNet" if row["settings"]["model"] == "asmnet" else "MobileNetV2",
            "+ ASM" if row["settings"]["asm_loss"] else "plain"]


def notes(args, cells):
    config = common.load_config(args.config)
    sets = dict(common.parse_overrides(args.overrides))
    variance = sets.get("asm_variance", config.asm_variance)
    landmark_loss = sets.get("landmark_loss", config.landmark_loss)
    lines = [f"loss column: the landmark loss ({landmark_loss.upper()}; the paper's is L2) alone "
             "(plain) or with the ASM term (+ ASM)",
             "cells: model and asm_loss as named; head L2 "
             + ", ".join(f"{c.label} {sets.get('head_l2', c.defaults['head_l2'])}" for c in cells)
             + f"; the ASM loss cells use asm_variance {variance}"]
    if config.dataset == "w300":
        lines.append("the paper's 300W NME (common / challenging / full, 224 px, full 300W "
                     "training set): " + "; ".join(f"{k} {'/'.join(map(str, v))}"
                                                   for k, v in PAPER_300W.items()))
    return lines


def plot(path, rows):
    grid.bar_chart(path, rows, "ASMNet ablation: validation NME (mean ± std over seeds)",
                    color=lambda row: ("#dd8452", "ASM loss") if row["settings"]["asm_loss"]
                    else ("#4c72b0", "landmark loss only"))


GRID = grid.Grid(
    name="ablation", title="ASMNet ablation: network x loss", make_cells=make_cells,
    first_columns=("model", "network", "loss"), row_names=row_names, plot=plot, notes=notes,
    description=__doc__)


if __name__ == "__main__":
    sys.exit(grid.main(GRID, common.config_file("asmnet_300w.py")))
