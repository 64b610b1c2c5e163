"""The text of a data file, read as UTF-8: a file in another encoding (or a binary file) is one
error naming the file, the line and the byte instead of a decoder traceback."""

from __future__ import annotations

from pathlib import Path

from dpruner.errors import DataError


def read_utf8(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[error.start]:02x} at offset "
            f"{error.start}); save the file as UTF-8"
        ) from None
