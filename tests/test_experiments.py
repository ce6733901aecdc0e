"""The experiment grids: experiments/ablation.py, asm_accuracy.py and their _grid.py.

One real run (ASMNet on 32 synthetic faces at 64 px, one step) checks the report files, the skip
of a finished run and the error on a changed config; the other tests use hand-made runs.
"""

import contextlib
import io
import json
import os
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import _grid  # noqa: E402
import ablation  # noqa: E402
import asm_accuracy  # noqa: E402
import study  # noqa: E402

import conftest  # noqa: E402

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
    assert _grid.mean_std([4.0, 5.0, 6.0]) == {"mean": 5.0, "std": 1.0, "n": 3}
    stats = _grid.mean_std([1.0, None, 2.0, float("nan")])
    assert stats["n"] == 2 and stats["mean"] == 1.5
    assert stats["std"] == pytest.approx(np.std([1.0, 2.0], ddof=1))
    assert _grid.mean_std([3.0]) == {"mean": 3.0, "std": None, "n": 1}
    assert _grid.mean_std([]) == {"mean": None, "std": None, "n": 0}


def test_aggregate_over_seeds():
    figures = _grid.aggregate([_summary(4.0, fr=10.0, auc=0.4, pose=(1, 2, 3)),
                               _summary(6.0, fr=20.0, auc=0.6, pose=(3, 4, 5))])
    assert figures["nme"]["mean"] == 5.0
    assert figures["nme"]["std"] == pytest.approx(np.sqrt(2.0))
    assert figures["fr"]["mean"] == 15.0 and figures["auc"]["mean"] == pytest.approx(0.5)
    assert [figures[f"pose_{a}"]["mean"] for a in ("yaw", "pitch", "roll")] == [2, 3, 4]
    assert figures["pose_mean"]["mean"] == pytest.approx(3.0)
    # A run without pose figures does not break the others.
    partial = _grid.aggregate([{"val_nme": 3.0}, _summary(5.0)])
    assert partial["nme"]["n"] == 2 and partial["pose_yaw"]["n"] == 1


def test_overrides_are_typed_like_the_config_and_checked():
    cell = ablation.make_cells(None, _grid.load_config_file(TINY[1]))[3]  # ASMNet
    overrides = _grid.parse_overrides(["input_size=96", "asm_variance=0.8", "synthetic.train=40",
                                       "augment.enabled=false", "head_l2=0.02",
                                       "optimizer.learning_rate=1e-3"])
    config = _grid.build_config(TINY[1], overrides, cell, seed=7)
    assert config.input_size == 96 and config.asm_variance == 0.8
    assert config.synthetic.train == 40 and config.augment.enabled is False
    assert config.head_l2 == 0.02 and config.optimizer.learning_rate == 1e-3
    assert config.model == "asmnet" and config.asm_loss is True and config.seed == 7
    for bad, message in [("model=mnv2", "sets 'model' itself"), ("seed=3", "--seeds"),
                         ("input_sise=64", "did you mean 'input_size'"),
                         ("input_size=6.5", "integer"), ("augment.enabled=maybe", "true or false"),
                         ("synthetic=3", "one by one")]:
        with pytest.raises(_grid.GridError, match=message):
            _grid.build_config(TINY[1], _grid.parse_overrides([bad]), cell, seed=0)
    with pytest.raises(_grid.GridError, match="KEY=VALUE"):
        _grid.parse_overrides(["input_size"])


def test_the_mnv2_cells_drop_the_head_penalty():
    cells = {c.label: c for c in ablation.make_cells(None, _grid.load_config_file(TINY[1]))}
    assert sorted(cells) == ["ASMNet", "ASMNet_nr", "mnv2", "mnv2_r"]
    configs = {label: _grid.build_config(TINY[1], [], cell, 0) for label, cell in cells.items()}
    assert [(configs[k].model, configs[k].asm_loss, configs[k].head_l2)
            for k in ("ASMNet", "ASMNet_nr", "mnv2_r", "mnv2")] == [
        ("asmnet", True, 0.01), ("asmnet", False, 0.01), ("mnv2", True, 0.0),
        ("mnv2", False, 0.0)]


def test_the_study_cells_change_one_thing_from_the_first_recipe():
    config_file = _grid.default_config_file("asmnet_300w_cpu.py")
    file_config = _grid.load_config_file(config_file)
    args = _grid.parser_for(study.GRID, config_file).parse_args(
        ["--workdir", "unused", "--epochs", "8", "--imagenet", "/w/imagenet.h5"])
    cells = {c.key: c for c in study.make_cells(args, file_config)}
    assert "synthetic" not in cells  # needs --synthetic-model
    configs = {k: _grid.config_as_dict(_grid.build_config(config_file, [], c, 0))
               for k, c in cells.items()}
    reference = configs["reference"]
    assert reference["ema_decay"] == 0.0 and reference["num_epochs"] == 8
    assert reference["init_path"] == "/w/imagenet.h5"
    for key, cell in cells.items():
        changed = {line.split(":")[0] for line in _grid.config_differences(reference, configs[key])}
        assert changed <= set(cell.settings) | {"init_path"}, (key, changed)
        assert {k for k in cell.settings if _grid._flatten(configs[key]).get(k)
                != _grid._flatten(reference).get(k)} == changed - {"init_path"}, key
    assert configs["ema"]["ema_decay"] == 0.995
    assert configs["recipe"]["num_epochs"] == 35 and configs["recipe"]["ema_decay"] == 0.0
    assert configs["recipe_ema"]["ema_decay"] == file_config.ema_decay
    assert configs["recipe_ema"]["num_epochs"] == file_config.num_epochs
    assert configs["scratch"]["init"] == "scratch" and configs["scratch"]["init_path"] == ""


def test_config_differences_ignore_runtime_keys():
    saved = {"input_size": 64, "progress_bar": True, "optimizer": {"learning_rate": 0.1}}
    same = {"input_size": 64, "progress_bar": False, "optimizer": {"learning_rate": 0.1}}
    assert _grid.config_differences(saved, same) == []
    other = {"input_size": 96, "optimizer": {"learning_rate": 0.2}, "new_key": 1}
    diff = _grid.config_differences(saved, other)
    assert any(line.startswith("input_size: saved 64, requested 96") for line in diff)
    assert any(line.startswith("optimizer.learning_rate") for line in diff)
    assert any(line.startswith("new_key: not in the saved config") for line in diff)
    # A schema key added after the run was saved, requested at its default: the same run.
    assert _grid.config_differences(saved, dict(same, ema_decay=0.0)) == []
    assert _grid.config_differences(saved, dict(same, ema_decay=0.99)) == [
        "ema_decay: not in the saved config, requested 0.99"]


# ----------------------------------------------------------------------------------------------
# Hand-made finished runs: the sweep's report, without training


def test_asm_accuracy_reports_finished_runs_and_their_components(tmp_path, capsys):
    from asmnet_jax.asm import ShapeModel

    root = tmp_path / "sweep"
    args = TINY + ["--workdir", str(root), "--variances", "90", "0.95", "--seeds", "0", "1"]
    parsed = _grid.parser_for(asm_accuracy.GRID, "").parse_args(args)
    cells = asm_accuracy.make_cells(parsed, _grid.load_config_file(TINY[1]))
    assert [c.key for c in cells] == ["asm90", "asm95"]
    shapes = np.random.default_rng(0).normal(size=(40, 136))
    overrides = _grid.parse_overrides(parsed.overrides)
    for seed, nme in ((0, 4.0), (1, 6.0)):
        workdir = root / "asm90" / f"seed{seed}"
        workdir.mkdir(parents=True)
        config = _grid.build_config(TINY[1], overrides, cells[0], seed)
        (workdir / "config.json").write_text(config.to_json_best_effort())
        (workdir / "metrics.json").write_text(json.dumps(_summary(nme)))
        ShapeModel.fit(shapes, 0.5).save(workdir / "asm.npz")
    expected_k = ShapeModel.fit(shapes, 0.5).num_components

    # Only the finished 90 % cell is reported; --only leaves the unfinished 95 % cell alone.
    assert _grid.main(asm_accuracy.GRID, "", args + ["--only", "asm90"]) == 0
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
        code = _grid.main(ablation.GRID, "", args)
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
    assert _grid.main(ablation.GRID, "", args) == 0
    out = capsys.readouterr().out
    assert "0 to run" in out and "ASMNet seed 0" in out and "done" in out
    assert os.stat(workdir / "metrics.json").st_mtime_ns == before
    assert (workdir / "attempts.jsonl").read_text() == attempts
    assert _last_json(out)["rows"][3]["nme_mean"] > 0


def test_a_changed_config_is_an_error_naming_the_run(finished_ablation, capsys):
    root, args, code, _, _ = finished_ablation
    assert code == 0
    assert _grid.main(ablation.GRID, "", args + ["--set", "max_steps=2"]) == 2
    err = capsys.readouterr().err
    assert str(root / "asmnet_asm" / "seed0") in err
    assert "max_steps: saved 1, requested 2" in err
    # A runtime-only key is not a change.
    assert _grid.main(ablation.GRID, "", args + ["--set", "log_every_steps=5",
                                                 "--dry-run"]) == 0


def test_a_failed_run_names_the_cell_and_its_log(tmp_path, capsys):
    # 64 > the 32 training faces: the runner stops with a config error.
    args = TINY + ["--workdir", str(tmp_path), "--seeds", "0", "--only", "ASMNet_nr",
                   "--set", "batch_size=64"]
    assert _grid.main(ablation.GRID, "", args) == 1
    captured = capsys.readouterr()
    log = tmp_path / "asmnet_mse" / "seed0" / "train.log"
    assert "ASMNet_nr seed 0 FAILED" in captured.err and str(log) in captured.err
    assert "batch_size" in captured.err  # the log's tail shows why
    assert _last_json(captured.out)["failed"] == ["ASMNet_nr seed 0"]
    assert "FAILED runs" in (tmp_path / "ablation.md").read_text()


def test_run_status_of_new_partial_and_done_runs(tmp_path):
    cell = ablation.make_cells(None, _grid.load_config_file(TINY[1]))[3]
    requested = _grid.config_as_dict(_grid.build_config(TINY[1], [], cell, 0))
    workdir = tmp_path / "run"
    assert _grid.run_status(str(workdir), requested) == "new"
    (workdir / "checkpoints" / "12").mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps(dict(requested, progress_bar=False)))
    assert _grid.run_status(str(workdir), requested) == "partial"
    assert _grid.last_step(str(workdir)) == 12
    (workdir / "metrics.json").write_text(json.dumps(_summary(5.0)))
    assert _grid.run_status(str(workdir), requested) == "done"
    (workdir / "config.json").write_text(json.dumps(dict(requested, asm_variance=0.8)))
    with pytest.raises(_grid.GridError, match=f"{workdir} holds a run with another config"):
        _grid.run_status(str(workdir), requested)
