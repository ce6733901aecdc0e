"""Bad input, one row per case: the one line the user sees.

The project's own errors (:class:`asmnet_jax.errors.AsmnetError`) are one stderr line
``asmnet-<cmd>: error: <message naming the file, line or key>`` and exit status 1 (2 for usage
errors); photos that should work do (exit status 0, no warning). The commands are called in
process (``main(argv)``).

One tiny model serves the whole module: a 32 px ASMNet from random weights, saved as a compact
model directory. The photo rows take it through ``asmnet-predict --model DIR`` with the face
given (``--boxes FILE.json``), and share one loaded model and one compiled predictor: the
fixture :func:`shared_model` hands them to the command in place of loading and compiling it
again (model loading has its own rows below and in tests/test_predict.py).

Covered elsewhere, not repeated here:

* a ``.pts`` with 67 points, or a NaN coordinate, for 68-point data (the reader's error names the
  file and line): tests/test_readers.py::test_bad_pts_raises_naming_file_and_line (its rows
  "67 points, expected 68" and "nan 4" -> "non-finite"); a bad record stops the dataset build:
  tests/test_tfds.py::test_a_bad_record_stops_the_build_instead_of_dropping_its_split;
* ``asmnet-predict`` with a file that is no image (and a truncated JPEG, and ``--skip-bad``):
  tests/test_predict.py::test_cli_unreadable_images_stop_the_run_or_are_reported_with_skip_bad;
  bad ``--box`` / ``--boxes`` / ``--detector`` / ``--batch-size`` values and a folder without
  images: tests/test_predict.py::test_cli_errors_name_the_culprit;
* ``--model`` that does not exist (eval, predict, export):
  tests/test_cli.py::test_a_missing_model_is_one_line_and_exit_status_1;
  ``asmnet-export --model EMPTY_FOLDER``:
  tests/test_export.py::test_bad_model_path_is_a_one_line_error;
* ``asmnet-train --config FILE`` that does not exist, has a syntax error, has no ``get_config``,
  whose ``get_config`` raises or returns no ConfigDict; ``--workdir FILE``; ``asmnet-predict`` and
  ``asmnet-eval`` with ``--out FILE``, ``--min-score`` / ``--threshold`` out of range:
  tests/test_cli.py (the rows after test_library_modules_have_no_command_line_code);
* ``asmnet-eval`` with an unknown split name:
  tests/test_evaluate.py::test_unknown_split_lists_the_available_ones; a step the run does not
  have: tests/test_evaluate.py::test_missing_step_lists_the_steps; a model whose landmark count
  is not the dataset's: tests/test_evaluate.py::test_a_landmark_count_mismatch_names_the_split;
* a compact model directory (``variables.npz``) whose model.json names another landmark count:
  tests/test_model_dir.py::test_compact_directory_of_another_model_is_refused.
"""

import contextlib
import io
import json
import logging
import os
import resource

import cv2
import numpy as np
import pytest

from asmnet_jax import detection, export as export_lib, inference, predict as P
from asmnet_jax.cli import eval as eval_cli, export as export_cli, predict as predict_cli

from _variables import random_variables

SIZE = 32
N = 68
COMMANDS = {"asmnet-eval": eval_cli, "asmnet-export": export_cli, "asmnet-predict": predict_cli}


def _run(module, argv):
    """``module.main(argv)`` in process -> (exit status, stdout, stderr); a usage error's
    SystemExit gives its status."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = module.main([str(a) for a in argv])
        except SystemExit as exit_info:
            code = exit_info.code
    return code, stdout.getvalue(), stderr.getvalue()


def _last_line(err):
    """The last stderr line (third-party loggers may print before it); never a traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    return lines[-1]


def _random_variables(model_name="asmnet", num_landmarks=N, seed=0):
    """Random variables of a model, from its traced shapes (nothing compiled)."""
    from asmnet_jax.models import create_model

    return random_variables(create_model(model_name, num_landmarks), SIZE, seed)


@pytest.fixture(scope="module")
def variables():
    return _random_variables()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, variables):
    from asmnet_jax.model_dir import save_model

    return save_model(tmp_path_factory.mktemp("model") / "tiny", "asmnet", N, variables,
                      compact=True, extra={"input_size": SIZE, "margin": 0.1})


@pytest.fixture(scope="module")
def shared_model(model_dir):
    """The tiny model, loaded once, and one predictor for it (compiled at its first call),
    handed to every ``asmnet-predict --model MODEL_DIR`` of the module."""
    loaded = inference.load(model_dir)
    predictor = inference.make_predictor(loaded)
    real_load, real_make = predict_cli.load_model, inference.make_predictor

    def load_model(args, **kwargs):
        return loaded if args.model == model_dir else real_load(args, **kwargs)

    def make_predictor(model, mesh=None, flip=False):
        if model is loaded and mesh is None and not flip:
            return predictor
        return real_make(model, mesh=mesh, flip=flip)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(predict_cli, "load_model", load_model)
        patch.setattr(inference, "make_predictor", make_predictor)
        yield model_dir


def _predict(model_dir, tmp_path, image, *extra):
    """``asmnet-predict IMAGE --model MODEL_DIR --out OUT --no-draw [extra]`` -> (status, summary
    or None, record of the image or None, stderr)."""
    out = tmp_path / "out"
    code, stdout, err = _run(predict_cli, [image, "--model", model_dir, "--out", out,
                                           "--no-draw", *extra])
    if code != 0:
        assert stdout == ""
        return code, None, None, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    [record] = json.loads((out / "predictions.json").read_text())["images"]
    return code, summary, record, err


def _boxes_file(tmp_path, image, box):
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({os.path.basename(image): [box]}))
    return path


def _detector_or_skip():
    try:
        return detection.choose_detector("auto")
    except P.PredictError as error:
        pytest.skip(str(error))


# --------------------------------------------------------------------------------------------------
# Photos that should work: asmnet-predict reads them (8-bit RGB, upright) and finds the given face.


def _pattern(height=40, width=60):
    return (np.arange(height * width).reshape(height, width) % 251).astype(np.uint8)


def _grey_jpeg(path):
    cv2.imwrite(str(path), _pattern())
    return 60, 40


def _grey_png(path):
    cv2.imwrite(str(path), _pattern())
    return 60, 40


def _cmyk_jpeg(path):
    Image = pytest.importorskip("PIL.Image", reason="writing a CMYK JPEG needs Pillow")
    Image.fromarray(np.dstack([_pattern()] * 3)).convert("CMYK").save(path)
    assert Image.open(path).mode == "CMYK"
    return 60, 40


def _png_16bit(path):
    cv2.imwrite(str(path), (_pattern().astype(np.uint16) * 257))
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    return 60, 40


def _exif_rotated_jpeg(path):
    """Stored 80 wide x 40 high, its left 10 columns white, with EXIF orientation 6 (shown
    turned 90 degrees clockwise): upright it is 40 wide x 80 high, its top 10 rows white."""
    Image = pytest.importorskip("PIL.Image", reason="writing EXIF needs Pillow")
    stored = np.zeros((40, 80, 3), np.uint8)
    stored[:, :10] = 255
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    image.save(path, exif=exif.tobytes(), quality=95)
    upright = P.read_image(path)
    assert upright.shape == (80, 40, 3)
    assert upright[:6].min() > 200 and upright[16:].max() < 60
    return 40, 80


def _one_pixel(path):
    cv2.imwrite(str(path), np.full((1, 1, 3), 128, np.uint8))
    return 1, 1


@pytest.mark.parametrize("name, write", [
    ("grey.jpg", _grey_jpeg),
    ("grey.png", _grey_png),
    ("cmyk.jpg", _cmyk_jpeg),
    ("deep16.png", _png_16bit),
    ("exif_rotated.jpg", _exif_rotated_jpeg),
    ("one_pixel.png", _one_pixel),  # a 1 x 1 photo with its box given: a (mostly black) crop
])
def test_photos_that_should_work(shared_model, tmp_path, name, write):
    image = tmp_path / name
    width, height = write(image)
    boxes = _boxes_file(tmp_path, image, [0, 0, width, height])
    code, summary, record, err = _predict(shared_model, tmp_path, image, "--boxes", boxes)
    assert code == 0, err
    assert err == ""  # works: not a word on stderr
    assert summary["faces"] == 1 and summary["no_faces"]["count"] == 0
    assert (record["width"], record["height"]) == (width, height)  # upright, as shown
    assert len(record["faces"][0]["landmarks"]) == N


# --------------------------------------------------------------------------------------------------
# asmnet-predict: photos it cannot use, or without a face


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory):
    """A 12000 x 12000 grey PNG of zeros: a 160 kB file that decodes to 144 megapixels."""
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    cv2.imwrite(str(path), np.zeros((12000, 12000), np.uint8))
    assert os.path.getsize(path) < 1_000_000
    return path


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_a_huge_image_is_refused_from_its_header(shared_model, tmp_path, huge_png):
    before = _peak_rss_mb()
    code, _, _, err = _predict(shared_model, tmp_path, huge_png, "--box", "0,0,100,100")
    assert code == 1
    assert _last_line(err) == (
        f"asmnet-predict: error: {huge_png}: 12000 x 12000 pixels (144 megapixels) is over the "
        "limit of 100 megapixels; downscale the image first")
    assert _peak_rss_mb() - before < 200  # not decoded (432 MB as RGB)


def test_a_huge_image_is_listed_as_unreadable_with_skip_bad(shared_model, tmp_path, huge_png):
    code, summary, record, err = _predict(shared_model, tmp_path, huge_png, "--box", "0,0,100,100",
                                          "--skip-bad")
    assert code == 0, err
    message = (f"{huge_png}: 12000 x 12000 pixels (144 megapixels) is over the limit of 100 "
               "megapixels; downscale the image first")
    assert _last_line(err) == f"asmnet-predict: warning: skipped {message}"
    assert summary["unreadable"] == {"count": 1, "images": [str(huge_png)]}
    assert record["error"] == message


@pytest.mark.parametrize("name, shape", [
    ("flat_grey.png", (120, 160)),  # a photo without a face
    ("one_pixel.png", (1, 1)),      # too small for any face
])
def test_a_photo_without_a_face_is_named_not_dropped(shared_model, tmp_path, name, shape):
    spec = _detector_or_skip()
    image = tmp_path / name
    cv2.imwrite(str(image), np.full((*shape, 3), 128, np.uint8))
    code, summary, record, err = _predict(shared_model, tmp_path, image)
    assert code == 0, err
    assert _last_line(err) == (f"asmnet-predict: warning: {image}: no face found by the detector "
                               f"{spec.name}; give its box with --boxes or --box")
    assert summary["no_faces"] == {"count": 1, "images": [str(image)]}
    assert summary["images"] == 1 and summary["faces"] == 0 and record["faces"] == []


def test_a_photo_without_boxes_and_without_a_detector_is_named(shared_model, tmp_path):
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), np.full((40, 40, 3), 128, np.uint8))
    code, summary, _, err = _predict(shared_model, tmp_path, image, "--detector", "none")
    assert code == 0, err
    assert _last_line(err) == (f"asmnet-predict: warning: {image}: no face found (no boxes "
                               "given, and --detector none); give its box with --boxes or --box")
    assert summary["no_faces"]["count"] == 1


# --------------------------------------------------------------------------------------------------
# --model that is no usable model: asmnet-eval, asmnet-export, asmnet-predict


def _config(path, **overrides):
    config = {"model": "asmnet", "num_landmarks": N, "input_size": SIZE, **overrides}
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))


def _run_with_checkpoint(path, variables, **config):
    """A training workdir like asmnet-train's: config.json and the checkpoint of step 1."""
    import orbax.checkpoint as ocp

    _config(path, **config)
    manager = ocp.CheckpointManager(
        str(path / "checkpoints"), item_names=("state", "meta"),
        options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False))
    manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(variables),
                                            meta=ocp.args.JsonSave({"step": 1, "val_nme": 0.1})))
    manager.wait_until_finished()
    manager.close()


def _truncate(path, size=4):
    """Every file under ``path`` (or the file) cut to its first ``size`` bytes."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    assert files
    for file in files:
        with open(file, "r+b") as handle:
            handle.truncate(size)


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory, variables):
    """{case: (path, the message after ``--model: ``)} of models that cannot be used."""
    from asmnet_jax.model_dir import save_model

    root = tmp_path_factory.mktemp("bad_models")
    cases = {}

    (root / "empty").mkdir()
    cases["an empty folder"] = (root / "empty", (
        f"{root / 'empty'}: neither a training workdir (config.json + checkpoints/), one of its "
        "checkpoints (WORKDIR/checkpoints/STEP) nor a model directory (model.json + variables/)"))

    _config(root / "no_checkpoints")
    cases["a workdir without checkpoints/"] = (root / "no_checkpoints", (
        f"{root / 'no_checkpoints'}: no checkpoints/ folder (has the run saved a checkpoint?)"))

    _config(root / "empty_checkpoints")
    (root / "empty_checkpoints" / "checkpoints").mkdir()
    cases["a workdir whose checkpoints/ is empty"] = (root / "empty_checkpoints", (
        f"{root / 'empty_checkpoints' / 'checkpoints'}: holds no checkpoint"))

    _run_with_checkpoint(root / "truncated_run", variables)
    _truncate(root / "truncated_run" / "checkpoints" / "1")
    cases["a workdir whose checkpoint is truncated"] = (root / "truncated_run", (
        f"{root / 'truncated_run' / 'checkpoints' / '1'}: cannot read the checkpoint (truncated "
        "or corrupt?): "))  # + orbax's reason

    _run_with_checkpoint(root / "mnv2_run", variables, model="mnv2")
    cases["a workdir whose config names another architecture"] = (root / "mnv2_run", (
        f"{root / 'mnv2_run' / 'checkpoints' / '1'}: variables do not fit mnv2 with 68 landmarks "
        "(missing ['batch_stats/backbone/block_16/depthwise_bn/mean', "
        "'batch_stats/backbone/block_16/depthwise_bn/var', "
        "'batch_stats/backbone/block_16/expand_bn/mean'], unexpected [], wrong shapes "
        "['params/landmark_head/kernel', 'params/pose_head/kernel'])"))

    _config(root / "odd_markup_run", num_landmarks=67)
    cases["a workdir whose config names an unknown landmark count"] = (root / "odd_markup_run", (
        f"{root / 'odd_markup_run' / 'config.json'}: 'num_landmarks' is 67; this project knows "
        "68 and 98"))

    save_model(root / "truncated_dir", "asmnet", N, variables)
    _truncate(root / "truncated_dir" / "variables")
    cases["a model directory whose variables/ is truncated"] = (root / "truncated_dir", (
        f"{root / 'truncated_dir' / 'variables'}: cannot read the variables (no readable "
        "metadata: truncated or corrupt?)"))

    save_model(root / "truncated_npz", "asmnet", N, variables, compact=True)
    _truncate(root / "truncated_npz" / "variables.npz")
    cases["a model directory whose variables.npz is truncated"] = (root / "truncated_npz", (
        f"{root / 'truncated_npz' / 'variables.npz'}: not a readable NumPy archive (File is not a "
        "zip file)"))

    save_model(root / "count_98", "asmnet", N, variables)
    _edit_json(root / "count_98" / "model.json", num_landmarks=98)
    cases["a model directory of another landmark count"] = (root / "count_98", (
        f"{root / 'count_98' / 'variables'}: variables do not fit asmnet with 98 landmarks "
        "(missing [], unexpected [], wrong shapes ['params/landmark_head/bias', "
        "'params/landmark_head/kernel'])"))

    save_model(root / "count_67", "asmnet", N, variables, compact=True)
    _edit_json(root / "count_67" / "model.json", num_landmarks=67)
    cases["a model directory of an unknown landmark count"] = (root / "count_67", (
        f"{root / 'count_67' / 'model.json'}: 'num_landmarks' is 67; this project knows 68 and "
        "98"))
    return cases


MODEL_CASES = ["an empty folder", "a workdir without checkpoints/",
               "a workdir whose checkpoints/ is empty", "a workdir whose checkpoint is truncated",
               "a workdir whose config names another architecture",
               "a workdir whose config names an unknown landmark count",
               "a model directory whose variables/ is truncated",
               "a model directory whose variables.npz is truncated",
               "a model directory of another landmark count",
               "a model directory of an unknown landmark count"]


@pytest.mark.parametrize("prog, case", [
    (prog, case) for prog in sorted(COMMANDS) for case in MODEL_CASES
    # covered in tests/test_export.py::test_bad_model_path_is_a_one_line_error:
    if (prog, case) != ("asmnet-export", "an empty folder")])
def test_a_model_that_cannot_be_used_is_one_line(bad_models, tmp_path, monkeypatch, caplog, prog,
                                                 case):
    path, message = bad_models[case]
    monkeypatch.setattr(export_lib, "import_tensorflow", lambda: None)  # fails before TF is used
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), np.zeros((16, 16, 3), np.uint8))
    argv = {"asmnet-eval": ["--out", tmp_path / "eval"],
            "asmnet-export": ["--out", tmp_path / "export"],
            "asmnet-predict": [photo, "--box", "0,0,8,8", "--out", tmp_path / "out"]}[prog]
    with caplog.at_level(logging.WARNING):
        code, out, err = _run(COMMANDS[prog], argv + ["--model", path])
    assert code == 1 and out == "", err
    # orbax logs the file it cannot parse before raising: held back, the error is the one line
    assert not [r for r in caplog.records if r.name.split(".")[0] in ("absl", "orbax")]
    assert len(err.strip().splitlines()) == 1, err
    line = _last_line(err)
    expected = f"{prog}: error: --model: {message}"
    if message.endswith(": "):  # the rest is the reader's reason
        assert line.startswith(expected) and len(line) > len(expected), line
    else:
        assert line == expected


def test_the_log_of_a_model_that_loads_is_kept(monkeypatch, caplog):
    """The held-back records of orbax (through absl) are passed on when the model loads."""
    from absl import logging as absl_logging

    from asmnet_jax import cli

    def load(*args, **kwargs):
        absl_logging.warning("orbax says something")
        return "loaded"

    monkeypatch.setattr(inference, "load", load)
    args = predict_cli.build_parser().parse_args(["photo.png", "--model", "m"])
    with caplog.at_level(logging.WARNING):
        assert cli.load_model(args) == "loaded"
    assert [(r.name, r.getMessage()) for r in caplog.records] == [("absl", "orbax says something")]


# --------------------------------------------------------------------------------------------------
# asmnet-export: the format


def test_export_has_no_format_option_and_says_so(tmp_path):
    """The formats are fixed (SavedModel, TFLite; --no-tflite, --float16): ``--format`` is a
    usage error (status 2), before any model is loaded."""
    code, out, err = _run(export_cli, ["--model", tmp_path, "--out", tmp_path / "x",
                                       "--format", "onnx"])
    assert code == 2 and out == ""
    assert _last_line(err) == "asmnet-export: error: unrecognized arguments: --format onnx"
