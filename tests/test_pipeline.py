import numpy as np
import pytest

from asmnet_jax.data import crop, sources
from asmnet_jax import landmarks as lm
from asmnet_jax.data import augment as aug
from asmnet_jax.data import pipeline

STORE, SIZE, N = 80, 64, 68


class FakeSource:
    """Random stored examples with a known face box (held in memory)."""

    def __init__(self, count, seed=0):
        rng = np.random.default_rng(seed)
        self.items = []
        for i in range(count):
            points = rng.uniform(20, 60, (N, 2)).astype(np.float32)
            self.items.append({
                "image": rng.integers(0, 255, (STORE, STORE, 3), dtype=np.uint8),
                "landmarks": points, "pose": rng.uniform(-30, 30, 3).astype(np.float32),
                "box": np.array([40.0, 40.0, 40.0], np.float32), "name": f"face{i}".encode()})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def _config(**kwargs):
    return pipeline.PipelineConfig(batch_size=kwargs.pop("batch_size", 4), input_size=SIZE,
                                   num_landmarks=N, **kwargs)


def test_batches_have_the_documented_layout():
    batch = pipeline.train_dataset(FakeSource(10), _config())[0]
    assert batch["image"].shape == (4, SIZE, SIZE, 3) and batch["image"].dtype == np.uint8
    assert batch["landmarks"].shape == (4, 2 * N) and batch["landmarks"].dtype == np.float32
    assert batch["pose"].shape == (4, 3) and batch["mask"].tolist() == [1.0] * 4
    assert all(name.startswith("face") for name in batch["name"])


def test_same_seed_same_stream_and_each_epoch_is_a_permutation():
    source = FakeSource(12)
    a = pipeline.train_dataset(source, _config(seed=3))
    b = pipeline.train_dataset(source, _config(seed=3))
    c = pipeline.train_dataset(source, _config(seed=4))
    for k in range(4):
        for key in ("image", "landmarks", "pose", "index"):
            np.testing.assert_array_equal(a[k][key], b[k][key])
    assert not np.array_equal(a[0]["index"], c[0]["index"])
    epoch = np.concatenate([a[k]["index"] for k in range(3)])  # 12 records, batches of 4
    assert sorted(epoch.tolist()) == list(range(12))
    next_epoch = np.concatenate([a[k]["index"] for k in range(3, 6)])
    assert sorted(next_epoch.tolist()) == list(range(12))
    assert epoch.tolist() != next_epoch.tolist()


def test_resuming_at_a_step_gives_the_batch_that_would_have_come():
    dataset = pipeline.train_dataset(FakeSource(10), _config())
    uninterrupted = pipeline.iterate(dataset)
    batches = [next(uninterrupted) for _ in range(6)]
    resumed = pipeline.iterate(dataset, start=4)
    for expected in batches[4:]:
        got = next(resumed)
        np.testing.assert_array_equal(got["image"], expected["image"])
        np.testing.assert_array_equal(got["landmarks"], expected["landmarks"])


def test_processes_read_disjoint_parts_of_the_global_batch():
    source = FakeSource(24)  # 3 batches of 8 stay within the first epoch: indices are unique
    config = _config(batch_size=8)
    whole = pipeline.train_dataset(source, config)
    parts = [pipeline.train_dataset(source, config, p, 2) for p in range(2)]
    for k in range(3):
        local = [part[k] for part in parts]
        assert all(len(b["index"]) == 4 for b in local)
        assert sorted(np.concatenate([b["index"] for b in local]).tolist()) == \
            sorted(whole[k]["index"].tolist())
        # The same record gets the same augmentation whichever process reads it.
        for b in local:
            for row, index in enumerate(b["index"]):
                where = int(np.flatnonzero(whole[k]["index"] == index)[0])
                np.testing.assert_array_equal(b["image"][row], whole[k]["image"][where])
    with pytest.raises(ValueError, match="divisible"):
        pipeline.train_dataset(source, _config(batch_size=7), 0, 2)


def test_base_labels_follow_the_base_crop_in_model_units():
    source = FakeSource(2)
    shapes, poses = crop.base_labels(source, 0.25, SIZE)
    example = source[0]
    matrix = crop.base_matrix(example["box"], 0.25, SIZE)
    # Box [20, 60] grown to [10, 70] (edges, continuous coordinates) maps onto [-0.5, 63.5].
    expected_px = (example["landmarks"] - 10.0) * SIZE / 60.0 - 0.5
    np.testing.assert_allclose(matrix[:, :2], np.eye(2) * SIZE / 60.0, rtol=1e-6)
    np.testing.assert_allclose(shapes[0], lm.pixels_to_model(expected_px, SIZE), atol=1e-5)
    np.testing.assert_allclose(poses[0], np.deg2rad(example["pose"]), rtol=1e-6)
    assert shapes.shape == (2, 2 * N) and poses.shape == (2, 3)


def test_augmentation_off_is_the_base_crop():
    source = FakeSource(4)
    off = aug.AugmentConfig(enabled=False)
    train = pipeline.train_dataset(source, _config(augment=off))[0]
    shapes, _ = crop.base_labels(source, 0.1, SIZE)
    for row, index in enumerate(train["index"]):
        example = source[int(index)]
        image, _, _, _ = aug.eval_transform(example["image"], example["landmarks"],
                                            example["pose"],
                                            crop.base_matrix(example["box"], 0.1, SIZE), SIZE)
        np.testing.assert_array_equal(train["image"][row], image)
        np.testing.assert_allclose(train["landmarks"][row], shapes[int(index)], atol=1e-6)


def test_wrong_landmark_count_names_the_example():
    source = FakeSource(4)
    with pytest.raises(ValueError, match=r"example b?'face\d' has landmarks of shape"):
        pipeline.train_dataset(source, pipeline.PipelineConfig(
            batch_size=2, input_size=SIZE, num_landmarks=98, seed=0))[0]
    with pytest.raises(ValueError, match="multiple of 32"):
        pipeline.PipelineConfig(input_size=100)


def test_worker_processes_give_the_same_batches():
    dataset = pipeline.train_dataset(FakeSource(8), _config())
    in_process = pipeline.iterate(dataset, start=1)
    workers = pipeline.iterate(dataset, start=1, num_workers=1)
    for _ in range(2):
        a, b = next(in_process), next(workers)
        np.testing.assert_array_equal(a["image"], b["image"])


def test_synthetic_source_is_indexable_and_deterministic():
    source = sources.SyntheticSource(5, seed=7)
    a, b = source[3], source[3]
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["landmarks"].shape == (68, 2) and a["box"].shape == (3,)
    with pytest.raises(IndexError):
        source[5]


def test_device_batch_shards_along_the_data_axis():
    import jax

    from asmnet_jax.mesh import batch_sharding, make_mesh

    mesh = make_mesh(jax.devices()[:1])
    batch = pipeline.train_dataset(FakeSource(4), _config())[0]
    arrays = pipeline.device_batch(batch, batch_sharding(mesh))
    assert set(arrays) == {"image", "landmarks", "pose", "mask"}
    np.testing.assert_array_equal(np.asarray(arrays["image"]), batch["image"])
