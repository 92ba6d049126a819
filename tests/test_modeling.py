"""Model folders: safetensors only, validated config.json, clear messages."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from mura_cli.errors import ModelError
from mura_cli.model.factory import load_model


def _broken(tmp_path, tiny_model, **changes):
    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"architecture": "not_a_timm_model"}, "unknown architecture 'not_a_timm_model'"),
        ({"threshold": 1.5}, "'threshold' must be within [0, 1]"),
        ({"input_size": [3, 8, 8]}, "'input_size'"),
        ({"mean": [0.5]}, "'mean' and 'std' need 3 values"),
        ({"std": [0.2, 0.0, 0.2]}, "'std' values must be positive"),
        ({"resize": "crop"}, "'resize' must be one of"),
        ({"aggregation": "median"}, "'aggregation' must be one of"),
        ({"colour": "blue"}, "unknown keys ['colour']"),
        ({"architecture": "hf-hub:owner/name"}, "names a hub or URL model"),
        ({"architecture": "timm/resnet18.a1_in1k"}, "names a hub or URL model"),
        ({"input_size": 5}, "'input_size' must be a list of integers"),
        ({"input_size": [3, 64.0, 64]}, "'input_size' must be a list of integers"),
        ({"input_size": [3, 4096, 4096]}, "sides in 16..1024"),
        ({"threshold": "0.5"}, "'threshold' has the wrong type (str)"),
        ({"mean": None}, "'mean' must be a list of numbers"),
        ({"format_version": "1"}, "'format_version' has the wrong type (str)"),
        ({"temperature": 0}, "'temperature' must be a positive number"),
    ],
)
def test_bad_config_values_are_named(tmp_path, tiny_model, changes, message):
    with pytest.raises(ModelError) as info:
        load_model(_broken(tmp_path, tiny_model, **changes))
    assert message in str(info.value)


def test_pickle_weights_are_never_loaded(tmp_path, tiny_model):
    folder = _broken(tmp_path, tiny_model)
    (folder / "model.safetensors").unlink()
    (folder / "model.pt").write_bytes(b"pickle")
    with pytest.raises(ModelError, match="model.safetensors"):
        load_model(folder)


def test_corrupt_weights_and_config(tmp_path, tiny_model):
    folder = _broken(tmp_path, tiny_model)
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        load_model(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_model(folder)


def test_weights_hash_is_reported(tiny_model):
    import hashlib

    loaded = load_model(tiny_model)
    assert (
        loaded.weights_sha256 == hashlib.sha256((tiny_model / "model.safetensors").read_bytes()).hexdigest()
    )


def _rewrite_weights(folder, change):
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    change(state)
    save_file(state, str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda s: s.__setitem__("conv_stem.weight", s["conv_stem.weight"].view(torch.int32)),
            "is int32, expected float32",
        ),
        (lambda s: s["classifier.weight"].fill_(float("nan")), "classifier.weight holds NaN"),
        (lambda s: s["classifier.bias"].fill_(float("inf")), "classifier.bias holds NaN or infinite"),
    ],
)
def test_weights_of_another_dtype_or_not_finite_are_refused(tmp_path, tiny_model, change, message):
    folder = _rewrite_weights(_broken(tmp_path, tiny_model), change)
    with pytest.raises(ModelError, match=message.replace("(", r"\(")):
        load_model(folder)
