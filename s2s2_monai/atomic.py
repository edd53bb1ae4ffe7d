"""Writing outputs so that a reader or a kill never sees half of one: temporary name, then rename.

- :func:`write_bytes` / :func:`write_text` / :func:`write_json` / :func:`torch_save`: one file;
- :func:`write_folder`: a folder filled by a callback in a temporary sibling, then renamed;
- :func:`publish`: move finished files of a staging folder into place, a marker file last;
- :func:`json_safe`: NaN / inf -> ``None`` and numpy scalars -> Python, so every JSON written is standard.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["write_bytes", "write_text", "write_json", "torch_save", "write_folder", "publish", "json_safe", "tmp_name"]


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
    ``out_dir`` are left alone.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = out_dir / name
        if target.is_dir() and (stage / name).is_dir():
            shutil.rmtree(target)
        os.replace(stage / name, target)


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
