"""Shared test fixtures. Tests run on the CPU at small input sizes."""

import os
import pathlib

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def shared_data_dir() -> pathlib.Path:
    """``../shared/data`` beside the checkout, or ``$ASMNET_SHARED_DATA``."""
    return pathlib.Path(os.environ.get("ASMNET_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data():
    """The reference data directory; the test is skipped when it is absent."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared reference data not found at {path}")
    return path


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """A persistent XLA cache for the session: the training tests compile the same steps in
    several runs (uninterrupted, interrupted, resumed), and the commands the tests start as
    subprocesses (which inherit the environment) compile what this process already did."""
    import jax

    cache = str(tmp_path_factory.mktemp("xla_cache"))
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    yield
