"""Model directories in the compact form (``variables.npz``, float16) and the models shipped inside
the package, found by name."""

import json
import os

import numpy as np
import pytest

import jax

from asmnet_jax import inference, model_dir
from asmnet_jax.models import create_model

from _variables import random_variables

SIZE = 64


def _variables(name="asmnet", num_landmarks=68, seed=0):
    return random_variables(create_model(name, num_landmarks), SIZE, seed)


def test_compact_float16_model_directory_round_trip(tmp_path):
    variables = _variables()
    directory = model_dir.save_model(tmp_path / "m", "asmnet", 68, variables, compact=True,
                                       dtype=np.float16,
                                       extra={"input_range": "signed", "input_size": 96})
    assert os.path.isfile(os.path.join(directory, model_dir.VARIABLES_NPZ))
    assert not os.path.exists(os.path.join(directory, model_dir.VARIABLES_DIR))
    model, loaded = model_dir.load_model(directory)
    assert model.input_range == "signed"
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(loaded),
                                 jax.tree_util.tree_leaves(variables)):
        assert got.dtype == np.float32, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(got, want.astype(np.float16).astype(np.float32))
    full = inference.load(directory)
    assert full.input_size == 96 and full.model.input_range == "signed"


def test_compact_directory_of_another_model_is_refused(tmp_path):
    model_dir.save_model(tmp_path / "m", "asmnet", 98, _variables("asmnet", 98), compact=True)
    info_path = tmp_path / "m" / model_dir.MODEL_JSON
    info = json.loads(info_path.read_text())
    info["num_landmarks"] = 68
    info_path.write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"variables\.npz: variables do not fit asmnet with 68"):
        model_dir.load_model(tmp_path / "m")


def test_shipped_models_are_found_by_name(tmp_path, monkeypatch):
    model_dir.save_model(tmp_path / "pretrained" / "tiny-68", "asmnet", 68, _variables(),
                           compact=True, dtype=np.float16)
    monkeypatch.setattr(inference, "PRETRAINED_DIR", str(tmp_path / "pretrained"))
    monkeypatch.chdir(tmp_path)
    assert list(inference.shipped_models()) == ["tiny-68"]
    assert inference.load("tiny-68").path == str(tmp_path / "pretrained" / "tiny-68")
    with pytest.raises(FileNotFoundError, match=r"no-such-model: no such file.*\(tiny-68\)"):
        inference.load("no-such-model")


def test_the_package_ships_its_default_model_small_and_described():
    shipped = inference.shipped_models()
    assert inference.DEFAULT_MODEL in shipped, "the default model of asmnet-predict is missing"
    directory = shipped[inference.DEFAULT_MODEL]
    size = sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(directory) for name in names)
    assert size < 4 * 2 ** 20
    info = model_dir.read_model_info(directory)
    for key in ("dataset", "input_size", "margin", "input_range", "validation", "command"):
        assert key in info, key
    loaded = inference.load(inference.DEFAULT_MODEL)
    predict = inference.make_predictor(loaded)
    landmarks, pose = predict(np.full((1, loaded.input_size, loaded.input_size, 3), 128,
                                      np.uint8))
    assert landmarks.shape == (1, 136) and np.all(np.isfinite(landmarks))
    assert np.all(np.abs(landmarks) < 0.5)


def test_model_directory_round_trip_with_a_shape_model(tmp_path):
    from asmnet_jax.asm import ShapeModel

    rng = np.random.default_rng(0)
    shapes = rng.uniform(-0.4, 0.4, 136) + 0.01 * rng.normal(size=(50, 136))
    shape_model = ShapeModel.fit(shapes, 0.9)
    directory = model_dir.save_model(tmp_path / "m", "asmnet", 68, _variables(), compact=True,
                                     shape_model=shape_model, extra={"input_size": SIZE})
    assert os.path.isfile(os.path.join(directory, model_dir.ASM_NPZ))
    again = model_dir.load_shape_model(directory)
    np.testing.assert_array_equal(again.components, shape_model.components)
    assert again.calibrated and float(again.residual_scale) == float(shape_model.residual_scale)
    loaded = inference.load(directory)
    assert loaded.shape_model is not None and loaded.shape_model.num_components == \
        shape_model.num_components
    assert loaded.describe()["shape_model"] == {"components": shape_model.num_components,
                                                "calibrated": True}
    # Overwritten without one: the old asm.npz goes, and the model has none.
    model_dir.save_model(directory, "asmnet", 68, _variables(), compact=True, overwrite=True)
    assert model_dir.load_shape_model(directory) is None
    assert inference.load(directory).shape_model is None
    # A shape model of another markup is refused, naming the file.
    ShapeModel.fit(shapes[:, :196 // 2], 0.9).save(os.path.join(directory, model_dir.ASM_NPZ))
    with pytest.raises(ValueError, match=r"asm\.npz: the shape model has 98 coordinates"):
        inference.load(directory)


def test_the_shipped_model_carries_a_calibrated_shape_model():
    shape_model = model_dir.load_shape_model(inference.shipped_models()["asmnet-300w"])
    assert shape_model is not None and shape_model.calibrated and shape_model.dim == 136
    # Its mean shape is a face: the mean scores 1, a mirrored-point scramble of it about 0.
    mean = np.asarray(shape_model.mean)
    assert float(shape_model.plausibility(mean[None])["score"][0]) == pytest.approx(1.0)
    scrambled = mean.reshape(68, 2)[np.random.default_rng(0).permutation(68)].reshape(1, -1)
    assert float(shape_model.plausibility(scrambled)["score"][0]) < 1e-3
