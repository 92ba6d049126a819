"""Real radiographs to try mura-cli on, from the pydicom-data package (MIT licence), offline."""

from __future__ import annotations

import shutil
from pathlib import Path

from mura_cli.errors import MuraError

# An extremity CR (MONOCHROME1), uncompressed and as lossless JPEG 2000: one study, two encodings of
# the same image, which score the same.
SAMPLE_FILES = {"RG3_UNCR.dcm": "extremity_cr_uncompressed.dcm", "RG3_J2KR.dcm": "extremity_cr_jpeg2000.dcm"}


def write_samples(folder: str | Path) -> list[Path]:
    try:
        from pydicom.data import get_testdata_file
    except ImportError:  # pragma: no cover - pydicom is a dependency
        raise MuraError("pydicom is not installed") from None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for source_name, target_name in SAMPLE_FILES.items():
        source = get_testdata_file(source_name, download=False)
        if not source:
            raise MuraError(f"sample {source_name} not found: install it with `pip install pydicom-data`")
        written.append(Path(shutil.copyfile(source, folder / target_name)))
    return written
