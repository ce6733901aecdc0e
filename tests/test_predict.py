"""asmnet-predict: boxes, batching, the exact mapping back to the photo, drawings, reports, errors.

The models are 64 px ASMNets whose heads output known constants (kernels zeroed, biases set), so
the expected landmarks in the photo follow analytically from the crop box: a model coordinate
``u`` of the crop of centre ``c`` and side ``L`` (the face box grown by the margin) is the photo
pixel ``c + u * L``.
"""

import functools
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from asmnet_jax import detection, drawing
from asmnet_jax import predict as P
from asmnet_jax.cli import predict as predict_cli
from asmnet_jax.data import crop

SIZE = 64
N = 68
MARGIN = 0.2  # the model directory's; the training workdir uses the config default 0.1


@functools.lru_cache(maxsize=None)
def _shapes():
    """The variable shapes of a 64 px 68-point ASMNet (traced, not compiled)."""
    import jax
    import jax.numpy as jnp

    from asmnet_jax.models import create_model

    model = create_model("asmnet", N)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)),
                                                 train=False))
    return {k: v for k, v in abstract.items() if k in ("params", "batch_stats")}


def _variables(landmarks, pose):
    """Random ASMNet variables whose heads output ``landmarks`` (2n,) and ``pose`` (3,): the head
    kernels are zero and their biases the outputs (BN statistics: mean 0, variance 1)."""
    import jax

    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "batch_stats" in name:
            return (np.ones if "var" in name else np.zeros)(leaf.shape, np.float32)
        if "landmark_head" in name or "pose_head" in name:
            if "kernel" in name:
                return np.zeros(leaf.shape, np.float32)
            return np.asarray(landmarks if "landmark_head" in name else pose, np.float32)
        return rng.normal(0.0, 0.05, leaf.shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, _shapes())


LANDMARKS = np.random.default_rng(0).uniform(-0.45, 0.45, 2 * N).astype(np.float32)
POSE = np.array([0.3, -0.2, 0.1], np.float32)        # radians
LANDMARKS_LATEST = np.full(2 * N, 0.25, np.float32)  # the workdir's newest (not best) checkpoint


def save_constant_model(path, landmarks, pose, margin=MARGIN, shape_model=None) -> str:
    """A 64 px model directory as asmnet-import-keras writes one (project coordinates) whose heads
    output ``landmarks`` and ``pose`` for every image; returns its path."""
    from asmnet_jax.model_dir import save_model

    save_model(path, "asmnet", N, _variables(landmarks, pose),
               extra={"coordinates": "project", "input_size": SIZE, "margin": margin},
               shape_model=shape_model)
    return str(path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_constant_model(tmp_path_factory.mktemp("model") / "imported", LANDMARKS, POSE)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A training workdir like asmnet-train's: config.json and two checkpoints, the best (lower
    validation NME) at step 1 and the latest at step 2, with different landmark outputs."""
    import orbax.checkpoint as ocp

    path = tmp_path_factory.mktemp("run")
    with open(path / "config.json", "w") as f:
        json.dump({"model": "asmnet", "num_landmarks": N, "input_size": SIZE}, f)
    manager = ocp.CheckpointManager(
        str(path / "checkpoints"), item_names=("state", "meta"),
        options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False))
    for step, landmarks, nme in ((1, LANDMARKS, 0.05), (2, LANDMARKS_LATEST, 0.09)):
        manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(_variables(landmarks, POSE)),
            meta=ocp.args.JsonSave({"step": step, "val_nme": nme})))
    manager.wait_until_finished()
    manager.close()
    return str(path)


@pytest.fixture(scope="module")
def loaded(model_dir):
    from asmnet_jax import inference

    return inference.load(model_dir)


@pytest.fixture(scope="module")
def predictor(loaded):
    from asmnet_jax import inference

    return inference.make_predictor(loaded)


def _write(path, shape=(60, 80), seed=0):
    image = np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(str(path), image)
    return str(path)


def _expected(box, margin, landmarks=LANDMARKS):
    """Landmarks (n, 2) in photo pixels for a given box: ``c + u * L`` (see the module doc)."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2]) + landmarks.reshape(-1, 2) * side


def _main(argv, capsys):
    code = predict_cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------------------------------
# The library


def test_landmarks_map_back_to_the_photo_exactly(loaded, predictor):
    image = np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    # A face partly outside the photo, one wider than high, one far larger than the input.
    boxes = [[-10.0, 20.5, 30.0, 75.25], [50.0, 10.0, 110.0, 40.0], [0.0, 0.0, 400.0, 300.0]]
    source = P.ImageInput("memory.png", "memory.png")
    [result] = P.predict_images([source], predictor, loaded.input_size, loaded.margin, 2,
                                boxes={"memory.png": boxes}, read={"memory.png": image}.get)
    assert loaded.margin == MARGIN and loaded.input_size == SIZE
    assert [f["source"] for f in result.faces] == ["given"] * 3
    for face, box in zip(result.faces, boxes):
        np.testing.assert_allclose(face["landmarks"], _expected(box, MARGIN), atol=2e-3)
        np.testing.assert_allclose(face["pose"], np.rad2deg(POSE), atol=1e-4)


def test_the_crop_is_the_training_crop_and_downscaling_keeps_the_mapping():
    from asmnet_jax.data import pipeline

    image = np.zeros((400, 400, 3), np.uint8)
    image[::2] = 255  # one-pixel stripes: aliasing would show as a grey level far from the mean
    face_box = crop.SquareBox(200.0, 210.0, 240.0)
    out, matrix = P.crop_for_model(image, face_box, 32, 0.1)
    np.testing.assert_allclose(matrix, crop.base_matrix(face_box, 0.1, 32))
    assert abs(float(out[4:28, 4:28].mean()) - 127.5) < 3 and out[4:28, 4:28].std() < 6
    small, _ = P.crop_for_model(image, crop.SquareBox(200.0, 200.0, 30.0), 32, 0.1)
    assert small.shape == (32, 32, 3)


def test_faces_are_batched_across_images_in_order():
    """Faces of many images, with 0 to 4 faces each, through batches of 3: each face gets its own
    prediction and the images come back in input order. The stand-in model reads each crop's
    grey level, which encodes the face."""
    counts = [2, 0, 3, 1, 0, 4, 1]
    images, boxes, expected = {}, {}, []
    for i, count in enumerate(counts):
        image = np.zeros((40, 40 * max(count, 1), 3), np.uint8)
        face_boxes = []
        for k in range(count):
            level = 10 + 20 * len(expected)
            image[:, 40 * k:40 * (k + 1)] = level
            face_boxes.append([40 * k + 12.0, 12.0, 40 * k + 28.0, 28.0])
            expected.append(level)
        images[f"img{i}.png"] = image
        boxes[f"img{i}.png"] = face_boxes
    calls = []

    def predict(batch):
        calls.append(len(batch))
        levels = batch[:, SIZE // 2, SIZE // 2, 0].astype(np.float32)
        return np.repeat(levels[:, None] / 1000, 2 * N, axis=1), np.zeros((len(batch), 3))

    results = list(P.predict_images([P.ImageInput(n, n) for n in images], predict, SIZE, 0.1, 3,
                                    boxes=boxes, read=images.__getitem__))
    assert [r.source.path for r in results] == list(images)
    assert [len(r.faces) for r in results] == counts
    got = [face["landmarks"] for r in results for face in r.faces]
    centres = [np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])
               for face_boxes in boxes.values() for b in face_boxes]
    for level, points, centre in zip(expected, got, centres):
        side = 16 * 1.2
        np.testing.assert_allclose(points, np.broadcast_to(centre + level / 1000 * side, (N, 2)),
                                   atol=1e-3)
    assert calls == [3, 3, 3, 3]  # 11 faces: three full batches, the rest padded to the same size
    calls.clear()  # fewer faces than a batch: one batch of a power of two
    two = {name: boxes[name] for name in list(boxes)[:2]}
    list(P.predict_images([P.ImageInput(n, n) for n in two], predict, SIZE, 0.1, 8, boxes=two,
                          read=images.__getitem__))
    assert calls == [2]  # img0's 2 faces (img1 has none)


def test_pose_axes_point_the_way_of_the_pose_convention():
    def centroid(image, channel):
        others = [c for c in range(3) if c != channel]
        mask = (image[..., channel] > 120) & (image[..., others].max(axis=-1) < 110)
        ys, xs = np.nonzero(mask)
        return (xs.mean() - 100, ys.mean() - 100, mask.sum()) if mask.any() else (0, 0, 0)

    blank = np.zeros((200, 200, 3), np.uint8)
    frontal = drawing.draw_pose_axes(blank, (100, 100), (0, 0, 0), 60)
    x, y, _ = centroid(frontal, 0)  # red: the head's x axis, image right
    assert x > 20 and abs(y) < 3
    x, y, _ = centroid(frontal, 1)  # green: up
    assert y < -20 and abs(x) < 3
    assert centroid(frontal, 2)[2] < 40  # blue points at the viewer: (almost) nothing drawn
    assert not blank.any()  # a copy is drawn on
    x, y, _ = centroid(drawing.draw_pose_axes(blank, (100, 100), (45, 0, 0), 60), 2)
    assert x > 10 and abs(y) < 3  # +yaw: the face (z) turns toward the image right
    x, y, _ = centroid(drawing.draw_pose_axes(blank, (100, 100), (0, 30, 0), 60), 2)
    assert y < -8 and abs(x) < 3  # +pitch: chin up, the face looks up
    x, y, _ = centroid(drawing.draw_pose_axes(blank, (100, 100), (0, 0, 30), 60), 1)
    assert x > 8 and y < -15  # +roll: clockwise, the top of the head moves right


def test_box_parsing_and_matching():
    assert P.parse_box("1,2.5, 30,40") == [1.0, 2.5, 30.0, 40.0]
    for bad in ("1,2,3", "a,b,c,d", "5,5,1,10", "0,0,nan,4"):
        with pytest.raises(P.PredictError, match="--box"):
            P.parse_box(bad)
    images = [P.ImageInput("dir/a.jpg", "a.jpg"), P.ImageInput("dir/sub/b.jpg", "sub/b.jpg"),
              P.ImageInput("other/b.jpg", "b.jpg")]
    matched, unused = P.match_boxes(images, {"a.jpg": [[0, 0, 1, 1]], "dir/sub/b.jpg": [],
                                             "missing.jpg": [[0, 0, 1, 1]]})
    assert matched == {"dir/a.jpg": [[0, 0, 1, 1]], "dir/sub/b.jpg": []}
    assert unused == ["missing.jpg"]
    with pytest.raises(P.PredictError, match="several images"):
        P.match_boxes(images, {"b.jpg": [[0, 0, 1, 1]]})


def test_calibration_inverse_and_detector_helpers():
    calibration = detection.BoxCalibration(scale=1.1, dx=0.02, dy=-0.05)
    face = calibration.face_box([10, 20, 50, 60])
    np.testing.assert_allclose(calibration.detector_box(face), [10, 20, 50, 60], atol=1e-9)
    assert len(detection.blazeface_anchors(128, (8, 16, 16, 16), 2)) == 896
    anchors = detection.blazeface_anchors(192, (4,), 1)
    assert anchors.shape == (2304, 2) and anchors.min() > 0 and anchors.max() < 1
    merged = detection.weighted_nms([[0, 0, 10, 10], [2, 0, 12, 10], [50, 50, 60, 60], [0, 0, 0, 0]],
                            [0.9, 0.3, 0.8, 0.7])
    np.testing.assert_allclose(merged[0], [0.5, 0, 10.5, 10, 0.9], atol=1e-5)
    assert len(merged) == 3 and merged[1, 4] == pytest.approx(0.8)


# --------------------------------------------------------------------------------------------------
# The command


def test_cli_with_boxes_file_writes_json_drawings_and_reports_images_without_faces(
        model_dir, tmp_path, capsys):
    photos = tmp_path / "photos"
    paths = [_write(photos / "a.png", seed=1), _write(photos / "sub" / "b.jpg", seed=2),
             _write(photos / "c.png", (50, 50), seed=3), _write(photos / "d.bmp", seed=4)]
    (photos / "notes.txt").write_text("not an image, not walked")
    boxes = {"a.png": [[10, 10, 40, 40], [45, 5, 75, 45]], "sub/b.jpg": [[20, 15, 50, 45]],
             "c.png": [], os.path.abspath(paths[3]): [[0, 0, 30, 20]], "zzz.png": [[0, 0, 5, 5]]}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    out_dir = photos / "out"  # inside the walked folder: its drawings are not read back
    for _ in range(2):
        code, out, err = _main([photos, "--model", model_dir, "--boxes", tmp_path / "boxes.json",
                                "--detector", "none", "--out", out_dir, "--batch-size", 2], capsys)
        assert code == 0, err
    assert "'zzz.png' matches no input image" in err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["images"] == 4 and summary["faces"] == 4
    assert summary["no_faces"] == {"count": 1, "images": [str(photos / "c.png")]}
    assert summary["json"] == str(out_dir / "predictions.json")
    assert summary["seconds"] > 0 and summary["detector"] == "none"
    document = json.loads((out_dir / "predictions.json").read_text())
    records = document["images"]
    assert [r["image"] for r in records] == [str(photos / n) for n in
                                             ("a.png", "c.png", "d.bmp", "sub/b.jpg")]
    assert document["no_faces"] == [str(photos / "c.png")]
    assert document["unused_box_keys"] == ["zzz.png"]
    expected_boxes = [boxes["a.png"], [], boxes[os.path.abspath(paths[3])], boxes["sub/b.jpg"]]
    for record, given in zip(records, expected_boxes):
        assert len(record["faces"]) == len(given)
        for face, box in zip(record["faces"], given):
            assert face["box"] == box and face["box_source"] == "given"
            np.testing.assert_allclose(face["landmarks"], _expected(box, MARGIN), atol=2e-3)
            assert [face["yaw"], face["pitch"], face["roll"]] == pytest.approx(
                np.rad2deg(POSE).tolist(), abs=1e-3)
        drawing = cv2.imread(record["drawing"])
        assert drawing.shape[:2] == (record["height"], record["width"])
    assert sorted(summary["drawings"]) == sorted(r["drawing"] for r in records)
    assert (out_dir / "sub" / "b.png").is_file()


def test_cli_single_box_with_a_training_workdir_best_and_latest(workdir, tmp_path, capsys):
    image = _write(tmp_path / "one.jpg", (70, 90))
    for which, landmarks in (("best", LANDMARKS), ("latest", LANDMARKS_LATEST)):
        code, out, err = _main([image, "--model", workdir, "--which", which, "--box", "20,10,60,58",
                                "--box", "0,0,10,10", "--out", tmp_path / which, "--no-draw"],
                               capsys)
        assert code == 0, err
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["faces"] == 2 and summary["drawings"] == []
        step = "1" if which == "best" else "2"
        assert summary["model"].endswith(os.path.join("checkpoints", step))
        document = json.loads((tmp_path / which / "predictions.json").read_text())
        faces = document["images"][0]["faces"]
        np.testing.assert_allclose(faces[0]["landmarks"],
                                   _expected([20, 10, 60, 58], 0.1, landmarks), atol=2e-3)


def test_cli_errors_name_the_culprit(model_dir, tmp_path, capsys):
    good = _write(tmp_path / "good.png")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is no jpeg")
    cases = [
        ([tmp_path / "missing.png"], "missing.png: no such file or directory"),
        ([good, bad, "--box", "0,0,5,5"], "--box needs exactly one input image"),
        ([good, "--box", "0,0,5"], "expected four numbers"),
        ([good, "--boxes", tmp_path / "nope.json"], "nope.json: cannot open"),
        ([good, "--detector", "sonar"], "unknown detector 'sonar'"),
        ([good, "--batch-size", "0"], "--batch-size must be positive"),
        ([tmp_path / "empty_dir"], "no image files found"),
    ]
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "boxes.json").write_text('{"good.png": [[0, 0, 5]]}')
    cases.append(([good, "--boxes", tmp_path / "boxes.json"], "boxes.json: 'good.png': a box must"))
    (tmp_path / "broken.json").write_text("{")
    cases.append(([good, "--boxes", tmp_path / "broken.json"], "broken.json: not valid JSON"))
    cases.append(([good, "--box", "0,0,5,5", "--model", tmp_path], "--model: "))
    for argv, message in cases:
        if "--model" not in argv:
            argv = argv + ["--model", model_dir]
        code, out, err = _main(argv + ["--out", tmp_path / "out"], capsys)
        assert code == 1, (argv, err)
        assert err.startswith("asmnet-predict: error: ") and message in err, (argv, err)
        assert "Traceback" not in err and out == ""


def test_cli_unreadable_images_stop_the_run_or_are_reported_with_skip_bad(model_dir, tmp_path,
                                                                          capsys):
    good = _write(tmp_path / "good.png")
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("this is no image")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({name: [[5, 5, 40, 40]] for name in
                                 ("good.png", "notes.jpg", "truncated.jpg")}))
    common = ["--model", model_dir, "--boxes", boxes, "--out", tmp_path / "out"]
    # As a program: exit status 1, one line naming the file, no traceback (checked before the
    # model is loaded).
    proc = subprocess.run([sys.executable, "-m", "asmnet_jax.cli.predict", good, str(not_image),
                           *map(str, common)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1] == (
        f"asmnet-predict: error: {not_image}: not a readable image (empty or unknown format)")
    assert "Traceback" not in proc.stderr
    # A file that looks like a JPEG but does not decode fails when it is read.
    code, out, err = _main([truncated, good, *common], capsys)
    assert code == 1 and out == "" and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"asmnet-predict: error: {truncated}: not a readable image (empty, truncated or unknown "
        "format)")
    code, out, err = _main([not_image, truncated, good, *common, "--skip-bad"], capsys)
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["unreadable"] == {"count": 2, "images": [str(not_image), str(truncated)]}
    assert summary["images"] == 3 and summary["faces"] == 1
    records = json.loads((tmp_path / "out" / "predictions.json").read_text())["images"]
    assert "not a readable image" in records[0]["error"] and len(records[2]["faces"]) == 1


# --------------------------------------------------------------------------------------------------
# Detectors


def _detector_or_skip(name):
    try:
        return detection.choose_detector(name)
    except P.PredictError as error:
        pytest.skip(str(error))


def test_default_detector_finds_a_synthetic_face_through_the_cli(model_dir, tmp_path, capsys):
    from asmnet_jax.data import synthetic

    spec = _detector_or_skip("auto")
    record = synthetic.render_face(np.random.default_rng(5), size=160, pose=(10, 5, -5))
    path = tmp_path / "face.png"
    P.write_image(path, record["image"])
    code, out, err = _main([path, "--model", model_dir, "--out", tmp_path / "out"], capsys)
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["faces"] == 1 and summary["detector"] == spec.name
    face = json.loads((tmp_path / "out" / "predictions.json").read_text())["images"][0]["faces"][0]
    assert face["box_source"] == "detector" and face["score"] > 0.5
    x0, y0, x1, y1 = face["face_box"]
    found = crop.SquareBox((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0)
    assert detection._square_iou(found, crop.landmark_box(record["landmarks"], 0.0)) > 0.6


@pytest.mark.parametrize("name", ["auto", "haar"])
def test_detector_finds_real_faces_and_its_calibration_fits(shared_data, name):
    from asmnet_jax.data.w300 import read_pts

    spec = _detector_or_skip(name)
    folder = shared_data / "300w_subset" / "helen" / "trainset"
    paths = sorted(folder.glob("*.jpg"))[:6]
    if not paths:
        pytest.skip(f"no 300W images in {folder}")
    samples = [(P.read_image(p), read_pts(p.with_suffix(".pts"))) for p in paths]
    report = detection.measure_calibration(spec.build(None), samples)
    assert report["detected"] == len(samples)
    assert report["iou_after"] > 0.75, report


# --------------------------------------------------------------------------------------------------
# Shape plausibility and --format csv


@pytest.fixture(scope="module")
def model_dir_with_shape_model(tmp_path_factory):
    """The model of ``model_dir`` with a shape model fitted on shapes around its output."""
    from asmnet_jax.asm import ShapeModel

    rng = np.random.default_rng(3)
    shapes = LANDMARKS + 0.01 * rng.normal(size=(40, 2 * N)) @ np.diag(
        np.linspace(1.0, 0.1, 2 * N))
    return save_constant_model(tmp_path_factory.mktemp("model") / "with_asm", LANDMARKS, POSE,
                               shape_model=ShapeModel.fit(shapes, 0.9))


def test_predictions_carry_the_shape_score_with_a_shape_model_and_not_without(
        model_dir, model_dir_with_shape_model, tmp_path, capsys):
    from asmnet_jax.model_dir import load_shape_model

    image = _write(tmp_path / "one.png")
    code, out, err = _main([image, "--model", model_dir_with_shape_model, "--box", "10,10,40,40",
                            "--box", "45,5,75,45", "--out", tmp_path / "with", "--no-draw"], capsys)
    assert code == 0, err
    document = json.loads((tmp_path / "with" / "predictions.json").read_text())
    assert document["model"]["shape_model"]["calibrated"] is True
    expected = load_shape_model(model_dir_with_shape_model).plausibility(LANDMARKS[None])
    for face in document["images"][0]["faces"]:
        assert face["score"] is None  # the detector's; the boxes were given
        assert 0.0 < face["shape_score"] <= 1.0
        assert face["shape_score"] == pytest.approx(float(expected["score"][0]), abs=1e-3)
        assert face["asm_residual"] == pytest.approx(float(expected["residual"][0]), abs=1e-4)
        assert face["asm_mahalanobis"] == pytest.approx(float(expected["mahalanobis"][0]),
                                                        abs=1e-2)
    code, out, err = _main([image, "--model", model_dir, "--box", "10,10,40,40",
                            "--out", tmp_path / "without", "--no-draw"], capsys)
    assert code == 0, err
    document = json.loads((tmp_path / "without" / "predictions.json").read_text())
    face = document["images"][0]["faces"][0]
    assert document["model"]["shape_model"] is None
    assert not {"shape_score", "asm_residual", "asm_mahalanobis"} & set(face)


def test_format_csv_writes_one_row_per_face_with_named_columns(model_dir_with_shape_model,
                                                               tmp_path, capsys):
    import csv

    photos = tmp_path / "photos"
    _write(photos / "a.png", seed=1), _write(photos / "b.png", seed=2)
    _write(photos / "c.png", seed=3)
    boxes = {"a.png": [[10, 10, 40, 40], [45, 5, 75, 45]], "b.png": [[20, 15, 50, 45]],
             "c.png": []}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    out_dir = tmp_path / "out"
    code, out, err = _main([photos, "--model", model_dir_with_shape_model, "--boxes",
                            tmp_path / "boxes.json", "--detector", "none", "--out", out_dir,
                            "--format", "csv", "--no-draw"], capsys)
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["csv"] == str(out_dir / "predictions.csv") and "json" not in summary
    assert not (out_dir / "predictions.json").exists()
    with open(out_dir / "predictions.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        columns, rows = reader.fieldnames, list(reader)
    assert columns[:14] == ["image", "face", "box_x0", "box_y0", "box_x1", "box_y1",
                            "box_source", "score", "shape_score", "asm_residual",
                            "asm_mahalanobis", "yaw", "pitch", "roll"]
    assert columns[14:] == [f"{a}{i}" for i in range(N) for a in "xy"]
    assert [(os.path.basename(r["image"]), r["face"]) for r in rows] == [
        ("a.png", "0"), ("a.png", "1"), ("b.png", "0")]
    for row, box in zip(rows, boxes["a.png"] + boxes["b.png"]):
        assert [float(row[k]) for k in ("box_x0", "box_y0", "box_x1", "box_y1")] == box
        assert row["box_source"] == "given" and row["score"] == ""
        assert 0.0 < float(row["shape_score"]) <= 1.0
        points = np.array([[float(row[f"x{i}"]), float(row[f"y{i}"])] for i in range(N)])
        np.testing.assert_allclose(points, _expected(box, MARGIN), atol=2e-3)
        assert float(row["yaw"]) == pytest.approx(np.rad2deg(POSE[0]), abs=1e-3)


def test_bad_format_is_a_one_line_error(model_dir, tmp_path, capsys):
    image = _write(tmp_path / "one.png")
    code, out, err = _main([image, "--model", model_dir, "--box", "10,10,40,40", "--format",
                            "xml", "--out", tmp_path / "out"], capsys)
    assert code == 1 and out == ""
    assert err.startswith("asmnet-predict: error: --format 'xml': expected one of json, csv")
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
