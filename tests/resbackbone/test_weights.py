"""resbackbone.weights: pretrained-weight conversion and loading (torchvision / timm parity, MSRA pickles, safety,
offline message, the torch-hub and HF caches, native round trip).

The convert CLI is tested in tests/tools/test_convert_weights.py.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from resbackbone import resnet101
from resbackbone.pixels import MSRA_PIXELS, TORCHVISION_PIXELS, PixelNormalizer
from resbackbone.resnet import ResNet
from resbackbone.weights import (
    WeightsError,
    WeightsNotFoundError,
    check_state_dict,
    convert_state_dict,
    load_pretrained,
    pretrained_state_dict,
    safe_load_pickle,
    save_backbone_weights,
)
from tests.helpers import msra_blobs, randomize_bn_statistics

pytestmark = pytest.mark.usefixtures("one_thread")


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """load_state_dict that tolerates only the BN counters conversion drops."""
    res = model.load_state_dict(state, strict=False)
    assert not res.unexpected_keys, res.unexpected_keys
    assert all(k.endswith("num_batches_tracked") for k in res.missing_keys), res.missing_keys


def _trunk(m: nn.Module, x: torch.Tensor, act: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(res4, res5) of a torchvision / timm ResNet, computed from its own layers."""
    h = m.maxpool(getattr(m, act)(m.bn1(m.conv1(x))))
    res4 = m.layer3(m.layer2(m.layer1(h)))
    return res4, m.layer4(res4)


@pytest.mark.parametrize("depth", [50, 101])
def test_torchvision_conversion_gives_identical_logits_and_features(depth: int) -> None:
    torch.manual_seed(depth)
    tv = getattr(torchvision.models, f"resnet{depth}")()
    randomize_bn_statistics(tv)
    tv.eval()
    state = convert_state_dict(tv.state_dict(), "torchvision")
    check_state_dict(state, depth, allow_missing_fc=False)
    ours = ResNet(depth).eval()
    _load_strict(ours, state)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x) - tv(x)).abs().max() < 1e-4
        feats = ResNet(depth, out_features=("res4", "res5")).eval()
        _load_strict(feats, {k: v for k, v in state.items() if not k.startswith("fc.")})
        f = feats(x)
        tv_res4, tv_res5 = _trunk(tv, x, "relu")
        assert (f["res4"] - tv_res4).abs().max() < 1e-4
        assert (f["res5"] - tv_res5).abs().max() < 1e-4


def test_timm_conversion_gives_identical_logits_and_features() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    tm = timm.create_model("resnet50", pretrained=False)
    randomize_bn_statistics(tm)
    tm.eval()
    state = convert_state_dict(tm.state_dict(), "timm")
    check_state_dict(state, 50, allow_missing_fc=False)
    ours = ResNet(50).eval()
    _load_strict(ours, state)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x) - tm(x)).abs().max() < 1e-4
        ours.out_features = ("res4", "res5")  # same modules, feature forward
        f = ours.forward_features(x)
        tm_res4, tm_res5 = _trunk(tm, x, "act1")
        assert (f["res4"] - tm_res4).abs().max() < 1e-4
        assert (f["res5"] - tm_res5).abs().max() < 1e-4


def test_torchvision_file_loads_into_a_truncated_backbone_with_its_pixels(tmp_path: Path) -> None:
    """The detector's path: a raw torchvision .pth -> ResNet without res5 / fc, normalizing raw 0-255 RGB."""
    torch.manual_seed(1)
    tv = torchvision.models.resnet50()
    randomize_bn_statistics(tv)
    tv.eval()
    path = tmp_path / "resnet50-0676ba61.pth"
    torch.save(tv.state_dict(), path)
    model = ResNet(50, out_features=("res4",)).eval()
    info = load_pretrained(model, str(path))
    assert (info.source, info.depth, info.stride_in_1x1, info.pixel_spec) == ("torchvision", 50, False,
                                                                            TORCHVISION_PIXELS)
    assert info.location == str(path)
    raw = torch.randint(0, 256, (2, 3, 64, 64)).float()
    with torch.no_grad():
        want, _ = _trunk(tv, PixelNormalizer(TORCHVISION_PIXELS)(raw), "relu")
        assert (model(raw)["res4"] - want).abs().max() < 1e-4
    with pytest.raises(WeightsError, match="ResNet-101"):
        load_pretrained(ResNet(101, out_features=("res4",)), str(path))  # depth mismatch, keys named


def test_msra_pickle_loads_to_the_right_parameters(msra_r50: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, expect = msra_r50
    state, info = pretrained_state_dict(str(path), 50)
    assert info.stride_in_1x1 and info.pixel_spec == MSRA_PIXELS and info.source == "msra"
    assert set(expect) <= set(state)
    for k, v in expect.items():
        assert np.array_equal(state[k].numpy(), v), k
    model = ResNet(50, stride_in_1x1=True, norm="frozen_bn")
    load_pretrained(model, str(path))
    for k, v in model.state_dict().items():
        if k in expect:
            assert np.array_equal(v.numpy(), expect[k]), k
    # caffe BN is an affine map: FrozenBN must reproduce scale * x + bias (running_var = 1 - eps, mean 0).
    x = torch.randn(1, 64, 4, 4)
    scale = torch.from_numpy(expect["stem.bn1.weight"])[None, :, None, None]
    bias = torch.from_numpy(expect["stem.bn1.bias"])[None, :, None, None]
    assert torch.equal(model.stem.bn1(x), x * scale + bias)  # exact: the frozen scale is s itself
    assert model.pixel_norm is not None and model.pixel_norm.spec == MSRA_PIXELS
    with pytest.raises(WeightsError, match="stride_in_1x1"):
        load_pretrained(ResNet(50), str(path))


def test_malicious_pickle_is_refused_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps({"blobs": {"conv1_w": Evil()}}, protocol=2))
    with pytest.raises(WeightsError, match=r"refusing to unpickle global (posix|nt|os)\.system"):
        safe_load_pickle(path)
    with pytest.raises(WeightsError, match="refusing"):
        pretrained_state_dict(str(path), 50)
    assert not marker.exists()
    # A torch file with a code-running reducer is refused by weights_only loading, also without running it.
    evil_pth = tmp_path / "evil.pth"
    evil_pth.write_bytes(pickle.dumps({"conv1.weight": Evil()}, protocol=2))
    with pytest.raises(WeightsError, match="evil.pth"):
        pretrained_state_dict(str(evil_pth), 50)
    assert not marker.exists()


def test_strict_conversion_names_bad_keys() -> None:
    with torch.device("meta"):
        tv50, tv101 = torchvision.models.resnet50().state_dict(), torchvision.models.resnet101().state_dict()
    bad = dict(tv50, **{"extra.weight": torch.zeros(1)})
    with pytest.raises(WeightsError, match="extra.weight"):
        convert_state_dict(bad, "torchvision")
    with pytest.raises(WeightsError, match="res9_0_branch2a_q"):
        convert_state_dict({"conv1_w": np.zeros((64, 3, 7, 7), np.float32), "res9_0_branch2a_q": 0}, "msra")
    partial = {k: v for k, v in tv50.items() if k != "layer2.1.conv2.weight"}
    with pytest.raises(WeightsError, match=r"missing 1 keys.*res3\.1\.conv2\.weight"):
        convert_state_dict(partial, "torchvision", depth=50)
    blobs, _ = msra_blobs(50)
    del blobs["res4_5_branch2b_bn_b"]
    with pytest.raises(WeightsError, match=r"missing 1 keys.*res4\.5\.bn2\.bias"):
        convert_state_dict(blobs, "msra", depth=50)
    with pytest.raises(WeightsError, match=r"ResNet-50.*unexpected .*res4\.10"):
        check_state_dict(convert_state_dict(tv101, "torchvision"), 50)
    state = convert_state_dict(tv50, "torchvision")
    state["res2.0.conv1.weight"] = torch.zeros(1, 1, 1, 1)
    with pytest.raises(WeightsError, match=r"shape mismatch.*res2\.0\.conv1\.weight"):
        check_state_dict(state, 50)


def test_offline_named_weights_give_one_clear_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("RESDET_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr("urllib.request.urlretrieve", no_network)
    with pytest.raises(WeightsNotFoundError) as err:
        pretrained_state_dict("torchvision", 101)
    msg = str(err.value)
    dest = tmp_path / "hub" / "checkpoints" / "resnet101-63fe2227.pth"
    assert "https://download.pytorch.org/models/resnet101-63fe2227.pth" in msg and str(dest) in msg
    assert isinstance(err.value, FileNotFoundError)
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no urllib traceback chained
    assert not list((tmp_path / "hub" / "checkpoints").iterdir())  # no partial download left behind
    with pytest.raises(WeightsNotFoundError, match=r"R-152\.pkl.*MSRA-R-152\.pkl"):
        pretrained_state_dict("msra", 152)
    # Declared offline: the same message without trying the network at all.
    monkeypatch.setenv("RESDET_OFFLINE", "1")
    monkeypatch.setattr("urllib.request.urlretrieve", lambda *a, **k: pytest.fail("network used while offline"))
    with pytest.raises(WeightsNotFoundError, match="IMAGENET1K_V2.*resnet50-11ad3fa6.pth"):
        pretrained_state_dict("torchvision:IMAGENET1K_V2", 50)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(WeightsNotFoundError, match=r"timm/resnet50\.a1_in1k"):
        pretrained_state_dict("timm", 50)
    with pytest.raises(ValueError, match="IMAGENET1K_V9"):
        pretrained_state_dict("torchvision:IMAGENET1K_V9", 50)


def test_named_weights_are_found_in_the_torch_hub_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("RESDET_OFFLINE", "1")
    torch.manual_seed(0)
    tv = torchvision.models.resnet18()
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    torch.save(tv.state_dict(), cached)
    state, info = pretrained_state_dict("torchvision", 18)
    assert info.source == "torchvision" and info.location.endswith("resnet18-f37072fd.pth")
    assert torch.equal(state["res5.1.conv2.weight"], tv.layer4[1].conv2.weight)


def test_timm_named_weights_are_found_in_the_hf_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    pytest.importorskip("huggingface_hub")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    monkeypatch.setenv("RESDET_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    # The hub cache layout: models--<org>--<name>/refs/main holds the commit, snapshots/<commit>/<file>.
    repo_dir = tmp_path / "models--timm--resnet18.a1_in1k"
    commit = "0" * 40
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    torch.manual_seed(0)
    tm = timm.create_model("resnet18", pretrained=False)
    safetensors_torch.save_file(tm.state_dict(), str(snapshot / "model.safetensors"))
    state, info = pretrained_state_dict("timm:a1_in1k", 18)
    assert info.source == "timm" and info.pixel_spec == TORCHVISION_PIXELS and not info.stride_in_1x1
    assert info.location.endswith("model.safetensors")
    assert torch.equal(state["stem.conv1.weight"], tm.conv1.weight)


def test_native_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = resnet101(num_classes=10)
    path = tmp_path / "backbone_weights.pth"
    spec = TORCHVISION_PIXELS
    save_backbone_weights(model, path, depth=101, pixel_spec=spec, stride_in_1x1=False, extra_meta={"epoch": 3})
    payload = torch.load(path, map_location="cpu", weights_only=True)  # plain types only
    assert payload["format"] == "resbackbone" and payload["meta"]["epoch"] == 3
    assert not [p for p in tmp_path.iterdir() if p != path]  # atomic write leaves no temp file
    target = ResNet(101, out_features=("res4",))  # res5 and fc (10 classes) are not built: skipped
    info = load_pretrained(target, str(path))
    assert info.source == "resbackbone" and info.pixel_spec == spec and not info.stride_in_1x1
    for k, v in target.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    with pytest.raises(WeightsError, match="ResNet-101"):
        pretrained_state_dict(str(path), 50)
    # A 1000-way model gets everything but the 10-way fc.
    full = ResNet(101)
    fc_before = full.fc.weight.clone()
    load_pretrained(full, str(path))
    assert torch.equal(full.fc.weight, fc_before)
    assert torch.equal(full.res5[2].conv3.weight, model.res5[2].conv3.weight)
