"""asmnet-eval: a tiny synthetic run evaluated end to end, numbers recomputed independently, the
paper-style table layouts, and the errors for bad input.

The session's tiny run (conftest: 32 x 32 input, 12 steps of batch 8) is the model evaluated.
"""

import csv
import json
import os

import cv2
import numpy as np
import pytest

from asmnet_jax import evaluate, inference, metrics, reports
from asmnet_jax.cli import eval as eval_cli
from asmnet_jax.data import augment, crop, examples, sources
from conftest import tiny_config

CONFIG = tiny_config()
SIZE = CONFIG.input_size
VALIDATION = CONFIG.synthetic.validation  # 12: batches of 8, the last one padded


@pytest.fixture
def run(tiny_run):
    return tiny_run


@pytest.fixture(scope="module")
def evaluated(tiny_run):
    """``asmnet-eval --model RUN --which latest --batch-size 8``: otherwise the defaults."""
    workdir, summary = tiny_run
    code, stdout, stderr = _main(["--model", workdir, "--which", "latest", "--batch-size", "8"])
    assert code == 0, stderr
    return os.path.join(workdir, "eval", str(summary["step"])), stdout


def _steps(workdir):
    return sorted(int(name) for name in os.listdir(os.path.join(workdir, "checkpoints"))
                  if name.isdigit())


def _main(argv):
    """Runs ``asmnet-eval`` (``cli.eval.main(argv)``); returns (exit code, stdout, stderr)."""
    import contextlib
    import io

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = eval_cli.main(argv)
    return code, stdout.getvalue(), stderr.getvalue()


def test_json_is_the_last_line_and_matches_the_file(evaluated, run):
    out, stdout = evaluated
    printed = json.loads(stdout.strip().splitlines()[-1])
    with open(os.path.join(out, "results.json")) as f:
        stored = json.load(f)
    assert printed == stored
    for key in ("nme", "fr", "auc", "pose_mae", "count", "splits"):
        assert key in printed
    assert printed["split"] == "validation" and printed["count"] == VALIDATION
    assert set(printed["pose_mae"]) == {"yaw", "pitch", "roll", "mean"}
    assert list(printed["splits"]) == ["validation"]
    assert printed["model"]["step"] == run[1]["step"] == 12
    assert sorted(os.listdir(out)) == sorted(evaluate.OUTPUT_FILES.values())  # WORKDIR/eval/2


def test_numbers_are_recomputed_from_independent_predictions(run, evaluated):
    workdir, summary = run
    out, _ = evaluated
    with open(os.path.join(out, "results.json")) as f:
        result = json.load(f)
    saved = np.load(os.path.join(out, "per_face.npz"))
    assert int(saved["input_size"]) == SIZE
    # Crop the faces with OpenCV and predict them through inference.make_predictor (not the
    # evaluation's program, which warps on the device).
    loaded = inference.load(workdir, which="latest")
    source = sources.synthetic_split("validation", VALIDATION, CONFIG.synthetic.seed, 68, SIZE)
    crops = [augment.eval_transform(e["image"], e["landmarks"], e["pose"],
                                    crop.base_matrix(e["box"], CONFIG.margin, SIZE), SIZE)
             for e in (source[i] for i in range(VALIDATION))]
    batch = {"image": np.stack([c[0] for c in crops]),
             "landmarks": np.stack([(c[1] + 0.5) / SIZE - 0.5 for c in crops]).reshape(
                 VALIDATION, -1),
             "pose": np.deg2rad(np.stack([c[2] for c in crops])),
             "name": [source[i]["name"] for i in range(VALIDATION)]}
    predictor = inference.make_predictor(loaded)
    # Two batches of 8 (faces 0-7 and 4-11): the batch shape the evaluation compiled.
    assert VALIDATION == 12
    (first, first_pose), (last, last_pose) = (predictor(batch["image"][:8]),
                                              predictor(batch["image"][4:]))
    landmarks = np.concatenate([first, last[4:]])
    pose = np.concatenate([first_pose, last_pose[4:]])
    pred_px = (landmarks.reshape(VALIDATION, 68, 2) + 0.5) * SIZE - 0.5
    gt_px = (batch["landmarks"].reshape(VALIDATION, 68, 2) + 0.5) * SIZE - 0.5
    np.testing.assert_allclose(saved["validation/pred"], pred_px, atol=2e-3)
    np.testing.assert_allclose(saved["validation/gt"], gt_px, atol=1e-4)
    assert list(saved["validation/names"]) == list(batch["name"])
    np.testing.assert_array_equal(saved["validation/index"], np.arange(VALIDATION))

    nme = metrics.per_face_nme(pred_px, gt_px)
    headline = result["splits"]["validation"]
    assert result["nme"] == headline["nme"]
    assert headline["nme"] == pytest.approx(100 * nme.mean(), rel=1e-4)
    assert headline["fr"] == pytest.approx(100 * np.mean(nme > 0.1))
    assert headline["auc"] == pytest.approx(np.mean(np.clip(1 - nme / 0.1, 0, 1)), abs=1e-5)
    np.testing.assert_allclose(saved["validation/nme_inter_ocular"], nme, rtol=1e-4)
    pose_deg = np.rad2deg(pose)
    gt_deg = np.rad2deg(batch["pose"])
    assert headline["pose_mae"]["yaw"] == pytest.approx(
        np.mean(np.abs(pose_deg[:, 0] - gt_deg[:, 0])), abs=1e-3)
    # Training's per-epoch validation predicts through the same code with the same batch: the
    # same NME, to the last digit, for the same weights.
    assert summary["val_nme"] == result["nme"]

    with open(os.path.join(out, "per_face.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == VALIDATION
    assert rows[3]["name"] == "synthetic/validation/3"
    assert float(rows[3]["nme_inter_ocular_pct"]) == pytest.approx(100 * nme[3], abs=1e-3)


def test_report_and_figures(evaluated, run):
    out, stdout = evaluated
    with open(os.path.join(out, "report.md")) as f:
        report = f.read()
    assert "| model | validation |" in report
    assert f"| asmnet (step {run[1]['step']}) |" in report
    assert "## Pose MAE (degrees)" in report and "| split | yaw | pitch | roll | mean |" in report
    assert report in stdout
    ced = cv2.imread(os.path.join(out, "ced.png"))
    assert ced.shape == (int(reports.CED_FIGSIZE[1] * reports.CED_DPI),
                         int(reports.CED_FIGSIZE[0] * reports.CED_DPI), 3)
    grid = cv2.imread(os.path.join(out, "predictions.png"))
    tile = reports.grid_tile_size(SIZE) + reports.GRID_PAD
    assert tile == 130  # 32 px faces enlarged to 128
    # 12 faces in ceil(sqrt(12)) = 4 columns
    assert grid.shape == (3 * tile + reports.GRID_PAD, 4 * tile + reports.GRID_PAD, 3)
    # Both colours are drawn (OpenCV reads BGR).
    pixels = grid.reshape(-1, 3).astype(int)
    assert np.any((pixels[:, 1] > 150) & (pixels[:, 2] < 60) & (pixels[:, 0] < 60))
    assert np.any((pixels[:, 2] > 200) & (pixels[:, 1] < 80) & (pixels[:, 0] < 80))


def test_several_splits_the_box_normaliser_and_options(run, tmp_path):
    workdir, _ = run
    code, stdout, stderr = _main(["--model", workdir, "--which", "latest",
                                  "--split", "validation,test",
                                  "--normaliser", "box", "--threshold", "0.2", "--grid", "3",
                                  "--batch-size", "8", "--out", str(tmp_path)])
    assert code == 0, stderr
    result = json.loads(stdout.strip().splitlines()[-1])
    assert list(result["splits"]) == ["validation", "test"]
    assert result["split"] == "test" and result["normaliser"] == "box"  # test heads
    assert result["threshold"] == 0.2
    saved = np.load(tmp_path / "per_face.npz")
    nme = metrics.per_face_nme(saved["test/pred"], saved["test/gt"], "box")
    assert result["splits"]["test"]["nme"] == pytest.approx(100 * nme.mean(), rel=1e-5)
    assert result["splits"]["test"]["fr"] == pytest.approx(100 * metrics.failure_rate(nme, 0.2))
    with open(tmp_path / "report.md") as f:
        assert "| model | validation | test |" in f.read()
    grid = cv2.imread(str(tmp_path / "predictions.png"))
    assert grid.shape[:2] == (2 * 130 + 2, 2 * 130 + 2)


def test_an_npz_export_of_the_same_faces_gives_the_same_numbers(run, evaluated, tmp_path):
    from asmnet_jax.data import resident

    workdir, _ = run
    faces = sources.synthetic_split("validation", VALIDATION, CONFIG.synthetic.seed, 68, SIZE)
    sources.save_npz(sources.arrays_from_source(faces, 68),
                      sources.npz_path(str(tmp_path / "exports"), "w300", "validation"))
    code, stdout, stderr = _main(["--model", workdir, "--which", "latest", "--batch-size", "8",
                                  "--dataset", "w300", "--arrays-dir", str(tmp_path / "exports"),
                                  "--split", "validation", "--grid", "0",
                                  "--out", str(tmp_path / "eval")])
    assert code == 0, stderr
    result = json.loads(stdout.strip().splitlines()[-1])
    expected = json.loads(evaluated[1].strip().splitlines()[-1])
    assert result["splits"]["validation"]["nme"] == pytest.approx(
        expected["splits"]["validation"]["nme"], rel=1e-6)
    assert "no .npz export of 'wflw'" in _error(
        ["--model", workdir, "--dataset", "wflw", "--arrays-dir", str(tmp_path / "exports")])


# ----------------------------------------------------------------------------------------------
# Bad input


def _error(argv):
    code, stdout, stderr = _main(argv)
    assert code == 1, stdout
    assert stderr.startswith("asmnet-eval: error: ") and "Traceback" not in stderr
    return stderr


def test_missing_checkpoint_is_named(tmp_path):
    missing = str(tmp_path / "nowhere")
    assert missing in _error(["--model", missing])


def test_missing_step_lists_the_steps(run):
    message = _error(["--model", run[0], "--step", "7"])
    assert "step 7" in message and str(_steps(run[0])) in message


def test_unknown_split_lists_the_available_ones(run):
    message = _error(["--model", run[0], "--split", "validation", "commn"])
    assert "'commn'" in message and "test, train, validation" in message


def test_a_landmark_count_mismatch_names_the_split(run, monkeypatch):
    face98 = examples.synthetic_example(5, 0, 48, 98)

    class Source:
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return face98

    monkeypatch.setattr(sources, "open_split", lambda *args, **kwargs: Source())
    message = _error(["--model", os.path.join(run[0], "checkpoints", str(_steps(run[0])[-1]))])
    assert "68 points" in message and "98 points" in message and "'validation'" in message


def test_a_model_directory_needs_a_dataset(run, tmp_path):
    from asmnet_jax import model_dir

    loaded = inference.load(run[0])
    directory = model_dir.save_model(tmp_path / "model", "asmnet", 68, loaded.variables,
                                     extra={"input_size": SIZE})
    message = _error(["--model", directory])
    assert directory in message and "--dataset" in message


def test_bad_options_are_errors(run):
    assert "--batch-size" in _error(["--model", run[0], "--batch-size", "0"])
    assert "--threshold" in _error(["--model", run[0], "--threshold", "-1"])


# ----------------------------------------------------------------------------------------------
# Tables without a dataset


def test_300w_table_has_common_challenging_and_the_face_weighted_full_set():
    errors = {"common": {"inter_ocular": np.array([0.02, 0.04, 0.03])},
              "challenging": {"inter_ocular": np.array([0.08, 0.12])}}
    poses = {"common": (np.zeros((3, 3)), np.ones((3, 3))),
             "challenging": (np.zeros((2, 3)), np.full((2, 3), 3.0))}
    results = evaluate.summarize_splits(errors, 0.1, poses)
    assert list(results) == ["common", "challenging", "full"]
    full = results["full"]
    assert full["count"] == 5
    assert full["nme"] == pytest.approx(100 * 0.29 / 5)  # not the mean of the subset means
    assert full["fr"] == pytest.approx(20.0)
    assert full["pose_mae"]["yaw"] == pytest.approx((3 * 1 + 2 * 3) / 5)
    report = reports.markdown_report(results, "w300", "asmnet")
    lines = report.splitlines()
    header = lines.index("## NME (%), inter-ocular normaliser")
    assert lines[header + 2] == "| model | common | challenging | full |"
    assert lines[header + 4] == "| asmnet | 3.00 | 10.00 | 5.80 |"
    fr = lines.index("## Failure rate (%, NME > 0.1), inter-ocular normaliser")
    assert lines[fr + 4] == "| asmnet | 0.00 | 50.00 | 20.00 |"
    assert "| common | 1.00 | 1.00 | 1.00 | 1.00 |" in report
    # Only one subset evaluated: the paper's columns stay, the others show '-'.
    only = reports.markdown_report(evaluate.summarize_splits(
        {"challenging": errors["challenging"]}), "w300", "m")
    assert "| m | - | 10.00 | - |" in only


def test_wflw_table_has_the_attribute_columns_and_both_normalisers():
    rng = np.random.default_rng(0)
    splits = ["test", "test_pose", "test_makeup", "test_blur"]
    errors = {s: {"inter_ocular": rng.uniform(0, 0.2, 10), "inter_pupil": rng.uniform(0, 0.3, 10)}
              for s in splits}
    results = evaluate.summarize_splits(errors)
    assert results["test"]["by_normaliser"]["inter_pupil"]["nme"] == pytest.approx(
        100 * errors["test"]["inter_pupil"].mean())
    report = reports.markdown_report(results, "wflw", "asmnet")
    header = ("| model | test | pose | expression | illumination | make-up | occlusion | blur |")
    assert report.count(header) == 7  # NME, FR, AUC for two normalisers, and the counts
    assert "## NME (%), inter-pupil normaliser" in report
    assert "| asmnet | 10 | 10 | - | - | 10 | - | 10 |" in report


def test_split_resolution():
    available = ["train", "validation", "common", "challenging", "full"]
    assert evaluate.resolve_splits(None, "w300", available) == (
        ["common", "challenging", "full"], ["common", "challenging"])
    assert evaluate.resolve_splits(["challenging,common", "full"], "w300", available) == (
        ["challenging", "common", "full"], ["challenging", "common"])
    assert evaluate.resolve_splits(["full"], "w300", available) == (["full"], ["full"])
    wflw = ["train", "test", "test_pose", "test_blur"]
    assert evaluate.resolve_splits(None, "wflw", wflw)[1] == ["test", "test_pose", "test_blur"]
    with pytest.raises(evaluate.EvalError, match="has no split 'full'"):
        evaluate.resolve_splits(["common", "full"], "w300", ["common", "challenging"])


def test_best_is_the_kept_checkpoint_with_the_lowest_validation_nme(run):
    workdir, _ = run
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        nme = {r["step"]: r["nme"] for r in map(json.loads, f) if r["kind"] == "val"}
    kept = _steps(workdir)
    assert inference.load(workdir).step == min(kept, key=nme.get)
    assert inference.load(workdir, which="latest").step == kept[-1]
