"""experiments/gpu_recipe.py: the JPEG pack that carries the faces to a GPU machine, its decoding
into the normal arrays, the loop-speed figure, the import blocking, and the shell script's shape.
(The training itself is the unchanged asmnet-train path, run end to end by the script's CPU dry
run; see experiments/gpu_recipe.sh.)"""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from experiments import gpu_recipe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _decoder_or_skip():
    try:
        return gpu_recipe.jpeg_decoder("auto")
    except gpu_recipe.PackError as error:
        pytest.skip(f"no JPEG decoder: {error}")


@pytest.fixture(scope="module")
def faces():
    """Two small synthetic splits as HostArrays (rendered with OpenCV, which also encodes)."""
    pytest.importorskip("cv2")
    from asmnet_jax.data import sources

    return {split: sources.arrays_from_source(
        sources.synthetic_split(split, count, 0, 68, 48, in_memory=True), 68)
        for split, count in (("train", 5), ("validation", 3))}


@pytest.fixture(scope="module")
def pack(faces, tmp_path_factory):
    _decoder_or_skip()
    out = tmp_path_factory.mktemp("pack")
    init = out.parent / "weights.h5"
    init.write_bytes(b"not really weights")
    manifest = gpu_recipe.write_pack(faces, str(out), "w300", {"default": 90, "validation": 95},
                                     init=str(init))
    return out, manifest


def test_pack_round_trip_is_close_and_labels_exact(faces, pack):
    out, manifest = pack
    arrays, read_manifest, decoder, _ = gpu_recipe.unpack(str(out))
    assert read_manifest == manifest and decoder == manifest["measured_with"]
    assert set(arrays) == {"train", "validation"}
    for split, original in faces.items():
        decoded = arrays[split]
        assert decoded.image.shape == original.image.shape and decoded.image.dtype == np.uint8
        # The synthetic crops are small and noisy, JPEG's worst case: ~3.7 (q90) and ~3.9 (q95)
        # grey levels here; 300W's crops lose 1.52 (q89) and 0.16 (q95).
        error = np.abs(decoded.image.astype(int) - original.image).mean()
        assert error < 6.0, (split, error)
        assert manifest["splits"][split]["pixel_error"]["mean_abs"] == pytest.approx(error)
        assert manifest["splits"][split]["pixel_error"]["psnr_db"] > 28.0
        assert manifest["splits"][split]["labels_exact"]
        np.testing.assert_array_equal(decoded.landmarks, original.landmarks)
        np.testing.assert_array_equal(decoded.pose, original.pose)
        np.testing.assert_array_equal(decoded.box, original.box)
        assert list(decoded.name) == [str(n) for n in original.name]
        assert decoded.landmarks.dtype == np.float32
    assert manifest["splits"]["train"]["quality"] == 90
    assert manifest["splits"]["validation"]["quality"] == 95
    assert manifest["init_file"] == "weights.h5" and (out / "weights.h5").is_file()
    assert manifest["total_bytes"] == manifest["faces_bytes"] + manifest["init_bytes"]


def test_pack_files_need_no_pickle(pack):
    out, manifest = pack
    for split, facts in manifest["splits"].items():
        path = out / facts["file"]
        assert path.name == f"{split}.jpeg.npz"
        with np.load(path, allow_pickle=False) as stored:
            assert {"jpeg", "offsets", "shape", "landmarks", "pose", "box",
                    "name"} <= set(stored.files)
            values = {key: stored[key] for key in stored.files}  # raises on an object array
        assert all(value.dtype != object for value in values.values())
        assert values["jpeg"].dtype == np.uint8 and values["jpeg"].ndim == 1
        assert values["offsets"][0] == 0 and values["offsets"][-1] == values["jpeg"].size
        assert np.all(np.diff(values["offsets"]) > 0)
        data = values["jpeg"].tobytes()
        for start in values["offsets"][:-1]:
            assert data[start:start + 2] == b"\xff\xd8"  # each piece is a JPEG
        assert zipfile.is_zipfile(path)


def test_the_pack_becomes_the_normal_npz_export(pack, tmp_path):
    """What ``train`` writes for the unchanged training path reads back through open_split."""
    from asmnet_jax.data import sources

    out, _ = pack
    arrays, manifest, _, _ = gpu_recipe.unpack(str(out), splits=["validation"])
    sources.save_npz(arrays["validation"], sources.npz_path(str(tmp_path), "w300", "validation"))
    source = sources.open_split({"dataset": "w300", "num_landmarks": 68}, "validation",
                                arrays_dir=str(tmp_path))
    assert len(source) == len(arrays["validation"])
    np.testing.assert_array_equal(source.arrays.image, arrays["validation"].image)
    with pytest.raises(gpu_recipe.PackError, match="no split"):
        gpu_recipe.unpack(str(out), splits=["test"])


def test_decoders_agree(pack):
    """Every decoder that imports here gives the pixels of the one the pack was measured with."""
    out, manifest = pack
    with np.load(out / manifest["splits"]["train"]["file"]) as stored:
        jpeg, offsets, shape = stored["jpeg"], stored["offsets"], stored["shape"]
    results = {}
    for name in ("pillow", "simplejpeg", "opencv"):
        try:
            decode, _ = gpu_recipe.jpeg_decoder(name)
        except gpu_recipe.PackError:
            continue
        results[name] = gpu_recipe.decode_jpegs(jpeg, offsets, shape, decode)
    first = next(iter(results.values()))
    for name, images in results.items():
        assert np.abs(images.astype(int) - first).max() <= 1, name
    with pytest.raises(gpu_recipe.PackError, match="--decoder 'nope'"):
        gpu_recipe.jpeg_decoder("nope")


def test_train_refuses_imagenet_init_without_weights(faces, tmp_path, capsys):
    _decoder_or_skip()
    gpu_recipe.write_pack(faces, str(tmp_path / "pack"), "w300", {"default": 90})
    status = gpu_recipe.main(["train", "--pack", str(tmp_path / "pack"), "--workdir",
                              str(tmp_path / "run")])
    assert status == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"gpu_recipe train: error: {tmp_path / 'pack'}: the pack has no ImageNet "
                   "weights for init='imagenet' (pack with --init FILE, or train with --set "
                   "init=scratch)"]
    assert gpu_recipe.main(["train", "--pack", str(tmp_path / "nothing"), "--workdir",
                            str(tmp_path / "run")]) == 1
    assert "no pack manifest here" in capsys.readouterr().err


def test_loop_speed_skips_windows_and_takes_out_evaluations(tmp_path):
    records = [{"kind": "train", "step": 10, "img_per_s": 10.0},      # compilation
               {"kind": "time", "step": 10, "eval_s": 3.0},
               {"kind": "train", "step": 20, "img_per_s": 100.0},
               {"kind": "train", "step": 30, "img_per_s": 200.0},
               {"kind": "val", "step": 30, "nme": 5.0},
               {"kind": "time", "step": 30, "eval_s": 0.5, "save_s": 1.5},
               {"kind": "train", "step": 40, "img_per_s": 100.0},     # 4 s, 2 of them saving
               {"kind": "train", "step": 50, "img_per_s": 400.0}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    speed = gpu_recipe.loop_speed(str(path), batch_size=40, skip_windows=1)
    assert speed["train_windows"] == 5 and speed["windows_counted"] == 4
    assert speed["train_img_s_median"] == pytest.approx(150.0)   # of 100, 200, 100, 400
    # without the evaluation / save seconds inside them: 400/(4-3) , 200, 400/(4-2), 400
    assert speed["train_img_s_net_median"] == pytest.approx(300.0)
    assert speed["first_windows_s"] == pytest.approx(40.0)
    empty = gpu_recipe.loop_speed(str(path), batch_size=40, skip_windows=9)
    assert empty["windows_counted"] == 0 and empty["train_img_s_median"] is None


def test_block_imports_makes_modules_unimportable():
    code = ("from experiments import gpu_recipe as g; g.block_imports(['cv2', 'grain']);\n"
            "try:\n import cv2\nexcept ImportError:\n print('blocked')\n"
            "print(g.loaded_heavy_modules())")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["blocked", "[]"]


def test_the_gpu_script_runs_the_recipe_on_the_pack():
    shell = open(os.path.join(ROOT, "experiments", "gpu_recipe.sh")).read()
    assert subprocess.run(["bash", "-n", os.path.join(ROOT, "experiments", "gpu_recipe.sh")]
                          ).returncode == 0
    assert "python3 -m experiments.gpu_recipe" in shell and "sys.path" not in shell
    assert 'carry=["gpu_pack", "wheels"]' in shell
    assert "cv2,tensorflow,tensorflow_datasets,grain" in shell
    assert "--target" in shell and "--no-index" in shell
