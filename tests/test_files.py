"""Outputs appear whole or not at all (asmnet_jax.files)."""

import os

import numpy as np
import pytest

from asmnet_jax.files import atomic_open, temporary_path


def test_a_complete_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")
    with atomic_open(path) as f:
        f.write("new")
        assert path.read_text() == "old"  # not yet in place while being written
    assert path.read_text() == "new"
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_an_interrupted_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("previous")
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(path) as f:
            f.write("half of the ne")
            raise KeyboardInterrupt
    assert path.read_text() == "previous"
    assert os.listdir(tmp_path) == ["results.json"]


def test_the_temporary_name_keeps_the_extension_for_writers_that_need_it(tmp_path):
    path = tmp_path / "per_face.npz"
    with temporary_path(path) as temporary:
        assert temporary.endswith(".npz") and os.path.dirname(temporary) == str(tmp_path)
        np.savez(temporary, x=np.arange(3))  # savez would append .npz to another name
    with np.load(path) as data:
        np.testing.assert_array_equal(data["x"], np.arange(3))
    assert os.listdir(tmp_path) == ["per_face.npz"]
