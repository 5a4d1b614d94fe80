"""The progress bar: chunks stored, chunks/s and ETA, with files done as a postfix.

The total number of chunks is only known once every file is read, and files
are read while earlier ones are being embedded, so the total starts as an
estimate from file sizes (refined with the chunks-per-byte rate seen so far)
and becomes exact when the last file has been chunked.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm


class Progress:
    """Progress of one run; silent when disabled (messages still go to ``stream``)."""

    def __init__(
        self,
        *,
        enabled: bool,
        total_files: int,
        total_bytes: int,
        chunk_chars: int,
        stream: TextIO | None = None,
    ) -> None:
        self._stream = stream or sys.stderr
        self._files_total = total_files
        self._files_done = 0
        self._bytes_unread = total_bytes
        self._bytes_read = 0
        self._chunks_known = 0
        # Chunks seldom fill their budget: they end at a boundary in its second half.
        self._first_guess = 1.0 / max(1.0, 0.75 * chunk_chars)
        self._bar: tqdm[Any] | None = None
        if enabled:
            self._bar = tqdm(
                total=self._estimate(),
                unit="chunk",
                desc="ingest",
                file=self._stream,
                dynamic_ncols=True,
                smoothing=0.1,
                leave=True,
            )
            self._show_files()

    def _estimate(self) -> int:
        rate = self._chunks_known / self._bytes_read if self._bytes_read else self._first_guess
        return self._chunks_known + round(self._bytes_unread * rate)

    def _show_files(self) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(f"files {self._files_done}/{self._files_total}", False)

    def _retotal(self) -> None:
        if self._bar is not None:
            self._bar.total = max(self._estimate(), self._bar.n)
            self._bar.refresh()

    def file_chunked(self, size_bytes: int, chunks: int) -> None:
        """A file was read and cut into ``chunks`` chunks (to be stored)."""
        self._bytes_unread = max(0, self._bytes_unread - size_bytes)
        self._bytes_read += size_bytes
        self._chunks_known += chunks
        self._retotal()

    def file_passed(self, size_bytes: int) -> None:
        """A file needs no chunks stored (unchanged, unreadable or empty)."""
        self._bytes_unread = max(0, self._bytes_unread - size_bytes)
        self._files_done += 1
        self._show_files()
        self._retotal()

    def file_done(self) -> None:
        self._files_done += 1
        self._show_files()

    def chunks_done(self, count: int) -> None:
        if self._bar is not None:
            self._bar.update(count)

    def message(self, text: str) -> None:
        """A line above the bar (or plain, without one)."""
        if self._bar is not None:
            self._bar.write(text, file=self._stream)
        else:
            print(text, file=self._stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
