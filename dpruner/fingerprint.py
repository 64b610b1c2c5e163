"""A model directory's fingerprint: what scores files and pruned models record of the dense model
they were made from, so a step refuses the inputs of another model.

It hashes config.json, every safetensors header (tensor names, dtypes, shapes, offsets) and a few
evenly spaced 4 KiB reads of each tensor's bytes, not every weight: a 7B model's 14 GB would take
each step that checks it about as long again as loading the model, while these reads take
milliseconds. Another architecture, size or dtype changes a header; another checkpoint of the
same architecture (trained, fine-tuned, pruned, quantized) differs in every read. Only an edit of
a few weights between the reads goes unseen. Weights in `.bin` files (no header to sample by) are
hashed whole.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from dpruner.models import _model_dir

SAMPLES = 4
SAMPLE_BYTES = 4096


def model_fingerprint(model_dir: str | Path) -> str:
    """16 hex digits; equal for the same model directory (or a copy of it)."""
    folder = _model_dir(model_dir)
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for path in sorted(folder.glob("*.safetensors")):
        digest.update(path.name.encode())
        _sample_safetensors(path, digest)
    for path in sorted(folder.glob("*.bin")):
        digest.update(path.name.encode())
        with path.open("rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def _sample_safetensors(path: Path, digest) -> None:
    with path.open("rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        header = file.read(length)
        digest.update(header)
        tensors = {k: v for k, v in json.loads(header).items() if k != "__metadata__"}
        for name in sorted(tensors):
            begin, end = tensors[name]["data_offsets"]
            for offset, size in _sample_spans(begin, end):
                file.seek(8 + length + offset)
                digest.update(file.read(size))


def _sample_spans(begin: int, end: int) -> list[tuple[int, int]]:
    """(offset, size) reads of a tensor's bytes: all of a small one, else SAMPLES evenly spaced
    reads from its first to its last SAMPLE_BYTES."""
    size = end - begin
    if size <= SAMPLES * SAMPLE_BYTES:
        return [(begin, size)]
    step = (size - SAMPLE_BYTES) // (SAMPLES - 1)
    return [(begin + k * step, SAMPLE_BYTES) for k in range(SAMPLES)]
