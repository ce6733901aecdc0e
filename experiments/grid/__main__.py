"""``python -m experiments.grid run-cell CELL_JSON``: trains one run of a grid (the grids start
it; see :func:`experiments.grid.runs.run_cell`)."""

import sys

from experiments.grid.runs import run_cell

if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "run-cell":
        sys.exit(run_cell(sys.argv[2]))
    print("usage: python -m experiments.grid run-cell CELL_JSON (started by the grids: "
          "experiments.ablation, experiments.asm_accuracy, experiments.study)", file=sys.stderr)
    sys.exit(2)
