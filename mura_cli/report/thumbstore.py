"""Report thumbnails kept on disk while a run goes on (memory stays flat, and a resumed run still has
the thumbnails of the images it finished before)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from mura_cli.files import atomic_write_bytes
from mura_cli.report.images import Thumbnails

FOLDER = ".thumbnails"


class ThumbStore:
    def __init__(self, out_dir: Path):
        self.folder = out_dir / FOLDER

    def _stem(self, rel_path: str) -> Path:
        return self.folder / hashlib.sha1(rel_path.encode("utf-8")).hexdigest()

    def put(self, rel_path: str, thumbs: Thumbnails) -> None:
        stem = self._stem(rel_path)
        atomic_write_bytes(stem.with_suffix(".jpg"), thumbs.image)
        if thumbs.overlay is not None:
            atomic_write_bytes(stem.with_suffix(".heat.jpg"), thumbs.overlay)

    def has(self, rel_path: str) -> bool:
        return self._stem(rel_path).with_suffix(".jpg").is_file()

    def get(self, rel_path: str) -> Thumbnails | None:
        stem = self._stem(rel_path)
        image, heat = stem.with_suffix(".jpg"), stem.with_suffix(".heat.jpg")
        if not image.is_file():
            return None
        return Thumbnails(image.read_bytes(), heat.read_bytes() if heat.is_file() else None)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
