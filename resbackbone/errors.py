"""The project's error types: bad input a user can fix, each reported by the tools as one line.

Every error raised because of a file, key or value the user gave derives from :class:`InputError`; the command
line tools catch exactly this family and print its message, so that a real bug elsewhere still shows its full
traceback. The second base class keeps each error catchable the way Python code would expect it
(``ValueError`` for a bad value, ``FileNotFoundError`` for a missing file).
"""

from __future__ import annotations


class InputError(Exception):
    """Base of every error caused by user input; its message names the file, key or value.

    Raised inside a DataLoader worker, torch re-creates the error in the main process with the worker's whole
    traceback as its message; that is folded back to the original one line (plus where it happened), so a bad
    image met by a worker after hours of training reads as it would in the main process.
    """

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str) and _WORKER_PREFIX in args[0]:
            args = (_from_worker(args[0]),)
        super().__init__(*args)


_WORKER_PREFIX = "DataLoader worker process"


def _from_worker(message: str) -> str:
    """``"Caught DataError in DataLoader worker process 0.\nOriginal Traceback ...\nmodule.DataError: text"`` ->
    ``"text (in DataLoader worker process 0)"``."""
    first, _, rest = message.partition("\n")
    where = first[first.find(" in ") + 4:].rstrip(".") if " in " in first else "a DataLoader worker"
    lines = [line for line in rest.splitlines() if line.strip()]
    last = lines[-1] if lines else first
    head, sep, text = last.partition(": ")
    # The last traceback line is "package.module.ErrorName: message"; keep the message.
    if sep and " " not in head:
        last = text
    return f"{last} (in {where})"


class ConfigError(InputError, ValueError):
    """A configuration file, key or value is wrong; the message names it."""


class DataError(InputError, ValueError):
    """Bad or missing input data; the message names the file."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A data file or folder does not exist; the message names the path."""


class WeightsError(InputError, ValueError):
    """Weights that do not fit: the message names the keys."""


class WeightsNotFoundError(InputError, FileNotFoundError):
    """A named weight set is neither cached nor downloadable; the message says where to put the file."""


class CheckpointError(InputError, RuntimeError):
    """A checkpoint file is unreadable, unsafe or not of the expected kind; the message names it."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint file does not exist; the message names the path."""


class OutputError(InputError, OSError):
    """A file cannot be written (full disk, read-only folder, no permission); the message names the path. What was
    there before is left as it was (writes are atomic)."""


# The exit status of a tool stopped by bad input: argparse's own for a bad argument, so a script calling the tools
# sees one status for every input error.
INPUT_ERROR_STATUS = 2


def report_input_error(prog: str, error: BaseException | str) -> int:
    """The tools' one way to stop on bad input: ``prog: error: message`` on one line of stderr (argparse's form)
    and :data:`INPUT_ERROR_STATUS` returned for ``main`` to return."""
    import sys

    message = " ".join(str(error).split("\n")).strip()
    print(f"{prog}: error: {message}", file=sys.stderr)
    return INPUT_ERROR_STATUS


__all__ = [
    "INPUT_ERROR_STATUS",
    "OutputError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "ConfigError",
    "DataError",
    "DataNotFoundError",
    "InputError",
    "WeightsError",
    "WeightsNotFoundError",
    "report_input_error",
]
