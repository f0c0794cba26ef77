"""resbackbone.engine: the fine-tuning pieces of the shared infrastructure. Repeat factors equal a hand computation
and the repeat-factor sampler is a pure function of (seed, iteration); the weight EMA follows its ramped formula
and copies integer buffers; early stopping counts evaluations without improvement in either direction; a tracker
whose package is missing is one line naming the pip package."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from resbackbone.engine.early_stopping import EarlyStopping
from resbackbone.engine.ema import WeightEMA, ema_decay_at
from resbackbone.engine.sampling import TrainBatchSampler, class_image_frequencies, repeat_factors
from resbackbone.errors import ConfigError
from tests.helpers import take_batches

# A made-up set of 10 images: class 0 is in 8 of them, class 1 in 2, class 2 in 1; image 9 has no box.
IMAGE_CLASSES = [{0}, {0}, {0}, {0}, {0}, {0, 1}, {0, 2}, {0}, {1}, set()]


def test_repeat_factors_equal_a_hand_computation() -> None:
    assert class_image_frequencies(IMAGE_CLASSES) == {0: 0.8, 1: 0.2, 2: 0.1}
    t = 0.5
    # r_c = max(1, sqrt(t / f_c)): class 0 -> 1 (0.8 > t), class 1 -> sqrt(2.5), class 2 -> sqrt(5); an image
    # takes its rarest class's factor, an image without boxes 1.
    r1, r2 = math.sqrt(0.5 / 0.2), math.sqrt(0.5 / 0.1)
    expected = [1, 1, 1, 1, 1, r1, r2, 1, r1, 1]
    assert repeat_factors(IMAGE_CLASSES, t) == pytest.approx(expected, abs=1e-12)
    assert repeat_factors(IMAGE_CLASSES, 0.05) == [1.0] * 10  # every class is more frequent than t


def test_repeat_factor_sampler_is_deterministic_resume_exact_and_repeats_on_average() -> None:
    factors = repeat_factors(IMAGE_CLASSES, 0.5)
    ratios = [1.0] * 10

    def sampler(**kw: object) -> TrainBatchSampler:
        return TrainBatchSampler(ratios, 2, seed=5, repeat_factors=factors, **kw)  # type: ignore[arg-type]

    full = take_batches(sampler(), 60)
    assert full == take_batches(sampler(), 60)
    s = sampler()
    assert [s.global_batch_at(k) for k in range(60)] == full
    for k in (1, 6, 7, 25, 41):  # inside an epoch, at its boundaries, epochs on (epochs differ in length)
        assert take_batches(sampler(start_iter=k), 60 - k) == full[k:]
    # Over many epochs of global batches of 1 (nothing dropped) image i comes r_i times per epoch on average.
    one = TrainBatchSampler(ratios, 1, seed=1, repeat_factors=factors, aspect_grouping=False)
    epochs = 400
    counts = torch.zeros(10)
    for e in range(epochs):
        for b in one._epoch_batches(e):
            counts[b] += 1
    assert (counts / epochs).tolist() == pytest.approx(factors, abs=0.08)
    # Each epoch holds floor(r) or ceil(r) copies of an image: stochastic rounding, not sampling with replacement.
    for e in range(5):
        per = torch.bincount(torch.tensor([i for b in one._epoch_batches(e) for i in b]), minlength=10)
        assert all(math.floor(r) <= int(c) <= math.ceil(r) for r, c in zip(factors, per))
    with pytest.raises(ValueError, match="one value >= 1 per image"):
        TrainBatchSampler(ratios, 2, seed=0, repeat_factors=[0.5] * 10)


def test_ema_follows_the_ramped_decay_and_copies_integer_buffers() -> None:
    assert ema_decay_at(1, 0.999, 0) == 0.999
    assert ema_decay_at(100, 0.999, 100) == pytest.approx(0.999 * (1 - math.exp(-1)))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    ema = WeightEMA(model, decay=0.9, ramp_iters=3)
    expected = {k: v.clone().double() for k, v in model.state_dict().items()}
    for step in range(1, 5):
        model(torch.randn(2, 3, 8, 8))  # train mode: BN statistics and its counter move
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model, step)
        d = 0.0 if step == 1 else ema_decay_at(step, 0.9, 3)  # the first update copies (AveragedModel's rule)
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                expected[k] = d * expected[k] + (1 - d) * v.double()
    for k, v in ema.module.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v.double(), expected[k], rtol=1e-5, atol=1e-6, msg=k)
    assert int(ema.module[1].num_batches_tracked) == 4  # copied, not averaged
    assert all(not p.requires_grad for p in ema.module.parameters())
    with pytest.raises(ConfigError, match="solver.ema_decay"):
        WeightEMA(model, decay=1.0)


@pytest.mark.parametrize(("mode", "values", "stop_at"), [
    ("max", [0.1, 0.3, 0.2, 0.3, 0.25, 0.5], 4),  # best at 2; 3, 4 (a tie is no improvement), stop at 4
    ("min", [2.0, 1.5, 1.6, 1.2, 1.3, 1.4], 6),  # lower is better: best 1.2 at 4, stop two later
])
def test_early_stopping_counts_evaluations_without_improvement(mode: str, values: list[float], stop_at: int) -> None:
    stopper = EarlyStopping("m", mode=mode, patience=2)  # type: ignore[arg-type]
    for i, v in enumerate(values, start=1):
        stopper.update(v, i)
        if stopper.should_stop:
            break
    assert i == stop_at
    restored = EarlyStopping("m", mode=mode, patience=2)  # type: ignore[arg-type]
    assert restored.load(stopper.state()) and restored.state() == stopper.state() and restored.should_stop
    assert not EarlyStopping("other", mode=mode).load(stopper.state())  # another metric: not carried over
    never = EarlyStopping("m", patience=0)
    for i in range(10):
        never.update(float("nan"), i)  # NaN never improves; patience 0 never stops
    assert never.best is None and not never.should_stop


def test_a_missing_tracker_package_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    import accelerate.tracking

    from resbackbone.engine.trackers import RunTensorBoard, build_trackers

    monkeypatch.setattr(accelerate.tracking, "_available_trackers", [])
    with pytest.raises(ConfigError, match=r"^log_with: comet_ml needs the comet_ml package: pip install comet_ml$"):
        build_trackers(["comet_ml"], str(tmp_path))
    trackers = build_trackers(["tensorboard", "tensorboard"], str(tmp_path))
    assert len(trackers) == 1 and isinstance(trackers[0], RunTensorBoard)
    assert build_trackers([], str(tmp_path)) == []
