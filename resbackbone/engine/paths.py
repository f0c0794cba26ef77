"""Where data lives: the one data-root rule of the classification and detection data."""

from __future__ import annotations

import os
from pathlib import Path

ENV_DATA_ROOT = "RESDET_DATA_ROOT"


def checkout_datasets_dir() -> Path | None:
    """The ``datasets/`` folder of the source checkout this package runs from, or None when it is installed.

    Looked up at call time (nothing is decided at import): a checkout is recognised by its ``pyproject.toml``.
    """
    checkout = Path(__file__).resolve().parents[2]
    return checkout / "datasets" if (checkout / "pyproject.toml").is_file() else None


def data_root(root: str | Path | None = None) -> Path:
    """Where datasets live: explicit ``root`` > ``$RESDET_DATA_ROOT`` > the checkout's ``datasets/`` folder.

    When the packages are installed (not editable) there is no checkout, and the last fallback is ``./datasets``
    in the working directory rather than a folder inside site-packages.
    """
    if root:
        return Path(root).expanduser()
    env = os.environ.get(ENV_DATA_ROOT)
    if env:
        return Path(env).expanduser()
    checkout = checkout_datasets_dir()
    return checkout if checkout is not None else Path.cwd() / "datasets"


__all__ = ["ENV_DATA_ROOT", "checkout_datasets_dir", "data_root"]
