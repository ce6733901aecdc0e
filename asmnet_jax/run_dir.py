"""A training workdir: the one module that reads and writes what ``asmnet-train`` leaves there.

Layout::

    WORKDIR/config.json       the run's config (written at the start; read by resumption,
                              evaluation, prediction and export)
    WORKDIR/asm.npz           the shape model fitted on the training shapes (ASM runs)
    WORKDIR/checkpoints/STEP  orbax checkpoints of the train state ('state') and their metadata
                              ('meta': step, epoch, val_nme, best_val_nme); the latest K are
                              kept plus the best by validation NME, which orbax tracks itself
                              (each checkpoint's metrics are stored with it)
    WORKDIR/metrics.jsonl     one line per logged step, evaluation and timing ("kind": "train",
                              "val", "time")
    WORKDIR/metrics.json      the final summary
    WORKDIR/tensorboard/      the same scalars for TensorBoard

Training writes through :class:`Checkpoints` and :class:`MetricsLog`; evaluation, prediction and
export read through :func:`read_config` and :func:`read_checkpoint`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Dict, Optional, Tuple

import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as ocp_preservation
from tqdm import tqdm

from asmnet_jax.errors import ModelError, OptionError
from asmnet_jax.files import atomic_open

log = logging.getLogger(__name__)

CONFIG_JSON = "config.json"
ASM_NPZ = "asm.npz"
CHECKPOINTS = "checkpoints"
METRICS_JSON = "metrics.json"
METRICS_JSONL = "metrics.jsonl"
#: Keys a config.json must hold to rebuild the model.
_MODEL_KEYS = ("model", "num_landmarks", "input_size")


def is_run(path: str) -> bool:
    """Whether ``path`` is a training workdir (it holds a ``config.json``)."""
    return os.path.isfile(os.path.join(path, CONFIG_JSON))


def write_config(workdir: str, config) -> None:
    """Writes the run's config (a ``ConfigDict``) as ``config.json``."""
    with atomic_open(os.path.join(workdir, CONFIG_JSON)) as f:
        f.write(config.to_json_best_effort(indent=2))


def read_config(workdir: str, required: Tuple[str, ...] = _MODEL_KEYS) -> Dict[str, Any]:
    """The run's ``config.json`` as a dict; raises :class:`ModelError` naming the file when it is
    missing, not JSON, or lacks one of ``required``."""
    path = os.path.join(workdir, CONFIG_JSON)
    if not os.path.isfile(path):
        raise ModelError(f"{workdir}: no config.json (not a training workdir of asmnet-train)")
    try:
        with open(path) as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path}: not a JSON object")
    for key in required:
        if key not in config:
            raise ModelError(f"{path}: missing key {key!r}")
    return config


def shape_model_path(workdir: str) -> str:
    return os.path.join(workdir, ASM_NPZ)


def write_summary(workdir: str, summary: Dict) -> None:
    with atomic_open(os.path.join(workdir, METRICS_JSON)) as f:
        json.dump(summary, f, indent=2)


# ----------------------------------------------------------------------------------------------
# Checkpoints


def _val_nme(metrics: Optional[Dict]) -> float:
    return metrics["val_nme"]


class Checkpoints:
    """Orbax checkpoints of the train state in ``WORKDIR/checkpoints``: the latest ``keep`` plus
    the best by validation NME.

    ``read_only``: for evaluation and export (nothing is created or deleted). A checkpoint that
    fails to restore in :meth:`restore_latest` (corrupt or partial) is skipped with a warning and
    the previous one is tried.
    """

    def __init__(self, workdir: str, keep: int = 1, read_only: bool = False):
        self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINTS)
        policy = ocp_preservation.AnyPreservationPolicy([
            ocp_preservation.LatestN(n=max(int(keep), 1)),
            ocp_preservation.BestN(get_metric_fn=_val_nme, reverse=True, n=1,
                                   keep_checkpoints_without_metrics=False),
        ])
        # best_fn makes orbax write each checkpoint's metrics to disk, so that the best step is
        # known after a restart (and BestN does not delete an earlier session's best).
        options = ocp.CheckpointManagerOptions(
            preservation_policy=None if read_only else policy, create=not read_only,
            read_only=read_only, best_fn=_val_nme, best_mode="min",
            enable_async_checkpointing=not read_only)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "meta"))

    def steps(self):
        return sorted(self.manager.all_steps())

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def best_step(self) -> Optional[int]:
        """The step with the lowest validation NME, else the newest; None when there is none.

        Orbax tracks it from the metrics saved with each checkpoint. Checkpoints saved without
        them (runs from before asmnet-train saved metrics, hand-made ones) carry the NME only in
        their ``meta``, which is read then."""
        best = self.manager.best_step()
        if best is None:
            best = self._best_step_from_meta()
        return best if best is not None else self.manager.latest_step()

    def _best_step_from_meta(self) -> Optional[int]:
        best, best_nme = None, math.inf
        for step in self.steps():
            try:
                meta = self.manager.restore(step, args=ocp.args.Composite(
                    meta=ocp.args.JsonRestore()))["meta"]
            except Exception:  # noqa: BLE001 - an unreadable checkpoint is not a candidate
                continue
            nme = (meta or {}).get("val_nme")
            if nme is not None and nme < best_nme:
                best, best_nme = step, nme
        return best

    def save(self, state, meta: Dict, val_nme: Optional[float] = None) -> None:
        """Starts writing ``state`` (host arrays) and returns: the files are written in the
        background while training goes on (on a GPU, one save of ~800 small arrays takes longer
        than a 300W epoch). A checkpoint appears under its step only once complete; the next
        save, :meth:`wait` and :meth:`close` wait for the one in flight."""
        metrics = {"val_nme": float(val_nme)} if val_nme is not None else None
        self.manager.save(int(meta["step"]), args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), metrics=metrics)

    def wait(self) -> None:
        """Returns once the save in flight, if any, is on disk."""
        self.manager.wait_until_finished()

    def restore_latest(self, abstract_state):
        """(state, meta) of the newest checkpoint that restores, or (None, None)."""
        for step in reversed(self.steps()):
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
                return restored["state"], restored["meta"]
            except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is skipped
                log.warning("checkpoint at step %d in %s cannot be restored (%s: %s); trying "
                            "the previous one", step, self.directory, type(err).__name__, err)
        return None, None

    def read(self, step: Optional[int] = None):
        """(state as nested dicts of arrays, meta) at ``step`` (default the latest), without a
        template; raises :class:`ModelError` naming the checkpoint if it cannot be read."""
        step = self.manager.latest_step() if step is None else step
        if step is None:
            raise ModelError(f"{self.directory}: holds no checkpoint")
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
        except (ValueError, KeyError, OSError) as err:  # orbax / tensorstore reading the files
            raise ModelError(f"{os.path.join(self.directory, str(step))}: cannot read the "
                             f"checkpoint (truncated or corrupt?): {err}") from err
        return restored["state"], restored["meta"]

    def close(self):
        self.manager.close()


def read_checkpoint(workdir: str, step: Optional[int] = None, which: str = "best"):
    """(step, state as nested dicts of arrays, meta) of a run's checkpoint: the one at ``step``,
    else the best by validation NME (``which="best"``) or the newest (``"latest"``)."""
    if which not in ("best", "latest"):
        raise OptionError(f"which must be 'best' or 'latest', got {which!r}")
    if not os.path.isdir(os.path.join(workdir, CHECKPOINTS)):
        raise ModelError(f"{workdir}: no checkpoints/ folder (has the run saved a checkpoint?)")
    checkpoints = Checkpoints(workdir, read_only=True)
    try:
        steps = checkpoints.steps()
        if not steps:
            raise ModelError(f"{checkpoints.directory}: holds no checkpoint")
        if step is None:
            step = checkpoints.best_step() if which == "best" else steps[-1]
        elif step not in steps:
            raise ModelError(f"{checkpoints.directory}: no checkpoint at step {step}; it has "
                             f"{steps}")
        state, meta = checkpoints.read(step)
    finally:
        checkpoints.close()
    return int(step), state, meta


# ----------------------------------------------------------------------------------------------
# Metrics


class MetricsLog:
    """Console lines or a progress bar, TensorBoard scalars and ``metrics.jsonl`` (process 0
    only: other processes get a log that writes nothing)."""

    def __init__(self, workdir, total_steps, start_step, enabled, progress_bar):
        self.enabled = enabled
        self.jsonl = open(os.path.join(workdir, METRICS_JSONL), "a") if enabled else None
        self.writer = None
        self.bar = None
        if enabled:
            try:  # a dependency, but absent from the bare GPU images the benchmarks run on
                from tensorboardX import SummaryWriter
            except ImportError:
                log.warning("tensorboardX is not installed: no TensorBoard scalars")
            else:
                self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
            if progress_bar:
                self.bar = tqdm(total=total_steps, initial=start_step, unit="step",
                                dynamic_ncols=True, mininterval=1.0)

    def scalars(self, step: int, values: Dict[str, float], prefix: str):
        if not self.enabled:
            return
        for key, value in values.items():
            if self.writer is not None and isinstance(value, (int, float)) \
                    and math.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{key}", value, step)
        self.jsonl.write(json.dumps({"step": step, "kind": prefix, **values}) + "\n")
        self.jsonl.flush()

    def progress(self, advance: int, postfix: Dict[str, str]):
        if self.bar is not None:
            self.bar.update(advance)
            self.bar.set_postfix(postfix, refresh=False)

    def write(self, text: str):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.jsonl is not None:
            self.jsonl.close()
