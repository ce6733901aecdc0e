import logging
import os
import random

import cv2
import numpy as np
import pytest

from asmnet_jax.data import w300, wflw
from asmnet_jax.data.crop import crop_face, detection_box, landmark_box, uncrop_points
from asmnet_jax.data.errors import DataError
from asmnet_jax.data.splits import carve_validation, load_image

# --------------------------------------------------------------------------- tiny 300W layouts


def _points(n, seed, size=32.0):
    """(n, 2) random points inside a size x size image, 0-based pixels."""
    return np.random.default_rng(seed).uniform(1, size - 2, size=(n, 2)).astype(np.float32)


def _pts_text(points0, header=True):
    """.pts text for 0-based points (written 1-based, as the format is)."""
    body = "\n".join(f"{x + 1:.3f} {y + 1:.3f}" for x, y in points0)
    return f"version: 1\nn_points: {len(points0)}\n{{\n{body}\n}}\n" if header else body + "\n"


def _image(path, w=32, h=32):
    cv2.imwrite(str(path), np.full((h, w, 3), 128, np.uint8))


def _face(folder, stem, seed=0, ext=".jpg", pts_ext=".pts", header=True, text=None):
    folder.mkdir(parents=True, exist_ok=True)
    _image(folder / f"{stem}{ext}")
    (folder / f"{stem}{pts_ext}").write_text(text if text is not None
                                             else _pts_text(_points(68, seed), header))


def _layout(root, faces):
    """``faces``: {subset: [stem, ...]}; every face gets a tiny image and a .pts."""
    for i, (subset, stems) in enumerate(faces.items()):
        for j, stem in enumerate(stems):
            _face(root.joinpath(*subset.split("/")), stem, seed=100 * i + j)
    return root


FULL_LAYOUT = {
    "afw": ["111_1", "111_2", "222_1", "333_1", "333_2", "333_3"],
    "helen/trainset": ["1001_1", "1002_1", "1003_1"],
    "lfpw/trainset": ["image_0001", "image_0002", "image_0003"],
    "helen/testset": ["2001_1", "2002_1"],
    "lfpw/testset": ["image_0001"],
    "ibug": ["image_003_1", "image_004_1"],
}


@pytest.fixture
def root300(tmp_path):
    return _layout(tmp_path / "300w", FULL_LAYOUT)


def test_read_pts_accepts_the_header_and_bare_forms_and_subtracts_one(tmp_path):
    points = _points(68, 1)
    (tmp_path / "a.pts").write_text(_pts_text(points, header=True))
    (tmp_path / "b.pts").write_text(_pts_text(points, header=False))
    (tmp_path / "c.pts").write_text("\r\n" + _pts_text(points).replace("\n", "\r\n") + "\r\n\r\n")
    for name in ("a", "b", "c"):
        read = w300.read_pts(tmp_path / f"{name}.pts")
        assert read.shape == (68, 2) and read.dtype == np.float32
        np.testing.assert_allclose(read, points, atol=1e-3)
    (tmp_path / "one.pts").write_text("version: 1\nn_points: 68\n{\n" + "1 1\n" * 68 + "}\n")
    np.testing.assert_array_equal(w300.read_pts(tmp_path / "one.pts"), np.zeros((68, 2)))


def test_splits_read_their_folders_with_names_subsets_and_test_flags(root300):
    train = w300.read_300w(root300, "train")
    assert [r.name for r in train] == [f"{s}/{n}" for s in ("afw", "helen/trainset",
                                                            "lfpw/trainset")
                                       for n in FULL_LAYOUT[s]]
    assert train.missing_folders == () and train.skipped.count == 0
    first = train[0]
    assert first.subset == "afw" and first.test_set is None
    assert first.image_path == str(root300 / "afw" / "111_1.jpg")
    assert first.landmarks.shape == (68, 2) and first.landmarks.dtype == np.float32
    np.testing.assert_allclose(first.landmarks, _points(68, 0), atol=1e-3)
    with pytest.raises(ValueError):
        first.landmarks[0, 0] = 5.0  # records are frozen, their arrays read-only

    common = w300.read_300w(root300, "common")
    assert [(r.name, r.test_set) for r in common] == [
        ("helen/testset/2001_1", "common"), ("helen/testset/2002_1", "common"),
        ("lfpw/testset/image_0001", "common")]
    challenging = w300.read_300w(root300, "challenging")
    assert {r.test_set for r in challenging} == {"challenging"} and len(challenging) == 2
    full = w300.read_300w(root300, "full")
    assert [r.name for r in full] == [r.name for r in common] + [r.name for r in challenging]
    assert [r.test_set for r in full] == ["common"] * 3 + ["challenging"] * 2
    with pytest.raises(ValueError, match="unknown 300W split"):
        w300.read_300w(root300, "test")


def test_upper_case_extensions_png_and_unannotated_images(tmp_path):
    root = tmp_path / "300w"
    _face(root / "ibug", "image_005_1", ext=".JPG")
    _face(root / "ibug", "image_006_1", ext=".PNG", pts_ext=".PTS")
    _image(root / "ibug" / "stray.jpg")
    (root / "ibug" / "notes.txt").write_text("not a face")
    result = w300.read_300w(root, "challenging")
    assert [os.path.basename(r.image_path) for r in result] == ["image_005_1.JPG",
                                                                "image_006_1.PNG"]
    assert result.unannotated_images == ("ibug/stray.jpg",)


def test_a_partly_present_split_reads_what_is_there_and_reports_the_rest(tmp_path, caplog):
    root = _layout(tmp_path / "300w", {"afw": ["1_1", "1_2"], "lfpw/testset": ["image_0001"]})
    with caplog.at_level(logging.WARNING):
        train = w300.read_300w(root, "train")
    assert len(train) == 2
    assert train.missing_folders == ("helen/trainset", "lfpw/trainset")
    assert "helen/trainset, lfpw/trainset" in caplog.text
    full = w300.read_300w(root, "full")
    assert [r.name for r in full] == ["lfpw/testset/image_0001"]
    assert full.missing_folders == ("helen/testset", "ibug")


def test_a_split_with_none_of_its_folders_raises_naming_root_and_folders(tmp_path):
    root = _layout(tmp_path / "300w", {"afw": ["1_1"]})
    with pytest.raises(DataError) as info:
        w300.read_300w(root, "common")
    assert str(root) in str(info.value)
    assert "helen/testset" in str(info.value) and "lfpw/testset" in str(info.value)
    with pytest.raises(DataError, match="ibug"):
        w300.read_300w(root, "challenging")
    with pytest.raises(DataError, match="root does not exist"):
        w300.read_300w(tmp_path / "nowhere", "train")
    (root / "ibug").mkdir()  # present but empty: still never served empty
    with pytest.raises(DataError, match="no faces"):
        w300.read_300w(root, "challenging")


def test_listing_a_split_decodes_no_image(root300, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an image was decoded while listing")

    monkeypatch.setattr(cv2, "imread", refuse)
    monkeypatch.setattr(cv2, "imdecode", refuse)
    assert len(w300.read_300w(root300, "train", check_images=True)) == 12


# --------------------------------------------------------------------------- validation split


def test_validation_is_carved_by_photo_deterministically(root300):
    everything = [r.name for r in w300.read_300w(root300, "train")]
    train = w300.read_300w(root300, "train", val_fraction=0.3, seed=3)
    val = w300.read_300w(root300, "val", val_fraction=0.3, seed=3)
    train_names, val_names = [r.name for r in train], [r.name for r in val]
    assert sorted(train_names + val_names) == sorted(everything)
    assert not set(train_names) & set(val_names)
    assert len(val_names) >= round(0.3 * len(everything))
    # AFW's faces of one photo are on one side.
    for photo in ("afw/111", "afw/333"):
        faces = [n for n in train_names + val_names if w300.photo_key(n) == photo]
        assert all(n in val_names for n in faces) or all(n in train_names for n in faces)
    assert w300.photo_key("afw/333_2") == "afw/333"
    assert w300.photo_key("ibug/image_003_1") == "ibug/image_003"
    assert w300.photo_key("lfpw/trainset/image_0001") == "lfpw/trainset/image_0001"
    # Deterministic across calls; the seed matters.
    again = w300.read_300w(root300, "val", val_fraction=0.3, seed=3)
    assert [r.name for r in again] == val_names
    seeds = {tuple(r.name for r in w300.read_300w(root300, "val", val_fraction=0.3, seed=s))
             for s in range(8)}
    assert len(seeds) > 1
    with pytest.raises(ValueError, match="val_fraction"):
        w300.read_300w(root300, "val")


def test_carve_validation_ignores_input_order_and_keeps_groups_whole():
    records = [(f"photo{i // 3}", i) for i in range(60)]  # 20 photos of 3 faces
    train, val = carve_validation(records, 0.25, seed=7, group_key=lambda r: r[0])
    assert len(val) == 15 and len(train) == 45
    assert not {r[0] for r in train} & {r[0] for r in val}
    shuffled = records[:]
    random.Random(0).shuffle(shuffled)
    _, val_shuffled = carve_validation(shuffled, 0.25, seed=7, group_key=lambda r: r[0])
    assert sorted(val_shuffled) == sorted(val)
    # A larger fraction with the same seed contains the smaller one.
    _, bigger = carve_validation(records, 0.5, seed=7, group_key=lambda r: r[0])
    assert set(val) <= set(bigger)
    assert carve_validation(records, 0.0, 7, lambda r: r[0]) == (records, [])
    for fraction in (-0.1, 1.0):
        with pytest.raises(ValueError):
            carve_validation(records, fraction, 7, lambda r: r[0])
    with pytest.raises(ValueError, match="nothing is left"):
        carve_validation([("a", 1), ("a", 2)], 0.5, 0, lambda r: r[0])


# --------------------------------------------------------------------------- bad 300W input

_GOOD = [f"{x} {x + 1}" for x in range(1, 69)]


def _pts(lines, header=True):
    body = "\n".join(lines)
    return f"version: 1\nn_points: 68\n{{\n{body}\n}}\n" if header else body + "\n"


@pytest.mark.parametrize("text, line, reason", [
    (_pts(_GOOD[:67]), 71, "67 points, expected 68"),
    (_pts(_GOOD + ["5 5"]), 72, "more than 68"),
    (_pts(_GOOD[:10] + ["3.0 abc"] + _GOOD[11:]), 14, "non-numeric"),
    (_pts(_GOOD[:20] + ["nan 4"] + _GOOD[21:]), 24, "non-finite"),
    (_pts(_GOOD[:20] + ["4 -inf"] + _GOOD[21:]), 24, "non-finite"),
    (_pts(_GOOD[:5] + ["1 2 3"] + _GOOD[6:]), 9, "3 token"),
    (_pts(_GOOD).replace("n_points: 68", "n_points: 98"), 2, "n_points is 98"),
    (_pts(_GOOD).replace("}\n", ""), 71, "missing the closing"),
    (_pts(_GOOD) + "extra\n", 73, "after '}'"),
    (_pts(_GOOD[:60], header=False), 60, "60 points"),
])
def test_bad_pts_raises_naming_file_and_line(tmp_path, text, line, reason):
    root = tmp_path / "300w"
    _face(root / "afw", "9_1", text=text)
    path = str(root / "afw" / "9_1.pts")
    with pytest.raises(DataError) as info:
        w300.read_300w(root, "train")
    assert info.value.path == path and info.value.line == line
    assert str(info.value).startswith(f"{path}:{line}: ") and reason in str(info.value)


def test_missing_or_bad_images_and_skip_bad_counting(tmp_path):
    root = _layout(tmp_path / "300w", {"afw": ["1_1", "2_1", "3_1", "4_1", "5_1"]})
    (root / "afw" / "2_1.jpg").unlink()  # no image beside the .pts
    (root / "afw" / "4_1.pts").write_text(_pts(_GOOD[:3]))  # too few points
    (root / "afw" / "5_1.jpg").write_bytes(b"this is no jpeg")  # found only by check_images

    with pytest.raises(DataError) as info:
        w300.read_300w(root, "train")
    assert info.value.path == str(root / "afw" / "2_1.pts") and "no image" in str(info.value)

    result = w300.read_300w(root, "train", skip_bad=True)
    assert [r.name for r in result] == ["afw/1_1", "afw/3_1", "afw/5_1"]
    assert result.skipped.count == 2
    assert [os.path.basename(e.path) for e in result.skipped.errors] == ["2_1.pts", "4_1.pts"]
    assert result.skipped.errors[1].line == 7
    assert "2 bad record(s) skipped" in result.skipped.summary()

    checked = w300.read_300w(root, "train", skip_bad=True, check_images=True)
    assert [r.name for r in checked] == ["afw/1_1", "afw/3_1"] and checked.skipped.count == 3
    assert checked.skipped.errors[2].path == str(root / "afw" / "5_1.jpg")
    (root / "afw" / "2_1.pts").unlink()
    (root / "afw" / "4_1.pts").unlink()
    assert len(w300.read_300w(root, "train")) == 3
    with pytest.raises(DataError, match="neither JPEG nor PNG") as info:
        w300.read_300w(root, "train", check_images=True)
    assert info.value.path == str(root / "afw" / "5_1.jpg") and "5_1.pts" in str(info.value)


def test_everything_bad_is_an_error_even_when_skipping(tmp_path):
    root = tmp_path / "300w"
    _face(root / "ibug", "image_1_1", text="1 2\n")
    with pytest.raises(DataError, match="no faces.*1 bad record"):
        w300.read_300w(root, "challenging", skip_bad=True)


def test_load_image_gives_rgb_and_names_bad_files(tmp_path):
    bgr = np.zeros((4, 6, 3), np.uint8)
    bgr[..., 0] = 255  # blue in OpenCV's order
    cv2.imwrite(str(tmp_path / "blue.png"), bgr)
    rgb = load_image(tmp_path / "blue.png")
    assert rgb.shape == (4, 6, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 2] == 255).all() and (rgb[..., :2] == 0).all()
    cv2.imwrite(str(tmp_path / "grey.png"), np.full((3, 3), 77, np.uint8))
    assert load_image(tmp_path / "grey.png").shape == (3, 3, 3)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name, reason in [("missing.jpg", "not found"), ("broken.jpg", "cannot decode"),
                         ("empty.jpg", "cannot decode")]:
        with pytest.raises(DataError, match=reason) as info:
            load_image(tmp_path / name)
        assert info.value.path == str(tmp_path / name)


# --------------------------------------------------------------------------- tiny WFLW layouts


def _wflw_line(seed, image, flags=(0,) * 6, box=None):
    points = _points(98, seed, size=40.0)
    if box is None:
        box = (0, 0, 40, 40)
    coordinates = " ".join(f"{v:.6f}" for v in points.reshape(-1))
    return f"{coordinates} {' '.join(map(str, box))} {' '.join(map(str, flags))} {image}"


def _wflw_root(tmp_path, train_lines, test_lines, images=None):
    root = tmp_path / "wflw"
    lists = root / "WFLW_annotations" / "list_98pt_rect_attr_train_test"
    lists.mkdir(parents=True)
    for which, lines in (("train", train_lines), ("test", test_lines)):
        if lines is not None:
            (lists / f"list_98pt_rect_attr_{which}.txt").write_text("\n".join(lines) + "\n")
    for line in (train_lines or []) + (test_lines or []):
        image = line.split()[-1] if line.strip() else ""
        if image.endswith(".jpg") and (images is None or image in images):
            path = root / "WFLW_images" / image
            path.parent.mkdir(parents=True, exist_ok=True)
            _image(path, 40, 40)
    return root


TRAIN_IMAGES = ["1--Event/a.jpg", "1--Event/a.jpg", "1--Event/b.jpg", "2--Other/c.jpg",
                "2--Other/c.jpg", "2--Other/c.jpg", "2--Other/d.jpg", "2--Other/e.jpg"]
TEST_FLAGS = [(1, 0, 0, 0, 0, 0), (0, 1, 0, 0, 0, 1), (0, 0, 1, 0, 0, 0), (0, 0, 0, 1, 1, 0),
              (1, 1, 1, 1, 1, 1)]


@pytest.fixture
def wflw_root(tmp_path):
    train = [_wflw_line(i, image) for i, image in enumerate(TRAIN_IMAGES)]
    test = [_wflw_line(50 + i, f"3--Test/t{i}.jpg", flags) for i, flags in enumerate(TEST_FLAGS)]
    return _wflw_root(tmp_path, train, test[:2] + [""] + test[2:])  # a blank line is ignored


def test_wflw_splits_and_record_fields(wflw_root):
    train = wflw.read_wflw(wflw_root, "train", check_images=True)
    assert len(train) == 8 and train.skipped.count == 0
    first = train[0]
    assert first.name == "train/1--Event/a#1" and first.line == 1
    assert len({r.name for r in train}) == 8
    assert first.image == "1--Event/a.jpg"
    assert first.image_path == str(wflw_root / "WFLW_images" / "1--Event" / "a.jpg")
    assert first.landmarks.shape == (98, 2) and first.landmarks.dtype == np.float32
    np.testing.assert_allclose(first.landmarks, _points(98, 0, size=40.0), atol=1e-5)
    np.testing.assert_array_equal(first.box, [0, 0, 40, 40])
    assert first.annotation_path == wflw.list_path(wflw_root, "train")

    test = wflw.read_wflw(wflw_root, "test")
    assert len(test) == 5
    assert [r.line for r in test] == [1, 2, 4, 5, 6]  # physical lines, the blank one skipped
    assert test[1].attributes == dict(zip(wflw.ATTRIBUTES, TEST_FLAGS[1]))
    for k, attribute in enumerate(wflw.ATTRIBUTES):
        subset = wflw.read_wflw(wflw_root, f"test_{attribute}")
        expected = [f"3--Test/t{i}.jpg" for i, flags in enumerate(TEST_FLAGS) if flags[k]]
        assert [r.image for r in subset] == expected
    with pytest.raises(ValueError, match="unknown WFLW split"):
        wflw.read_wflw(wflw_root, "test_hat")


def test_wflw_validation_keeps_the_faces_of_an_image_together(wflw_root):
    for seed in range(6):
        train = wflw.read_wflw(wflw_root, "train", val_fraction=0.3, seed=seed)
        val = wflw.read_wflw(wflw_root, "val", val_fraction=0.3, seed=seed)
        names = [r.name for r in train.records + val.records]
        assert sorted(names) == sorted(r.name for r in wflw.read_wflw(wflw_root, "train"))
        assert not {r.image for r in train} & {r.image for r in val}
        assert len(val) >= 2
        again = wflw.read_wflw(wflw_root, "val", val_fraction=0.3, seed=seed)
        assert [r.name for r in again] == [r.name for r in val]


@pytest.mark.parametrize("mutate, reason", [
    (lambda t: t[:-2] + t[-1:], "206 tokens, expected 207"),
    (lambda t: t + ["extra"], "208 tokens"),
    (lambda t: t[:7] + ["x7"] + t[8:], "token 8 'x7' is not a number"),
    (lambda t: t[:3] + ["nan"] + t[4:], "not finite"),
    (lambda t: t[:196] + ["inf"] + t[197:], "box: token 197"),
    (lambda t: t[:196] + ["30", "0", "10", "40"] + t[200:], "not x_min < x_max"),
    (lambda t: t[:196] + ["0", "9", "40", "9"] + t[200:], "y_min < y_max"),
    (lambda t: t[:204] + ["2"] + t[205:], "flag occlusion is '2'"),
])
def test_bad_wflw_lines_raise_naming_file_and_line(tmp_path, mutate, reason):
    lines = [_wflw_line(i, f"1--E/{i}.jpg") for i in range(3)]
    lines[1] = " ".join(mutate(lines[1].split()))
    root = _wflw_root(tmp_path, lines, None)
    path = wflw.list_path(root, "train")
    with pytest.raises(DataError) as info:
        wflw.read_wflw(root, "train")
    assert info.value.path == path and info.value.line == 2
    assert str(info.value).startswith(f"{path}:2: ") and reason in str(info.value)
    result = wflw.read_wflw(root, "train", skip_bad=True)
    assert [r.line for r in result] == [1, 3] and result.skipped.count == 1
    assert result.skipped.errors[0].line == 2


def test_wflw_missing_list_images_and_empty_subsets(tmp_path):
    lines = [_wflw_line(i, f"1--E/{i}.jpg") for i in range(4)]
    root = _wflw_root(tmp_path, lines, None, images={"1--E/0.jpg", "1--E/2.jpg"})
    assert len(wflw.read_wflw(root, "train")) == 4  # images are not looked at by default
    path = wflw.list_path(root, "train")
    with pytest.raises(DataError) as info:
        wflw.read_wflw(root, "train", check_images=True)
    assert info.value.path == path and info.value.line == 2
    assert "image file not found" in str(info.value) and "1.jpg" in str(info.value)
    result = wflw.read_wflw(root, "train", check_images=True, skip_bad=True)
    assert [r.line for r in result] == [1, 3] and result.skipped.count == 2

    with pytest.raises(DataError) as info:
        wflw.read_wflw(root, "test")
    assert info.value.path == wflw.list_path(root, "test") and "not found" in str(info.value)
    with pytest.raises(DataError, match="root does not exist"):
        wflw.read_wflw(tmp_path / "nowhere", "train")

    test_root = _wflw_root(tmp_path / "t", None, [_wflw_line(0, "1--E/0.jpg")])
    with pytest.raises(DataError, match="test_blur.*no faces"):
        wflw.read_wflw(test_root, "test_blur")


# --------------------------------------------------------------------------- the real data


@pytest.fixture(scope="module")
def subset300(shared_data):
    root = shared_data / "300w_subset"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    return root, w300.read_300w(root, "train", check_images=True)


def _annotations_on_disk(root):
    """{training folder: number of .pts files in it}, for the folders the subset has."""
    folders = ("afw", "helen/trainset", "lfpw/trainset")
    return {f: len(list((root / f).glob("*.pts"))) for f in folders if (root / f).is_dir()}


def test_the_300w_subset_reads_every_training_face(subset300):
    root, train = subset300
    on_disk = _annotations_on_disk(root)
    # The data's README: AFW (337) and HELEN train (870) from the start, LFPW train (805) later.
    assert on_disk["afw"] == 337 and on_disk["helen/trainset"] == 870
    assert len(train) == sum(on_disk.values()) and train.skipped.count == 0
    assert train.missing_folders == tuple(
        f for f in ("afw", "helen/trainset", "lfpw/trainset") if f not in on_disk)
    assert train.unannotated_images == ()
    for folder, count in on_disk.items():
        assert sum(r.subset == folder for r in train) == count, folder
    assert all(r.landmarks.shape == (68, 2) and r.test_set is None for r in train)
    # The data's README: each photo is scaled so that the landmark box's longer side is 224 px.
    sides = np.array([np.ptp(r.landmarks, axis=0).max() for r in train])
    np.testing.assert_allclose(sides, 224.0, atol=1.0)
    for split in ("common", "full"):
        with pytest.raises(DataError, match="helen/testset, lfpw/testset"):
            w300.read_300w(root, split)
    with pytest.raises(DataError, match="ibug"):
        w300.read_300w(root, "challenging")


def test_the_300w_subset_images_hold_their_landmarks(subset300):
    _, train = subset300
    for record in train.records[::150]:
        image = load_image(record.image_path)
        h, w = image.shape[:2]
        assert image.ndim == 3 and image.dtype == np.uint8
        assert (record.landmarks >= -0.5).all() and (record.landmarks <= [w - 0.5, h - 0.5]).all()
        crop, points, matrix = crop_face(image, record.landmarks,
                                         landmark_box(record.landmarks, 0.1), 64)
        assert ((points > -0.5) & (points < 63.5)).all()
        np.testing.assert_allclose(uncrop_points(points, matrix), record.landmarks, atol=1e-3)


def test_the_300w_subset_validation_split_keeps_afw_photos_whole(subset300):
    root, everything = subset300
    train = w300.read_300w(root, "train", val_fraction=0.1, seed=0)
    val = w300.read_300w(root, "val", val_fraction=0.1, seed=0)
    total = sum(_annotations_on_disk(root).values())
    assert len(train) + len(val) == total and abs(len(val) - 0.1 * total) <= 6
    assert sorted(r.name for r in train.records + val.records) == sorted(
        r.name for r in everything)
    assert not {r.photo for r in train} & {r.photo for r in val}
    shared_photos = {r.photo for r in everything if r.subset == "afw" and r.name[-2:] == "_2"}
    assert shared_photos  # AFW has photos with several faces


def _bilinear(image, points):
    """Samples image (H, W, C) at points (n, 2), pixel-centre coordinates: (n, C) float32."""
    maps = np.asarray(points, np.float32).reshape(1, -1, 2)
    sampled = cv2.remap(image.astype(np.float32), maps[..., 0], maps[..., 1], cv2.INTER_LINEAR)
    return sampled.reshape(len(points), -1)


def test_the_wflw_sample_reads_and_crops_its_four_test_faces(shared_data):
    root = shared_data / "wflw_sample"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    test = wflw.read_wflw(root, "test", check_images=True)
    assert len(test) == 4 and len({r.name for r in test}) == 4
    assert len({r.image for r in test}) == 2  # two faces share an image
    with pytest.raises(DataError, match="list_98pt_rect_attr_train.txt"):
        wflw.read_wflw(root, "train")
    with pytest.raises(DataError, match="no faces"):  # the sample's flags are all 0
        wflw.read_wflw(root, "test_pose")
    for record in test:
        assert record.landmarks.shape == (98, 2)
        assert all(v == 0 for v in record.attributes.values())
        image = load_image(record.image_path)
        # Landmark-box crop: the landmarks span 1 / 1.4 of the crop, centred.
        crop, points, matrix = crop_face(image, record.landmarks,
                                         landmark_box(record.landmarks, margin=0.2), 224)
        low, high = 224 * 0.2 / 1.4 - 0.5, 224 * 1.2 / 1.4 - 0.5
        assert ((points > low - 1e-3) & (points < high + 1e-3)).all()
        np.testing.assert_allclose(np.ptp(points, axis=0).max(), 224 / 1.4, atol=1e-3)
        np.testing.assert_allclose(uncrop_points(points, matrix), record.landmarks, atol=1e-3)
        _assert_same_pixels_under_landmarks(image, record.landmarks, crop, points)
        # Detection-box crop: the box centre lands on the crop centre. (The sample's third box
        # does not reach its face's chin, so no containment check here.)
        box = detection_box(*record.box, margin=0.2)
        crop, points, matrix = crop_face(image, record.landmarks, box, 224)
        centre = uncrop_points(np.array([[111.5, 111.5]]), matrix)[0]
        np.testing.assert_allclose(centre, [(record.box[0] + record.box[2]) / 2,
                                            (record.box[1] + record.box[3]) / 2], atol=1e-3)
        _assert_same_pixels_under_landmarks(image, record.landmarks, crop, points)


def _assert_same_pixels_under_landmarks(image, landmarks, crop, points):
    """The crop's pixels under the crop points are the image's under the landmarks (mean abs
    difference < 2 levels; landmarks off by 1.5 % of the crop differ by > 10 levels here)."""
    inside = ((points >= 0) & (points <= crop.shape[0] - 1)).all(axis=1)
    assert inside.sum() > 40
    source = _bilinear(image, landmarks[inside])
    difference = np.abs(_bilinear(crop, points[inside]) - source).mean()
    assert difference < 2.0, difference
    shifted = np.abs(_bilinear(crop, points[inside] + [0.015 * crop.shape[0], 0]) - source)
    assert shifted.mean() > 10.0, shifted.mean()
