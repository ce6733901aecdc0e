"""Import of the authors' Keras weights: outputs match Keras, checkpoints round-trip, clear errors.

The Keras models are built here exactly like the authors' code (MobileNetV2 from keras.applications,
six pooled taps or the 1280-d pool, Dense heads ``O_L``/``O_P``), at 64 x 64 to stay cheap, with
random BN statistics and head weights, then saved as ``.h5`` by Keras 2 (tf_keras) and Keras 3.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("tensorflow")
tf_keras = pytest.importorskip("tf_keras")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from asmnet_jax.model_dir import load_model, read_model_info  # noqa: E402
from asmnet_jax.cli.import_keras import main  # noqa: E402
from asmnet_jax.keras_import import load_keras_h5  # noqa: E402
from asmnet_jax.landmarks import authors_to_model_landmarks, authors_to_model_pose  # noqa: E402
from asmnet_jax.models import ASMNet, MobileNetV2Baseline, create_model  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")

SIZE = 64
BATCH = 2
ATOL = 1e-4
TAP_LAYERS = ("block_1_project_BN", "block_3_project_BN", "block_6_project_BN",
              "block_10_project_BN", "block_13_project_BN", "block_15_add")


def _keras3():
    keras = pytest.importorskip("keras")
    if int(keras.__version__.split(".")[0]) < 3:
        pytest.skip(f"keras {keras.__version__} is not Keras 3")
    return keras


def build_authors_model(keras, model_name, num_landmarks, seed):
    """The authors' Keras model at SIZE x SIZE with random BN statistics and head weights.

    ``keras`` is ``tf_keras`` (Keras 2) or ``keras`` (Keras 3). Outputs: landmarks (B, 2n) in
    ``(112 - x_px) / 224`` and pose (B, 3) in degrees / 65 (once trained; here random).
    """
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    base = keras.applications.mobilenet_v2.MobileNetV2(
        input_shape=(SIZE, SIZE, 3), alpha=1.0, include_top=True, weights=None)
    if model_name == "asmnet":
        pooled = [layers.GlobalAveragePooling2D()(base.get_layer(name).output)
                  for name in TAP_LAYERS]
        features = layers.Dropout(0.3)(layers.Concatenate()(pooled))
        regularised = dict(kernel_regularizer=keras.regularizers.l2(0.01),
                           bias_regularizer=keras.regularizers.l2(0.01))
    else:
        features = base.get_layer("predictions").input  # the 1280-d global average pool
        regularised = {}
    landmarks = layers.Dense(2 * num_landmarks, name="O_L", **regularised)(features)
    pose = layers.Dense(3, name="O_P", **regularised)(features)
    model = keras.Model(base.input, [landmarks, pose])

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            n = gamma.shape
            layer.set_weights([rng.uniform(0.6, 1.4, n), rng.uniform(-0.3, 0.3, n),
                               rng.uniform(-0.3, 0.3, n), rng.uniform(0.5, 1.5, n)])
        elif isinstance(layer, layers.Dense):
            kernel, bias = layer.get_weights()
            layer.set_weights([rng.normal(0, 0.05, kernel.shape),
                               rng.uniform(-0.5, 0.5, bias.shape)])
    return model


def _make_case(keras, model_name, num_landmarks, directory, seed, weights_name):
    """Builds, saves (model.save and save_weights) and runs one Keras model."""
    model = build_authors_model(keras, model_name, num_landmarks, seed)
    path = str(directory / f"{model_name}{num_landmarks}.h5")
    weights_path = str(directory / weights_name)
    model.save(path)
    model.save_weights(weights_path)
    images = np.random.default_rng(seed + 100).uniform(0, 1, (BATCH, SIZE, SIZE, 3))
    images = images.astype(np.float32)
    landmarks, pose = (np.asarray(out) for out in model(images, training=False))
    return dict(model_name=model_name, num_landmarks=num_landmarks, path=path,
                weights_path=weights_path, images=images, landmarks=landmarks, pose=pose,
                apply=jax.jit(create_model(model_name, num_landmarks).apply))


@pytest.fixture(scope="module")
def asmnet68_keras2(tmp_path_factory):
    return _make_case(tf_keras, "asmnet", 68, tmp_path_factory.mktemp("k2_asmnet"), 1,
                      "asmnet68_weights.h5")


@pytest.fixture(scope="module")
def asmnet98_keras3(tmp_path_factory):
    return _make_case(_keras3(), "asmnet", 98, tmp_path_factory.mktemp("k3_asmnet"), 2,
                      "asmnet98.weights.h5")


@pytest.fixture(scope="module")
def mnv2_68_keras2(tmp_path_factory):
    return _make_case(tf_keras, "mnv2", 68, tmp_path_factory.mktemp("k2_mnv2"), 3,
                      "mnv2_68_weights.h5")


CASES = ("asmnet68_keras2", "asmnet98_keras3", "mnv2_68_keras2")


@pytest.mark.parametrize("convert", [False, True], ids=["authors", "converted"])
@pytest.mark.parametrize("case_name", CASES)
def test_outputs_match_keras(case_name, convert, request):
    case = request.getfixturevalue(case_name)
    model, variables = load_keras_h5(case["path"], convert_coordinates=convert)
    assert isinstance(model, {"asmnet": ASMNet, "mnv2": MobileNetV2Baseline}[case["model_name"]])
    assert model.num_landmarks == case["num_landmarks"]
    landmarks, pose = case["apply"](variables, jnp.asarray(case["images"]))
    want_landmarks, want_pose = case["landmarks"], case["pose"]
    if convert:
        want_landmarks = authors_to_model_landmarks(want_landmarks)
        want_pose = authors_to_model_pose(want_pose)
    assert landmarks.shape == (BATCH, 2 * case["num_landmarks"]) and pose.shape == (BATCH, 3)
    # The random weights must give outputs that are not trivially small.
    assert np.abs(want_landmarks).max() > 0.05 and np.abs(want_pose).max() > 0.05
    np.testing.assert_allclose(np.asarray(landmarks), want_landmarks, rtol=0, atol=ATOL)
    np.testing.assert_allclose(np.asarray(pose), want_pose, rtol=0, atol=ATOL)


@pytest.mark.parametrize("case_name", CASES)
def test_tree_matches_model_init(case_name, request):
    case = request.getfixturevalue(case_name)
    model, variables = load_keras_h5(case["path"])
    images = jnp.zeros((1, SIZE, SIZE, 3), jnp.float32)
    # eval_shape traces the real model.init (running it eagerly on CPU takes about half a minute).
    init = jax.eval_shape(lambda: model.init(jax.random.key(0), images))
    assert set(variables) == {"params", "batch_stats"}
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(init)
    for got, want in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(init)):
        assert isinstance(got, np.ndarray) and got.dtype == np.float32
        assert got.shape == want.shape


@pytest.mark.parametrize("case_name", ["asmnet68_keras2", "asmnet98_keras3"])
def test_weights_only_file_matches_full_model_file(case_name, request):
    case = request.getfixturevalue(case_name)
    _, full = load_keras_h5(case["path"])
    _, weights_only = load_keras_h5(case["weights_path"])
    jax.tree_util.tree_map(np.testing.assert_array_equal, weights_only, full)


def test_cli_checkpoint_round_trip(asmnet68_keras2, tmp_path, capsys):
    case = asmnet68_keras2
    out = tmp_path / "imported"
    assert main([case["path"], "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["model"] == "asmnet" and summary["num_landmarks"] == 68
    assert summary["output"] == str(out)
    # Keras count_params() of ASMNet-68 (docs/method.md section 1.4).
    assert summary["parameters"] == {"trainable": 1412435, "batch_stats": 27072, "total": 1439507}
    assert read_model_info(out)["coordinates"] == "project"

    model, variables = load_model(out)
    _, expected = load_keras_h5(case["path"])
    assert isinstance(model, ASMNet) and model.num_landmarks == 68
    jax.tree_util.tree_map(np.testing.assert_array_equal, variables, expected)

    # Refuses to replace a model without --overwrite: one line, exit status 1.
    assert main([case["path"], "--out", str(out), "--no-convert"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("asmnet-import-keras: error: ") and "already holds a model" in err
    assert main([case["path"], "--out", str(out), "--no-convert", "--overwrite"]) == 0
    assert read_model_info(out)["coordinates"] == "authors"
    _, raw = load_model(out)
    landmarks, pose = case["apply"](raw, jnp.asarray(case["images"]))
    np.testing.assert_allclose(np.asarray(landmarks), case["landmarks"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(np.asarray(pose), case["pose"], rtol=0, atol=ATOL)


def test_load_model_rejects_other_directories(tmp_path):
    with pytest.raises(ValueError, match="not a saved model") as error:
        load_model(tmp_path)
    assert str(tmp_path) in str(error.value)


def test_rejects_non_hdf5_file(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("not a model\n")
    with pytest.raises(ValueError, match="not an HDF5 file") as error:
        load_keras_h5(path)
    assert str(path) in str(error.value)
    with pytest.raises(FileNotFoundError):
        load_keras_h5(tmp_path / "absent.h5")


def test_rejects_unrelated_keras_model(tmp_path):
    model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(3, name="tiny")])
    path = tmp_path / "tiny.h5"
    model.save(path)
    with pytest.raises(ValueError, match="not a MobileNetV2-derived Keras model") as error:
        load_keras_h5(path)
    assert str(path) in str(error.value) and "tiny" in str(error.value)


def _edited_copy(source, destination, edit):
    with open(source, "rb") as src, open(destination, "wb") as dst:
        dst.write(src.read())
    with h5py.File(destination, "r+") as f:
        edit(f)
    return destination


def _remove_layer(f, layer):
    del f[layer]
    f.attrs["layer_names"] = np.array(
        [name for name in f.attrs["layer_names"] if name != layer], dtype=h5py.string_dtype())


def _add_dense_layer(f, layer, kernel_shape):
    group = f.create_group(layer)
    group.create_dataset(f"{layer}/kernel:0", data=np.zeros(kernel_shape, np.float32))
    group.create_dataset(f"{layer}/bias:0", data=np.zeros(kernel_shape[1:], np.float32))
    group.attrs["weight_names"] = np.array([f"{layer}/kernel:0", f"{layer}/bias:0"],
                                           dtype=h5py.string_dtype())
    f.attrs["layer_names"] = np.array(list(f.attrs["layer_names"]) + [layer],
                                      dtype=h5py.string_dtype())


def _reshape_weight(f, dataset, shape):
    del f[dataset]
    f.create_dataset(dataset, data=np.zeros(shape, np.float32))


@pytest.mark.parametrize("edit, words", [
    (lambda f: _remove_layer(f, "block_5_expand"), ["missing", "'block_5_expand'"]),
    (lambda f: _remove_layer(f, "bn_Conv1"), ["not a MobileNetV2", "'bn_Conv1'"]),
    (lambda f: _reshape_weight(f, "block_2_project/block_2_project/kernel:0", (1, 1, 144, 32)),
     ["'block_2_project'", "shape (1, 1, 144, 32)", "expected (1, 1, 144, 24)"]),
    (lambda f: _add_dense_layer(f, "predictions", (536, 1000)), ["unexpected", "'predictions'"]),
    (lambda f: _remove_layer(f, "O_P"), ["cannot identify the heads"]),
], ids=["missing-layer", "missing-stem-bn", "wrong-shape", "extra-layer", "missing-head"])
def test_clear_errors_for_damaged_files(asmnet68_keras2, tmp_path, edit, words):
    path = _edited_copy(asmnet68_keras2["weights_path"], tmp_path / "damaged.h5", edit)
    with pytest.raises(ValueError) as error:
        load_keras_h5(path)
    message = str(error.value)
    assert str(path) in message
    for word in words:
        assert word in message, message
