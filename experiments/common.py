"""What the experiment scripts share: paths, config files with ``--set`` overrides, child
processes and their ``RESULT`` lines, and the benchmarks' stand-in batches.

Importing this module costs the standard library and NumPy only (ml_collections, absl and
``asmnet_jax`` are imported inside the functions that need them): the GPU benchmarks import it
on machines without TensorFlow or ml_collections.
"""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
import time
from typing import Callable, Dict, List, Mapping, MutableMapping, Optional, Sequence, Tuple

import numpy as np

#: The repository root (the folder holding ``experiments/`` and ``configs/``).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ExperimentError(RuntimeError):
    """An experiment that cannot run as asked (a bad option, config file or override); the
    scripts print it as one line."""


def config_file(name: str) -> str:
    """The path of ``configs/NAME`` in this repository."""
    return os.path.join(ROOT, "configs", name)


def write_json(path: str, payload: Mapping) -> None:
    """Writes ``payload`` as indented JSON, atomically (a reader never sees half a file)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, default=str)
    os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# Config files and --set KEY=VALUE overrides


def parse_overrides(items: Sequence[str]) -> List[Tuple[str, str]]:
    """``["key=value", ...]`` (the ``--set`` arguments) -> ``[(key, value), ...]``, the values
    still strings: :func:`load_config` types them."""
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ExperimentError(f"--set {item!r}: expected KEY=VALUE, e.g. --set input_size=64")
        out.append((key.strip(), raw))
    return out


#: What a value of each kind of config key looks like, for the error of a bad override.
_EXPECTED = {bool: "true or false", int: "an integer", float: "a number",
             tuple: "a tuple, e.g. '(0.8, 1.2)'", str: "a string"}
_GROUP_HINT = "a dict of its keys, or set its keys one by one (key.subkey=value)"


def _schema_value(key: str):
    """The schema's default of a dotted key (None if the schema lacks it)."""
    from asmnet_jax.config_base import base_config

    value = base_config()
    for part in key.split("."):
        if not hasattr(value, "keys") or part not in value:
            return None
        value = value[part]
    return value


def _unknown_key(keys: Sequence[str]) -> Optional[Tuple[str, str]]:
    """(key, one-line error) of the first of ``keys`` that the schema does not have, else None."""
    from asmnet_jax.config_base import config_keys, unknown_key_message

    known = set(config_keys())
    groups = {key.rsplit(".", 1)[0] for key in known if "." in key}
    for key in keys:
        if key not in known and key not in groups:
            return key, unknown_key_message(key)
    return None


def _override_error(err: Exception, overrides: Sequence[Tuple[str, str]]) -> str:
    """One line for an error of ml_collections' override parsing, in ``--set`` terms."""
    text = str(err)
    for key, raw in reversed(overrides):
        prefix = f"flag --config.{key}={raw}: "
        if text.startswith(prefix):
            reason = text[len(prefix):]
            if reason.startswith("("):  # absl's boolean parser: ('Non-boolean argument ...', 'x')
                try:
                    reason = str(ast.literal_eval(reason)[0])
                except (SyntaxError, ValueError, TypeError, IndexError):
                    pass
            value = _schema_value(key)
            expected = (_GROUP_HINT if hasattr(value, "keys")
                        else _EXPECTED.get(type(value)))
            return f"--set {key}={raw}: {reason}" + (f"; expected {expected}" if expected else "")
    return text.replace("--config.", "--set ")


def load_config(path: Optional[str] = None, overrides: Sequence[Tuple[str, str]] = ()):
    """``get_config()`` of the config file ``path`` (None: the built-in default, as
    ``asmnet-train`` without ``--config``) with ``overrides`` (``(key, value string)`` pairs)
    applied and typed by ml_collections' ``config_flags``, the machinery of ``asmnet-train
    --config FILE --config.KEY=VALUE``: ``--set KEY=VALUE`` means what ``--config.KEY=VALUE``
    means there. The config is locked, as asmnet-train's is. A missing file, a key the schema
    does not have or a value of the wrong type is an :class:`ExperimentError` of one line."""
    from absl import flags
    from ml_collections import config_flags

    from asmnet_jax import config_base

    path = os.path.abspath(os.path.expanduser(path)) if path else config_base.__file__
    if not os.path.isfile(path):
        raise ExperimentError(f"config file {path} does not exist")
    unknown = _unknown_key([key for key, _ in overrides])
    if unknown:
        raise ExperimentError("--set {}: {}".format(*unknown))
    # A private flag registry and command line: nothing global is defined or parsed.
    argv = ["experiments", f"--config={path}", *(f"--config.{k}={v}" for k, v in overrides)]
    registry = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", None, "the config file",
                                             flag_values=registry, lock_config=True,
                                             sys_argv=argv)
    try:
        registry(argv)
        config = holder.value
        config.keys()  # a file that failed to load raises here
    except flags.Error as err:
        raise ExperimentError(_override_error(err, overrides)) from None
    except (AttributeError, KeyError, IOError) as err:
        raise ExperimentError(f"config file {path}: {err}") from None
    return config


# ----------------------------------------------------------------------------------------------
# Commands and child processes


def command_line() -> List[str]:
    """This process's command as a user types it: ``python -m experiments.NAME ARGS`` for a
    module run with ``-m``, else the script's path relative to the working directory."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        name = spec.name[:-len(".__main__")] if spec.name.endswith(".__main__") else spec.name
        return ["python", "-m", name, *sys.argv[1:]]
    return [os.path.relpath(sys.argv[0]), *sys.argv[1:]]


def python_env(env: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """``env`` (default: this process's environment) for a ``python -m experiments.NAME`` child:
    with the repository root on ``PYTHONPATH``, so that the child finds this package from any
    working directory."""
    env = dict(os.environ if env is None else env)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if ROOT not in paths:
        env["PYTHONPATH"] = os.pathsep.join(paths + [ROOT])
    return env


#: A child's partial results: one line of JSON after this prefix.
RESULT_PREFIX = "RESULT "


def emit(**values) -> None:
    """A partial result, for the parent (:func:`run_side` merges it)."""
    print(RESULT_PREFIX + json.dumps(values), flush=True)


def say(text: str) -> None:
    print(text, flush=True)


def run_side(module: str, side: str, argv: Sequence[str], result: MutableMapping, deadline: float,
             env: Optional[Mapping[str, str]] = None,
             on_update: Callable[[MutableMapping], None] = lambda result: None) -> None:
    """Runs ``python -m module ARGV --side SIDE`` in a subprocess, echoing its output prefixed
    with the side and merging its ``RESULT`` lines into ``result`` (``on_update`` is called after
    each). The child is killed at ``deadline`` (``time.monotonic()``; inf: never); the reason of
    a failure goes to ``result[SIDE_error]``, the child's wall time to ``result[SIDE_wall_s]``."""
    import threading

    command = [sys.executable, "-u", "-m", module, *argv, "--side", side]
    env = dict(python_env(env), PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)

    def stop_at_deadline():
        remaining = deadline - time.monotonic()
        try:
            proc.wait(timeout=None if math.isinf(remaining) else max(remaining, 1.0))
        except subprocess.TimeoutExpired:
            result[f"{side}_error"] = (f"stopped at the time limit "
                                       f"({time.perf_counter() - start:.0f} s)")
            proc.kill()

    watchdog = threading.Thread(target=stop_at_deadline, daemon=True)
    watchdog.start()
    for line in proc.stdout:
        line = line.rstrip("\n")
        if line.startswith(RESULT_PREFIX):
            result.update(json.loads(line[len(RESULT_PREFIX):]))
            on_update(result)
        else:
            print(f"[{side}] {line}", flush=True)
    proc.wait()
    watchdog.join(timeout=1.0)
    if proc.returncode != 0 and f"{side}_error" not in result:
        result[f"{side}_error"] = f"exit status {proc.returncode}"
    result[f"{side}_wall_s"] = time.perf_counter() - start
    on_update(result)


# ----------------------------------------------------------------------------------------------
# The benchmarks' stand-in batches: plausible face shapes (the project's 3D template turned,
# scaled, shifted, jittered) and random images


def _rotation(yaw, pitch, roll):
    cy, sy, cp, sp, cr, sr = (f(a) for a in (yaw, pitch, roll) for f in (math.cos, math.sin))
    ry = [[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]]
    rx = [[1, 0, 0], [0, cp, -sp], [0, sp, cp]]
    rz = [[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]]
    return np.asarray(rz) @ np.asarray(rx) @ np.asarray(ry)


def plausible_shapes(rng, count, num_landmarks):
    """(count, 2n) landmark vectors in model coordinates (crop in [-0.5, 0.5]) and (count, 3) poses.

    The project's 3D mean face, turned by yaw +-45, pitch and roll +-25 degrees, projected
    orthographically, 0.28-0.38 crop widths per inter-ocular unit, shifted up to 0.04, with 0.4 %
    jitter per point.
    """
    from asmnet_jax.data.face3d import mean_face

    face = mean_face(num_landmarks)
    face = face - face.mean(axis=0)
    poses = np.deg2rad(rng.uniform([-45, -25, -25], [45, 25, 25], (count, 3)))
    shapes = np.empty((count, num_landmarks, 2))
    for i, (yaw, pitch, roll) in enumerate(poses):
        turned = face @ _rotation(yaw, pitch, roll).T
        points = np.stack([turned[:, 0], -turned[:, 1]], axis=-1)  # image y points down
        shapes[i] = points * rng.uniform(0.28, 0.38) + rng.uniform(-0.04, 0.04, 2)
    shapes += rng.normal(0.0, 0.004, shapes.shape)
    return shapes.reshape(count, -1).astype(np.float32), poses.astype(np.float32)


def make_batch(args, seed=0):
    """Host batch of ``args.batch`` random ``args.size``-px images: uint8 NHWC images, landmarks
    (B, 2n), pose (B, 3), mask; and 512 shapes to fit the ASM to."""
    rng = np.random.default_rng(seed)
    landmarks, pose = plausible_shapes(rng, args.batch, args.num_landmarks)
    batch = {"image": rng.integers(0, 256, (args.batch, args.size, args.size, 3), np.uint8),
             "landmarks": landmarks, "pose": pose, "mask": np.ones(args.batch, np.float32)}
    asm_shapes, _ = plausible_shapes(rng, 512, args.num_landmarks)
    return batch, asm_shapes


def write_random_faces(directory: str, count: int, store_size: int = 288,
                       num_landmarks: int = 68, seed: int = 0) -> None:
    """A stand-in set for speed measurements where no data can be brought (a GPU machine):
    ``count`` training and ``count // 8`` validation crops of random bytes at the stored size,
    with landmarks inside the central face box, as ``DIR/w300/{train,validation}.npz`` (68
    points; ``DIR/wflw/...`` for 98). The
    step's and the augmentation's cost do not depend on what the pixels show."""
    from asmnet_jax.data import sources

    rng = np.random.default_rng(seed)
    side = store_size / 1.6   # the stored crops hold the face box plus 30 % on each side
    centre = (store_size - 1) / 2.0
    dataset = "w300" if num_landmarks == 68 else "wflw"
    for split, n in (("train", count), ("validation", max(count // 8, 1))):
        arrays = sources.HostArrays(
            image=rng.integers(0, 256, (n, store_size, store_size, 3), dtype=np.uint8),
            landmarks=(centre + rng.uniform(-side / 2, side / 2, (n, num_landmarks, 2))
                       ).astype(np.float32),
            pose=rng.uniform(-30, 30, (n, 3)).astype(np.float32),
            box=np.tile(np.float32([centre, centre, side]), (n, 1)),
            name=np.asarray([f"random/{split}/{i}" for i in range(n)]))
        sources.save_npz(arrays, sources.npz_path(directory, dataset, split))

def prepare_run(overrides: Mapping[str, object], config_path: Optional[str] = None,
                faces: int = 64):
    """What ``asmnet-train`` builds for a config (``config_path``, default the built-in one,
    with ``overrides``), through :func:`asmnet_jax.train.prepare`, on a stand-in set of ``faces``
    random crops (at least a batch; :func:`write_random_faces`) in a temporary folder, from scratch: the benchmarks
    time this run's model, optimizer, loss settings, state and step. Returns ``(run, folder)``;
    remove the folder when done."""
    import tempfile

    from asmnet_jax import train

    config = load_config(config_path, [(k, str(v)) for k, v in overrides.items()])
    folder = tempfile.mkdtemp(prefix="asmnet_bench_")
    write_random_faces(folder, max(faces, config.batch_size), num_landmarks=config.num_landmarks)
    config.dataset = "w300" if config.num_landmarks == 68 else "wflw"
    config.arrays_dir = folder
    config.init = "scratch"
    config.progress_bar = False
    return train.prepare(config, os.path.join(folder, "run")), folder
