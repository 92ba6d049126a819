"""Names and choices, as pure data (no torch, no I/O)."""

from __future__ import annotations

from enum import IntEnum

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AGGREGATIONS = ("mean", "max")
RESIZE_POLICIES = ("letterbox", "stretch")
TTA_MODES = ("none", "flip")  # test-time augmentation: flip = the image and its left-right mirror

RASTER_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg"})
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})

DEFAULT_OUT_DIR = "mura-results"
DEFAULT_MODEL_NAME = "fracatlas-efficientnet-lite0"
# environment variable naming an extra folder of user models (searched before the shipped ones)
MODELS_DIR_ENV = "MURA_CLI_MODELS"

RESEARCH_NOTICE = "Research use only, not a medical device."


class ExitCode(IntEnum):
    OK = 0  # every image was scored
    FATAL = 1  # nothing could be scored, or a fatal error
    USAGE = 2  # bad command line
    PARTIAL = 3  # some images failed, the rest were scored and written
