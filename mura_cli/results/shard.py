"""Deterministic shares of an archive: a study's shard comes from a stable hash of its id, so a study
never straddles shards and every machine agrees without talking to the others."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from mura_cli.errors import InputError


@dataclass(frozen=True)
class Shard:
    index: int  # 0-based
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def holds(self, study_id: str) -> bool:
        return shard_of(study_id, self.count) == self.index


def parse_shard(text: str) -> Shard:
    """'I/N' with 0 <= I < N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise InputError(f"--shard {text}: expected I/N with 0 <= I < N, e.g. 0/4 ... 3/4")
    return Shard(int(match.group(1)), int(match.group(2)))


def shard_of(study_id: str, count: int) -> int:
    digest = hashlib.sha256(study_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def walk_order_key(rel_path: str) -> tuple:
    """Sort key giving the order discovery walks a tree in: in each folder its files (by name), then its
    sub-folders (by name). Merged shards use it to restore a single run's row order."""
    parts = rel_path.split("/")
    return tuple((1, part) for part in parts[:-1]) + ((0, parts[-1]),)
