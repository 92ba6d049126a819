"""Model folders: safetensors only, validated config.json, clear messages."""

from __future__ import annotations

import json
import shutil

import pytest

from mura_cli.errors import ModelError
from mura_cli.modeling import load_model


def _broken(tmp_path, tiny_model, **changes):
    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize("changes, message", [
    ({"architecture": "not_a_timm_model"}, "unknown architecture 'not_a_timm_model'"),
    ({"threshold": 1.5}, "'threshold' must be within [0, 1]"),
    ({"input_size": [3, 8, 8]}, "'input_size'"),
    ({"mean": [0.5]}, "'mean' and 'std' need 3 values"),
    ({"std": [0.2, 0.0, 0.2]}, "'std' values must be positive"),
    ({"resize": "crop"}, "'resize' must be one of"),
    ({"aggregation": "median"}, "'aggregation' must be one of"),
    ({"colour": "blue"}, "unknown keys ['colour']"),
])
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
    assert loaded.weights_sha256 == hashlib.sha256((tiny_model / "model.safetensors").read_bytes()).hexdigest()
