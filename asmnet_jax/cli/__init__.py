"""The command-line programs, one module per command, and the rules they share.

* ``asmnet-train``: :mod:`asmnet_jax.cli.train`
* ``asmnet-eval``: :mod:`asmnet_jax.cli.eval`
* ``asmnet-predict``: :mod:`asmnet_jax.cli.predict`
* ``asmnet-export``: :mod:`asmnet_jax.cli.export`
* ``asmnet-info``: :mod:`asmnet_jax.cli.info`
* ``asmnet-build-data``: :mod:`asmnet_jax.cli.build_data`
* ``asmnet-import-keras``: :mod:`asmnet_jax.cli.import_keras`

Each module has ``main(argv=None) -> int``; the library modules (``asmnet_jax.evaluate``,
``asmnet_jax.predict``, ...) do the work and know nothing of the command line. The shared rules,
each written once here:

* a model is named by ``--model`` (with ``--which`` and ``--step``): :func:`add_model_arguments`,
  :func:`load_model`;
* every output folder is ``--out``, every batch ``--batch-size``: :func:`add_out_argument`,
  :func:`add_batch_size_argument`; flags are never abbreviated: :func:`make_parser`;
* an output folder that is a file (or lies under one) is refused before any work, naming the flag:
  :func:`check_output_dir`;
* the logs of JAX, orbax, TensorFlow, ... are quieted the same way: :func:`quiet_logs`;
* errors: :func:`run` prints the project's own errors (:class:`asmnet_jax.errors.AsmnetError`) and
  ``FileNotFoundError`` as one line ``PROG: error: MESSAGE`` and returns exit status 1; usage errors
  are argparse's (status 2); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import Any, Callable, Optional

from asmnet_jax.errors import AsmnetError, ModelError

#: Loggers that speak too much at INFO level; :func:`quiet_logs` sets them to WARNING.
NOISY_LOGGERS = ("absl", "jax", "orbax", "grain", "tensorflow", "tensorflow_datasets",
                 "matplotlib")
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
#: ``--which`` values: the checkpoint with the lowest validation NME, or the newest.
WHICH = ("best", "latest")
#: Loggers whose records while a model loads are held back (:func:`load_model`): passed on when
#: it loads, dropped when it does not (orbax logs an unreadable file before raising; the error's
#: one line says what is wrong).
MODEL_LOADING_LOGGERS = ("absl", "orbax")


def make_parser(prog: str, description: str, epilog: Optional[str] = None
                ) -> argparse.ArgumentParser:
    """An argument parser for ``prog`` that takes flags only as spelled out: no abbreviations
    (``--batch`` is not ``--batch-size``), so a renamed flag fails loudly (exit status 2)."""
    return argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                   allow_abbrev=False)


def add_model_arguments(parser: argparse.ArgumentParser, default: Optional[str] = None) -> None:
    """Adds ``--model`` (required unless ``default`` is given), ``--which`` and ``--step``.

    ``--model`` is what :func:`asmnet_jax.inference.load` takes: a training workdir, one of its
    checkpoints ``WORKDIR/checkpoints/STEP``, a model directory, or the name of a model shipped
    with the package.
    """
    from asmnet_jax.inference import shipped_models

    shipped = ", ".join(shipped_models()) or "none installed"
    what = ("a training workdir (asmnet-train --workdir), one of its checkpoints "
            "WORKDIR/checkpoints/STEP, a model directory (model.json + variables; "
            f"asmnet-import-keras writes one) or the name of a model shipped with the package "
            f"({shipped})")
    if default is None:
        parser.add_argument("--model", required=True, help=what)
    else:
        parser.add_argument("--model", default=default, help=f"{what}; default {default}")
    parser.add_argument("--which", choices=WHICH, default="best",
                        help="checkpoint of a workdir: lowest validation NME (best, the default) "
                             "or newest (latest)")
    parser.add_argument("--step", type=int, metavar="N",
                        help="checkpoint step of a workdir (overrides --which)")


def add_out_argument(parser: argparse.ArgumentParser, help: str, default: Optional[str] = None,
                     required: bool = False) -> None:
    """Adds ``--out DIR``, the output folder of every command that writes one."""
    parser.add_argument("--out", metavar="DIR", default=default, required=required, help=help)


def add_batch_size_argument(parser: argparse.ArgumentParser, default: int, help: str) -> None:
    """Adds ``--batch-size N`` (checked by the command: each has its own constraint)."""
    parser.add_argument("--batch-size", type=int, default=default, metavar="N",
                        help=f"{help} (default {default})")


def output_dir_problem(flag: str, path: str) -> Optional[str]:
    """Why ``path``, a folder the command creates or writes into, cannot be one: it is a file, or
    lies under one (``FILE/sub``); it cannot be created or written for lack of permission. The
    message starts with ``flag`` and the path. None when it can."""
    if not path:
        return f"{flag}: an empty path; name a folder"
    absolute = os.path.abspath(path)
    existing = absolute
    while not os.path.lexists(existing):  # lexists: a dangling link is there, and in the way
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        what = "a file" if os.path.isfile(existing) else "not a folder"
        if existing == absolute:
            return f"{flag}: {path} is {what}; name a folder"
        return f"{flag}: {path}: {existing} is {what}, so no folder can be made under it"
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == absolute:
            return f"{flag}: {path}: no permission to write in this folder"
        return f"{flag}: {path}: no permission to create it in {existing}"
    return None


def check_output_dir(flag: str, path: str) -> None:
    """Raises :class:`asmnet_jax.errors.AsmnetError` (one line, status 1 under :func:`run`) when
    ``path`` cannot be the output folder of ``flag`` (:func:`output_dir_problem`)."""
    problem = output_dir_problem(flag, path)
    if problem:
        raise AsmnetError(problem)


def load_model(args: argparse.Namespace, **model_kwargs):
    """:func:`asmnet_jax.inference.load` of ``--model`` / ``--step`` / ``--which``.

    Raises :class:`asmnet_jax.errors.ModelError` whose message starts with ``--model``, for a model
    that cannot be loaded and for a path that does not exist. The log records of
    :data:`MODEL_LOADING_LOGGERS` are held back while it loads and dropped when it fails, so
    that the error stays one line.
    """
    from asmnet_jax import inference

    with _held_logs(MODEL_LOADING_LOGGERS) as held:
        try:
            return inference.load(args.model, step=args.step, which=args.which, **model_kwargs)
        except (ModelError, FileNotFoundError) as err:
            held.records.clear()  # the error's one line says what is wrong
            raise ModelError(f"--model: {err}") from None


class _Held(logging.Handler):
    """Keeps the records it is given."""

    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _held_logs(names):
    """Holds back the records of the loggers ``names`` (and their children) in a :class:`_Held`,
    and passes on those still held at the end."""
    held = _Held()
    loggers = [logging.getLogger(name) for name in names]
    propagate = [logger.propagate for logger in loggers]
    for logger in loggers:
        logger.addHandler(held)
        logger.propagate = False
    try:
        yield held
    finally:
        for logger, value in zip(loggers, propagate):
            logger.removeHandler(held)
            logger.propagate = value
        for record in held.records:
            logging.getLogger(record.name).handle(record)


def quiet_logs() -> None:
    """INFO logging to stderr for the project, WARNING for :data:`NOISY_LOGGERS`."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def error(prog: str, message: Any) -> int:
    """Prints ``PROG: error: MESSAGE`` to stderr as one line (a message of several lines is joined
    with spaces); returns exit status 1."""
    text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
    print(f"{prog}: error: {text}", file=sys.stderr, flush=True)
    return 1


def run(prog: str, function: Callable[[Any], int], args: Any) -> int:
    """``function(args)``, its exit status; a user error becomes one line and status 1.

    User errors are :class:`asmnet_jax.errors.AsmnetError` (bad config, data, option or model) and
    ``FileNotFoundError`` (the message names the file). Any other exception propagates with its
    traceback: it is a bug.
    """
    try:
        return function(args)
    except (AsmnetError, FileNotFoundError) as err:
        return error(prog, err)
