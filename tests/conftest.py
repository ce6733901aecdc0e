"""Shared test fixtures. Tests run on the CPU at small input sizes.

Most of the suite's time is XLA compiling on the CPU, so:

* the XLA CPU backend compiles without LLVM's expensive optimisations (``FAST_COMPILE``, added
  to ``XLA_FLAGS`` here, before JAX starts, and so passed on to the commands the tests start):
  it halves the compile time of a train step, and the tests' tiny batches run as fast;
* the session shares one persistent compilation cache with those commands;
* the end-to-end tests share one tiny configuration (:func:`tiny_config`) and one run of it
  (:func:`tiny_run`), so the same programs compile once.
"""

import os
import pathlib

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: XLA CPU flags for the tests: compile fast rather than run fast.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def with_fast_compile(flags: str = "") -> str:
    """``flags`` (an ``XLA_FLAGS`` value) with :data:`FAST_COMPILE` added."""
    return " ".join(part for part in (flags, FAST_COMPILE) if part)


if FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = with_fast_compile(os.environ.get("XLA_FLAGS", ""))

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


#: What the end-to-end tests' run changes from the built-in default (``asmnet-train`` without
#: ``--config``): 32 x 32 synthetic faces, batches of 8, 4 steps per epoch, 3 epochs, evaluated and
#: saved every epoch, inputs in [-1, 1] (as an ImageNet start needs, so that run shares its
#: programs too). Tests that start ``asmnet-train`` pass the same values as flags.
TINY = {
    "input_size": 32,
    "batch_size": 8,
    "synthetic.train": 32,        # 4 steps per epoch
    "synthetic.validation": 12,
    "num_epochs": 3,
    "eval_every_epochs": 1,
    "checkpoint_every_epochs": 1,
    "log_every_steps": 2,
    "keep_checkpoints": 2,
    "ema_decay": 0.9,
    "input_range": "signed",
    "progress_bar": False,
}


def tiny_config(**overrides):
    """The end-to-end tests' run: the built-in default with :data:`TINY`; ``overrides`` maps
    dotted keys to values. Locked. Runs that differ only in keys that compile nothing (steps,
    intervals, init, seed) reuse the session's compiled programs."""
    from asmnet_jax.config_base import default_config

    c = default_config()
    for key, value in {**TINY, **overrides}.items():
        target = c
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    c.lock()
    return c


def tiny_flags(**overrides):
    """``--config.KEY=VALUE`` flags that make ``asmnet-train``'s default :func:`tiny_config`."""
    return [f"--config.{key}={value}" for key, value in {**TINY, **overrides}.items()]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """(workdir, summary) of one uninterrupted run of :func:`tiny_config` (12 steps). Tests
    that write into a run copy it first."""
    from asmnet_jax import train

    workdir = str(tmp_path_factory.mktemp("tiny_run"))
    summary = train.train_and_evaluate(tiny_config(), workdir)
    return workdir, summary


@pytest.fixture(scope="session")
def tiny_host_run(tmp_path_factory):
    """(workdir, summary) of :func:`tiny_config` through the host pipeline (``input="host"``):
    the reference of the host path's tests, and the session's compiled plain train step (the
    tiny run's step cuts its own batches on the device)."""
    from asmnet_jax import train

    workdir = str(tmp_path_factory.mktemp("tiny_host_run"))
    summary = train.train_and_evaluate(tiny_config(input="host"), workdir)
    return workdir, summary
