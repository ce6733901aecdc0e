"""The device-resident input path (asmnet_jax/data/resident.py): the portable export, placement,
the batches a train step cuts for itself, and the resident evaluation."""

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from asmnet_jax import evaluation
from asmnet_jax import landmarks as lm
from asmnet_jax import mesh as mesh_lib
from asmnet_jax.data import augment, crop, inputs, resident, sources
from asmnet_jax.data import device_augment as dev_aug
from asmnet_jax.data.augment import AugmentConfig
from asmnet_jax.data.errors import DataError
from asmnet_jax.models import ASMNet

S = 32
COUNT = 10


@pytest.fixture(scope="module")
def source():
    return sources.synthetic_split("train", COUNT, 0, 68, S, in_memory=True)


@pytest.fixture(scope="module")
def arrays(source):
    return sources.arrays_from_source(source, 68)


def test_a_split_round_trips_through_its_npz_export(source, arrays, tmp_path):
    store = np.asarray(source[0]["image"]).shape
    assert arrays.image.shape == (COUNT, *store) and arrays.image.dtype == np.uint8
    path = sources.npz_path(str(tmp_path), "synthetic", "train")
    sources.save_npz(arrays, path)
    back = sources.load_npz(path, 68)
    for key in sources.ARRAY_KEYS:
        np.testing.assert_array_equal(getattr(back, key), getattr(arrays, key))
    example = sources.ArraySource(back)[3]
    np.testing.assert_array_equal(example["image"], source[3]["image"])
    np.testing.assert_array_equal(example["landmarks"], source[3]["landmarks"])
    np.testing.assert_array_equal(example["box"], source[3]["box"])
    assert example["name"] == source[3]["name"]


def test_bad_exports_are_named(arrays, tmp_path):
    with pytest.raises(DataError, match="nope.npz: no such file"):
        sources.load_npz(str(tmp_path / "nope.npz"), 68)
    good = str(tmp_path / "good.npz")
    sources.save_npz(arrays, good)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(open(good, "rb").read()[:5000])
    with pytest.raises(DataError, match="truncated.npz: not a readable .npz file"):
        sources.load_npz(str(truncated), 68)
    partial = str(tmp_path / "partial.npz")
    np.savez(partial, image=arrays.image)
    with pytest.raises(DataError, match=r"partial.npz: missing arrays \['landmarks', 'pose'"):
        sources.load_npz(partial, 68)
    with pytest.raises(DataError, match=r"good.npz: array 'landmarks' is float32 \(10, 68, 2\), "
                                        r"expected \(N, 98, 2\)"):
        sources.load_npz(good, 98)


def test_crops_of_another_size_are_named(source):
    odd = dict(source[1], image=np.zeros((20, 20, 3), np.uint8), name="odd/one")
    mixed = sources.InMemorySource([source[0], odd])
    with pytest.raises(DataError, match=r"'odd/one' has an image of shape \(20, 20, 3\).*"
                                        r"config.input='host'"):
        sources.arrays_from_source(mixed, 68, "the training split")


def test_shards_are_completed_from_the_start_of_the_set():
    assert resident.placed_order(10, 4).tolist() == list(range(10)) + [0, 1]
    assert resident.placed_order(8, 4).tolist() == list(range(8))
    assert resident.placed_order(3, 1).tolist() == [0, 1, 2]


def test_each_device_visits_its_shard_once_per_epoch_in_a_new_order():
    spec = resident.ResidentSpec(local_batch=4, steps_per_epoch=5, input_size=S,
                                 augment=AugmentConfig())
    key = jax.random.key(3)
    shard = 22

    def epoch(e, device):
        return np.concatenate([np.asarray(resident.batch_records(e * 5 + t, spec, shard, device,
                                                                  key))
                               for t in range(5)])

    first = epoch(0, 0)
    assert len(set(first.tolist())) == 20 and first.min() >= 0 and first.max() < shard
    assert not np.array_equal(first, epoch(1, 0))       # a new permutation every epoch
    assert not np.array_equal(first, epoch(0, 1))       # and on every device
    np.testing.assert_array_equal(first, epoch(0, 0))   # a function of (key, step, device)
    other = np.asarray(resident.batch_records(0, spec, shard, 0, jax.random.key(4)))
    assert not np.array_equal(first[:4], other)         # another seed's key, another order


def _on_one_device(fn, *args):
    mesh = mesh_lib.make_mesh(jax.devices()[:1])
    in_specs = tuple(P(mesh_lib.DATA_AXIS) if isinstance(a, dict) else P() for a in args)
    return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs,
                                 out_specs=P(mesh_lib.DATA_AXIS)))(*args), mesh


def test_a_step_cuts_the_drawn_augmentation_of_its_records(arrays):
    config = AugmentConfig()
    spec = resident.ResidentSpec(local_batch=4, steps_per_epoch=2, input_size=S, augment=config)
    key = jax.random.key(5)
    mesh = mesh_lib.make_mesh(jax.devices()[:1])
    data = resident.place(arrays, 0.1, S, mesh)
    step = 7
    batch, _ = _on_one_device(lambda d, k: resident.train_batch(d, k, spec, key), data,
                              jnp.int32(step))
    rows = np.asarray(resident.batch_records(step, spec, COUNT, 0, key))
    params = dev_aug.draw(resident._device_key(key, resident._AUGMENT_SALT, step, 0), 4, config, S)
    matrices = np.asarray(data["matrix"])
    images, points, pose = dev_aug.apply(arrays.image[rows], arrays.landmarks[rows],
                                         arrays.pose[rows], matrices[rows], params, S, config)
    np.testing.assert_allclose(np.asarray(batch["image"]) * 255.0, np.asarray(images), atol=1e-3)
    np.testing.assert_allclose(np.asarray(batch["landmarks"]),
                               lm.pixels_to_model(np.asarray(points), S), atol=1e-6)
    np.testing.assert_allclose(np.asarray(batch["pose"]),
                               lm.degrees_to_model_pose(np.asarray(pose)), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(batch["mask"]), np.ones(4))
    # The base matrices are the host pipeline's.
    for i in range(COUNT):
        np.testing.assert_allclose(matrices[i], crop.base_matrix(arrays.box[i], 0.1, S),
                                   rtol=1e-6, atol=1e-4)


def test_resident_evaluation_crops_are_the_host_evaluation_crops(source, arrays):
    """The host rounds its crops to bytes (OpenCV 5 interpolates in floating point, then rounds):
    the two may differ by that rounding, <= 0.5 grey levels, plus float32 coordinate error."""
    host = {"image": np.stack([augment.eval_transform(
        arrays.image[i], arrays.landmarks[i], arrays.pose[i],
        crop.base_matrix(arrays.box[i], 0.1, S), S)[0] for i in range(COUNT)])}
    mesh = mesh_lib.make_mesh(jax.devices()[:1])
    data = resident.place(arrays, 0.1, S, mesh)
    crops = np.asarray(resident.eval_images(data, S)) * 255.0
    assert np.max(np.abs(crops - host["image"].astype(np.float64))) <= 0.5 + 1e-2


def test_the_resident_evaluation_predicts_every_record_in_order(arrays):
    model = ASMNet(num_landmarks=68, bn_axis_name=mesh_lib.DATA_AXIS)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, S, S, 3)))
    mesh = mesh_lib.make_mesh(jax.devices()[:1])
    data = resident.place(arrays, 0.1, S, mesh)
    # Chunks of 4 over 10 records: the last chunk wraps around; the output has each record once.
    out = evaluation.compile_predict(model, mesh, S, 4)(variables, data)
    images = resident.eval_images(data, S)
    expected = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    expected = {"landmarks": expected[0], "pose": expected[1]}
    assert out["landmarks"].shape == (COUNT, 136)
    np.testing.assert_allclose(np.asarray(out["landmarks"]), np.asarray(expected["landmarks"]),
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["pose"]), np.asarray(expected["pose"]), atol=1e-5)


def test_auto_keeps_a_set_on_the_device_when_a_shard_fits():
    assert inputs.fits(100, 1, 400)
    assert not inputs.fits(101, 1, 400)
    assert inputs.fits(800, 8, 400)       # 100 bytes a shard
    assert not inputs.fits(1, 1, None)     # unknown memory: the host path
    assert mesh_lib.device_memory_bytes() > 0


NO_HOST_LIBRARIES = textwrap.dedent("""
    import json, sys

    # What a GPU machine may lack, made absent (None in sys.modules: an import fails, and
    # importlib.util.find_spec says "not installed"): training from an export needs none of it.
    for name in ("cv2", "grain", "tensorflow", "tensorflow_datasets"):
        sys.modules[name] = None
    from conftest import tiny_config
    from asmnet_jax import train

    config = tiny_config(dataset="w300", arrays_dir=sys.argv[1], input="device", max_steps=4)
    summary = train.train_and_evaluate(config, sys.argv[2])
    print(json.dumps(summary))
""")


def test_training_from_an_export_needs_no_opencv_grain_or_tensorflow(tmp_path):
    from conftest import TINY

    exports = tmp_path / "exports"
    for split, count in (("train", TINY["synthetic.train"]),
                         ("validation", TINY["synthetic.validation"])):
        faces = sources.synthetic_split(split, count, 0, 68, TINY["input_size"], in_memory=True)
        sources.save_npz(sources.arrays_from_source(faces, 68),
                          sources.npz_path(str(exports), "w300", split))
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [tests, os.environ.get("PYTHONPATH")])), JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", NO_HOST_LIBRARIES, str(exports),
                           str(tmp_path / "run")], capture_output=True, text=True, env=env,
                          timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["input"] == "device" and summary["dataset"] == "w300"
    assert summary["step"] == 4 and math.isfinite(summary["val_nme"])
