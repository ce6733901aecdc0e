"""The recipe study on real faces: which settings make ASMNet learn on 300W, one change at a time.

    python -m experiments.study --workdir runs/study --seeds 0 \\
        --set data_dir=~/tensorflow_datasets --imagenet /path/to/imagenet_no_top.h5

Every cell starts from the CPU recipe (``configs/asmnet_300w_cpu.py``: ImageNet backbone with BN
re-estimation, 128 px, L1 loss with the ASM term, Adam 1e-3 with warm-up and cosine decay, BN
momentum 0.9) and changes one thing: the starting weights (scratch, synthetic-pretrained), the
input size, the loss (the paper's L2, no ASM term), the learning rate, the BN momentum, the
augmentation strength, or the whole recipe (the authors': from scratch, L2, triangular cyclic
schedule to 1e-2). All cells train for ``--epochs`` (a short budget, so that a row costs minutes
rather than the recipe's 45), except the two full-length rows: ``recipe`` (the first CPU recipe,
35 epochs, raw weights) and ``recipe_ema`` (the config file as it stands: a weight average,
its own epochs). The other rows evaluate the raw weights, as the first recipe did
(``STUDY_BASE``); the ``ema`` row adds the average. Each run also reports its validation NME with test-time flip averaging
(``final_flip_eval``).

The ``full_*`` cells are the second study: each is the config file as it stands (weight average,
its own 34 epochs) with one change: input size 160 / 192 / 224, the Wing loss, the MobileNetV2
baseline, 60 epochs, weak augmentation, a slower weight average, and distillation from a teacher
(``--teacher``, e.g. the 224 px paper recipe's workdir; without it that cell is left out). They take 15-60 minutes each on
two cores; pick some with ``--only``:

    python -m experiments.study --workdir runs/study --seeds 0 --only full_wing full_size192 \\
        --set data_dir=~/tensorflow_datasets --imagenet /path/to/imagenet_no_top.h5

``synthetic`` needs ``--synthetic-model``: a workdir or model directory of ASMNet trained on
synthetic faces at the same input size (e.g. ``asmnet-train --workdir runs/synth128
--config.input_size=128 --config.num_epochs=20``); without it that cell is left out.

Writes ROOT/study.md, ROOT/study.json and ROOT/study.png; finished runs are skipped, interrupted
ones resume (experiments.grid). The last stdout line is JSON with the table's figures.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not __package__:  # run as a file: the imports below would fail
    raise SystemExit("run it from the repository root as: python -m experiments.study ...")

from experiments import common, grid

SCRATCH = {"init": "scratch", "input_range": "unit"}
#: A cell setting that takes the config file's value (over STUDY_BASE and --epochs).
FROM_FILE = "<the config file's>"
#: The config file as it stands (weight average, its own epochs): the full-length cells.
CURRENT_RECIPE = {"ema_decay": FROM_FILE, "num_epochs": FROM_FILE}
WEAK_AUGMENT = {"augment.rotation_deg": 10.0, "augment.scale_range": (0.9, 1.1),
                "augment.translation": 0.04, "augment.occlusion_enabled": False,
                "augment.blur_enabled": False, "augment.noise_enabled": False}
#: (directory, label, what it changes from the recipe, settings), in the table's order.
CELLS = (
    ("reference", "reference", "-", {}),
    ("scratch", "from scratch", "init", SCRATCH),
    ("synthetic", "synthetic-pretrained", "init", {"init": "checkpoint", "input_range": "unit"}),
    ("size224", "224 px", "input size", {"input_size": 224}),
    ("scratch224", "from scratch, 224 px", "init, input size", {**SCRATCH, "input_size": 224}),
    ("l2", "paper's L2 loss", "loss", {"landmark_loss": "l2"}),
    ("no_asm", "L1 without the ASM term", "loss", {"asm_loss": False}),
    ("l2_no_asm", "L2 without the ASM term", "loss", {"landmark_loss": "l2", "asm_loss": False}),
    ("lr5e-4", "learning rate 5e-4", "learning rate", {"optimizer.learning_rate": 5e-4}),
    ("lr2e-3", "learning rate 2e-3", "learning rate", {"optimizer.learning_rate": 2e-3}),
    ("constant_lr", "constant 5e-4, no decay", "schedule",
     {"optimizer.schedule": "constant", "optimizer.learning_rate": 5e-4}),
    ("bn0.99", "BN momentum 0.99", "BN momentum", {"bn_momentum": 0.99}),
    ("no_head_l2", "no head L2 penalty", "regularisation", {"head_l2": 0.0}),
    ("weak_aug", "weak augmentation", "augmentation", WEAK_AUGMENT),
    ("no_aug", "no augmentation", "augmentation", {"augment.enabled": False}),
    ("authors", "the authors' recipe", "everything",
     {**SCRATCH, "landmark_loss": "l2", "optimizer.schedule": "authors_cyclic",
      "optimizer.learning_rate": 1e-2, "batch_size": 70, "bn_momentum": 0.999,
      "head_init": "keras"}),
    ("ema", "weight average (EMA 0.995)", "evaluated weights", {"ema_decay": 0.995}),
    ("recipe", "first CPU recipe, 35 epochs", "epochs", {"num_epochs": 35}),
    ("recipe_ema", "the CPU recipe (EMA), full length", "epochs, weights",
     {"ema_decay": FROM_FILE, "num_epochs": FROM_FILE}),
    # One change at a time against the current CPU recipe at its full length (weight average,
    # 34 epochs): the second study, for a model at or below 4.10 %.
    *((f"full_{key}", f"CPU recipe, {label}", changes, {**CURRENT_RECIPE, **settings})
      for key, label, changes, settings in (
          ("size160", "160 px", "input size", {"input_size": 160}),
          ("size192", "192 px", "input size", {"input_size": 192}),
          ("size224", "224 px", "input size", {"input_size": 224}),
          ("wing", "Wing loss", "loss", {"landmark_loss": "wing"}),
          ("mnv2", "the MobileNetV2 baseline", "network",
           {"model": "mnv2", "dropout_rate": 0.0, "head_l2": 0.0}),
          ("epochs60", "60 epochs", "epochs", {"num_epochs": 60}),
          ("weak_aug", "weak augmentation", "augmentation", WEAK_AUGMENT),
          ("ema0.999", "slower weight average (0.999)", "evaluated weights",
           {"ema_decay": 0.999}),
          ("distill", "distilled from --teacher", "loss (a teacher term)",
           {"distill_weight": 1.0}))),
)

#: What every cell holds unless it sets it: the rows compare against the first recipe, which
#: evaluated the raw weights (the config file now keeps a weight average; see the ``ema`` row).
STUDY_BASE = {"ema_decay": 0.0}


def add_arguments(parser):
    parser.add_argument("--imagenet", default="", metavar="FILE.h5",
                        help="the ImageNet MobileNetV2 weights file of the ImageNet cells "
                             "(default: Keras' cache, ~/.keras/models)")
    parser.add_argument("--epochs", type=int, default=8,
                        help="epochs of every cell but 'recipe' (default %(default)s)")
    parser.add_argument("--synthetic-model", default=None, metavar="PATH",
                        help="ASMNet trained on synthetic faces (workdir or model directory), "
                             "for the 'synthetic' cell")
    parser.add_argument("--teacher", default=None, metavar="PATH",
                        help="the teacher of the 'full_distill' cell (a workdir or model "
                             "directory with the same landmarks, any input size); without it that "
                             "cell is left out")


def _file_value(config, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


def make_cells(args, file_config):
    cells = []
    for key, label, changes, settings in CELLS:
        settings = dict(settings)
        if key == "synthetic":
            if not args.synthetic_model:
                continue
            settings["init_path"] = os.path.abspath(args.synthetic_model)
        if key == "full_distill":
            if not args.teacher:
                continue
            settings["distill_teacher"] = os.path.abspath(args.teacher)
        for name, value in settings.items():
            if value == FROM_FILE:
                settings[name] = _file_value(file_config, name)
        settings = {**STUDY_BASE, **settings}
        settings.setdefault("num_epochs", args.epochs)
        epochs = settings["num_epochs"]
        imagenet = settings.get("init", file_config.init) == "imagenet"
        defaults = {"init_path": os.path.abspath(args.imagenet)} if imagenet and args.imagenet \
            else {}
        cells.append(grid.Cell(key=key, label=label, settings=settings, defaults=defaults,
                               extra={"changes": changes, "epochs": epochs}))
    return cells


def row_names(row):
    shown = {k: v for k, v in row["settings"].items()
             if k not in ("num_epochs", "init_path") and STUDY_BASE.get(k, "-") != v}
    return [row["label"], row["extra"]["changes"], str(row["extra"]["epochs"]),
            ", ".join(f"{k}={v}" for k, v in shown.items()) or "-"]


def notes(args, cells):
    return ["every cell is the config file without its weight average (ema_decay=0, the first "
            "recipe) with one change (the settings column) and "
            f"{args.epochs} epochs, except the two full-length recipe rows",
            "'with flip averaging': the same final model, each face also predicted mirrored and "
            "mapped back with the 68-point mirror order, the two averaged"]


def plot(path, rows):
    grid.bar_chart(path, rows, "Recipe study: validation NME (one change each)",
                    color=lambda row: ("#55a868", "ImageNet backbone")
                    if row["settings"].get("init", "imagenet") == "imagenet"
                    else ("#4c72b0", "other start"))


GRID = grid.Grid(
    name="study", title="Recipe study on real 300W faces (one change at a time)",
    make_cells=make_cells, first_columns=("cell", "changes", "epochs", "settings"),
    row_names=row_names, plot=plot, notes=notes, add_arguments=add_arguments,
    description=__doc__)


if __name__ == "__main__":
    sys.exit(grid.main(GRID, common.config_file("asmnet_300w_cpu.py")))
