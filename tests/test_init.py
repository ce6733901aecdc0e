"""Starting weights: ImageNet MobileNetV2 files (real and folded BNs, Keras 2 and 3), BN
re-estimation, warm starts from a saved model of another landmark count.

The Keras files are made here: ``keras.applications.MobileNetV2(include_top=False,
weights=None)`` at 64 x 64 with random BN statistics, saved as Keras 2 (tf_keras
``save_weights``, the layout of the file Keras downloads) and Keras 3 (``model.save``) HDF5; the
"folded" variants have every BN folded into its convolution the way a TFLite export does.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jax  # noqa: E402

from asmnet_jax import init as init_lib  # noqa: E402
from asmnet_jax.model_dir import save_model  # noqa: E402
from asmnet_jax.models import BN_EPSILON, MobileNetV2Backbone, create_model  # noqa: E402

from _variables import random_variables  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")

SIZE = 64
ATOL = 1e-4


def _keras(version):
    pytest.importorskip("tensorflow")
    if version == 2:
        return pytest.importorskip("tf_keras")
    keras = pytest.importorskip("keras")
    if int(keras.__version__.split(".")[0]) < 3:
        pytest.skip(f"keras {keras.__version__} is not Keras 3")
    return keras


def _block_layer(index, model):
    """The Keras layer holding block ``index``'s output."""
    from asmnet_jax.models import BLOCKS

    if index == 0:
        return "expanded_conv_project_BN"
    _, features, strides = BLOCKS[index]
    residual = strides == 1 and BLOCKS[index - 1][1] == features
    return f"block_{index}_add" if residual else f"block_{index}_project_BN"


def _fold(keras, model):
    """Folds every BN into the preceding convolution, as TFLite does: the BN becomes the
    identity in inference mode (scale 1, mean 0, var 1 - eps) with the folded bias as beta."""
    layers = keras.layers
    previous = None
    for layer in model.layers:
        if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D)):
            previous = layer
        elif isinstance(layer, layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            factor = gamma / np.sqrt(var + layer.epsilon)
            (kernel,) = previous.get_weights()
            if isinstance(previous, layers.DepthwiseConv2D):  # (3, 3, C, 1)
                kernel = kernel * factor[None, None, :, None]
            else:  # (k, k, C_in, C_out)
                kernel = kernel * factor
            previous.set_weights([kernel])
            n = gamma.shape
            layer.set_weights([np.ones(n), beta - mean * factor, np.zeros(n),
                               np.full(n, 1.0 - layer.epsilon)])


def _keras_case(directory, version, folded, seed=0):
    """(h5 path, {layer name: Keras inference output}, [-1, 1] images) for one Keras file."""
    keras = _keras(version)
    keras.utils.set_random_seed(seed)
    model = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), alpha=1.0,
                                           include_top=False, weights=None)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.get_weights()[0].shape
            layer.set_weights([rng.uniform(0.6, 1.4, n), rng.uniform(-0.3, 0.3, n),
                               rng.uniform(-0.3, 0.3, n), rng.uniform(0.5, 1.5, n)])
    if folded:
        _fold(keras, model)
    names = [_block_layer(i, model) for i in range(17)] + ["out_relu"]
    probe = keras.Model(model.input, [model.get_layer(name).output for name in names])
    images = rng.uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
    outputs = dict(zip(names, (np.asarray(o) for o in probe(images, training=False))))
    path = os.path.join(directory, f"keras{version}{'_folded' if folded else ''}.h5")
    if version == 2:
        model.save_weights(path)  # the layout of the file keras.applications downloads
    else:
        model.save(path)
    return path, outputs, images


@pytest.fixture(scope="module", params=[(2, False), (2, True), (3, False), (3, True)],
                ids=["keras2", "keras2-folded", "keras3", "keras3-folded"])
def keras_case(request, tmp_path_factory):
    version, folded = request.param
    return (*_keras_case(str(tmp_path_factory.mktemp("keras")), version, folded), folded)


def _init_variables(name, num_landmarks=68, **kwargs):
    model = create_model(name, num_landmarks, input_range="signed", **kwargs)
    return model, random_variables(model, SIZE)


@jax.jit
def _asmnet_blocks(variables, images):
    backbone = MobileNetV2Backbone(num_blocks=16, top_conv=False, taps=tuple(range(16)))
    _, tapped = backbone.apply(variables, images, train=False)
    return tapped


@jax.jit
def _mnv2_top(variables, images):
    out, _ = MobileNetV2Backbone().apply(variables, images, train=False)
    return out


def _backbone(variables):
    return {"params": variables["params"]["backbone"],
            "batch_stats": variables["batch_stats"]["backbone"]}


def test_imagenet_file_loads_into_asmnet_and_mnv2_with_keras_outputs(keras_case):
    path, outputs, images, folded = keras_case
    _, asmnet = _init_variables("asmnet")
    loaded, summary = init_lib.load_imagenet_backbone(path, asmnet)
    assert summary["folded_batch_norm"] == folded
    tapped = _asmnet_blocks(_backbone(loaded), images)
    for index in range(16):
        np.testing.assert_allclose(np.asarray(tapped[index]), outputs[_block_layer(index, None)],
                                   atol=ATOL, rtol=1e-4, err_msg=f"block {index}")
    # The heads are not touched.
    np.testing.assert_array_equal(loaded["params"]["landmark_head"]["kernel"],
                                  asmnet["params"]["landmark_head"]["kernel"])

    _, mnv2 = _init_variables("mnv2")
    loaded, _ = init_lib.load_imagenet_backbone(path, mnv2)
    np.testing.assert_allclose(np.asarray(_mnv2_top(_backbone(loaded), images)),
                               outputs["out_relu"], atol=ATOL, rtol=1e-4)


def test_signed_input_range_feeds_the_backbone_minus_one_to_one(keras_case):
    """ASMNet(input_range='signed') on [0, 1] images == the backbone on [-1, 1] images."""
    path, outputs, images, _ = keras_case
    model, variables = _init_variables("asmnet", dropout_rate=0.0)
    loaded, _ = init_lib.load_imagenet_backbone(path, variables)
    unit = (images + 1) / 2
    landmarks, _ = jax.jit(lambda v, x: model.apply(v, x, train=False))(loaded, unit)
    pooled = np.concatenate([outputs[_block_layer(i, None)].mean(axis=(1, 2))
                             for i in (1, 3, 6, 10, 13, 15)], axis=-1)
    head = loaded["params"]["landmark_head"]
    np.testing.assert_allclose(np.asarray(landmarks), pooled @ head["kernel"] + head["bias"],
                               atol=1e-3, rtol=1e-4)


def test_bn_reestimation_keeps_inference_and_training_mode_starts_from_it(tmp_path):
    path, _, _, = _keras_case(str(tmp_path), 2, folded=True, seed=1)[:3]
    model, variables = _init_variables("asmnet", dropout_rate=0.0)
    loaded, _ = init_lib.load_imagenet_backbone(path, variables)
    rng = np.random.default_rng(0)
    calibration = rng.integers(0, 256, (16, SIZE, SIZE, 3), dtype=np.uint8)
    unit = calibration.astype(np.float32) / 255

    fixed, summary = init_lib.reestimate_batch_norm(model, loaded, [calibration[:8],
                                                                     calibration[8:]])
    assert summary["layers"] == 48 and summary["images"] == 16

    @jax.jit
    def infer(v):
        return model.apply(v, unit, train=False)[0]

    @jax.jit
    def train_mode(v):
        (landmarks, _), _ = model.apply(v, unit, train=True, mutable=["batch_stats"])
        return landmarks

    before = infer(loaded)
    scale = np.abs(before).max()
    np.testing.assert_allclose(infer(fixed), before, atol=1e-4 * scale)
    # Training-mode BN normalises with the batch's statistics: those of the calibration batch
    # are the re-estimated ones, so the function is (nearly) the same ...
    np.testing.assert_allclose(train_mode(fixed), before, atol=2e-3 * scale)
    # ... while the folded file in training mode computes something else entirely.
    assert np.abs(train_mode(loaded) - before).max() > 0.05 * scale
    stats = fixed["batch_stats"]["backbone"]["block_3"]["depthwise_bn"]
    assert not np.allclose(stats["var"], 1 - BN_EPSILON)


def test_missing_imagenet_file_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(init_lib.InitError) as error:
        init_lib.find_imagenet_weights()
    message = str(error.value)
    assert os.path.join(str(tmp_path / "keras_home"), "models", init_lib.IMAGENET_FILE) in message
    assert os.path.join(str(tmp_path / "home"), ".keras", "models") in message
    assert "keras.applications.MobileNetV2" in message
    with pytest.raises(init_lib.InitError, match="nowhere.h5"):
        init_lib.find_imagenet_weights(str(tmp_path / "nowhere.h5"))


def test_imagenet_file_is_found_where_keras_caches_it(tmp_path, monkeypatch):
    models = tmp_path / "keras_home" / "models"
    models.mkdir(parents=True)
    (models / init_lib.IMAGENET_FILE).write_bytes(b"")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    assert init_lib.find_imagenet_weights() == str(models / init_lib.IMAGENET_FILE)


def test_a_file_that_is_not_mobilenet_is_named(tmp_path):
    import h5py

    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"dense"]
        group = f.create_group("dense")
        group.attrs["weight_names"] = [b"dense/kernel:0"]
        group.create_dataset("dense/kernel:0", data=np.zeros((2, 2), np.float32))
    _, variables = _init_variables("asmnet")
    with pytest.raises(init_lib.InitError, match=r"other\.h5.*'Conv1'"):
        init_lib.load_imagenet_backbone(str(path), variables)


def test_a_68_point_model_warm_starts_a_98_point_model(tmp_path):
    _, source = _init_variables("asmnet", 68)
    rng = np.random.default_rng(0)
    source = jax.tree_util.tree_map(lambda x: x + rng.normal(0, 0.1, x.shape).astype(x.dtype),
                                    source)
    save_model(tmp_path / "m68", "asmnet", 68, source, extra={"input_range": "signed"})
    _, fresh = _init_variables("asmnet", 98)

    started, summary = init_lib.load_checkpoint_weights(str(tmp_path / "m68"), "asmnet", 98,
                                                        "signed", fresh)
    assert summary["new_heads"] == ["landmark_head"]
    flat = jax.tree_util.tree_leaves_with_path
    for (path, got), (_, want) in zip(flat(started["params"]["backbone"]),
                                      flat(source["params"]["backbone"])):
        np.testing.assert_array_equal(got, want, err_msg=jax.tree_util.keystr(path))
    np.testing.assert_array_equal(started["batch_stats"]["backbone"]["block_5"]["expand_bn"]["var"],
                                  source["batch_stats"]["backbone"]["block_5"]["expand_bn"]["var"])
    np.testing.assert_array_equal(started["params"]["landmark_head"]["kernel"],
                                  fresh["params"]["landmark_head"]["kernel"])
    assert started["params"]["landmark_head"]["kernel"].shape == (536, 196)
    np.testing.assert_array_equal(started["params"]["pose_head"]["kernel"],
                                  source["params"]["pose_head"]["kernel"])


def test_warm_start_refuses_another_architecture_or_input_range(tmp_path):
    _, mnv2 = _init_variables("mnv2")
    save_model(tmp_path / "mnv2", "mnv2", 68, mnv2)
    _, fresh = _init_variables("asmnet")
    with pytest.raises(init_lib.InitError, match="is a mnv2 model; this run trains asmnet"):
        init_lib.load_checkpoint_weights(str(tmp_path / "mnv2"), "asmnet", 68, "unit", fresh)
    save_model(tmp_path / "unit", "asmnet", 68, fresh)
    with pytest.raises(init_lib.InitError, match="input_range='unit'"):
        init_lib.load_checkpoint_weights(str(tmp_path / "unit"), "asmnet", 68, "signed", fresh)
    with pytest.raises(init_lib.InitError, match="config.init_path"):
        init_lib.load_checkpoint_weights(str(tmp_path / "none"), "asmnet", 68, "unit", fresh)


def test_a_run_starts_from_imagenet_weights_with_bn_reestimated(tiny_run, tmp_path, caplog):
    """asmnet-train's path: config.init='imagenet' loads the file, re-estimates the BNs on
    training crops and logs both; the first step then starts from those weights."""
    import logging

    from asmnet_jax import train
    from conftest import tiny_config

    path = _keras_case(str(tmp_path), 2, folded=True, seed=2)[0]
    # The session's tiny run (the fixture) with an ImageNet start: its programs are compiled.
    c = tiny_config(max_steps=1, init="imagenet", init_path=path, init_bn_images=16)
    caplog.set_level(logging.INFO, logger="asmnet_jax")
    summary = train.train_and_evaluate(c, str(tmp_path / "run"))
    assert summary["step"] == 1
    assert "its BNs are folded into the convolutions" in caplog.text
    assert "BN re-estimation: 48 BatchNorms rewritten from the statistics of 16" in caplog.text
