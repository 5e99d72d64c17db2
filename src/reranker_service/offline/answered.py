"""What an earlier run of the same batch already wrote: the lines a resumed run skips."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from reranker_service.offline.batch_lines import LineKey, line_key

_CHUNK_BYTES = 64 * 1024


class OutputFileError(Exception):
    """The output file is not one a batch run wrote; the message says what to do."""


def _trim_partial_last_line(path: Path) -> int:
    """Cut a last line a killed run left half-written; the bytes cut."""
    with path.open("rb+") as output:
        size = output.seek(0, os.SEEK_END)
        end = size
        while end > 0:
            start = max(0, end - _CHUNK_BYTES)
            output.seek(start)
            chunk = output.read(end - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        if end < size:
            output.truncate(end)
        return size - end


def answered_keys(path: Path) -> Counter[LineKey]:
    """How many times each line key (``custom_id``, else line number) was answered in
    ``path``, after cutting a half-written last line. Counted, not merely noted: a file may
    repeat a ``custom_id``, and each occurrence is answered once."""
    answered: Counter[LineKey] = Counter()
    if not path.exists():
        return answered
    _trim_partial_last_line(path)
    with path.open("rb") as output:
        for number, raw in enumerate(output, start=1):
            try:
                written = json.loads(raw)
                custom_id, line = written["custom_id"], written["line"]
            except (ValueError, TypeError, KeyError):
                raise OutputFileError(
                    f"{path}:{number} is not a line a batch run writes: give another output "
                    "file, or --overwrite to start over"
                ) from None
            answered[line_key(custom_id, int(line))] += 1
    return answered
