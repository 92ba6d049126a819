"""Where the backbone runs: eager PyTorch, or OpenVINO on the CPU (measured 2-2.5x faster there).

Only the backbone (image -> feature map) moves to an engine; the head, the calibration and the CAM
stay in torch fp32 on the engine's feature map, so probabilities and heatmaps still come from one
pass and mean what they mean with torch. An OpenVINO export is made once per model weights, input
size and OpenVINO version, kept in a cache folder (written whole or not at all), and checked against
torch on a probe batch when it is made: probabilities within 1e-4 and the same heatmap peak cells,
else torch is used and the reason is said in one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mura_cli import choices, environment

PROBE_TOLERANCE = 1e-4  # largest probability difference to torch an export may show on the probe batch
EXPORT_FORMAT = 1  # bump when what is exported changes


@dataclass(frozen=True)
class EngineInfo:
    """What run.json records about the engine."""

    name: str  # 'torch' or 'openvino'
    version: str
    reason: str
    export_sha256: str = ""  # of the exported model files, '' for torch
    probe_max_difference: float | None = None  # probabilities, engine vs torch, when the export was made

    def to_dict(self) -> dict:
        return asdict(self)


def openvino_version() -> str | None:
    try:
        import openvino
    except ImportError:
        return None
    return openvino.__version__


def default_cache_dir() -> Path:
    """$MURA_CLI_ENGINE_CACHE, default ~/.cache/mura-cli/engines (mura_cli.environment)."""
    return environment.current().engine_cache_dir


def choose_engine(
    requested: str, device: torch.device, precision: str, weights_sha256: str
) -> tuple[str, str]:
    """(engine, why): auto takes OpenVINO for fp32 on the CPU when it is installed, torch elsewhere."""
    if requested not in choices.ENGINES:
        raise ValueError(f"engine must be one of {list(choices.ENGINES)}")
    if requested == "torch":
        return "torch", "torch (asked for)"
    unsupported = (
        "OpenVINO runs here on the CPU only"
        if device.type != "cpu"
        else f"OpenVINO is used for fp32 only, not {precision}"
        if precision != "fp32"
        else "OpenVINO is not installed"
        if openvino_version() is None
        else "a model without a weights file cannot be exported"
        if not weights_sha256
        else ""
    )
    if unsupported:
        if requested == "openvino":
            raise ValueError(f"--engine openvino: {unsupported}")
        return "torch", f"torch ({unsupported})"
    why = "asked for" if requested == "openvino" else "auto: fp32 on the CPU"
    return "openvino", f"OpenVINO {openvino_version().split('-')[0]} ({why})"


class TorchBackbone:
    """The model's own forward_features under the runtime's autocast."""

    def __init__(self, model: torch.nn.Module, runtime):
        self.model, self.runtime = model, runtime

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), self.runtime.autocast():
            return self.model.forward_features(x)


_CORE = None


def _core():
    """One OpenVINO Core for the process, kept alive as long as any model compiled with it."""
    global _CORE
    if _CORE is None:
        import openvino as ov

        _CORE = ov.Core()
    return _CORE


class OpenVinoBackbone:
    """A compiled OpenVINO model of forward_features (fp32, latency hint), fed numpy, giving torch."""

    def __init__(self, xml: Path):
        core = _core()
        # f32 explicitly: on CPUs with AMX or AVX512-BF16, OpenVINO's default is bf16 (issue 16)
        self.compiled = core.compile_model(
            core.read_model(str(xml)),
            "CPU",
            {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"},
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().float().numpy())
        return torch.from_numpy(self.compiled(array)[0])


class _Features(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def export_key(weights_sha256: str, config, version: str, checks_peaks: bool) -> str:
    """What an export depends on: the weights and everything else that shapes the graph (architecture,
    input size, output stride, timm's version), the engine's version, and whether its probe check
    compared heatmap peaks (an entry checked without them is not reused for a run with heatmaps)."""
    import timm

    text = json.dumps(
        [
            EXPORT_FORMAT,
            weights_sha256,
            config.architecture,
            list(config.input_size),
            config.output_stride,
            timm.__version__,
            "openvino",
            version,
            "fp32",
            checks_peaks,
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _files_sha256(folder: Path) -> str:
    digest = hashlib.sha256()
    for name in ("model.xml", "model.bin"):
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()


def cached_export(folder: Path) -> dict | None:
    """The cache entry's record when it is whole and unchanged, else None (rebuilt by the caller)."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        return meta if meta.get("export_sha256") == _files_sha256(folder) else None
    except (OSError, ValueError, TypeError):
        return None


def export_openvino(model: torch.nn.Module, input_size, target: Path, meta: dict, verify) -> dict:
    """Convert forward_features to OpenVINO IR in a temporary folder beside ``target``, check it with
    ``verify(backbone) -> (largest probability difference, same peaks)`` and rename it into place, so
    that a concurrent run sees either no entry or a whole, checked one."""
    import openvino as ov

    channels, height, width = input_size
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with warnings.catch_warnings():  # tracer remarks about the model's Python control flow
            warnings.simplefilter("ignore")
            converted = ov.convert_model(
                _Features(model).eval(),
                example_input=torch.zeros(1, channels, height, width),
                input=[(-1, channels, height, width)],
            )
        ov.save_model(converted, str(temp / "model.xml"), compress_to_fp16=False)
        difference, same_peaks = verify(OpenVinoBackbone(temp / "model.xml"))
        meta = {
            **meta,
            "export_sha256": _files_sha256(temp),
            "probe_max_difference": difference,
            "probe_same_peaks": same_peaks,
            "probe_passed": difference <= PROBE_TOLERANCE and same_peaks,
        }
        (temp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        if target.exists():
            whole = cached_export(target)
            if whole is not None:  # another run put a whole entry there meanwhile: use that one
                shutil.rmtree(temp, ignore_errors=True)
                return whole
            shutil.rmtree(target, ignore_errors=True)  # a broken entry: replaced
        try:
            os.rename(temp, target)
        except OSError:  # another run renamed its entry into place first
            shutil.rmtree(temp, ignore_errors=True)
            return cached_export(target) or meta
        return meta
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
