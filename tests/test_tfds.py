"""The TFDS builders, built from tiny official-layout folders written by the test."""

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")
cv2 = pytest.importorskip("cv2")

from asmnet_jax.data import crop
from asmnet_jax.data import sources
from asmnet_jax.data import examples, synthetic, tfds_builders  # noqa: E402
from asmnet_jax.data.errors import DataError  # noqa: E402


def _write_face(folder, name, seed, index, num_landmarks=68):
    record = synthetic.face_record(seed, index, 160, num_landmarks)
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / f"{name}.jpg"), record["image"][..., ::-1])
    return record


def _write_300w(root):
    faces = {}
    for i, (subset, name) in enumerate([("afw", "111_1"), ("afw", "111_2"), ("afw", "222_1"),
                                        ("afw", "333_1"), ("helen/testset", "444_1")]):
        record = _write_face(root / subset, name, 5, i)
        points = record["landmarks"] + 1.0  # .pts are 1-based
        lines = ["version: 1", "n_points: 68", "{"] + [f"{x:.3f} {y:.3f}" for x, y in points] + ["}"]
        (root / subset / f"{name}.pts").write_text("\n".join(lines) + "\n")
        faces[f"{subset}/{name}"] = record
    return faces


@pytest.fixture(scope="module")
def built_300w(tmp_path_factory):
    manual = tmp_path_factory.mktemp("w300_manual")
    faces = _write_300w(manual)
    data_dir = tmp_path_factory.mktemp("tfds")
    builder = tfds_builders.build("w300", manual_dir=manual, data_dir=data_dir)
    return builder, faces, data_dir, manual


def test_w300_splits_and_examples(built_300w):
    builder, faces, data_dir, _ = built_300w
    splits = builder.info.splits
    assert set(splits) == {"train", "validation", "common", "full"}  # no ibug: no challenging
    assert splits["train"].num_examples + splits["validation"].num_examples == 4
    assert splits["common"].num_examples == splits["full"].num_examples == 1
    source = tfds_builders.data_source("w300", "common", data_dir=data_dir)
    example = source[0]
    assert example["image"].shape == (examples.STORE_SIZE,) * 2 + (3,)
    assert example["name"].decode() == "helen/testset/444_1"
    assert example["landmarks"].shape == (68, 2)
    # The face box (no margin) is the landmarks' square box in crop pixels, centred in the crop.
    cx, cy, side = example["box"]
    points = example["landmarks"]
    assert side == pytest.approx(np.ptp(points, axis=0).max(), rel=1e-3)
    assert (cx, cy) == pytest.approx(((examples.STORE_SIZE - 1) / 2,) * 2, abs=1.0)
    # PnP pose on the synthetic face: close to the pose it was rendered with.
    true_pose = faces["helen/testset/444_1"]["pose"]
    assert np.max(np.abs(example["pose"] - true_pose)) < 8.0


def test_the_build_command_exports_every_split_as_npz(built_300w, tmp_path, capsys):
    import json

    from asmnet_jax.cli import build_data
    from asmnet_jax.data import resident

    _, _, data_dir, manual = built_300w
    exports = tmp_path / "exports"
    # Already built: the command reuses the build and writes the exports.
    assert build_data.main(["w300", "--manual-dir", str(manual), "--data-dir", str(data_dir),
                            "--npz", str(exports)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(line["npz"]) == set(line["splits"])
    source = tfds_builders.data_source("w300", "common", data_dir=data_dir)
    arrays = sources.load_npz(line["npz"]["common"], 68)
    assert len(arrays) == len(source) == 1
    np.testing.assert_array_equal(arrays.image[0], source[0]["image"])
    np.testing.assert_array_equal(arrays.landmarks[0], source[0]["landmarks"])
    assert arrays.name[0] == "helen/testset/444_1"


def test_pose_csv_overrides_pnp(built_300w, tmp_path):
    _, faces, _, manual = built_300w
    lines = ["name,yaw,pitch,roll"] + [f"{name},1.5,-2.5,3.5" for name in faces]
    (manual / "poses.csv").write_text("\n".join(lines) + "\n")
    try:
        builder = tfds_builders.build("w300", manual_dir=manual, data_dir=tmp_path)
        example = builder.as_data_source(split="common")[0]
        np.testing.assert_allclose(example["pose"], [1.5, -2.5, 3.5])
    finally:
        (manual / "poses.csv").unlink()


def test_synthetic_faces_builder_and_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="asmnet-build-data"):
        tfds_builders.data_source("synthetic_faces", "train", data_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        tfds_builders.get_builder("cofw")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty.*300W"):
        tfds_builders.build("w300", manual_dir=empty, data_dir=tmp_path)
    (empty / "notes.txt").write_text("no faces here")
    with pytest.raises(DataError, match="no 300W split"):
        tfds_builders.build("w300", manual_dir=empty, data_dir=tmp_path)


def test_wflw_builder_reads_the_official_list_with_attribute_subsets(tmp_path):
    manual = tmp_path / "wflw"
    lines = []
    for i, (which, flags) in enumerate([("train", "0 0 0 0 0 0"), ("train", "1 0 0 0 0 0"),
                                        ("test", "1 0 0 0 0 1"), ("test", "0 1 0 0 0 0")]):
        record = _write_face(manual / "WFLW_images" / "0--Event", f"img_{i}", 9, i, 98)
        x0, y0 = record["landmarks"].min(axis=0)
        x1, y1 = record["landmarks"].max(axis=0)
        coords = " ".join(f"{v:.3f}" for v in record["landmarks"].reshape(-1))
        lines.append((which, f"{coords} {int(x0)} {int(y0)} {int(x1) + 1} {int(y1) + 1} {flags} "
                             f"0--Event/img_{i}.jpg"))
    lists = manual / "WFLW_annotations" / "list_98pt_rect_attr_train_test"
    lists.mkdir(parents=True)
    for which in ("train", "test"):
        (lists / f"list_98pt_rect_attr_{which}.txt").write_text(
            "\n".join(text for w, text in lines if w == which) + "\n")
    builder = tfds_builders.build("wflw", manual_dir=manual, data_dir=tmp_path / "tfds")
    splits = builder.info.splits
    assert splits["test"].num_examples == 2
    assert splits["test_pose"].num_examples == 1 and splits["test_blur"].num_examples == 1
    assert splits["test_expression"].num_examples == 1
    assert "test_makeup" not in splits  # no face has the flag: reported, not served empty
    example = builder.as_data_source(split="test_blur")[0]
    assert example["landmarks"].shape == (98, 2)
    assert example["flags"].tolist() == [1, 0, 0, 0, 0, 1]


def test_synthetic_faces_builder_generates_disjoint_splits(tmp_path):
    config = tfds_builders.SyntheticConfig(name="tiny", train=3, validation=2, test=2)
    builder = tfds_builders.SyntheticFaces(config=config, data_dir=str(tmp_path),
                                           file_format="array_record")
    builder.download_and_prepare()
    train = builder.as_data_source(split="train")
    validation = builder.as_data_source(split="validation")
    assert len(train) == 3 and len(validation) == 2
    names = {train[i]["name"] for i in range(3)} | {validation[i]["name"] for i in range(2)}
    assert len(names) == 5
    assert not np.array_equal(train[0]["image"], validation[0]["image"])


def test_a_bad_record_stops_the_build_instead_of_dropping_its_split(tmp_path):
    """Only a split with nothing to read is left out; a malformed line is an error with its line."""
    manual = tmp_path / "wflw"
    lists = manual / "WFLW_annotations" / "list_98pt_rect_attr_train_test"
    lists.mkdir(parents=True)
    (manual / "WFLW_images").mkdir()
    (lists / "list_98pt_rect_attr_test.txt").write_text("1.0 2.0 3.0 0--Event/img.jpg\n")
    with pytest.raises(DataError, match=r"list_98pt_rect_attr_test.txt:1: .*tokens"):
        tfds_builders.build("wflw", manual_dir=manual, data_dir=tmp_path / "tfds")


def test_a_dataset_not_built_names_the_directory_and_the_command(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        tfds_builders.data_source("w300", "train", str(tmp_path))
    message = str(error.value)
    assert str(tmp_path) in message and "asmnet-build-data w300 --manual-dir DIR" in message
    from asmnet_jax import evaluate

    with pytest.raises(FileNotFoundError, match="is not built in"):
        evaluate.available_splits("wflw", str(tmp_path))
