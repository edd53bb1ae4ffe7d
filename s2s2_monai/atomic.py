"""Writing outputs so that a reader or a kill never sees half of one: temporary name, then rename.

- :func:`write_bytes` / :func:`write_text` / :func:`write_json` / :func:`torch_save`: one file;
- :func:`write_folder`: a folder filled by a callback in a temporary sibling, then renamed;
- :func:`stage_dir` + :func:`publish`: a staging folder beside the output, whose finished files are moved
  into place, a marker file last;
- :func:`remove_stale_temp`: temporary siblings left by a killed run (``kill -9``, power loss) are removed by
  the next one; :func:`require_writable`: a folder that cannot be written is refused before any work;
- :func:`json_safe`: NaN / inf -> ``None`` and numpy scalars -> Python, so every JSON written is standard.

Temporary names carry the writer's process id, so a later run can tell a leftover (its writer is gone) from
a folder another live process is filling: ``.tmp-NAME.PID`` / ``.old-NAME.PID`` (:func:`tmp_name`,
:func:`write_folder`) and ``.NAME.TAGPID@HOST-XXXXXXXX`` (:func:`stage_dir`; ``TAG`` is ``tmp`` or
``robustness``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

__all__ = [
    "write_bytes",
    "write_text",
    "write_json",
    "torch_save",
    "write_folder",
    "stage_dir",
    "publish",
    "remove_stale_temp",
    "require_writable",
    "json_safe",
    "tmp_name",
]

logger = logging.getLogger(__name__)


def tmp_name(path: Path) -> Path:
    """The temporary sibling ``.tmp-NAME.PID`` of ``path`` (hidden, per process; ``.tmp-*`` finds leftovers)."""
    return path.with_name(f".tmp-{path.name}.{os.getpid()}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_via_tmp(
    path: str | os.PathLike,
    write: Callable[[Path], None],
    fsync: bool = False,
    before_replace: Callable[[], None] | None = None,
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    if fsync:
        _fsync_dir(path.parent)
    return path


def write_bytes(
    path: str | os.PathLike, data: bytes, fsync: bool = False, before_replace: Callable[[], None] | None = None
) -> Path:
    """Write ``data`` to ``path`` atomically (``fsync``: durable across a power loss too; ``before_replace``: a test hook)."""
    return _replace_via_tmp(path, lambda tmp: tmp.write_bytes(data), fsync, before_replace)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return _replace_via_tmp(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, obj, indent: int = 2) -> Path:
    """Write ``json_safe(obj)`` as standard JSON (no NaN) to ``path`` atomically."""
    return write_text(path, json.dumps(json_safe(obj), indent=indent, allow_nan=False) + "\n")


def torch_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically."""
    import torch

    return _replace_via_tmp(path, lambda tmp: torch.save(obj, tmp))


def write_folder(final: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """Fill a temporary sibling folder with ``fill(tmp)``, then rename it to ``final`` (replacing an old one)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp(final)
    tmp = tmp_name(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        fill(tmp)
        if final.exists():
            old = final.with_name(f".old-{final.name}.{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def publish(stage: Path, out_dir: str | os.PathLike, names: Sequence[str]) -> None:
    """Move ``names`` (files or folders) from ``stage`` into ``out_dir``, replacing old ones, in order.

    Put the file that marks a complete output (e.g. ``report.html``) last; other files in
    ``out_dir`` are left alone. Stale staging folders of ``out_dir`` (not ``stage``) are removed first.
    """
    out_dir = Path(out_dir)
    remove_stale_temp(out_dir, keep=(stage,))
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = out_dir / name
        if target.is_dir() and (stage / name).is_dir():
            shutil.rmtree(target)
        os.replace(stage / name, target)


# ---------------------------------------------------------------------------- staging and leftovers
#: This machine in temporary names (a process id means something on its own machine only).
_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
#: Tags of staging folders: evaluation reports (``tmp``) and ``s2s2 robustness`` (``robustness``).
STAGE_TAGS = ("tmp", "robustness")
_MKDTEMP = r"[a-z0-9_]{8}"  # tempfile.mkdtemp's random part
_SLACK_S = 2.0  # /proc start times are whole seconds + clock ticks


def stage_dir(final: str | os.PathLike, tag: str = "tmp") -> Path:
    """A new, empty staging folder ``.NAME.TAGPID@HOST-XXXXXXXX`` beside ``final`` (same file system, so
    :func:`publish` renames); stale staging folders of ``final`` are removed first.

    Args:
        final: the output folder the staged files will go to.
        tag: one of :data:`STAGE_TAGS`.
    """
    if tag not in STAGE_TAGS:
        raise ValueError(f"unknown staging tag {tag!r} (known: {', '.join(STAGE_TAGS)})")
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp(final)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.{tag}{os.getpid()}@{_HOST}-", dir=final.parent))


def _proc_start(pid: int) -> float | None:
    """When process ``pid`` started (epoch seconds), ``None`` when unknown; ``-1.0`` for a zombie (it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
        with open("/proc/stat") as fh:
            btime = next(float(line.split()[1]) for line in fh if line.startswith("btime "))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": field 3 (state) is index 0
    if fields[0] in ("Z", "X"):
        return -1.0
    return btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time in clock ticks


def _writer_gone(pid: int, mtime: float) -> bool:
    """Whether the process that wrote something last modified at ``mtime`` has ended.

    Gone: no process ``pid``, a zombie, or a process ``pid`` that started after the thing was last
    written (the id was reused, as in a new container).
    """
    if pid == os.getpid():
        started = _proc_start(pid)
        return started is not None and mtime < started - _SLACK_S
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError):
        pass  # exists, owned by someone else
    started = _proc_start(pid)
    return started is not None and (started < 0 or mtime < started - _SLACK_S)


def _stale_patterns(name: str) -> list[re.Pattern]:
    """Full-name patterns of this project's temporary siblings of an output called ``name``, first match wins."""
    n, tags = re.escape(name), "|".join(STAGE_TAGS)
    return [
        re.compile(rf"\.{n}\.(?:{tags})(?P<pid>\d+)@(?P<host>[A-Za-z0-9]*)-{_MKDTEMP}"),  # stage_dir
        re.compile(rf"\.(?:tmp|old)-{n}\.(?P<pid>\d+)"),  # tmp_name, write_folder
        re.compile(rf"\.{n}\.tmp(?P<pid>\d+)"),  # .NAME.tmpPID writers
        re.compile(rf"\.{n}\.(?:{tags}){_MKDTEMP}"),  # staging folders of earlier versions (no pid)
    ]


def remove_stale_temp(final: str | os.PathLike, keep: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Remove the temporary siblings of ``final`` that a killed earlier run left; return what was removed.

    Only names this project's writers give (:func:`tmp_name`, :func:`write_folder`, :func:`stage_dir`,
    ``.NAME.tmpPID``, and the pid-less ``.NAME.tmpXXXXXXXX`` / ``.NAME.robustnessXXXXXXXX`` staging folders
    of earlier versions) match, each in full; anything else beside ``final`` is never touched. A match is
    stale when its writer has ended (no such process, or the id now belongs to a process started after the
    leftover was last written), for names of this machine only; a pid-less one when it was last written
    before this process started. A symbolic link is removed as a link, never followed.

    Args:
        final: the output file or folder whose leftovers to look for.
        keep: paths never removed, nor the folders holding them (e.g. the staging folder being published).
    """
    final = Path(final)
    parent = final.parent
    try:
        siblings = list(os.scandir(parent))
    except OSError:  # no parent yet, or unreadable: nothing of ours there
        return []
    keep_real = {os.path.realpath(k) for k in keep}
    patterns = _stale_patterns(final.name)
    me = _proc_start(os.getpid())
    removed = []
    for entry in siblings:
        m = next((m for m in (p.fullmatch(entry.name) for p in patterns) if m), None)
        if m is None:
            continue
        path = parent / entry.name
        real = os.path.realpath(path)
        if any(k == real or k.startswith(real + os.sep) for k in keep_real):
            continue  # a kept path or a folder holding one
        try:
            mtime = entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        if "pid" in m.groupdict():
            if m.groupdict().get("host") not in (None, _HOST):
                continue  # another machine's process: cannot tell whether it still runs
            stale = _writer_gone(int(m.group("pid")), mtime)
        else:
            stale = me is not None and mtime < me - _SLACK_S
        if not stale:
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue  # removed by another run at the same time
        except OSError as exc:
            logger.warning("could not remove the leftover %s (%s)", path, exc)
            continue
        logger.info("removed %s, left by an earlier run that was stopped", path)
        removed.append(path)
    return removed


def require_writable(path: str | os.PathLike, option: str = "--out") -> Path:
    """Refuse early an output folder that cannot be made or written; leaves nothing behind.

    Probes the folder itself, or its nearest existing parent when it does not exist yet, by creating and
    removing an empty hidden folder: a read-only file system, missing permission or a path through a file
    fail here, before any work is done (a full disk shows when the files are written).

    Args:
        path: the output folder.
        option: the option that named it, for the message.

    Raises:
        S2S2InputError: naming ``path``.
    """
    from s2s2_monai.errors import S2S2InputError, file_system_errors

    path = Path(path)
    probe_in = path
    while not os.path.lexists(probe_in) and probe_in.parent != probe_in:
        probe_in = probe_in.parent
    if os.path.lexists(probe_in) and not probe_in.is_dir():
        if probe_in == path:
            raise S2S2InputError(path, "is a file, not a folder", f"give a folder for {option}")
        raise S2S2InputError(
            path, f"{probe_in} is a file, not a folder", f"choose a path whose parent folders are folders for {option}"
        )
    with file_system_errors(path):
        os.rmdir(tempfile.mkdtemp(prefix=f".{path.name}.probe", dir=probe_in))
    return path


def json_safe(obj):
    """A copy of ``obj`` that ``json.dumps(..., allow_nan=False)`` accepts: NaN/inf -> None, numpy -> Python."""
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # numpy / torch scalar
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, str) else k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "tolist"):  # arrays
        return json_safe(obj.tolist())
    return obj
