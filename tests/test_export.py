"""Tests of asmnet_jax.export: SavedModel, TFLite and ONNX exports of a 64 px ASMNet match the JAX
model.

One export (SavedModel, float32 and float16 TFLite, and ONNX when tf2onnx, onnx and onnxruntime are
installed) is made once per module through the CLI and checked by the tests below against a JAX
model built independently from the saved variables.
"""

import contextlib
import importlib.util
import io
import json
import os
import sys

import numpy as np
import pytest

import jax

from asmnet_jax import export as export_lib
from asmnet_jax.cli import export as export_cli
from asmnet_jax.model_dir import save_model
from asmnet_jax.models import HEADS, create_model

from _variables import random_variables

#: The exports need TensorFlow (the ``export`` extra); only the missing-TensorFlow test runs without.
requires_tf = pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                                 reason='needs TensorFlow: pip install -e ".[export]"')
#: The ONNX export needs tf2onnx, onnx and onnxruntime too.
requires_onnx = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None
        for name in ("tensorflow",) + export_lib.ONNX_PACKAGES),
    reason='needs TensorFlow, tf2onnx, onnx and onnxruntime: pip install -e ".[export]"')

SIZE = 64
NUM_LANDMARKS = 68


def _perturbed_variables(seed=0):
    """ASMNet variables at 64 px whose outputs depend clearly on the image.

    Glorot-uniform kernels and random BN scales and biases (``_variables.random_variables``);
    the BN statistics are those of a batch of random images (one train-mode pass
    with momentum 0), then scaled at random, so that the normalised signal neither dies out nor
    explodes through the 16 blocks, and the converter's BN folding sees non-trivial statistics.
    """
    model = create_model("asmnet", NUM_LANDMARKS)
    variables = random_variables(model, SIZE, seed)
    calibrate = create_model("asmnet", NUM_LANDMARKS, bn_momentum=0.0)
    batch_stats = jax.jit(lambda v, x: calibrate.apply(
        v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})[1])(
        variables, export_lib.random_images(8, SIZE, seed=seed + 1))["batch_stats"]
    stats = jax.tree_util.tree_map(np.asarray, batch_stats)
    rng = np.random.default_rng([seed, 1])

    def perturb(path, leaf):
        factor = rng.uniform(0.7, 1.4, leaf.shape) if jax.tree_util.keystr(path).endswith(
            "['var']") else 1.0 + rng.normal(0.0, 0.1, leaf.shape)
        return (leaf * factor).astype(np.float32)

    variables["batch_stats"] = jax.tree_util.tree_map_with_path(perturb, stats)
    for head in HEADS:  # outputs of a trained model's size: landmarks within ~0.5, pose ~0.3 rad
        variables["params"][head]["kernel"] *= 0.1
    return model, variables


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model directory, export directory, (model, variables), stdout) of one CLI export."""
    root = tmp_path_factory.mktemp("export")
    model, variables = _perturbed_variables()
    model_dir = save_model(root / "model", "asmnet", NUM_LANDMARKS, variables,
                           extra={"input_size": SIZE, "margin": 0.15})
    out = root / "out"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = export_cli.main(["--model", str(model_dir), "--out", str(out), "--float16",
                                "--latency-runs", "3", "--verify-images", "2"])
    assert code == 0, stdout.getvalue()
    return model_dir, out, (model, variables), stdout.getvalue()


@pytest.fixture(scope="module")
def images():
    """Three images (3, 64, 64, 3) in [0, 1] that differ in colour, so outputs differ too."""
    return export_lib.random_images(3, SIZE, seed=7)


@pytest.fixture(scope="module")
def reference(exported, images):
    """The JAX model's outputs on ``images``, from the variables the export started from."""
    model, variables = exported[2]
    landmarks, pose = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    return {"landmarks": np.asarray(landmarks), "pose": np.asarray(pose)}


@requires_tf
def test_cli_prints_table_and_json_summary(exported):
    model_dir, out, _, stdout = exported
    lines = stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["model"] == "asmnet" and summary["input_size"] == SIZE
    assert summary["ok"] is True
    onnx = not export_lib.onnx_missing()
    assert set(summary["bytes"]) == {"saved_model", "tflite", "tflite_fp16"} | (
        {"onnx"} if onnx else set())
    assert summary["bytes"]["tflite"] == (out / export_lib.TFLITE_FILE).stat().st_size
    for key in ("saved_model", "tflite"):
        assert max(summary["max_abs_diff"][key].values()) <= 1e-3
    assert summary["latency_ms"] > 0 and summary["latency"]["batch"] == 1
    assert set(summary["latencies_ms"]) == {"jax", "tflite"} | ({"onnx"} if onnx else set())
    assert all(value > 0 for value in summary["latencies_ms"].values())
    assert summary["latencies_ms"]["tflite"] == summary["latency_ms"]
    table = "\n".join(lines[:-1])
    assert "model.tflite" in table and "TFLite latency" in table and "FAIL" not in table
    assert "JAX latency" in table
    if onnx:
        assert summary["max_abs_diff"]["onnx"] and summary["onnx_skipped"] is None
        assert max(summary["max_abs_diff"]["onnx"].values()) <= export_lib.ONNX_TOLERANCE
        assert "model.onnx" in table and "ONNX Runtime latency" in table


@requires_onnx
def test_onnx_matches_jax_within_1e_4_with_any_batch(exported, images, reference):
    """model.onnx loads in ONNX Runtime, names its input and outputs after the signature, takes
    float32 NHWC images of any batch and matches the JAX model within 1e-4."""
    import onnx
    import onnxruntime as ort

    _, out, _, _ = exported
    path = out / export_lib.ONNX_FILE
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == export_lib.ONNX_OPSET
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (image_input,) = session.get_inputs()
    assert image_input.name == "images" and image_input.type == "tensor(float)"
    assert image_input.shape == ["batch", SIZE, SIZE, 3]
    assert [output.name for output in session.get_outputs()] in (["landmarks", "pose"],
                                                                 ["pose", "landmarks"])
    outputs = export_lib.run_onnx(session, images)  # batch 3; the TFLite source had batch 1
    assert outputs["landmarks"].shape == (3, 2 * NUM_LANDMARKS)
    assert outputs["pose"].shape == (3, 3)
    diffs = export_lib.max_differences(outputs, reference)
    assert max(diffs.values()) <= 1e-4, diffs
    single = export_lib.run_onnx(session, images[1:2])
    np.testing.assert_allclose(single["landmarks"], outputs["landmarks"][1:2], atol=1e-5)
    latency = export_lib.onnx_latency_ms(export_lib.make_onnx_session(str(path)), runs=2,
                                         warmup=1)
    assert latency["median"] > 0 and latency["runs"] == 2


@requires_tf
def test_saved_model_matches_jax_with_any_batch(exported, images, reference):
    _, out, _, _ = exported
    outputs = export_lib.run_saved_model(str(out / export_lib.SAVED_MODEL_DIR), images)
    assert outputs["landmarks"].shape == (3, 2 * NUM_LANDMARKS)
    assert outputs["pose"].shape == (3, 3)
    diffs = export_lib.max_differences(outputs, reference)
    assert max(diffs.values()) <= 1e-3, diffs
    # The outputs differ from image to image by much more than the tolerance (the model is not
    # degenerate), and the CLI verified batch 2: the SavedModel takes any batch.
    assert np.ptp(reference["landmarks"], axis=0).max() > 1e-2
    assert np.ptp(reference["pose"], axis=0).max() > 1e-2


@requires_tf
def test_tflite_matches_jax_with_builtin_ops_only(exported, images, reference):
    _, out, _, _ = exported
    path = out / export_lib.TFLITE_FILE
    ops = export_lib.tflite_op_names(path.read_bytes())
    assert export_lib.non_builtin_ops(ops) == []
    assert not any("Flex" in name for name in ops)
    assert "DEPTHWISE_CONV_2D" in ops and "CONV_2D" in ops
    interpreter = export_lib.make_interpreter(str(path), threads=1)
    assert list(interpreter.get_input_details()[0]["shape"]) == [1, SIZE, SIZE, 3]
    signature = interpreter.get_signature_list()[export_lib.SIGNATURE]
    assert signature["inputs"] == ["images"]
    assert sorted(signature["outputs"]) == ["landmarks", "pose"]
    outputs = export_lib.run_tflite(interpreter, images)
    diffs = export_lib.max_differences(outputs, reference)
    assert max(diffs.values()) <= 1e-3, diffs
    latency = export_lib.tflite_latency_ms(interpreter, runs=2, warmup=1)
    assert latency["median"] > 0 and latency["runs"] == 2


@requires_tf
def test_float16_tflite_is_smaller_and_close(exported, images, reference):
    _, out, _, _ = exported
    fp32 = (out / export_lib.TFLITE_FILE).stat().st_size
    path = out / export_lib.TFLITE_FP16_FILE
    assert path.stat().st_size < 0.6 * fp32
    ops = export_lib.tflite_op_names(path.read_bytes())
    assert export_lib.non_builtin_ops(ops) == []
    outputs = export_lib.run_tflite(export_lib.make_interpreter(str(path)), images)
    diffs = export_lib.max_differences(outputs, reference)
    assert max(diffs.values()) <= export_lib.FLOAT16_TOLERANCE, diffs


@requires_tf
def test_export_json_describes_the_model(exported):
    model_dir, out, _, _ = exported
    info = json.loads((out / export_lib.EXPORT_JSON).read_text())
    assert info["format"] == export_lib.FORMAT
    assert info["model"]["name"] == "asmnet"
    assert info["model"]["num_landmarks"] == NUM_LANDMARKS
    assert info["model"]["source"] == str(model_dir)
    assert info["input_size"] == SIZE and info["margin"] == 0.15
    assert info["inputs"]["images"]["shape"] == ["batch", SIZE, SIZE, 3]
    assert info["inputs"]["images"]["range"] == [0.0, 1.0]
    assert info["outputs"]["landmarks"]["shape"] == ["batch", 2 * NUM_LANDMARKS]
    assert "(x_px + 0.5) / S - 0.5" in info["outputs"]["landmarks"]["units"]
    assert info["outputs"]["pose"]["order"] == ["yaw", "pitch", "roll"]
    assert info["outputs"]["pose"]["units"] == "radians"
    files = info["files"]
    assert files["saved_model"]["batch"] == "any"
    assert files["tflite"]["batch"] == 1 and files["tflite"]["weights"] == "float32"
    assert files["tflite_fp16"]["weights"] == "float16"
    for entry in files.values():
        assert os.path.exists(out / entry["path"])
    verification = info["verification"]
    assert verification["ok"] is True
    assert max(verification["max_abs_diff"]["tflite"].values()) <= 1e-3
    assert info["latency_ms"]["batch"] == 1 and info["latency_ms"]["median"] > 0
    assert info["latencies_ms"]["jax"]["median"] > 0
    if not export_lib.onnx_missing():
        assert files["onnx"]["batch"] == "any" and files["onnx"]["opset"] == export_lib.ONNX_OPSET
        assert max(verification["max_abs_diff"]["onnx"].values()) <= 1e-4
        assert verification["tolerance"]["onnx"] == export_lib.ONNX_TOLERANCE
        assert info["latencies_ms"]["onnx"]["median"] > 0
        assert "onnxruntime" in info["versions"]


@requires_tf
def test_op_check_finds_flex_ops():
    """The op reader sees SELECT_TF_OPS (Flex) operators, so a clean list means builtins only."""
    import tensorflow as tf

    module = tf.Module()
    module.f = tf.function(lambda x: {"y": tf.linalg.det(x)},
                           input_signature=[tf.TensorSpec((1, 3, 3), tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.f.get_concrete_function()], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS,
                                           tf.lite.OpsSet.SELECT_TF_OPS]
    ops = export_lib.tflite_op_names(converter.convert())
    assert export_lib.non_builtin_ops(ops) == ["CUSTOM:FlexMatrixDeterminant"]


@requires_tf
def test_mismatch_beyond_bound_fails_with_exit_1(exported, tmp_path, monkeypatch, capsys):
    """A SavedModel that disagrees with JAX fails the command (conversion stubbed out for speed)."""
    model_dir, _, _, _ = exported

    def fake_save(loaded, directory):
        os.makedirs(directory)
        open(os.path.join(directory, "saved_model.pb"), "wb").close()
        return directory

    def fake_run(directory, images):
        return {"landmarks": np.full((len(images), 2 * NUM_LANDMARKS), 5.0, np.float32),
                "pose": np.zeros((len(images), 3), np.float32)}

    monkeypatch.setattr(export_lib, "save_saved_model", fake_save)
    monkeypatch.setattr(export_lib, "run_saved_model", fake_run)
    code = export_cli.main(["--model", str(model_dir), "--out", str(tmp_path / "bad"),
                            "--no-tflite", "--no-onnx", "--verify-images", "2",
                            "--latency-runs", "0"])
    captured = capsys.readouterr()
    assert code == 1
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["ok"] is False and summary["max_abs_diff"]["saved_model"]["landmarks"] > 1
    assert "FAIL" in captured.out
    assert "asmnet-export: error:" in captured.err
    assert not (tmp_path / "bad" / export_lib.TFLITE_FILE).exists()
    assert not (tmp_path / "bad" / export_lib.ONNX_FILE).exists()


@requires_tf
def test_missing_onnx_packages_skip_onnx_with_one_line(exported, tmp_path, monkeypatch, capsys):
    """Without tf2onnx / onnx / onnxruntime the export goes on without model.onnx and says why in
    one line; asking for ONNX explicitly (onnx=True) is an error saying how to install them."""
    model_dir, _, _, _ = exported
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # makes `import tf2onnx` fail

    def fake_save(loaded, directory):
        os.makedirs(directory)
        open(os.path.join(directory, "saved_model.pb"), "wb").close()
        return directory

    def fake_run(directory, images):  # the JAX model's outputs: the SavedModel check passes
        return export_lib.jax_outputs(loaded_model, images)

    from asmnet_jax import inference

    loaded_model = inference.load(str(model_dir))
    monkeypatch.setattr(export_lib, "save_saved_model", fake_save)
    monkeypatch.setattr(export_lib, "run_saved_model", fake_run)
    code = export_cli.main(["--model", str(model_dir), "--out", str(tmp_path / "out"),
                            "--no-tflite", "--verify-images", "1", "--latency-runs", "0"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    notice = [line for line in captured.err.splitlines() if "model.onnx" in line]
    assert len(notice) == 1 and "tf2onnx" in notice[0] and 'pip install -e ".[export]"' in notice[0]
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert "onnx" not in summary["bytes"] and "tf2onnx" in summary["onnx_skipped"]
    assert not (tmp_path / "out" / export_lib.ONNX_FILE).exists()
    with pytest.raises(export_lib.ExportError, match="tf2onnx"):
        export_lib.export(loaded_model, tmp_path / "out2", tflite=False, onnx=True)


@requires_tf
def test_bad_model_path_is_a_one_line_error(tmp_path, capsys):
    code = export_cli.main(["--model", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.strip().startswith("asmnet-export: error:")
    assert "missing" in captured.err and "Traceback" not in captured.err
    (tmp_path / "empty").mkdir()
    assert export_cli.main(["--model", str(tmp_path / "empty"), "--out",
                            str(tmp_path / "out")]) == 1
    assert "neither a training workdir" in capsys.readouterr().err


def test_missing_tensorflow_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # makes `import tensorflow` fail
    code = export_cli.main(["--model", str(tmp_path), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 1
    assert 'asmnet-export: error: TensorFlow is not installed' in captured.err
    assert 'pip install -e ".[export]"' in captured.err
    assert "Traceback" not in captured.err
