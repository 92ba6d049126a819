"""With --pdf: each batch's thumbnails and heatmap overlays, made beside the model pass.

On an accelerator they are made by a few threads (PIL and numpy release the GIL), so that the GPU is
not kept waiting for about 2 ms of CPU work per image; on the CPU the cores already run the model, and
they are made in line. Either way a batch's rows are handed back, in order, only once its thumbnails
are stored: images.csv never lists an image whose thumbnail a resumed run would miss."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from mura_cli.report.thumbstore import ThumbStore

ACCELERATOR_THREADS = 2


def thumbnail_threads(device_type: str) -> int:
    return 0 if device_type == "cpu" else ACCELERATOR_THREADS


class Thumbnailer:
    def __init__(self, store: ThumbStore | None, threads: int):
        """``store`` None: no thumbnails (no --pdf); rows pass straight through."""
        self.store = store
        self.pool = (
            ThreadPoolExecutor(threads, thread_name_prefix="thumbnails") if store and threads else None
        )
        self.pending: deque[tuple[Future, list[dict]]] = deque()
        self.limit = 2 * threads

    def _make(self, items: list[tuple[str, Callable]]) -> None:
        for rel_path, make in items:
            if (thumbs := make()) is not None:
                self.store.put(rel_path, thumbs)

    def add(self, rows: list[dict], items: list[tuple[str, Callable]]) -> Iterator[list[dict]]:
        """Queue a batch: its rows and (path, thumbnail maker) items; yields the rows of every batch
        whose thumbnails are stored by now, oldest first."""
        if self.pool is None:  # in line, or nothing to make without --pdf
            if self.store is not None:
                self._make(items)
            yield rows
            return
        self.pending.append((self.pool.submit(self._make, items), rows))
        while self.pending and (self.pending[0][0].done() or len(self.pending) > self.limit):
            yield self._pop()

    def _pop(self) -> list[dict]:
        future, rows = self.pending.popleft()
        future.result()  # re-raises a failure to make or store a thumbnail
        return rows

    def drain(self) -> Iterator[list[dict]]:
        while self.pending:
            yield self._pop()

    def close(self) -> None:
        """Stop: what is still queued is dropped (its rows were never written, so a resume redoes it)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
