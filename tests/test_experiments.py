"""The experiment grids (experiments.ablation, asm_accuracy, study and their experiments.grid),
the ``--set KEY=VALUE`` overrides of experiments.common, and the recipes the config files share.

One real run (ASMNet on 32 synthetic faces at 64 px, one step) checks the report files, the skip
of a finished run and the error on a changed config; the other tests use hand-made runs. The
repository root must be importable (``python -m pytest`` from it).
"""

import contextlib
import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import conftest
from experiments import ablation, asm_accuracy, common, grid, study

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The built-in default with the session's tiny settings (conftest.TINY), one step: the runs the
# grid starts compile only what the session's cache already holds.
TINY = ["--config", str(ROOT / "configs" / "default.py"),
        *(part for key, value in conftest.TINY.items() for part in ("--set", f"{key}={value}")),
        "--set", "max_steps=1"]


def _summary(nme, fr=0.0, auc=0.5, pose=(1.0, 2.0, 3.0)):
    return {"val_nme": nme, "val_fr": fr, "val_auc": auc, "best_val_nme": nme,
            "val_pose_mae": {"yaw": pose[0], "pitch": pose[1], "roll": pose[2],
                             "mean": sum(pose) / 3}, "wall_s": 10.0}


def _last_json(text):
    return json.loads(text.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------
# Pure functions


def test_mean_std_is_the_sample_statistic_and_skips_missing_values():
    assert grid.mean_std([4.0, 5.0, 6.0]) == {"mean": 5.0, "std": 1.0, "n": 3}
    stats = grid.mean_std([1.0, None, 2.0, float("nan")])
    assert stats["n"] == 2 and stats["mean"] == 1.5
    assert stats["std"] == pytest.approx(np.std([1.0, 2.0], ddof=1))
    assert grid.mean_std([3.0]) == {"mean": 3.0, "std": None, "n": 1}
    assert grid.mean_std([]) == {"mean": None, "std": None, "n": 0}


def test_aggregate_over_seeds():
    figures = grid.aggregate([_summary(4.0, fr=10.0, auc=0.4, pose=(1, 2, 3)),
                               _summary(6.0, fr=20.0, auc=0.6, pose=(3, 4, 5))])
    assert figures["nme"]["mean"] == 5.0
    assert figures["nme"]["std"] == pytest.approx(np.sqrt(2.0))
    assert figures["fr"]["mean"] == 15.0 and figures["auc"]["mean"] == pytest.approx(0.5)
    assert [figures[f"pose_{a}"]["mean"] for a in ("yaw", "pitch", "roll")] == [2, 3, 4]
    assert figures["pose_mean"]["mean"] == pytest.approx(3.0)
    # A run without pose figures does not break the others.
    partial = grid.aggregate([{"val_nme": 3.0}, _summary(5.0)])
    assert partial["nme"]["n"] == 2 and partial["pose_yaw"]["n"] == 1


def test_overrides_are_typed_like_the_config_and_checked():
    cell = ablation.make_cells(None, common.load_config(TINY[1]))[3]  # ASMNet
    overrides = common.parse_overrides(["input_size=96", "asm_variance=0.8", "synthetic.train=40",
                                        "augment.enabled=false", "head_l2=0.02",
                                        "optimizer.learning_rate=1e-3"])
    config = grid.build_config(TINY[1], overrides, cell, seed=7)
    assert config.input_size == 96 and config.asm_variance == 0.8
    assert config.synthetic.train == 40 and config.augment.enabled is False
    assert config.head_l2 == 0.02 and config.optimizer.learning_rate == 1e-3
    assert config.model == "asmnet" and config.asm_loss is True and config.seed == 7
    for bad, message in [("model=mnv2", "sets 'model' itself"), ("seed=3", "--seeds"),
                         ("input_sise=64", "unknown config key config.input_sise; "
                                           "did you mean config.input_size"),
                         ("optimizer.lr=1", "did you mean config.optimizer.learning_rate"),
                         ("input_size=6.5", "input_size=6.5: .*expected an integer"),
                         ("augment.enabled=maybe", "expected true or false"),
                         ("augment.scale_range=0.8 1.2", "expected a tuple"),
                         ("synthetic=3", "one by one")]:
        with pytest.raises(common.ExperimentError, match=message) as raised:
            grid.build_config(TINY[1], common.parse_overrides([bad]), cell, seed=0)
        assert "\n" not in str(raised.value), bad  # one line
    with pytest.raises(common.ExperimentError, match="KEY=VALUE"):
        common.parse_overrides(["input_size"])


def test_set_means_what_config_key_means_to_asmnet_train():
    """--set goes through ml_collections' config_flags, as asmnet-train's --config.KEY=VALUE: the
    key's type in the config decides (absl's booleans, tuples as Python literals), the last of a
    repeated key wins, and no value is evaluated for a string key."""
    config = common.load_config(None, common.parse_overrides(
        ["augment.enabled=1", "final_flip_eval=True", "head_l2=1", "input_size=96",
         "input_size=128", "augment.scale_range=(0.8, 1.2)", "data_dir=~/tfds",
         "init_path=[1, 2]", "synthetic={'train': 40, 'validation': 8, 'seed': 3}"]))
    assert config.augment.enabled is True and config.final_flip_eval is True
    assert config.head_l2 == 1.0 and isinstance(config.head_l2, float)
    assert config.input_size == 128
    assert config.augment.scale_range == (0.8, 1.2)
    assert config.data_dir == "~/tfds" and config.init_path == "[1, 2]"
    assert config.synthetic.to_dict() == {"train": 40, "validation": 8, "seed": 3}
    assert config.is_locked  # as asmnet-train's: a new key cannot be added by mistake
    # Without a config file: the built-in default, as asmnet-train without --config.
    from asmnet_jax.config_base import default_config

    assert common.load_config(None).to_dict() == default_config().to_dict()
    with pytest.raises(common.ExperimentError, match="does not exist"):
        common.load_config(str(ROOT / "configs" / "no_such_config.py"))


def test_the_mnv2_cells_drop_the_head_penalty():
    cells = {c.label: c for c in ablation.make_cells(None, common.load_config(TINY[1]))}
    assert sorted(cells) == ["ASMNet", "ASMNet_nr", "mnv2", "mnv2_r"]
    configs = {label: grid.build_config(TINY[1], [], cell, 0) for label, cell in cells.items()}
    assert [(configs[k].model, configs[k].asm_loss, configs[k].head_l2)
            for k in ("ASMNet", "ASMNet_nr", "mnv2_r", "mnv2")] == [
        ("asmnet", True, 0.01), ("asmnet", False, 0.01), ("mnv2", True, 0.0),
        ("mnv2", False, 0.0)]


def test_the_study_cells_change_one_thing_from_the_first_recipe():
    config_file = common.config_file("asmnet_300w_cpu.py")
    file_config = common.load_config(config_file)
    args = grid.parser_for(study.GRID, config_file).parse_args(
        ["--workdir", "unused", "--epochs", "8", "--imagenet", "/w/imagenet.h5"])
    cells = {c.key: c for c in study.make_cells(args, file_config)}
    assert "synthetic" not in cells  # needs --synthetic-model
    configs = {k: grid.config_as_dict(grid.build_config(config_file, [], c, 0))
               for k, c in cells.items()}
    reference = configs["reference"]
    assert reference["ema_decay"] == 0.0 and reference["num_epochs"] == 8
    assert reference["init_path"] == "/w/imagenet.h5"
    for key, cell in cells.items():
        changed = {line.split(":")[0] for line in grid.config_differences(reference, configs[key])}
        assert changed <= set(cell.settings) | {"init_path"}, (key, changed)
        assert {k for k in cell.settings if grid.flatten(configs[key]).get(k)
                != grid.flatten(reference).get(k)} == changed - {"init_path"}, key
    assert configs["ema"]["ema_decay"] == 0.995
    assert configs["recipe"]["num_epochs"] == 35 and configs["recipe"]["ema_decay"] == 0.0
    assert configs["recipe_ema"]["ema_decay"] == file_config.ema_decay
    assert configs["recipe_ema"]["num_epochs"] == file_config.num_epochs
    assert configs["scratch"]["init"] == "scratch" and configs["scratch"]["init_path"] == ""
    assert "full_distill" not in cells  # needs --teacher
    args = grid.parser_for(study.GRID, config_file).parse_args(
        ["--workdir", "unused", "--teacher", "/w/teacher_run"])
    distill = {c.key: c for c in study.make_cells(args, file_config)}["full_distill"]
    config = grid.config_as_dict(grid.build_config(config_file, [], distill, 0))
    assert config["distill_teacher"] == "/w/teacher_run" and config["distill_weight"] == 1.0
    assert config["num_epochs"] == file_config.num_epochs


def test_config_differences_ignore_runtime_keys():
    saved = {"input_size": 64, "progress_bar": True, "optimizer": {"learning_rate": 0.1}}
    same = {"input_size": 64, "progress_bar": False, "optimizer": {"learning_rate": 0.1}}
    assert grid.config_differences(saved, same) == []
    other = {"input_size": 96, "optimizer": {"learning_rate": 0.2}, "new_key": 1}
    diff = grid.config_differences(saved, other)
    assert any(line.startswith("input_size: saved 64, requested 96") for line in diff)
    assert any(line.startswith("optimizer.learning_rate") for line in diff)
    assert any(line.startswith("new_key: not in the saved config") for line in diff)
    # A schema key added after the run was saved, requested at its default: the same run.
    assert grid.config_differences(saved, dict(same, ema_decay=0.0)) == []
    assert grid.config_differences(saved, dict(same, ema_decay=0.99)) == [
        "ema_decay: not in the saved config, requested 0.99"]


# ----------------------------------------------------------------------------------------------
# The package


def test_scripts_share_only_the_package_s_helpers():
    """experiments/ is a package run as ``python -m experiments.NAME``: no script edits sys.path,
    and what scripts share comes from experiments.common and experiments.grid, never from another
    script or a private name."""
    import ast

    shared = {"common", "grid"}
    for path in sorted((ROOT / "experiments").rglob("*.py")):
        text = path.read_text()
        assert "sys.path" not in text, path
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("experiments"):
                parts = node.module.split(".")
                names = [alias.name for alias in node.names]
                modules = parts[1:2] or names
                assert set(modules) <= shared, (path, node.module, names)
                assert not any(name.startswith("_") for name in names), (path, names)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("experiments.") or \
                        alias.name.split(".")[1] in shared, (path, alias.name)
    shell = (ROOT / "experiments" / "gpu_loop.sh").read_text()
    assert "sys.path" not in shell and "python3 experiments/" not in shell


def test_a_grid_runs_as_a_module(tmp_path):
    """``python -m experiments.ablation`` from the repository root: the plan of a dry run."""
    proc = subprocess.run([sys.executable, "-m", "experiments.ablation", *TINY, "--workdir",
                           str(tmp_path), "--seeds", "0", "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ablation: 4 cells x 1 seeds" in proc.stdout and "ASMNet seed 0" in proc.stdout
    assert "ASMNet: model=asmnet, asm_loss=True, head_l2=0.01" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "experiments.ablation", *TINY, "--workdir",
                          str(tmp_path), "--set", "input_sise=64"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "ablation: error: --set input_sise: unknown config key config.input_sise; did you mean "
        "config.input_size?"]


# ----------------------------------------------------------------------------------------------
# The config files: one recipe (asmnet_jax/recipes.py), each file stating what it varies

#: What configs/asmnet_300w.py sets differently from the schema's defaults: the paper-scale
#: recipe, the dataset and its checkpoint interval.
ASMNET_300W = {"asm_variance": 0.95, "landmark_loss": "l1", "init": "imagenet",
               "input_range": "signed", "dataset": "w300", "input_size": 224, "num_workers": 4,
               "batch_size": 64, "num_epochs": 150, "optimizer.learning_rate": 1e-3,
               "optimizer.warmup_epochs": 3.0, "ema_decay": 0.999, "final_flip_eval": True,
               "checkpoint_every_epochs": 5}
#: The CPU recipe's changes from the paper-scale one.
CPU = {"input_size": 128, "input": "host", "num_workers": 0, "batch_size": 32, "num_epochs": 34,
       "ema_decay": 0.995, "eval_every_epochs": 2, "checkpoint_every_epochs": 2,
       "progress_bar": False}
MNV2 = {"model": "mnv2", "asm_loss": False, "head_l2": 0.0}
WFLW = {"dataset": "wflw", "num_landmarks": 98}
#: What each other config changes from configs/asmnet_300w.py (these values were read from the
#: files before the recipe moved to asmnet_jax/recipes.py; the whole configs compared equal).
CHANGES = {"asmnet_300w_cpu.py": CPU, "mnv2_300w_cpu.py": {**CPU, **MNV2},
           "asmnet_wflw.py": {**WFLW, "checkpoint_every_epochs": 1},
           "mnv2_300w.py": {**MNV2, "checkpoint_every_epochs": 1},
           "mnv2_wflw.py": {**MNV2, **WFLW, "checkpoint_every_epochs": 1}}


def _changes(config, reference):
    a, b = grid.flatten(config.to_dict()), grid.flatten(reference.to_dict())
    assert set(a) == set(b)
    return {key: a[key] for key in a if (type(a[key]), a[key]) != (type(b[key]), b[key])}


def test_the_configs_share_one_recipe():
    from asmnet_jax.config_base import base_config

    reference = common.load_config(common.config_file("asmnet_300w.py"))
    assert _changes(reference, base_config()) == ASMNET_300W
    for name, expected in CHANGES.items():
        assert _changes(common.load_config(common.config_file(name)), reference) == expected, name


# ----------------------------------------------------------------------------------------------
# Hand-made finished runs: the sweep's report, without training


def test_asm_accuracy_reports_finished_runs_and_their_components(tmp_path, capsys):
    from asmnet_jax.asm import ShapeModel

    root = tmp_path / "sweep"
    args = TINY + ["--workdir", str(root), "--variances", "90", "0.95", "--seeds", "0", "1"]
    parsed = grid.parser_for(asm_accuracy.GRID, "").parse_args(args)
    cells = asm_accuracy.make_cells(parsed, common.load_config(TINY[1]))
    assert [c.key for c in cells] == ["asm90", "asm95"]
    shapes = np.random.default_rng(0).normal(size=(40, 136))
    overrides = common.parse_overrides(parsed.overrides)
    for seed, nme in ((0, 4.0), (1, 6.0)):
        workdir = root / "asm90" / f"seed{seed}"
        workdir.mkdir(parents=True)
        config = grid.build_config(TINY[1], overrides, cells[0], seed)
        (workdir / "config.json").write_text(config.to_json_best_effort())
        (workdir / "metrics.json").write_text(json.dumps(_summary(nme)))
        ShapeModel.fit(shapes, 0.5).save(workdir / "asm.npz")
    expected_k = ShapeModel.fit(shapes, 0.5).num_components

    # Only the finished 90 % cell is reported; --only leaves the unfinished 95 % cell alone.
    assert grid.main(asm_accuracy.GRID, "", args + ["--only", "asm90"]) == 0
    out = capsys.readouterr().out
    assert "0 to run" in out and not (root / "asm90" / "seed0" / "train.log").exists()
    line = _last_json(out)
    row = line["rows"][0]
    assert row["cell"] == "90%" and row["components"] == str(expected_k)
    assert row["nme_mean"] == 5.0 and row["nme_std"] == pytest.approx(np.sqrt(2))
    assert line["rows"][1]["nme_mean"] is None
    table = (root / "asm_accuracy.md").read_text()
    assert "| 90% | " + str(expected_k) + " | 2/2 | 5.00 ± 1.41 |" in table
    assert "| 95% | - | 0/2 | - |" in table
    assert (root / "asm_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((root / "asm_accuracy.json").read_text())
    assert saved["rows"][0]["runs"][1]["asm_components"] == expected_k


# ----------------------------------------------------------------------------------------------
# One real run


@pytest.fixture(scope="module")
def finished_ablation(tiny_run, tmp_path_factory):
    """ROOT of an ablation whose ASMNet seed 0 ran one step, and that first invocation's output.
    Its run is the session's tiny run (the fixture) stopped after a step: XLA compiles nothing."""
    root = tmp_path_factory.mktemp("ablation")
    args = TINY + ["--workdir", str(root), "--seeds", "0", "--only", "ASMNet"]

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = grid.main(ablation.GRID, "", args)
    return root, args, code, out.getvalue(), err.getvalue()


def test_the_ablation_trains_and_writes_its_report(finished_ablation):
    root, _, code, out, err = finished_ablation
    assert code == 0, err + out
    workdir = root / "asmnet_asm" / "seed0"
    for name in ("metrics.json", "config.json", "train.log", "cell.json", "run_info.json",
                 "attempts.jsonl", "asm.npz"):
        assert (workdir / name).exists(), name
    line = _last_json(out)
    rows = {row["cell"]: row for row in line["rows"]}
    assert list(rows) == ["mnv2", "mnv2_r", "ASMNet_nr", "ASMNet"]
    assert rows["ASMNet"]["nme_mean"] > 0 and rows["ASMNet"]["nme_std"] is None
    assert rows["ASMNet"]["params"] > 1e6 and set(rows["ASMNet"]["pose_mae"]) == {
        "yaw", "pitch", "roll"}
    assert rows["mnv2"]["seeds_done"] == [] and line["failed"] == []
    table = (root / "ablation.md").read_text()
    for text in ("config file:", "`input_size=32`", "`synthetic.train=32`", "synthetic faces",
                 "seeds: 0", "date:", "command:", "CPUs", "| ASMNet | ASMNet | + ASM | 1/1 |",
                 "| mnv2 | MobileNetV2 | plain | 0/1 |"):
        assert text in table, text
    assert (root / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((root / "ablation.json").read_text())
    assert report["rows"][3]["runs"][0]["summary"]["step"] == 1


def test_a_second_invocation_skips_finished_runs(finished_ablation, capsys):
    root, args, code, _, _ = finished_ablation
    assert code == 0
    workdir = root / "asmnet_asm" / "seed0"
    before = os.stat(workdir / "metrics.json").st_mtime_ns
    attempts = (workdir / "attempts.jsonl").read_text()
    assert grid.main(ablation.GRID, "", args) == 0
    out = capsys.readouterr().out
    assert "0 to run" in out and "ASMNet seed 0" in out and "done" in out
    assert os.stat(workdir / "metrics.json").st_mtime_ns == before
    assert (workdir / "attempts.jsonl").read_text() == attempts
    assert _last_json(out)["rows"][3]["nme_mean"] > 0


def test_a_changed_config_is_an_error_naming_the_run(finished_ablation, capsys):
    root, args, code, _, _ = finished_ablation
    assert code == 0
    assert grid.main(ablation.GRID, "", args + ["--set", "max_steps=2"]) == 2
    err = capsys.readouterr().err
    assert str(root / "asmnet_asm" / "seed0") in err
    assert "max_steps: saved 1, requested 2" in err
    # A runtime-only key is not a change.
    assert grid.main(ablation.GRID, "", args + ["--set", "log_every_steps=5",
                                                 "--dry-run"]) == 0


def test_a_failed_run_names_the_cell_and_its_log(tmp_path, capsys):
    # 64 > the 32 training faces: the runner stops with a config error.
    args = TINY + ["--workdir", str(tmp_path), "--seeds", "0", "--only", "ASMNet_nr",
                   "--set", "batch_size=64"]
    assert grid.main(ablation.GRID, "", args) == 1
    captured = capsys.readouterr()
    log = tmp_path / "asmnet_mse" / "seed0" / "train.log"
    assert "ASMNet_nr seed 0 FAILED" in captured.err and str(log) in captured.err
    assert "batch_size" in captured.err  # the log's tail shows why
    assert _last_json(captured.out)["failed"] == ["ASMNet_nr seed 0"]
    assert "FAILED runs" in (tmp_path / "ablation.md").read_text()


def test_run_status_of_new_partial_and_done_runs(tmp_path):
    cell = ablation.make_cells(None, common.load_config(TINY[1]))[3]
    requested = grid.config_as_dict(grid.build_config(TINY[1], [], cell, 0))
    workdir = tmp_path / "run"
    assert grid.run_status(str(workdir), requested) == "new"
    (workdir / "checkpoints" / "12").mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps(dict(requested, progress_bar=False)))
    assert grid.run_status(str(workdir), requested) == "partial"
    assert grid.last_step(str(workdir)) == 12
    (workdir / "metrics.json").write_text(json.dumps(_summary(5.0)))
    assert grid.run_status(str(workdir), requested) == "done"
    (workdir / "config.json").write_text(json.dumps(dict(requested, asm_variance=0.8)))
    with pytest.raises(grid.GridError, match=f"{workdir} holds a run with another config"):
        grid.run_status(str(workdir), requested)
