"""Safe outputs: atomic writes, output folders that never replace a user's files, and the clean-up
of temporaries that a killed step left behind.

Temporaries are siblings of their target named `.<target name>.<pid>.<random>` (a `.tmp` suffix
for files): a later write of the same target removes those whose process is gone, and never a
temporary of a step that is still running.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dpruner.errors import DprunerError
from dpruner.lifecycle import ensure_parents_alive, process_alive

_UMASK = os.umask(0)
os.umask(_UMASK)
# Written into every output folder dpruner creates: a folder holding it may be replaced by a later
# dpruner step given --overwrite; a folder without it never is.
OUTPUT_MARKER = ".dpruner-output"


class OutputError(DprunerError):
    """An output path would replace or delete something dpruner did not write."""


def disk_full(error: BaseException, folder: Path) -> bool:
    """Whether a write into `folder` failed because its file system is full: ENOSPC, raised as
    an OSError or quoted by a library's own error (safetensors), or an I/O error (torch.save's
    RuntimeError does not say why) with no space left there. A DprunerError already says what
    went wrong."""
    if isinstance(error, DprunerError):
        return False
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
            return True
        if os.strerror(errno.ENOSPC) in str(cause):
            return True
        cause = cause.__cause__ or cause.__context__
    if not isinstance(error, (OSError, RuntimeError)):
        return False
    try:
        return os.statvfs(folder).f_bavail == 0
    except OSError:
        return False


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove siblings `.<name>.<pid>.*` of `path` whose process no longer runs; return them.

    A folder is removed only if it holds OUTPUT_MARKER (dpruner wrote it), a file only if it ends
    in `.tmp`: names a user could have chosen are left alone.
    """
    removed = []
    if not path.parent.is_dir():
        return removed
    for candidate in path.parent.glob(f".{path.name}.*"):
        parts = candidate.name[len(path.name) + 2 :].split(".", 1)
        if len(parts) != 2 or not parts[0].isdigit() or process_alive(int(parts[0])):
            continue
        if candidate.is_dir() and not candidate.is_symlink():
            if (candidate / OUTPUT_MARKER).is_file():
                shutil.rmtree(candidate, ignore_errors=True)
                removed.append(candidate)
        elif candidate.is_file() and candidate.name.endswith(".tmp"):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds
    and the step's parent processes still run (a step whose workflow was killed writes nothing)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a folder; expected a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    # Same folder as the target, so the final os.replace is a rename on one file system.
    fd, tmp_name = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp_name)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
        ensure_parents_alive()
        os.replace(tmp_path, path)
    except Exception as error:
        if disk_full(error, path.parent):
            raise OutputError(f"{path}: no space left on device") from error
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def write_json(data: dict, path: str | Path) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return Path(path)


def is_dpruner_output(folder: Path) -> bool:
    return (folder / OUTPUT_MARKER).is_file()


def check_output_folder(
    out_dir: str | Path, overwrite: bool = False, inputs: tuple[str | Path, ...] = ()
) -> Path:
    """Refuse an output folder whose replacement would delete something dpruner did not write.

    Never allowed: the current folder, one of its parents, an input or a folder holding one. An
    existing non-empty folder is replaced only if an earlier dpruner step wrote it and `overwrite`
    is set; an empty folder is simply used.
    """
    out_dir = Path(out_dir)
    resolved = out_dir.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise OutputError(
            f"--out {out_dir} is the current folder or one of its parents; "
            "name a new folder for the output"
        )
    for source in inputs:
        source = Path(source).resolve()
        if resolved == source or resolved in source.parents:
            raise OutputError(f"--out {out_dir} would replace the input {source}")
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise OutputError(f"--out {out_dir} exists and is not a folder; name a new folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not is_dpruner_output(out_dir):
            raise OutputError(
                f"--out {out_dir} is a non-empty folder that dpruner did not write; "
                "name a new or empty folder"
            )
        if not overwrite:
            raise OutputError(
                f"--out {out_dir} holds an earlier dpruner output; pass --overwrite to replace it"
            )
    return out_dir


@contextmanager
def output_folder(
    out_dir: str | Path, overwrite: bool = False, inputs: tuple[str | Path, ...] = ()
) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; it replaces `out_dir` only if the block succeeds
    (checked first by check_output_folder), so no half-written folder ever has the final name."""
    out_dir = check_output_folder(out_dir, overwrite, inputs)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(out_dir), dir=out_dir.parent))
    try:
        (tmp / OUTPUT_MARKER).write_text(json.dumps({"pid": os.getpid()}) + "\n")
        yield tmp
        tmp.chmod(0o777 & ~_UMASK)
        ensure_parents_alive()
        if out_dir.is_dir():
            # Checked above: empty, or an earlier dpruner output that --overwrite may replace.
            old = Path(tempfile.mkdtemp(prefix=_temporary_prefix(out_dir), dir=out_dir.parent))
            old.rmdir()
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old)
        else:
            tmp.rename(out_dir)
    except BaseException as error:
        full = isinstance(error, Exception) and disk_full(error, out_dir.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise OutputError(f"{out_dir}: no space left on device") from error
        raise
