"""experiments.plausibility_auc: its ROC AUC, its patches, and the script end to end on a few
synthetic faces with a tiny random model (no accuracy claim: keys and ranges only)."""

import json
import os

import numpy as np
import pytest

from experiments import plausibility_auc as pa

from _variables import random_variables

SIZE = 32
N = 68


def test_roc_auc_on_toy_cases():
    assert pa.roc_auc([3, 4, 5], [0, 1, 2]) == 1.0
    assert pa.roc_auc([0, 1], [2, 3]) == 0.0
    assert pa.roc_auc([1, 1], [1, 1]) == 0.5                 # ties count one half
    # 0.8 beats 0.1, 0.4; 0.35 beats 0.1 only; one positive 0.4 ties the negative 0.4.
    assert pa.roc_auc([0.8, 0.35, 0.4], [0.1, 0.4]) == pytest.approx((2 + 1 + 1.5) / 6)
    assert np.isnan(pa.roc_auc([], [1.0]))
    assert pa.auc([3, 4, 5], [0, 1, 2]) == 1.0


def test_roc_auc_agrees_with_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(0.5, 1, 40).round(1), rng.normal(0, 1, 30).round(1)   # with ties
    labels = np.r_[np.ones(40), np.zeros(30)]
    assert pa.roc_auc(pos, neg) == pytest.approx(metrics.roc_auc_score(labels, np.r_[pos, neg]))


def test_background_patches_keep_off_the_face_and_inside_the_image():
    rng = np.random.default_rng(0)
    face = (200.0, 200.0, 100.0)
    found = pa.background_patches(rng, (400, 600, 3), [face], [face[2]], 6, 0.1, 0.1)
    assert len(found) == 6
    for box, fraction in found:
        assert fraction == 1.0 and box[2] == 100.0           # room for face-sized patches
        assert pa.iou(box, face) < 0.1 and pa.covered(box, face) <= pa.MAX_COVER
        half = 0.6 * box[2]
        assert half - 0.5 <= box[0] <= 600 - 0.5 - half and half - 0.5 <= box[1] <= 400 - 0.5 - half
    # A face crop with little room: smaller patches, or none.
    small = pa.background_patches(rng, (160, 160, 3), [(79.5, 79.5, 100.0)], [100.0], 3, 0.1, 0.1)
    assert all(fraction < 1.0 for _, fraction in small)


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """A synthetic validation split as an .npz export, and a tiny random ASMNet model directory
    (SIZE px) with a shape model of the synthetic training shapes."""
    from asmnet_jax.asm import ShapeModel
    from asmnet_jax.data import crop, sources
    from asmnet_jax.model_dir import save_model
    from asmnet_jax.models import create_model

    root = tmp_path_factory.mktemp("plausibility")
    faces = sources.synthetic_split("validation", 6, 0, N, SIZE, in_memory=True)
    arrays = sources.arrays_from_source(faces, N)
    sources.save_npz(arrays, sources.npz_path(str(root / "npz"), "w300", "validation"))
    train = sources.synthetic_split("train", 12, 0, N, SIZE, in_memory=True)
    shapes, _ = crop.base_labels(train, 0.1, SIZE)
    model = create_model("asmnet", N)
    save_model(root / "model", "asmnet", N, random_variables(model, SIZE),
               extra={"input_size": SIZE, "margin": 0.1}, compact=True,
               shape_model=ShapeModel.fit(shapes, 0.9))
    return root


def test_the_script_end_to_end(tiny_setup, capsys):
    out = tiny_setup / "out" / "auc.json"
    code = pa.main(["--arrays-dir", str(tiny_setup / "npz"), "--model",
                    str(tiny_setup / "model"), "--patches", "2", "--batch-size", "8",
                    "--seed", "3", "--out", str(out)])
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(last)
    assert summary == json.loads(out.read_text())
    assert os.path.isfile(str(out)[:-len(".json")] + ".md")
    assert summary["faces"] == 6 and summary["seed"] == 3 and summary["wall_s"] >= 0
    assert summary["model"] == str(tiny_setup / "model")
    rows = summary["faces_vs_nonfaces"] + summary["good_vs_bad"]
    names = [row["comparison"] for row in rows]
    assert names[0] == "faces vs stored-crop background"    # no --photos
    assert [f"clean vs {kind}" for kind in pa.BAD_KINDS] == names[1:5]
    for row in rows:
        assert set(row["auc"]) == set(pa.SCORES)
        assert row["positives"] >= 0 and row["negatives"] >= 0
        for value in row["auc"].values():
            # None where a class is empty (e.g. no fit under the NME threshold).
            assert value is None or 0.0 <= value <= 1.0
    for kind in pa.BAD_KINDS:
        row = rows[names.index(f"clean vs {kind}")]
        assert row["positives"] == row["negatives"] == 6
    nme_row = rows[names.index("NME <= 8 % vs above")]
    assert nme_row["positives"] + nme_row["negatives"] == 6 * (1 + len(pa.BAD_KINDS))
    for stats in summary["score_summary"].values():
        assert stats is None or 0.0 <= stats["mean"] <= 1.0
