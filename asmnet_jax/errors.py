"""The project's error classes: one base for every error a user can fix.

An :class:`AsmnetError` is bad input (a config key, an option, a data file, a dataset split, a
model); its message names the culprit (the file, the key, the flag). The commands
(:mod:`asmnet_jax.cli`) print such an error, and ``FileNotFoundError``, as one line
``PROG: error: MESSAGE`` and exit with status 1; any other exception is a bug and keeps its
traceback.

The classes elsewhere (``config_base.ConfigError``, ``data.errors.DataError``, ...) derive from :class:`AsmnetError` and, as before, from ``ValueError`` or ``RuntimeError``, so
``except ValueError`` clauses keep catching them.
"""

from __future__ import annotations


class AsmnetError(Exception):
    """Bad input the user can fix; the message names the file, key or flag."""


class ModelError(AsmnetError, ValueError):
    """A model that cannot be loaded or written: a path that is neither a training workdir, one of
    its checkpoints nor a model directory; a missing checkpoint step; variables or a Keras file that
    do not fit the architecture; a model directory that exists already."""


class OptionError(AsmnetError, ValueError):
    """An option or name without a file behind it that has a bad value (an unknown dataset, builder
    config or split); the message names the option and the values there are."""


class EvalError(AsmnetError, ValueError):
    """Bad input to an evaluation (path, dataset, split, option); the message names it."""


class PredictError(AsmnetError):
    """Bad input to ``asmnet-predict`` (an image, a box, a detector, an option); the message names
    it."""
