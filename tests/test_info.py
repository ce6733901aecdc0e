import json

import pytest

from asmnet_jax.cli import info as info_cli
from asmnet_jax.info import model_info


def test_macs_at_224_match_the_paper():
    asmnet = model_info("asmnet", 68, 224)
    assert asmnet["total_params"] == 1_439_507
    assert round(asmnet["macs_conv"] / 1e6, 1) == 236.1
    assert round(asmnet["macs_depthwise"] / 1e6, 1) == 20.3
    assert round(asmnet["macs"] / 1e6, 1) == 256.5
    assert round(asmnet["gflops"], 2) == 0.51
    mnv2 = model_info("mnv2", 68, 224)
    assert round(mnv2["gflops"], 2) == 0.60
    # The dense part is exactly the two heads: 1280 * (136 + 3).
    assert mnv2["macs_dense"] == 1280 * 139


def test_macs_scale_with_the_input_area():
    small = model_info("asmnet", 98, 64)
    large = model_info("asmnet", 98, 128)
    conv = lambda r: r["macs_conv"] + r["macs_depthwise"]
    assert conv(large) == 4 * conv(small)
    assert small["macs_dense"] == large["macs_dense"] == 536 * 199


def test_cli_prints_a_table_and_json(capsys):
    assert info_cli.main(["--arch", "asmnet", "--input-size", "96"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[0] == "model"
    rows = json.loads(lines[-1])
    assert rows[0]["model"] == "asmnet" and rows[0]["input_size"] == 96
    with pytest.raises(SystemExit) as exit_info:
        info_cli.main(["--input-size", "100"])
    assert exit_info.value.code == 2
