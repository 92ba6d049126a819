"""Device and precision resolution, and the autocast context for a precision."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from mura_cli.errors import MuraError

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    """Where and how the model runs, with a line saying why."""

    device: torch.device
    precision: str  # fp32 | bf16 | fp16
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.precision]

    def autocast(self):
        """Autocast context for this device and precision (a no-op for fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def resolve_device(name: str = "auto") -> tuple[torch.device, str]:
    """``auto`` prefers CUDA, then Apple MPS, then the CPU. Returns the device and why it was chosen."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device()), "auto: CUDA is available"
        if _mps_available():
            return torch.device("mps"), "auto: Apple MPS is available"
        return torch.device("cpu"), "auto: no CUDA or MPS device found, using the CPU"
    if name == "cpu":
        return torch.device("cpu"), "asked for"
    if re.fullmatch(r"cuda(:\d+)?", name):
        if not torch.cuda.is_available():
            raise MuraError(f"--device {name}: CUDA is not available on this machine (try --device auto)")
        device = torch.device(name)
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise MuraError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
        return torch.device("cuda", index), "asked for"
    if name == "mps":
        if not _mps_available():
            raise MuraError("--device mps: Apple MPS is not available on this machine (try --device auto)")
        return torch.device("mps"), "asked for"
    raise MuraError(f"--device {name}: expected auto, cpu, cuda, cuda:N or mps")


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags = set(re.findall(r"\b(avx512_bf16|amx_bf16)\b", text))
    return bool(flags)


def reduced_candidate(device: torch.device) -> tuple[str, str]:
    """The reduced precision that is fast on this device (fp32 where none is), with why."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "CUDA device supports bf16"
        return "fp16", "CUDA device without bf16"
    if device.type == "mps":
        return "fp16", "Apple MPS"
    if cpu_has_native_bf16():
        return "bf16", "CPU with native bf16"
    return "fp32", "CPU without native bf16"


def resolve_precision(
    precision: str, device: torch.device, checks: dict | None = None, training: bool = False
) -> tuple[str, str]:
    """An explicit precision is used as asked. ``auto`` picks the device's fast reduced precision only
    where it has been verified for this model on this kind of device: ``checks`` is the model's
    ``precision_checks`` (see precision_check.py); otherwise fp32, saying why. For ``training``,
    ``auto`` is the reduced precision on CUDA and MPS and fp32 on the CPU, where bf16 training was slower
    and gave another curve (benchmarks/TRAIN_PRECISION.md)."""
    precision = (precision or "auto").lower()
    if precision not in ("auto", *_DTYPES):
        raise MuraError(f"--precision {precision}: expected auto, fp32, bf16 or fp16")
    if precision != "auto":
        if device.type == "cpu" and precision == "fp16":
            return "fp16", "asked for (fp16 on the CPU is slow on most processors)"
        return precision, "asked for"
    candidate, why = reduced_candidate(device)
    if candidate == "fp32":
        return "fp32", f"auto: {why}"
    if training:
        if device.type == "cpu":
            return "fp32", (
                "auto: fp32 for training on the CPU (bf16 was slower here and changed the curve; "
                "benchmarks/TRAIN_PRECISION.md)"
            )
        return candidate, f"auto: {why}"
    record = ((checks or {}).get(device.type) or {}).get(candidate)
    if record is None:
        return "fp32", (
            f"auto: {candidate} not verified for this model on {device.type} "
            f"(`mura-cli check-precision --record` measures it)"
        )
    if not record.get("passed"):
        return "fp32", (
            f"auto: {candidate} changes this model's answers on {device.type} beyond rounding "
            f"(p99 {record.get('p99', float('nan')):.3f}, max {record.get('max', float('nan')):.3f})"
        )
    return candidate, f"auto: {why}, verified for this model (p99 {record.get('p99', 0.0):.4f})"


def create_runtime(
    device: str = "auto", precision: str = "auto", checks: dict | None = None, training: bool = False
) -> Runtime:
    dev, why_dev = resolve_device(device)
    prec, why_prec = resolve_precision(precision, dev, checks, training)
    return Runtime(
        device=dev, precision=prec, reason=f"device {dev} ({why_dev}); precision {prec} ({why_prec})"
    )
