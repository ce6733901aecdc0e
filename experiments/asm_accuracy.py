"""The ASM accuracy sweep (docs/method.md section 2): ASMNet with the ASM loss, the shape model
keeping 80 / 85 / 90 / 95 / 97 % of the training shapes' variance, over several seeds.

    python -m experiments.asm_accuracy --config configs/asmnet_300w.py --workdir runs/asm_acc \\
        --set data_dir=/tmp/tfds_data --set input_size=64 --set num_epochs=10 --seeds 0 1 2

Each cell sets ``asm_variance`` (``--variances``, fractions or percentages), ``asm_loss=True`` and
``model`` (``--model``, default asmnet); its directory is ``asm<percent>`` (``asm90``). The number
of ASM components of each setting is read from the runs' ``asm.npz``.

Writes ROOT/asm_accuracy.md (table + header), ROOT/asm_accuracy.json and ROOT/asm_accuracy.png
(NME against accuracy, std error bars, components marked). Finished runs are skipped, interrupted
ones resume from their checkpoints; see experiments.grid. The last stdout line is JSON with
the table's figures.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from asmnet_jax.config_base import base_config
if __name__ == "__main__" and not __package__:  # run as a file: the imports below would fail
    raise SystemExit("run it from the repository root as: python -m experiments.asm_accuracy ...")

from experiments import common, grid

DEFAULT_VARIANCES = (0.80, 0.85, 0.90, 0.95, 0.97)


def add_arguments(parser):
    parser.add_argument("--variances", type=float, nargs="+", default=list(DEFAULT_VARIANCES),
                        help="ASM accuracies, as fractions (0.9) or percentages (90) "
                             "(default %(default)s)")
    parser.add_argument("--model", choices=("asmnet", "mnv2"), default="asmnet",
                        help="network (default asmnet; mnv2 gives the paper's mnv2_r)")


def fraction(value: float) -> float:
    v = value / 100.0 if value > 1.0 else value
    if not 0.0 < v < 1.0:
        raise grid.GridError(f"--variances {value}: an accuracy must be in (0, 1) or (0, 100) %")
    return round(v, 6)


def percent_name(v: float) -> str:
    return f"{100 * v:g}"


def make_cells(args, file_config):
    variances = [fraction(v) for v in args.variances]
    if len(set(variances)) != len(variances):
        raise grid.GridError(f"--variances {args.variances}: a value is repeated")
    if args.model == "asmnet":
        l2 = file_config.head_l2 if file_config.model == "asmnet" else base_config().head_l2
    else:
        l2 = 0.0
    return [grid.Cell(key=f"asm{percent_name(v)}", label=f"{percent_name(v)}%",
                       settings={"model": args.model, "asm_loss": True, "asm_variance": v},
                       defaults={"head_l2": l2}, extra={"asm_variance": v})
            for v in sorted(variances)]


def asm_components(workdir: str):
    """The number of principal components of a run's shape model (its asm.npz), None if the
    file is absent. Read with NumPy, in the format ``asmnet_jax.asm.ShapeModel.save`` writes:
    the coordinating process stays off JAX (and any accelerator)."""
    path = os.path.join(workdir, "asm.npz")
    if not os.path.exists(path):
        return None
    with np.load(path) as data:
        return int(data["eigenvalues"].shape[0])


def run_extra(run):
    return {"asm_components": asm_components(run.workdir)}


def components_text(row) -> str:
    counts = sorted({p["asm_components"] for p in row["runs"]
                     if p.get("asm_components") is not None})
    return "/".join(str(c) for c in counts) if counts else "-"


def row_names(row):
    return [row["label"], components_text(row)]


def notes(args, cells):
    model = "ASMNet" if args.model == "asmnet" else "MobileNetV2 (mnv2_r)"
    l2 = dict(common.parse_overrides(args.overrides)).get("head_l2", cells[0].defaults["head_l2"])
    return [f"cells: {model} with the ASM loss, head L2 {l2}; components: the number of "
            "principal components the shape model keeps (from each run's asm.npz)"]


def plot(path, rows):
    grid.line_chart(path, [dict(row, extra={"asm_variance": 100 * row["extra"]["asm_variance"]})
                           for row in rows],
                    "asm_variance", "ASM accuracy (% of shape variance kept)",
                    "Validation NME vs ASM accuracy (mean ± std over seeds)",
                    annotate=lambda row: f"k={components_text(row)}")


GRID = grid.Grid(
    name="asm_accuracy", title="ASMNet: ASM accuracy sweep", make_cells=make_cells,
    first_columns=("ASM accuracy", "components"), row_names=row_names, plot=plot, notes=notes,
    run_extra=run_extra, add_arguments=add_arguments, description=__doc__)


if __name__ == "__main__":
    sys.exit(grid.main(GRID, common.config_file("asmnet_300w.py")))
