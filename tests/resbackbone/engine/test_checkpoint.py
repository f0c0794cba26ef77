"""resbackbone.engine.checkpoint: atomic keep-last-k checkpoints, weights-only loading, exact RNG restore."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from resbackbone.engine.checkpoint import CheckpointManager, capture_rng_state, restore_rng_state


def test_rng_state_round_trip_through_weights_only_checkpoint(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)  # noqa: NPY002 - the global legacy RNG is what data libraries use
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state  # noqa: NPY002 - the global legacy RNG is what data libraries use
    mgr = CheckpointManager(tmp_path, keep_last=2)
    path = mgr.save({"rng": capture_rng_state()}, 10)
    expected = (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist())  # noqa: NPY002 - the global legacy RNG is what data libraries use
    random.seed(99)
    np.random.seed(99)  # noqa: NPY002 - the global legacy RNG is what data libraries use
    torch.manual_seed(99)
    restore_rng_state(CheckpointManager.load(path)["rng"])
    got = (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist())  # noqa: NPY002 - the global legacy RNG is what data libraries use
    assert got == expected


def test_checkpoint_manager_keeps_last_k_and_points_to_newest(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep_last=2)
    assert mgr.latest() is None
    for it in (5, 10, 15):
        mgr.save({"iteration": it, "w": torch.full((2,), float(it))}, it)
    assert [p.name for p in mgr.checkpoints()] == ["model_0000010.pth", "model_0000015.pth"]
    latest = mgr.latest()
    assert latest is not None and CheckpointManager.load(latest)["iteration"] == 15
    assert not list(tmp_path.glob("*.tmp")), "no temp files may be left behind"


def test_checkpoint_load_refuses_arbitrary_pickles(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (print, ("executed",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(RuntimeError, match="evil.pth"):
        CheckpointManager.load(path)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        CheckpointManager.load(tmp_path / "missing.pth")


def test_a_non_finite_state_is_never_written(tmp_path: Path) -> None:
    """A checkpoint holding NaN / inf (e.g. BatchNorm statistics blown up by a huge lr) is refused with the file
    it would have been; the previous checkpoint and the pointer to it stay as they were."""
    from resbackbone.engine.progress import NonFiniteLossError

    mgr = CheckpointManager(tmp_path, keep_last=3)
    good = mgr.save({"model": {"bn.running_var": torch.ones(3)}, "iteration": 10}, 10)
    model = {"bn.running_var": torch.tensor([1.0, float("inf"), 1.0]), "step": torch.zeros(2, dtype=torch.uint8)}
    optimizer = {"state": {0: {"momentum_buffer": torch.tensor([float("nan")])}}}
    bad = {"model": model, "optimizer": optimizer, "iteration": 20}
    with pytest.raises(NonFiniteLossError, match=r"model_0000020\.pth.*model\.bn\.running_var"):
        mgr.save(bad, 20)
    assert mgr.checkpoints() == [good] and mgr.latest() == good
    assert not list(tmp_path.glob("*.tmp")) and not mgr.path_for(20).exists()


def test_checkpoints_get_the_permissions_of_a_plain_file(tmp_path: Path) -> None:
    import os

    mask = os.umask(0o022)
    try:
        path = CheckpointManager(tmp_path).save({"iteration": 1}, 1)
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600: other users of a shared run may read it


def test_unsafe_empty_and_truncated_files_are_one_line_naming_the_file(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (print, ("executed",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(RuntimeError, match=r"refusing to load .*evil\.pth.*could run code") as err:
        CheckpointManager.load(tmp_path / "evil.pth")
    assert "weights_only=False" not in str(err.value)  # never the hint to turn the safety off
    (tmp_path / "empty.pth").write_bytes(b"")
    mgr = CheckpointManager(tmp_path)
    good = mgr.save({"iteration": 1, "w": torch.ones(1000)}, 1)
    (tmp_path / "cut.pth").write_bytes(good.read_bytes()[:300])
    for name in ("empty.pth", "cut.pth"):
        with pytest.raises(RuntimeError, match=rf"cannot load .*{name}") as err:
            CheckpointManager.load(tmp_path / name)
        assert "\n" not in str(err.value)
