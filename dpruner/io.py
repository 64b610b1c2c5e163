"""Safe outputs: atomic writes, output files and folders that never replace a user's files or a
step's inputs, and the clean-up of temporaries that a killed step left behind.

dpruner knows what it wrote without touching the files' bytes (committed tables stay the same):
- a results folder (the workflow's `results:`, a `publish` target) holds RESULTS_MARKER, and
  every file under it counts as dpruner's;
- an output folder (`prune`, `prepare-model`) holds OUTPUT_MARKER listing every entry written
  into it; anything else found there is the user's;
- any other folder dpruner writes a file into gets FILES_LEDGER, one line per file written with
  its size and modification time: a file replaced or edited since is the user's.

Temporaries are siblings of their target named `.<target name>.<pid>.<random>` (a `.tmp` suffix
for files): a later write of the same target removes those whose process is gone, and never a
temporary of a step that is still running.
"""

from __future__ import annotations

import errno
import fcntl
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
# In a folder that dpruner created for a run's results (or a publish target): everything under it
# is dpruner's; the preflight lets `results:` name only a new, empty or marked folder.
RESULTS_MARKER = ".dpruner-results"
# Next to files dpruner wrote outside results and output folders (module docstring).
FILES_LEDGER = ".dpruner-files"


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
        # The last line of defence: commands check their outputs before any work.
        if (path.exists() or path.is_symlink()) and not written_by_dpruner(path):
            raise OutputError(f"{path} exists and dpruner did not write it; it is left as it is")
        os.replace(tmp_path, path)
        _record_written(path)
    except Exception as error:
        if disk_full(error, path.parent):
            raise OutputError(f"{path}: no space left on device") from error
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    """`text` into `path` through atomic_output (never over a file dpruner did not write)."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(data: dict, path: str | Path) -> Path:
    return write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def is_dpruner_output(folder: Path) -> bool:
    return (folder / OUTPUT_MARKER).is_file()


def _marker_files(folder: Path) -> set[str] | None:
    """The entries an output folder's marker lists; None for a marker written before markers
    listed them (such a folder is replaced whole, as it was then)."""
    try:
        recorded = json.loads((folder / OUTPUT_MARKER).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return None
    return set(recorded) if isinstance(recorded, list) else None


def _entries(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name != OUTPUT_MARKER)


def _fingerprint(path: Path) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def in_results_folder(path: str | Path) -> bool:
    return any((folder / RESULTS_MARKER).is_file() for folder in Path(path).resolve().parents)


def written_by_dpruner(path: str | Path) -> bool:
    """Whether the file at `path` is one dpruner wrote (module docstring), not the user's."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    if in_results_folder(path):
        return True
    if is_dpruner_output(path.parent):
        files = _marker_files(path.parent)
        return files is None or path.name in files
    ledger = path.parent / FILES_LEDGER
    if not ledger.is_file():
        return False
    last = None
    for line in ledger.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("name") == path.name:
            last = entry
    return last is not None and {k: last.get(k) for k in ("size", "mtime_ns")} == _fingerprint(path)


def _record_written(path: Path) -> None:
    """Note that dpruner wrote `path` where written_by_dpruner will look for it."""
    if in_results_folder(path):
        return
    folder = path.parent
    if is_dpruner_output(folder):
        files = _marker_files(folder)
        if files is not None and path.name not in files:
            marker = json.loads((folder / OUTPUT_MARKER).read_text())
            _write_marker(folder, {**marker, "files": sorted({*files, path.name})})
        return
    line = json.dumps({"name": path.name, **_fingerprint(path)}) + "\n"
    # Appends of concurrent steps writing into one folder must not interleave.
    with open(folder / FILES_LEDGER, "a", encoding="utf-8") as ledger:
        fcntl.flock(ledger, fcntl.LOCK_EX)
        ledger.write(line)


def _write_marker(folder: Path, content: dict) -> None:
    tmp = folder / f".{OUTPUT_MARKER}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(content) + "\n")
    os.replace(tmp, folder / OUTPUT_MARKER)


def _input_clash(out: Path, inputs: tuple[str | Path, ...]) -> Path | None:
    """The input that `out` is, or lies inside, or holds (resolved: links and `..` count)."""
    resolved = out.resolve()
    for source in inputs:
        source = Path(source).resolve()
        if resolved == source or source in resolved.parents or resolved in source.parents:
            return source
    return None


def check_output_file(
    path: str | Path,
    overwrite: bool = False,
    inputs: tuple[str | Path, ...] = (),
    option: str = "--out",
) -> Path:
    """Refuse a file output that would replace one of the step's inputs, lie inside an input
    folder (a model's), or replace a file dpruner did not write; an earlier dpruner output is
    replaced only with `overwrite`. Checked before any work; atomic_output checks once more."""
    path = Path(path)
    clash = _input_clash(path, tuple(i for i in inputs if i))
    if clash is not None:
        raise OutputError(f"{option} {path} would replace the input {clash} or write into it")
    if path.is_dir() and not path.is_symlink():
        raise OutputError(f"{option} {path} is a folder; expected a file path")
    if path.exists() or path.is_symlink():
        if not written_by_dpruner(path):
            raise OutputError(
                f"{option} {path} exists and dpruner did not write it; name a new file"
            )
        if not overwrite:
            raise OutputError(
                f"{option} {path} holds an earlier dpruner output; pass --overwrite to replace it"
            )
    return path


def is_results_folder(folder: str | Path) -> bool:
    """A folder dpruner created for results; also a run folder from before RESULTS_MARKER
    existed, known by its dense model (an output folder)."""
    folder = Path(folder)
    return (folder / RESULTS_MARKER).is_file() or any(
        folder.glob(f"models/*/dense/{OUTPUT_MARKER}")
    )


def results_folder_problem(folder: str | Path) -> str | None:
    """Why `folder` may not take a run's results, or None: it must be new, empty or a results
    folder (is_results_folder), so no user file in it is replaced."""
    folder = Path(folder)
    if folder.is_symlink() and not folder.exists():
        return "is a broken link"
    if not folder.exists():
        return None
    if not folder.is_dir():
        return "exists and is not a folder"
    if any(folder.iterdir()) and not is_results_folder(folder):
        return (
            f"is a non-empty folder that dpruner did not create (it has no {RESULTS_MARKER} "
            "file); name a new or empty folder"
        )
    return None


def mark_results_folder(folder: str | Path) -> Path:
    """Create `folder` if needed and mark it as a results folder (checked first by
    results_folder_problem)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / RESULTS_MARKER
    if not marker.is_file():
        marker.write_text("A dpruner results folder: dpruner may replace the files under it.\n")
    return folder


def check_output_folder(
    out_dir: str | Path, overwrite: bool = False, inputs: tuple[str | Path, ...] = ()
) -> Path:
    """Refuse an output folder whose replacement would delete something dpruner did not write.

    Never allowed: the current folder, one of its parents, an input, a folder holding one or inside
    one. An existing non-empty folder is replaced only if an earlier dpruner step wrote it,
    `overwrite` is set and it holds nothing but what its marker lists (a user's file added since
    is refused, not deleted); an empty folder is simply used.
    """
    out_dir = Path(out_dir)
    resolved = out_dir.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise OutputError(
            f"--out {out_dir} is the current folder or one of its parents; "
            "name a new folder for the output"
        )
    clash = _input_clash(out_dir, inputs)
    if clash is not None:
        raise OutputError(f"--out {out_dir} would replace the input {clash} or write into it")
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
        recorded = _marker_files(out_dir)
        unknown = [] if recorded is None else [e for e in _entries(out_dir) if e not in recorded]
        if unknown:
            shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" * bool(unknown[5:]))
            raise OutputError(
                f"--out {out_dir} holds files dpruner did not write ({shown}); "
                "--overwrite would delete them: move them out or name another folder"
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
        _write_marker(tmp, {"pid": os.getpid(), "files": _entries(tmp)})
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
