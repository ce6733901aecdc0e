"""experiments.calibrate_detectors: the measurement behind detection.py's box calibrations.

A few real 300W faces (skipped without the shared data) check the JSON line and that BlazeFace
short range's measured scale lands near the shipped constant; bad ``--data`` is one error line.
"""

import json

import pytest

from asmnet_jax import detection
from experiments import calibrate_detectors

MEASURED_KEYS = {"faces", "detected", "shipped", "seconds", "median", "iqr", "iou_before",
                 "iou_after", "difference"}


def test_a_few_faces_give_the_json_line_and_a_scale_near_the_shipped_one(shared_data, capsys):
    data = shared_data / "300w_subset"
    if not (data / "afw").is_dir():
        pytest.skip(f"no 300W subset at {data}")
    code = calibrate_detectors.main(["--data", str(data), "--limit", "4"])
    out = capsys.readouterr().out
    assert code == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["faces"] == 4 and summary["samples"] == 8 and summary["seed"] == 0
    assert summary["folders"] == ["afw", "helen/trainset"]
    assert set(summary["detectors"]) == set(calibrate_detectors.DETECTORS)
    for name, result in summary["detectors"].items():
        if "skipped" in result:
            assert f"{name}: skipped: " in out
            continue
        assert set(result) == MEASURED_KEYS and result["faces"] == 8, result
        assert all(len(result[k]) == 3 for k in ("median", "iqr", "shipped", "difference"))
        assert name in out
    short = summary["detectors"]["blazeface-short"]
    if "skipped" in short:
        pytest.skip(f"blazeface-short: {short['skipped']}")
    assert short["detected"] == 8
    shipped = detection.SHORT_CALIBRATION
    assert short["shipped"] == [shipped.scale, shipped.dx, shipped.dy]
    assert abs(short["median"][0] - shipped.scale) < 0.1, short


def test_bad_data_is_one_error_line_naming_the_folder(tmp_path, capsys):
    missing = tmp_path / "missing"
    assert calibrate_detectors.main(["--data", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"calibrate_detectors: error: --data {missing}: no such folder"
    (tmp_path / "afw").mkdir()
    (tmp_path / "afw" / "a.pts").write_text("no image beside it")
    assert calibrate_detectors.main(["--data", str(tmp_path), "--folders", "afw"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "afw") in err and "no .jpg/.png" in err
    assert calibrate_detectors.main(["--data", str(tmp_path), "--folders", "lfpw"]) == 2
    assert f"{tmp_path / 'lfpw'}: no such folder" in capsys.readouterr().err
