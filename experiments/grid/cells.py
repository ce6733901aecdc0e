"""A grid's cells and the config of each of its runs, and how two configs differ."""

from __future__ import annotations

import dataclasses
import json
from typing import Dict, List, Mapping, Sequence, Tuple

from asmnet_jax.config_changes import flatten
from experiments import common

#: Config keys whose change does not change a run's results: a finished or partial run with
#: other values of these is still the same run.
RUNTIME_KEYS = ("progress_bar", "num_workers", "log_every_steps", "keep_checkpoints")


class GridError(common.ExperimentError):
    """A grid that cannot run as asked (bad option, changed config of an existing run)."""


@dataclasses.dataclass(frozen=True)
class Cell:
    """One configuration of a grid.

    ``key``: its directory under the root; ``label``: its name in the report; ``settings``: the
    config keys it sets, which ``--set`` may not touch; ``defaults``: keys it sets unless ``--set``
    gives them; ``extra``: report-only values (e.g. the ASM accuracy as a number, for the plot).
    """

    key: str
    label: str
    settings: Mapping[str, object]
    defaults: Mapping[str, object] = dataclasses.field(default_factory=dict)
    extra: Mapping[str, object] = dataclasses.field(default_factory=dict)


def set_key(config, key: str, value) -> None:
    """Sets the dotted ``key`` of ``config``."""
    *groups, leaf = key.split(".")
    for group in groups:
        config = config[group]
    config[leaf] = value


def build_config(config_file: str, overrides: Sequence[Tuple[str, str]], cell: Cell, seed: int):
    """The config of one run: the file with the ``--set`` overrides (typed as ``asmnet-train
    --config.KEY=VALUE`` types them, :func:`experiments.common.load_config`), the cell's defaults
    for the keys ``--set`` leaves alone, then the cell's settings and the seed. ``--set`` of a key
    the cell sets is an error."""
    for key, _ in overrides:
        if key in cell.settings or key == "seed":
            raise GridError(f"--set {key}: this grid sets {key!r} itself"
                            + (" (use --seeds)" if key == "seed" else ""))
    config = common.load_config(config_file, overrides)
    overridden = {key for key, _ in overrides}
    for key, value in cell.defaults.items():
        if key not in overridden:
            set_key(config, key, value)
    for key, value in cell.settings.items():
        set_key(config, key, value)
    config.seed = int(seed)
    return config


def config_as_dict(config) -> Dict:
    """The JSON form ``train_and_evaluate`` saves as ``config.json``, read back."""
    return json.loads(config.to_json_best_effort())


def config_differences(saved: Mapping, requested: Mapping,
                       ignore: Sequence[str] = RUNTIME_KEYS) -> List[str]:
    """Human-readable differences between two config dicts, ignoring ``ignore`` keys. A key the
    saved config lacks is no difference when the requested value is the schema's default: keys
    added to the schema later default to what runs did before them."""
    from asmnet_jax.config_base import base_config

    defaults = flatten(config_as_dict(base_config()))
    a, b = flatten(saved), flatten(requested)
    lines = []
    for key in sorted(set(a) | set(b)):
        if key in ignore:
            continue
        if key not in a and key in defaults and defaults[key] == b[key]:
            continue
        if key not in a:
            lines.append(f"{key}: not in the saved config, requested {b[key]!r}")
        elif key not in b:
            lines.append(f"{key}: saved {a[key]!r}, not a key of the requested config")
        elif a[key] != b[key]:
            lines.append(f"{key}: saved {a[key]!r}, requested {b[key]!r}")
    return lines
