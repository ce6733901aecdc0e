"""Shared test fixtures. Tests run on the CPU at small input sizes.

Most of the suite's time is XLA compiling on the CPU, so:

* the XLA CPU backend compiles without LLVM's expensive optimisations and with its classic
  (not the newer fusion) emitters (``FAST_COMPILE``, added to ``XLA_FLAGS`` here, before JAX
  starts, and so passed on to the commands the tests start): a 32 px train step compiles in
  about 5 s instead of 12 s here, and the tests' tiny batches run as fast;
* the suite runs on every core with pytest-xdist (``setup.cfg``: a test file per worker, so
  module fixtures are made once), and the session's workers and the commands they start share
  one persistent compilation cache;
* the end-to-end tests share one tiny configuration (:func:`tiny_config`) and one run of it
  (:func:`tiny_run`, trained by whichever worker asks first), so the same programs compile once.
"""

import os
import pathlib

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: XLA CPU flags for the tests: compile fast rather than run fast.
FAST_COMPILE = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                "--xla_cpu_use_fusion_emitters=false")


def with_fast_compile(flags: str = "") -> str:
    """``flags`` (an ``XLA_FLAGS`` value) with :data:`FAST_COMPILE` added."""
    return " ".join(part for part in (flags, FAST_COMPILE) if part)


if FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = with_fast_compile(os.environ.get("XLA_FLAGS", ""))

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: Long test files (about 30-110 s each on two cores), started first so that the pytest-xdist
#: workers, which take whole files in collection order, finish together. test_train.py trains the
#: session's tiny run; the files that wait for it come later.
STARTED_FIRST = ("test_distributed.py", "test_train.py", "test_keras_import.py", "test_models.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(STARTED_FIRST)}
    # A stable sort: the tests of each file keep their order.
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


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


def _xdist_worker() -> str:
    """This pytest-xdist worker's name ("gw0", ...), or "" outside pytest-xdist."""
    return os.environ.get("PYTEST_XDIST_WORKER", "")


def _session_root(tmp_path_factory) -> pathlib.Path:
    """A folder of this test session that all its pytest-xdist workers share."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if _xdist_worker() else base


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """A persistent XLA cache for the session: the training tests compile the same steps in
    several runs (uninterrupted, interrupted, resumed), and the commands the tests start as
    subprocesses (which inherit the environment) and the other pytest-xdist workers compile what
    one process already did."""
    import jax

    cache = _session_root(tmp_path_factory) / "xla_cache"
    cache.mkdir(exist_ok=True)
    cache = str(cache)
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


def _one_run_per_session(tmp_path_factory, name: str, config):
    """(workdir, summary) of ``config`` trained once per test session: with pytest-xdist the
    first worker that asks trains it under a lock, the others wait and read its summary."""
    import fcntl
    import json

    from asmnet_jax import train

    if not _xdist_worker():
        workdir = str(tmp_path_factory.mktemp(name))
        return workdir, train.train_and_evaluate(config, workdir)
    root = _session_root(tmp_path_factory)
    workdir, done = root / name, root / f"{name}.summary.json"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            summary = train.train_and_evaluate(config, str(workdir))
            done.write_text(json.dumps(summary))
    return str(workdir), json.loads(done.read_text())


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """(workdir, summary) of one uninterrupted run of :func:`tiny_config` (12 steps). Tests
    that write into a run copy it first."""
    return _one_run_per_session(tmp_path_factory, "tiny_run", tiny_config())


@pytest.fixture(scope="session")
def tiny_host_run(tmp_path_factory):
    """(workdir, summary) of :func:`tiny_config` through the host pipeline (``input="host"``):
    the reference of the host path's tests, and the session's compiled plain train step (the
    tiny run's step cuts its own batches on the device)."""
    return _one_run_per_session(tmp_path_factory, "tiny_host_run",
                                tiny_config(input="host"))
