"""What a resumed run may change: the saved ``config.json`` of a workdir against the new config.

A training workdir remembers what it trained: ``WORKDIR/config.json`` (written by
``config.to_json_best_effort(indent=2)`` when the run starts). Resuming it with a config that
changes the model, the data or the loss would continue the checkpoint as another run and rewrite
``config.json`` as if it had always been that run, so :func:`compare_for_resume` sorts the changed
keys into those a resume refuses and those it allows (and logs), and
:func:`resume_error_message` is the one line that refuses them. Both are pure: the caller
(``train.prepare``) reads the file, raises and logs.

The rule, by key (``asmnet_jax/config_base.py`` is the schema):

* **Allowed** (:data:`ALLOWED`): settings that extend, observe or place the run without changing
  what each step computes from which data:

  - how long: ``num_epochs``, ``max_steps``. ``num_epochs`` also sets the length of the cosine
    schedule, so the learning rate from the resumed step on follows the new length: allowed, as
    training longer is the point of resuming, and logged (:func:`resume_log_message`);
  - what is logged, evaluated and kept: ``log_every_steps``, ``eval_every_epochs``,
    ``checkpoint_every_epochs``, ``keep_checkpoints``, ``progress_bar``, ``final_flip_eval``;
  - where batches are made and the same data is read from: ``input`` (device or host),
    ``num_workers``, ``data_dir`` (the TFDS folder), ``arrays_dir`` (the ``.npz`` exports of the
    same dataset; which dataset and splits is ``dataset``, ``train_split``, ``val_split``);
  - ``depthwise_impl``: which of the equivalent forms of the depthwise convolution XLA runs
    (the same values up to rounding; asmnet_jax/depthwise.py).

* **Refused** (:data:`REFUSED`), everything that defines the trained function, its data or its
  optimisation:

  - the model: ``model``, ``num_landmarks``, ``input_size``, ``input_range``, ``dropout_rate``,
    ``bn_momentum``, ``dtype`` (the compute dtype: bfloat16 steps are other numerics than float32
    ones);
  - how it started: ``init``, ``init_path``, ``init_bn_images``, ``head_init`` (only read when a
    run starts, but ``config.json`` would then misstate where the checkpoints came from);
  - the loss: ``asm_loss``, ``asm_variance``, ``landmark_loss``, ``wing_width``,
    ``wing_epsilon``, ``head_l2``, ``distill_teacher``, ``distill_weight``;
  - the data: ``dataset``, ``train_split``, ``val_split`` (the best checkpoint is chosen on it),
    ``synthetic.*``, ``margin``, ``augment.*``;
  - the optimisation: ``batch_size`` (steps per epoch, hence the schedule), ``optimizer.*``,
    ``ema_decay``, ``seed``.

* **Unknown keys** (added to the schema later and not classified here) are refused: resuming then
  asks for a new workdir rather than silently continuing another run.

A refused key is not a change where the run never used it, under both configs
(:data:`UNUSED_WHEN`): ``synthetic.*`` of a TFDS dataset, ``init_path`` of a run from scratch,
``init_bn_images`` unless ``init="imagenet"``, ``asm_variance`` without the ASM loss, the Wing
settings unless ``landmark_loss="wing"``, ``distill_weight`` without a ``distill_teacher``,
``dropout_rate`` of mnv2, ``optimizer.weight_decay`` unless adamw, ``optimizer.b2`` of SGD,
``optimizer.warmup_epochs`` unless the cosine schedule, the cyclic settings unless
``schedule="authors_cyclic"``. So a config file edited in a setting the run does not read can
still resume it.

Keys missing from an older ``config.json`` compare equal to the value the run used: the schema
default (:func:`asmnet_jax.config_base.base_config`), except for the keys whose default changed when
they were added (:data:`LEGACY_VALUES`: runs before ``bn_momentum`` existed used Keras' 0.999, and
Keras head initialisation before ``head_init``). Keys of ``config.json`` that the schema no longer
has are ignored: the code no longer reads them.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple

from asmnet_jax.config_base import base_config

#: Keys a resume may change (dotted; see the module docstring for the reasons).
ALLOWED = frozenset({
    "num_epochs", "max_steps",
    "log_every_steps", "eval_every_epochs", "checkpoint_every_epochs", "keep_checkpoints",
    "progress_bar", "final_flip_eval",
    "input", "num_workers", "data_dir", "arrays_dir",
    "depthwise_impl",
})

#: Keys a resume refuses to change, listed for the record: any key not in :data:`ALLOWED` is
#: refused. Entries ending in ``.`` are groups (every key under them).
REFUSED = frozenset({
    "model", "num_landmarks", "input_size", "input_range", "dropout_rate", "bn_momentum", "dtype",
    "init", "init_path", "init_bn_images", "head_init",
    "asm_loss", "asm_variance", "landmark_loss", "wing_width", "wing_epsilon", "head_l2",
    "distill_teacher", "distill_weight",
    "dataset", "train_split", "val_split", "synthetic.", "margin", "augment.",
    "batch_size", "optimizer.", "ema_decay", "seed",
})

_CYCLIC = ("optimizer.cyclic_min_lr", "optimizer.cyclic_half_cycle_epochs",
           "optimizer.time_decay")

#: Refused keys that a run does not read under some settings: (key or group, predicate on the
#: flat config). A change of such a key is ignored when the predicate holds for both configs.
UNUSED_WHEN: Tuple[Tuple[str, Callable[[Mapping[str, Any]], bool]], ...] = (
    ("synthetic.", lambda c: c.get("dataset") != "synthetic"),
    ("init_path", lambda c: c.get("init") == "scratch"),
    ("init_bn_images", lambda c: c.get("init") != "imagenet"),
    ("asm_variance", lambda c: c.get("asm_loss") is False),
    *((key, lambda c: c.get("landmark_loss") != "wing") for key in ("wing_width", "wing_epsilon")),
    ("distill_weight", lambda c: not c.get("distill_teacher")),
    ("dropout_rate", lambda c: c.get("model") != "asmnet"),
    ("optimizer.weight_decay", lambda c: c.get("optimizer.name") != "adamw"),
    ("optimizer.b2", lambda c: c.get("optimizer.name") == "sgd"),
    ("optimizer.warmup_epochs", lambda c: c.get("optimizer.schedule") != "cosine"),
    *((key, lambda c: c.get("optimizer.schedule") != "authors_cyclic") for key in _CYCLIC),
)

#: The value a run used for a key its ``config.json`` lacks, where that is not the schema
#: default: the key was added with a new default (commit c984147: BN momentum 0.9 instead of
#: Keras' 0.999, mean-initialised heads instead of Keras' initialisation).
LEGACY_VALUES: Dict[str, Any] = {"bn_momentum": 0.999, "head_init": "keras"}


class _Missing:
    """A key neither the saved config nor the schema has."""

    def __repr__(self) -> str:
        return "(not set)"


MISSING = _Missing()


class Change(NamedTuple):
    """One changed key: dotted name, value in the saved ``config.json``, value in the new config."""

    key: str
    saved: Any
    new: Any


def _matches(key: str, entry: str) -> bool:
    return key == entry or (entry.endswith(".") and key.startswith(entry))


def is_allowed(key: str) -> bool:
    """Whether a resume may change ``key`` (dotted); unknown keys are not."""
    return any(_matches(key, entry) for entry in ALLOWED)


def _plain(config: Any) -> Dict[str, Any]:
    """A ConfigDict or mapping as JSON values (tuples become lists, as in ``config.json``)."""
    if hasattr(config, "to_json_best_effort"):
        return json.loads(config.to_json_best_effort())
    return json.loads(json.dumps(dict(config), default=repr))


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """A nested mapping as one dict of dotted keys: ``{"optimizer.learning_rate": 0.001, ...}``."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _same(a: Any, b: Any) -> bool:
    """Equal JSON values; ``True`` is not ``1``, ``10`` is ``10.0``, NaN is NaN."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b or (isinstance(a, float) and isinstance(b, float)
                          and math.isnan(a) and math.isnan(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _unused(key: str, saved: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return any(_matches(key, entry) and unused(saved) and unused(new)
               for entry, unused in UNUSED_WHEN)


def compare_for_resume(saved: Mapping[str, Any], config: Any,
                       defaults: Optional[Any] = None) -> Tuple[List[Change], List[Change]]:
    """The keys whose value in ``config`` differs from the run's ``config.json``:
    ``(refused, allowed)``, two lists of :class:`Change` ``(key, saved, new)`` in the config's key
    order; a resume goes on only when ``refused`` is empty.

    Args:
      saved: the dict read from ``WORKDIR/config.json``; keys it lacks take the value the run
        used (:data:`LEGACY_VALUES`, else the schema default); keys the new config lacks are
        ignored.
      config: the new config (an ``ml_collections.ConfigDict`` or a nested mapping).
      defaults: the schema (default :func:`asmnet_jax.config_base.base_config`).
    """
    if defaults is None:
        defaults = base_config()
    new = flatten(_plain(config))
    old = {**flatten(_plain(defaults)), **LEGACY_VALUES, **flatten(_plain(saved))}
    old = {key: old.get(key, MISSING) for key in new}
    refused, allowed = [], []
    for key, value in new.items():
        if _same(old[key], value):
            continue
        if is_allowed(key):
            allowed.append(Change(key, old[key], value))
        elif not _unused(key, old, new):
            refused.append(Change(key, old[key], value))
    return refused, allowed


def _value(value: Any) -> str:
    return repr(value)


def _join(parts: List[str]) -> str:
    if len(parts) <= 2:
        return " and ".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def resume_error_message(changes: Iterable[Change], path: Optional[str] = None) -> str:
    """One line refusing a resume: each changed key with the value the run was trained with and the
    new one, e.g. ``W/config.json: this run was trained with config.input_size=64 (not 96) and
    config.landmark_loss='l2' (not 'l1'); resume it without these changes, or start a new
    --workdir``. ``path``: the ``config.json`` read (the message starts with it)."""
    changes = list(changes)
    parts = [f"config.{c.key}={_value(c.saved)} (not {_value(c.new)})" for c in changes]
    these = "this change" if len(changes) == 1 else "these changes"
    message = (f"this run was trained with {_join(parts)}; resume it without {these} "
               "(--config file or --config.KEY overrides), or start a new --workdir")
    return f"{path}: {message}" if path else message


def resume_log_message(changes: Iterable[Change]) -> str:
    """One line for the log of a resume with allowed changes, e.g. ``resuming with
    config.num_epochs=20 (was 10)``; "" when there are none."""
    parts = [f"config.{c.key}={_value(c.new)} (was {_value(c.saved)})" for c in changes]
    return f"resuming with {_join(parts)}" if parts else ""
