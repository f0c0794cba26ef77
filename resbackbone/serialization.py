"""Safe reading and atomic writing of weight files: the one restricted unpickler and the one atomic writer.

torch files are read with ``torch.load(weights_only=True)``; plain pickles (Detectron's caffe2 ``.pkl`` weights,
the CIFAR-10 batches) go through :class:`RestrictedUnpickler`, which admits only numpy arrays, dicts, lists,
strings and numbers, so a malicious file is refused rather than executed. Writes go to a temporary file in the
target directory and are renamed into place, so a crash never leaves a truncated file under the final name.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, CheckpointNotFoundError, OutputError


class RestrictedUnpickler(pickle.Unpickler):
    """Admits only what numpy arrays, dicts, lists, strings and numbers need."""

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),  # protocol-2 pickles of bytes written by Python 2
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle global {module}.{name} (only numpy arrays allowed)")


def safe_unpickle(path: str | Path, *, encoding: str = "latin1") -> Any:
    """Unpickle ``path`` admitting only numpy / builtin data.

    Raises ``pickle.UnpicklingError`` for a refused global and ``EOFError`` / ``ValueError`` for a truncated file;
    callers wrap them in their own error type with the file name.
    """
    data = Path(path).read_bytes()
    return RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()


def load_torch_file(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with a :class:`CheckpointError` naming the file on any failure."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's own message suggests turning the safety check off; for a foreign file that is exactly wrong.
        raise CheckpointError(
            f"refusing to load {path}: it holds Python objects other than tensors and plain data, and unpickling "
            f"them could run code (weights_only=True refused: {str(e).splitlines()[0][:200]})"
        ) from e
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        reason = str(e).splitlines()[0][:300] if str(e) else "empty or truncated file"
        raise CheckpointError(f"cannot load {path}: {type(e).__name__}: {reason}") from e


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def _write_failure(path: Path, e: BaseException) -> OutputError:
    """One line for a failed write: the path and why (torch reports a full disk as a RuntimeError from its zip
    writer, ``inline_container.cc``, without the reason: the free space is checked to say it)."""
    if isinstance(e, OSError) and e.strerror:
        reason = e.strerror
    else:
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(path.parent).free
            if free < 64 * 2**20:
                reason = f"no space left on the device ({free / 2**20:.1f} MiB free)"
    return OutputError(f"cannot write {path}: {reason}; the previous file, if any, is unchanged")


def _atomic_write(path: Path, write: Any, mode: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_failure(path, e) from e
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; the final file gets the permissions a plain open() would give it.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(e, OSError) or (isinstance(e, RuntimeError) and "inline_container" in str(e)):
            raise _write_failure(path, e) from e
        raise


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temp file in the same directory, fsync, then ``os.replace``."""
    _atomic_write(Path(path), lambda f: torch.save(obj, f), "wb")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a small text file atomically (temp file + rename)."""
    _atomic_write(Path(path), lambda f: f.write(text), "w")


__all__ = ["RestrictedUnpickler", "atomic_torch_save", "atomic_write_text", "load_torch_file", "safe_unpickle"]
