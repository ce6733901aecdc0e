"""The commands' shared rules (asmnet_jax/cli): the same flag names everywhere, old flags refused,
user errors as one line with exit status 1, and no command-line code in the library modules.

Cheap: argument parsing and error paths only, no training and no model."""

import ast
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from asmnet_jax import export as export_lib, inference
from asmnet_jax.cli import build_data, eval as eval_cli, export, import_keras, info, predict, train

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(eval_cli.__file__)))
COMMANDS = {"asmnet-eval": eval_cli, "asmnet-predict": predict, "asmnet-export": export,
            "asmnet-info": info, "asmnet-build-data": build_data,
            "asmnet-import-keras": import_keras}
#: Arguments each command needs besides those a test checks.
REQUIRED = {"asmnet-eval": [], "asmnet-predict": ["photo.jpg"], "asmnet-export": ["--out", "o"],
            "asmnet-info": [], "asmnet-build-data": ["w300"], "asmnet-import-keras": ["in.h5"]}
WITH_MODEL = ("asmnet-eval", "asmnet-predict", "asmnet-export")
WITH_OUT = ("asmnet-eval", "asmnet-predict", "asmnet-export", "asmnet-import-keras")
WITH_BATCH = ("asmnet-eval", "asmnet-predict", "asmnet-export")
#: Library modules that import absl for a reason other than a command line.
ABSL_ALLOWED = {os.path.join("data", "pipeline.py"): "marks absl flags parsed for grain's workers"}


def _parse(prog, argv):
    return COMMANDS[prog].build_parser().parse_args(REQUIRED[prog] + argv)


@pytest.mark.parametrize("prog", WITH_MODEL)
def test_model_which_and_step(prog):
    args = _parse(prog, ["--model", "runs/x", "--which", "latest", "--step", "30"])
    assert (args.model, args.which, args.step) == ("runs/x", "latest", 30)
    args = _parse(prog, ["--model", "runs/x"])
    assert (args.which, args.step) == ("best", None)
    with pytest.raises(SystemExit):
        _parse(prog, ["--model", "runs/x", "--which", "newest"])


def test_model_is_required_except_for_predict(capsys):
    assert _parse("asmnet-predict", []).model == inference.DEFAULT_MODEL
    for prog in ("asmnet-eval", "asmnet-export"):
        with pytest.raises(SystemExit):
            _parse(prog, [])
        assert "--model" in capsys.readouterr().err


@pytest.mark.parametrize("prog", WITH_OUT)
def test_out(prog):
    model = ["--model", "m"] if prog in WITH_MODEL else []
    required_out = "--out" in REQUIRED[prog]
    argv = model if required_out else model + ["--out", "somewhere"]
    assert _parse(prog, argv).out == ("o" if required_out else "somewhere")


@pytest.mark.parametrize("prog", WITH_BATCH)
def test_batch_size(prog):
    model = ["--model", "m"] if prog in WITH_MODEL else []
    assert _parse(prog, model + ["--batch-size", "4"]).batch_size == 4


def test_other_renamed_flags():
    assert _parse("asmnet-build-data", ["--tfds-config", "small"]).tfds_config == "small"
    assert _parse("asmnet-info", ["--arch", "mnv2"]).arch == ["mnv2"]


@pytest.mark.parametrize("prog, argv", [
    ("asmnet-eval", ["--model", "m", "--workdir", "runs/x"]),
    ("asmnet-eval", ["--model", "m", "--checkpoint", "runs/x/checkpoints/2"]),
    ("asmnet-export", ["runs/x", "--model", "m"]),         # the positional model path
    ("asmnet-export", ["--model", "m", "--batch", "2"]),   # no abbreviation of --batch-size
    ("asmnet-predict", ["--model", "m", "-o", "out"]),
    ("asmnet-predict", ["--model", "m", "--output-dir", "out"]),
    ("asmnet-import-keras", ["out_dir", "--out", "o"]),    # the positional output directory
    ("asmnet-build-data", ["--config", "small"]),
    ("asmnet-info", ["--model", "asmnet"]),
])
def test_old_flags_are_usage_errors(prog, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        COMMANDS[prog].main(REQUIRED[prog] + argv)
    assert exit_info.value.code == 2
    assert f"{prog}: error:" in capsys.readouterr().err


def _one_error_line(prog, err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_a_missing_model_is_one_line_and_exit_status_1(tmp_path, monkeypatch, capsys):
    missing = str(tmp_path / "no_such_model")
    photo = str(tmp_path / "photo.png")
    cv2.imwrite(photo, np.zeros((16, 16, 3), np.uint8))
    monkeypatch.setattr(export_lib, "import_tensorflow", lambda: None)  # no TensorFlow needed
    calls = {"asmnet-eval": ["--model", missing],
             "asmnet-predict": [photo, "--model", missing, "--box", "0,0,8,8",
                                "--out", str(tmp_path / "out")],
             "asmnet-export": ["--model", missing, "--out", str(tmp_path / "out")]}
    for prog, argv in calls.items():
        assert COMMANDS[prog].main(argv) == 1, prog
        out, err = capsys.readouterr()
        line = _one_error_line(prog, err)
        assert line.startswith(f"{prog}: error: --model: {missing}: no such file"), line
        assert out == ""


def test_an_unknown_builder_config_is_one_line(tmp_path, capsys):
    assert build_data.main(["synthetic_faces", "--tfds-config", "tiny",
                            "--data-dir", str(tmp_path)]) == 1
    line = _one_error_line("asmnet-build-data", capsys.readouterr().err)
    assert "'tiny' (--tfds-config)" in line and "default, small, wflw98" in line


def test_as_a_program_too(tmp_path):
    missing = str(tmp_path / "nowhere")
    done = subprocess.run([sys.executable, "-m", "asmnet_jax.cli.eval", "--model", missing],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and done.stdout == ""
    _one_error_line("asmnet-eval", done.stderr)


def test_project_errors_are_one_line_and_bugs_keep_their_traceback(capsys):
    from asmnet_jax.cli import run
    from asmnet_jax.errors import ModelError

    def fails(error):
        raise error

    assert run("asmnet-x", fails, ModelError("m: bad")) == 1
    assert capsys.readouterr().err == "asmnet-x: error: m: bad\n"
    assert run("asmnet-x", fails, FileNotFoundError("f: missing")) == 1
    capsys.readouterr()
    assert run("asmnet-x", fails, ModelError("m: two\n  lines")) == 1
    assert capsys.readouterr().err == "asmnet-x: error: m: two lines\n"
    with pytest.raises(ValueError):  # not the project's: a bug, not a message
        run("asmnet-x", fails, ValueError("internal"))


def test_unknown_config_key_of_train_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--workdir", "w", "--config.learning_rate=0.1"])
    assert exit_info.value.code == 2
    assert _one_error_line("asmnet-train", capsys.readouterr().err).endswith(
        "did you mean config.optimizer.learning_rate?")


def _library_modules():
    for root, dirs, files in os.walk(PACKAGE):
        dirs[:] = [d for d in dirs if d not in ("cli", "__pycache__", "pretrained")]
        for name in files:
            if name.endswith(".py"):
                yield os.path.relpath(os.path.join(root, name), PACKAGE)


def _imported_modules(path):
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module


def test_library_modules_have_no_command_line_code():
    modules = sorted(_library_modules())
    assert "evaluate.py" in modules and os.path.join("data", "pipeline.py") in modules
    offenders = []
    for module in modules:
        path = os.path.join(PACKAGE, module)
        for name in _imported_modules(path):
            top = name.split(".")[0]
            if top == "argparse" or (top == "absl" and module not in ABSL_ALLOWED):
                offenders.append(f"{module} imports {name}")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for definition in ("def main(", "def build_parser("):
            if definition in text:
                offenders.append(f"{module} defines {definition[4:-1]}()")
    assert not offenders, offenders


# --------------------------------------------------------------------------------------------------
# asmnet-train: a --config file that cannot be loaded, a --workdir that cannot be one. One line and
# exit status 1, before absl parses the flags (the config file) or before any training work.


def _train_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main([str(a) for a in argv])
    assert exit_info.value.code == 1
    out, err = capsys.readouterr()
    assert out == ""
    return _one_error_line("asmnet-train", err)


@pytest.mark.parametrize("name, source, message", [
    ("missing.py", None, "--config: {path}: no such file"),
    ("bad.py", "def get_config(:\n    pass\n", "--config: {path}:1: SyntaxError: invalid syntax"),
    ("indent.py", "def get_config():\nreturn 1\n",
     "--config: {path}:2: IndentationError: expected an indented block after function "
     "definition on line 1"),
    ("imports.py", "import no_such_module_here\n",
     "--config: {path}:1: ModuleNotFoundError: No module named 'no_such_module_here'"),
    ("no_get_config.py", "x = 1\n",
     "--config: {path} defines no get_config(); a config file is a Python file whose "
     "get_config() returns the training ml_collections.ConfigDict"),
    ("raises.py", "def get_config():\n    raise ValueError('no such dataset')\n",
     "--config: {path}:2: get_config() raised ValueError: no such dataset"),
    ("returns_none.py", "def get_config():\n    pass\n",
     "--config: {path}: get_config() returned NoneType, not an ml_collections.ConfigDict "
     "(a missing return statement?)"),
    ("returns_dict.py", "def get_config():\n    return {'input_size': 64}\n",
     "--config: {path}: get_config() returned dict, not an ml_collections.ConfigDict"),
], ids=lambda value: value if isinstance(value, str) and value.endswith(".py") else "")
def test_a_config_file_that_cannot_be_loaded_is_one_line(tmp_path, capsys, name, source,
                                                         message):
    path = tmp_path / name
    if source is not None:
        path.write_text(source)
    for argv in (["--config", path, "--workdir", tmp_path / "w"],
                 [f"--config={path}", "--workdir", tmp_path / "w"]):
        assert _train_error(argv, capsys) == "asmnet-train: error: " + message.format(path=path)
    assert not (tmp_path / "w").exists()


def test_a_config_file_argument_is_passed_to_get_config(tmp_path, capsys):
    path = tmp_path / "config.py"
    path.write_text("def get_config():\n    return None\n")
    assert _train_error(["--config", f"{path}:w300", "--workdir", tmp_path / "w"], capsys) == (
        f"asmnet-train: error: --config: {path}: get_config('w300') raised TypeError: "
        "get_config() takes 0 positional arguments but 1 was given")
    assert _train_error(["--config", tmp_path, "--workdir", tmp_path / "w"], capsys) == (
        f"asmnet-train: error: --config: {tmp_path} is a folder, not a config file (a Python "
        "file with get_config())")


def test_the_config_files_of_the_project_load():
    for name in sorted(os.listdir(os.path.join(os.path.dirname(PACKAGE), "configs"))):
        if name.endswith(".py"):
            path = os.path.join(os.path.dirname(PACKAGE), "configs", name)
            assert train.config_file_problem(["asmnet-train", "--config", path]) is None, name
    assert train.config_file_problem(["asmnet-train", "--workdir", "w"]) is None  # the default


def test_a_workdir_that_is_a_file_is_one_line_before_any_training(tmp_path, capsys, monkeypatch):
    from asmnet_jax import train as train_lib

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(train_lib, "train_and_evaluate", no_training)
    file = tmp_path / "F"
    file.write_text("not a folder")
    assert _train_error(["--workdir", file], capsys) == (
        f"asmnet-train: error: --workdir: {file} is a file; name a folder")
    assert _train_error(["--workdir", file / "run"], capsys) == (
        f"asmnet-train: error: --workdir: {file / 'run'}: {file} is a file, so no folder can be "
        "made under it")
    assert file.read_text() == "not a folder"


def test_output_dir_problems(tmp_path, monkeypatch):
    from asmnet_jax.cli import output_dir_problem

    assert output_dir_problem("--out", str(tmp_path)) is None
    assert output_dir_problem("--out", str(tmp_path / "new" / "deeper")) is None
    assert output_dir_problem("--out", "") == "--out: an empty path; name a folder"
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert output_dir_problem("--out", str(tmp_path)) == (
        f"--out: {tmp_path}: no permission to write in this folder")
    assert output_dir_problem("--out", str(tmp_path / "new")) == (
        f"--out: {tmp_path / 'new'}: no permission to create it in {tmp_path}")


# --------------------------------------------------------------------------------------------------
# asmnet-predict and asmnet-eval: --out that is a file, scores and thresholds out of range. One line
# and exit status 1, before the model is loaded.


def _no_model(monkeypatch, module):
    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(module, "load_model", load_model)


def test_predict_out_that_is_a_file(tmp_path, monkeypatch, capsys):
    _no_model(monkeypatch, predict)
    file = tmp_path / "F"
    file.write_text("")
    assert predict.main(["photo.png", "--box", "0,0,8,8", "--out", str(file)]) == 1
    assert _one_error_line("asmnet-predict", capsys.readouterr().err) == (
        f"asmnet-predict: error: --out: {file} is a file; name a folder")


@pytest.mark.parametrize("argv, message", [
    (["--min-score", "2", "--detector", "blazeface"],
     "--min-score 2 is not in [0, 1]: the scores of the blazeface detector are probabilities"),
    (["--min-score", "1.5", "--detector", "blazeface-full"],
     "--min-score 1.5 is not in [0, 1]: the scores of the blazeface-full detector are "
     "probabilities"),
    (["--min-score", "2"],  # auto, here BlazeFace
     "--min-score 2 is not in [0, 1]: the scores of the blazeface detector are probabilities"),
    (["--min-score", "0.5", "--detector", "haar"],
     "--min-score 0.5 is below 1: the score of the haar detector is the number of merged "
     "neighbour detections (OpenCV's minNeighbors, default 5)"),
    (["--min-score", "-0.1"], "--min-score -0.1 is not a finite number >= 0"),
    (["--min-score", "nan", "--detector", "blazeface"],
     "--min-score nan is not a finite number >= 0"),
])
def test_predict_min_score_out_of_range(tmp_path, monkeypatch, capsys, argv, message):
    from asmnet_jax import detection

    _no_model(monkeypatch, predict)
    monkeypatch.setattr(predict, "choose_detector", lambda name: detection.DETECTORS["blazeface"])
    assert predict.main(["photo.png", "--out", str(tmp_path / "out")] + argv) == 1
    assert _one_error_line("asmnet-predict", capsys.readouterr().err) == (
        f"asmnet-predict: error: {message}")
    assert not (tmp_path / "out").exists()


def test_predict_min_scores_in_range(monkeypatch):
    from asmnet_jax import detection

    monkeypatch.setattr(predict, "choose_detector", lambda name: detection.DETECTORS["haar"])
    for argv in (["--min-score", "0.7", "--detector", "blazeface"],
                 ["--min-score", "0", "--detector", "blazeface-short"],
                 ["--min-score", "3", "--detector", "haar"], ["--min-score", "3"],  # auto: haar
                 ["--min-score", "40", "--detector", "none"]):
        predict.check_options(predict.build_parser().parse_args(["photo.png"] + argv))


@pytest.mark.parametrize("threshold, message", [
    ("8", "--threshold 8 is not in (0, 1]: the threshold is a fraction of the normaliser "
          "(for 8 %, write 0.08)"),
    ("0", "--threshold 0 is not in (0, 1]: the threshold is a fraction of the normaliser"),
    ("-1", "--threshold -1 is not in (0, 1]: the threshold is a fraction of the normaliser"),
    ("inf", "--threshold inf is not in (0, 1]: the threshold is a fraction of the normaliser"),
])
def test_eval_threshold_out_of_range(monkeypatch, capsys, threshold, message):
    _no_model(monkeypatch, eval_cli)
    assert eval_cli.main(["--model", "m", "--threshold", threshold]) == 1
    assert _one_error_line("asmnet-eval", capsys.readouterr().err) == (
        f"asmnet-eval: error: {message}")


def test_eval_out_that_is_a_file(tmp_path, monkeypatch, capsys):
    _no_model(monkeypatch, eval_cli)
    file = tmp_path / "F"
    file.write_text("")
    assert eval_cli.main(["--model", "m", "--out", str(file)]) == 1
    assert _one_error_line("asmnet-eval", capsys.readouterr().err) == (
        f"asmnet-eval: error: --out: {file} is a file; name a folder")
