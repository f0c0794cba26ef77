"""Pretrained ImageNet weights: strict key conversion (torchvision / timm / MSRA caffe -> ours) and a safe loader.

Our ResNet's names: ``stem.conv1, stem.bn1, res2.0.conv1 .. res5.2.downsample.{0,1}, fc``. torchvision and timm
name the same tensors ``conv1, bn1, layer1..layer4, fc``; the MSRA caffe2 pickles of Detectron (R-50.pkl,
R-101.pkl, R-152.pkl) use ``conv1_w, res_conv1_bn_{s,b}, res2_0_branch2a_w, res2_0_branch1_bn_s, fc1000_w, ...``
and need BGR 0-255 mean-subtracted input and the stride in the first 1x1 of each bottleneck.

Safety: torch files are read with ``torch.load(weights_only=True)``; the caffe pickles go through a restricted
unpickler that admits only numpy arrays, dicts, lists, strings and numbers, so a malicious file is refused rather
than executed.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from .errors import WeightsError, WeightsNotFoundError
from .pixels import MSRA_PIXELS, TORCHVISION_PIXELS, PixelSpec
from .serialization import atomic_torch_save, safe_unpickle

Source = Literal["torchvision", "timm", "msra", "resbackbone"]
NATIVE_FORMAT = "resbackbone"
# FrozenBatchNorm2d's epsilon: caffe's BN is a bare affine map, so running_var = 1 - eps makes
# weight * rsqrt(running_var + eps) equal the caffe scale exactly.
FROZEN_BN_EPS = 1e-5
ENV_OFFLINE = "RESDET_OFFLINE"
MSRA_URL = "https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/MSRA/R-{depth}.pkl"
TIMM_DEFAULT_TAG = "a1_in1k"
# Seconds a download may stall before it counts as offline.
DOWNLOAD_TIMEOUT_S = 20


@dataclass(frozen=True)
class WeightsInfo:
    """What a weight set needs from the model that uses it."""

    source: str
    pixel_spec: PixelSpec
    stride_in_1x1: bool
    depth: int
    location: str


# ------------------------------------------------------------------------------------------------ conversion

_TV_KEY = re.compile(r"^(conv1|bn1|layer[1-4]|fc)\.(.+)$")


def _convert_torchvision(state: Mapping[str, Any]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    bad = []
    for k, v in state.items():
        m = _TV_KEY.match(k)
        if not m:
            bad.append(k)
            continue
        head, rest = m.groups()
        if head in ("conv1", "bn1"):
            name = f"stem.{head}.{rest}"
        elif head == "fc":
            name = f"fc.{rest}"
        else:
            name = f"res{int(head[5:]) + 1}.{rest}"
        out[name] = torch.as_tensor(v)
    if bad:
        raise WeightsError(f"unexpected keys for a torchvision/timm ResNet: {bad[:10]}")
    return out


_MSRA_BLOCK = re.compile(r"^res(\d)_(\d+)_branch(1|2a|2b|2c)_(w|bn_s|bn_b|b)$")
_MSRA_BRANCH = {"2a": ("conv1", "bn1"), "2b": ("conv2", "bn2"), "2c": ("conv3", "bn3"),
                "1": ("downsample.0", "downsample.1")}


def _convert_msra(state: Mapping[str, Any]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    bad = []

    def bn(prefix: str, kind: str, value: np.ndarray) -> None:
        # caffe2's "BN" in these models is an AffineChannel op: y = s * x + b per channel (statistics folded in at
        # export). FrozenBatchNorm2d computes y = weight * (x - mean) / sqrt(var + eps) + bias, so weight = s,
        # bias = b, mean = 0 and var = 1 - eps reproduce it; in float32 (1 - 1e-5) + 1e-5 rounds to exactly 1.0,
        # so the scale is s itself, not s times a rounding error.
        t = torch.as_tensor(np.asarray(value, dtype=np.float32))
        out[f"{prefix}.{'weight' if kind == 's' else 'bias'}"] = t
        out.setdefault(f"{prefix}.running_mean", torch.zeros_like(t))
        out.setdefault(f"{prefix}.running_var", torch.full_like(t, 1.0 - FROZEN_BN_EPS))

    for k, v in state.items():
        if k.endswith("_momentum") or k in ("model_iter", "lr", "__preserve_legacy__"):
            continue  # optimizer state / bookkeeping saved next to the weights
        if k == "conv1_w":
            out["stem.conv1.weight"] = torch.as_tensor(np.asarray(v, dtype=np.float32))
        elif k in ("res_conv1_bn_s", "res_conv1_bn_b"):
            bn("stem.bn1", k[-1], v)
        elif k == "fc1000_w":
            out["fc.weight"] = torch.as_tensor(np.asarray(v, dtype=np.float32))
        elif k == "fc1000_b":
            out["fc.bias"] = torch.as_tensor(np.asarray(v, dtype=np.float32))
        elif m := _MSRA_BLOCK.match(k):
            stage, block, branch, kind = m.groups()
            conv, norm = _MSRA_BRANCH[branch]
            prefix = f"res{stage}.{block}"
            if kind == "w":
                out[f"{prefix}.{conv}.weight"] = torch.as_tensor(np.asarray(v, dtype=np.float32))
            elif kind == "b":
                bad.append(k)  # caffe convs of these models have no bias; one here means another model
            else:
                bn(f"{prefix}.{norm}", kind[-1], v)
        else:
            bad.append(k)
    if bad:
        raise WeightsError(f"unexpected keys for an MSRA caffe ResNet: {bad[:10]}")
    return out


def convert_state_dict(state_dict: Mapping[str, Any], source: Source, *, depth: int | None = None) -> dict[str, Tensor]:
    """Map a checkpoint's keys to our ResNet's names (pure function; unknown keys raise :class:`WeightsError`).

    ``source``: "torchvision" or "timm" (same names), "msra" (Detectron caffe2 blobs), "resbackbone" (ours).
    With ``depth`` the result is also checked to be complete for ResNet-``depth`` (missing, unexpected and
    mis-shaped keys named, see :func:`check_state_dict`); the fc may be absent.
    """
    if source in ("torchvision", "timm"):
        out = _convert_torchvision({k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")})
    elif source == "msra":
        out = _convert_msra(state_dict)
    elif source == NATIVE_FORMAT:
        out = {k: torch.as_tensor(v) for k, v in state_dict.items()}
    else:
        raise WeightsError(f"unknown weights source {source!r}; expected torchvision, timm, msra or resbackbone")
    if depth is not None:
        check_state_dict(out, depth)
    return out


def reference_shapes(depth: int, *, stride_in_1x1: bool = False, num_classes: int = 1000) -> dict[str, tuple]:
    """Every state-dict key of our ResNet-``depth`` with its shape (``num_batches_tracked`` excluded)."""
    from .resnet import ResNet

    with torch.device("meta"):
        model = ResNet(depth, num_classes=num_classes, stride_in_1x1=stride_in_1x1)
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def check_state_dict(state: Mapping[str, Tensor], depth: int, *, allow_missing_fc: bool = True) -> None:
    """Strict check of converted weights against ResNet-``depth``: missing, unexpected and mis-shaped keys."""
    ref = reference_shapes(depth)
    fc_keys = {"fc.weight", "fc.bias"}
    missing = sorted(k for k in ref if k not in state and not (allow_missing_fc and k in fc_keys))
    unexpected = sorted(k for k in state if k not in ref and not k.endswith("num_batches_tracked"))
    shapes = sorted(
        f"{k}: {tuple(state[k].shape)} vs {ref[k]}"
        for k in state
        if k in ref and k not in fc_keys and tuple(state[k].shape) != ref[k]
    )
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} keys, e.g. {missing[:6]}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} keys, e.g. {unexpected[:6]}")
    if shapes:
        problems.append(f"shape mismatch: {shapes[:4]}")
    if problems:
        raise WeightsError(f"weights do not fit ResNet-{depth}: " + "; ".join(problems))


# --------------------------------------------------------------------------------------------- safe reading


def safe_load_pickle(path: str | Path) -> Any:
    """Unpickle a weights pickle (e.g. Detectron's R-50.pkl) admitting only numpy/builtin data."""
    try:
        return safe_unpickle(path)
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise WeightsError(f"{path}: {e or type(e).__name__}") from e


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state dict, meta) from the common checkpoint wrappers."""
    meta: dict[str, Any] = {}
    if isinstance(obj, Mapping) and obj.get("format") == NATIVE_FORMAT:
        return dict(obj["state_dict"]), dict(obj.get("meta", {}))
    for key in ("blobs", "state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            return dict(obj[key]), meta
    if isinstance(obj, Mapping):
        return dict(obj), meta
    raise WeightsError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")


def detect_source(state: Mapping[str, Any]) -> Source:
    keys = set(state)
    if "conv1_w" in keys or any(k.startswith("res2_0_") for k in keys):
        return "msra"
    if "stem.conv1.weight" in keys:
        return NATIVE_FORMAT
    if "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys):
        return "torchvision"
    raise WeightsError(f"unrecognized weights layout (first keys: {sorted(keys)[:5]})")


def read_weights_file(path: str | Path) -> tuple[dict[str, Any], Source, dict[str, Any]]:
    """``(raw state dict, detected source, meta)`` of a local file, never unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".pkl":
        obj = safe_load_pickle(path)
    elif path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj = load_file(str(path))
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise WeightsError(
                f"{path}: refusing to load: it holds Python objects other than tensors and plain data, and "
                f"unpickling them could run code (weights_only=True refused: {str(e).splitlines()[0][:200]})"
            ) from e
        except Exception as e:  # noqa: BLE001 - a truncated or foreign file: one line naming it
            raise WeightsError(f"{path}: not a readable weights file ({type(e).__name__}: {e})") from e
    state, meta = _unwrap(obj, path)
    return state, detect_source(state), meta


# ----------------------------------------------------------------------------------------- named weight sets


def _torchvision_url(depth: int, tag: str) -> str:
    import torchvision.models as tvm

    enum = getattr(tvm, f"ResNet{depth}_Weights")
    if not hasattr(enum, tag):
        raise WeightsError(f"torchvision has no {tag} weights for ResNet-{depth} (have {[w.name for w in enum]})")
    return getattr(enum, tag).url


def _cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _offline() -> bool:
    return os.environ.get(ENV_OFFLINE, "") not in ("", "0") or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")


def _fetch(url: str, dest: Path, what: str) -> Path:
    """``dest`` if cached, else download to it (atomically); offline -> :class:`WeightsNotFoundError`."""
    if dest.is_file():
        return dest
    hint = (f"{what} not found locally and could not be downloaded. Download {url} and put it at {dest} "
            f"(or pass the file's path as the weights)")
    if _offline():
        raise WeightsNotFoundError(hint + f" [{ENV_OFFLINE} is set]")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".part")
    os.close(fd)
    try:
        import urllib.request

        # A per-request timeout: the process-wide socket default stays what the caller set.
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(tmp, "wb") as f:  # noqa: S310
            shutil.copyfileobj(response, f)
        os.replace(tmp, dest)
    except Exception as e:  # noqa: BLE001 - any network failure becomes the one clear message
        raise WeightsNotFoundError(f"{hint} ({type(e).__name__}: {e})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def _timm_file(depth: int, tag: str) -> Path:
    repo = f"timm/resnet{depth}.{tag}"
    url = f"https://huggingface.co/{repo}/resolve/main/model.safetensors"
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        # huggingface_hub reads HF_HUB_CACHE once at import; read it at call time so a changed env is honoured.
        cache_dir = os.environ.get("HF_HUB_CACHE") or None
        for fname in ("model.safetensors", "pytorch_model.bin"):
            cached = try_to_load_from_cache(repo, fname, cache_dir=cache_dir)
            if isinstance(cached, str):
                return Path(cached)
        if not _offline():
            try:
                return Path(hf_hub_download(repo, "model.safetensors", cache_dir=cache_dir))
            except Exception as e:  # noqa: BLE001
                raise WeightsNotFoundError(
                    f"timm weights {repo} not cached and not downloadable ({type(e).__name__}). Download {url} "
                    f"into the Hugging Face cache (huggingface-cli download {repo}) or pass the file's path"
                ) from None
    except ImportError:
        pass
    raise WeightsNotFoundError(
        f"timm weights {repo} not found locally. Download {url} and pass its path as the weights, or run "
        f"`huggingface-cli download {repo}` on a machine with network access and copy the HF cache"
    )


def resolve_weights(weights: str, depth: int) -> tuple[Path, str, str]:
    """Named set or path -> ``(local file, source name, location description)``."""
    if weights in ("torchvision", "torchvision:IMAGENET1K_V1") or weights.startswith("torchvision:"):
        tag = weights.split(":", 1)[1] if ":" in weights else "IMAGENET1K_V1"
        url = _torchvision_url(depth, tag)
        return _fetch(url, _cache_dir() / Path(url).name, f"torchvision {tag} ResNet-{depth}"), "torchvision", url
    if weights == "timm" or weights.startswith("timm:"):
        tag = weights.split(":", 1)[1] if ":" in weights else TIMM_DEFAULT_TAG
        path = _timm_file(depth, tag)
        return path, "timm", str(path)
    if weights == "msra":
        if depth not in (50, 101, 152):
            raise WeightsError(f"MSRA caffe weights exist for ResNet-50/101/152, not ResNet-{depth}")
        url = MSRA_URL.format(depth=depth)
        return _fetch(url, _cache_dir() / f"MSRA-R-{depth}.pkl", f"MSRA caffe ResNet-{depth}"), "msra", url
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(
            f"weights {weights!r}: not a named set (torchvision, torchvision:<TAG>, timm, timm:<tag>, msra) and "
            f"no such file"
        )
    return path, "file", str(path)


def pretrained_state_dict(weights: str, depth: int) -> tuple[dict[str, Tensor], WeightsInfo]:
    """Converted, checked weights for ResNet-``depth`` (our key names) and what they need from the model."""
    path, named, location = resolve_weights(weights, depth)
    raw, source, meta = read_weights_file(path)
    state = convert_state_dict(raw, source)
    if named == "timm" and source == "torchvision":
        source = "timm"  # timm ResNets use torchvision's key names; report where the weights came from
    if source == NATIVE_FORMAT and meta.get("depth") not in (None, depth):
        raise WeightsError(f"{path}: weights of ResNet-{meta['depth']}, model is ResNet-{depth}")
    check_state_dict(state, depth)
    if source == "msra":
        spec, s1x1 = MSRA_PIXELS, True
    elif source == NATIVE_FORMAT and "pixel_mean" in meta:
        spec = PixelSpec(tuple(meta["pixel_mean"]), tuple(meta["pixel_std"]), meta.get("channel_order", "RGB"))
        s1x1 = bool(meta.get("stride_in_1x1", False))
    else:
        spec, s1x1 = TORCHVISION_PIXELS, False
    return state, WeightsInfo(source, spec, s1x1, depth, location)


def load_pretrained(model: nn.Module, weights: str) -> WeightsInfo:
    """Load weights into one of our ResNets (later stages may be unbuilt; the fc is skipped when it differs).

    Every parameter and buffer of the model must be covered; the model's ``stride_in_1x1`` must be what the
    weights need; the model then normalizes inputs with the weights' pixel spec.
    """
    state, info = pretrained_state_dict(weights, int(model.depth))
    load_converted(model, state, info, what=weights)
    return info


def load_converted(model: nn.Module, state: Mapping[str, Tensor], info: WeightsInfo, *, what: str = "weights") -> None:
    """Load already converted weights (our key names, :func:`pretrained_state_dict`) into one of our ResNets.

    The checks of :func:`load_pretrained`: ``stride_in_1x1`` must match, every parameter and buffer of the built
    stages must be covered, the fc is loaded only when its shape fits. ``what`` names the weights in errors.
    """
    if bool(getattr(model, "stride_in_1x1", False)) != info.stride_in_1x1:
        raise WeightsError(
            f"{what} needs stride_in_1x1={info.stride_in_1x1} but the model was built with "
            f"stride_in_1x1={getattr(model, 'stride_in_1x1', False)}"
        )
    own = model.state_dict()
    fc_fits = all(k in own and tuple(own[k].shape) == tuple(state[k].shape) for k in ("fc.weight", "fc.bias")
                  if k in state)
    wanted = {k: v for k, v in state.items() if k in own and (fc_fits or not k.startswith("fc."))}
    missing = sorted(k for k in own if k not in wanted and not k.endswith("num_batches_tracked")
                     and not (k.startswith("fc.") and not fc_fits))
    if missing:
        raise WeightsError(f"{what} does not cover the model: missing {missing[:8]}")
    model.load_state_dict(wanted, strict=False)
    if hasattr(model, "set_pixel_spec"):
        model.set_pixel_spec(info.pixel_spec)


def save_backbone_weights(
    model: nn.Module,
    path: str | Path,
    *,
    depth: int,
    pixel_spec: PixelSpec,
    stride_in_1x1: bool = False,
    extra_meta: Mapping[str, Any] | None = None,
) -> None:
    """Write our native weights file (plain tensors + plain meta; ``torch.load(weights_only=True)`` reads it)."""
    meta = {
        "depth": depth,
        "pixel_mean": list(pixel_spec.mean),
        "pixel_std": list(pixel_spec.std),
        "channel_order": pixel_spec.channel_order,
        "stride_in_1x1": stride_in_1x1,
        **dict(extra_meta or {}),
    }
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    atomic_torch_save({"format": NATIVE_FORMAT, "state_dict": state, "meta": meta}, path)
