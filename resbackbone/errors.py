"""The project's error types: bad input a user can fix, each reported by the tools as one line.

Every error raised because of a file, key or value the user gave derives from :class:`InputError`; the command
line tools catch exactly this family and print its message, so that a real bug elsewhere still shows its full
traceback. The second base class keeps each error catchable the way Python code would expect it
(``ValueError`` for a bad value, ``FileNotFoundError`` for a missing file).
"""

from __future__ import annotations


class InputError(Exception):
    """Base of every error caused by user input; its message names the file, key or value."""


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


__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "ConfigError",
    "DataError",
    "DataNotFoundError",
    "InputError",
    "WeightsError",
    "WeightsNotFoundError",
]
