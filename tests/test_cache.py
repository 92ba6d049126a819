"""The decoded-image cache of training: same canvases as decoding, built once, rebuilt on change."""

from __future__ import annotations

import os

import numpy as np
from safetensors.torch import load_file
from test_train_evaluate import tiny_train_config

from mura_cli.config import ModelConfig
from mura_cli.inference.batches import ImageDataset
from mura_cli.inputs.datasets import read_dataset
from mura_cli.inputs.discover import records_from_table
from mura_cli.training.cache import DecodedCache, default_cache_dir
from mura_cli.training.train import train

from conftest import learnable_mura, radiograph, save_png8


def test_cached_items_equal_decoded_items(mura_folder, tmp_path):
    (mura_folder / "XR_HAND" / "patient00003" / "study1_positive" / "bad.png").write_text("no image")
    records = records_from_table(read_dataset(mura_folder))
    cfg = ModelConfig(architecture="resnet10t", input_size=(1, 48, 40), mean=(0.5,), std=(0.5,))
    cache = DecodedCache(records, cfg, tmp_path / "c")
    assert not cache.ready
    cache.build(workers=0)
    cached, decoded = cache.open(), ImageDataset(records, cfg)
    assert len(cached) == len(decoded) == len(records)
    for index in range(len(records)):
        a, b = cached[index], decoded[index]
        assert a["error"] == b["error"]
        assert np.array_equal(a["image"].numpy(), b["image"].numpy())
        assert a["geometry"].tolist() == b["geometry"].tolist()
    assert any(cached[i]["error"] for i in range(len(records)))


def test_cache_key_follows_data_and_resolution(tmp_path):
    path = save_png8(radiograph(1), tmp_path / "XR_HAND" / "patient1" / "study1_positive" / "a.png")
    records = records_from_table(read_dataset(tmp_path))
    cfg = ModelConfig(architecture="resnet10t", input_size=(1, 64, 64), mean=(0.5,), std=(0.5,))
    first = DecodedCache(records, cfg, tmp_path / "c")
    first.build(workers=0)
    assert DecodedCache(records, cfg, tmp_path / "c").ready
    assert not DecodedCache(records, cfg.replace(input_size=(1, 96, 96)), tmp_path / "c").ready
    assert not DecodedCache(records, cfg.replace(resize="stretch"), tmp_path / "c").ready
    save_png8(radiograph(2), path)
    os.utime(path, ns=(1, 1))  # new content and time: another cache
    assert not DecodedCache(records, cfg, tmp_path / "c").ready


def test_training_with_the_cache_equals_training_without(tmp_path):
    data = learnable_mura(tmp_path / "data", patients=12, seed=7)
    with_cache = train(tiny_train_config(data, tmp_path / "a", epochs=2))
    without = train(tiny_train_config(data, tmp_path / "b", epochs=2, cache=False))
    a = load_file(str(with_cache.out_dir / "model.safetensors"))
    b = load_file(str(without.out_dir / "model.safetensors"))
    for key in a:
        np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), atol=1e-6, err_msg=key)
    built = {p.name: p.stat().st_mtime_ns for p in default_cache_dir().glob("*.u8")}
    train(tiny_train_config(data, tmp_path / "c", epochs=1))  # same data and size: the cache is reused
    after = {p.name: p.stat().st_mtime_ns for p in default_cache_dir().glob("*.u8")}
    assert built and all(after[name] == stamp for name, stamp in built.items())
