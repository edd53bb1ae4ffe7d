"""Checkpoints on disk: find them by step/epoch number, read the newest readable one, read weights.

One place for what every resumable job needs (bundle training, cooperative training, ControlNet
fine-tuning, MONAI Label retraining) and every consumer of trained weights (inference, robustness,
export):

- :func:`numbered_checkpoints`: files or folders named ``...epoch=N.pt`` / ``step-N``, newest first;
- :func:`newest_readable`: reads candidates newest first; one that cannot be read (truncated by a
  full disk, half a copy, a bad sector) is moved aside to ``NAME.corrupt`` (never deleted), reported
  in one log line, and the next one is tried;
- :func:`read_state_dict`: a network state dict from ``model.pt``, an interval checkpoint (its
  ``network`` entry) or a MONAI bundle checkpoint (``model``), always with ``weights_only=True``;
- :func:`nonfinite_tensors` / :func:`require_finite`: weights are checked finite wherever they are
  read (a NaN/inf tensor is refused, and a training checkpoint holding one is treated as damaged).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from s2s2_monai.errors import S2S2InputError, exit_or_raise

__all__ = [
    "load_weights",
    "weights_digest",
    "CORRUPT_SUFFIX",
    "NonFiniteError",
    "nonfinite_tensors",
    "require_finite",
    "numbered_checkpoints",
    "newest_readable",
    "move_aside",
    "torch_load",
    "read_state_dict",
    "record_path",
    "model_record",
    "file_sha256",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Suffix given to a checkpoint that could not be read.
CORRUPT_SUFFIX = ".corrupt"

#: ``checkpoint_epoch=12.pt`` (MONAI / ignite interval checkpoints) and ``step-00000500`` (ControlNet).
EPOCH_FILE = re.compile(r"epoch=(\d+)\.pt$")
STEP_DIR = re.compile(r"^step-(\d+)$")


def numbered_checkpoints(folder: str | os.PathLike, pattern: re.Pattern = EPOCH_FILE) -> list[Path]:
    """Entries of ``folder`` whose name matches ``pattern`` (group 1 = the number), newest first.

    Moved-aside (``.corrupt``) and temporary entries never match the default patterns.
    """
    d = Path(folder)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := pattern.search(p.name))]
    return [p for _, p in sorted(found, key=lambda t: t[0], reverse=True)]


def move_aside(path: Path) -> Path:
    """Rename ``path`` to ``path.corrupt`` (``.corrupt-1``, ... when taken) and return the new name."""
    target = path.with_name(path.name + CORRUPT_SUFFIX)
    i = 0
    while target.exists():
        i += 1
        target = path.with_name(f"{path.name}{CORRUPT_SUFFIX}-{i}")
    os.replace(path, target)
    return target


def newest_readable(
    candidates: Iterable[Path], read: Callable[[Path], T], what: str = "checkpoint"
) -> tuple[Path, T] | None:
    """``(path, read(path))`` for the first candidate that ``read`` accepts, or ``None``.

    Every candidate that raises is moved aside (:func:`move_aside`) and logged once:
    ``corrupt checkpoint X (reason), skipped (moved to X.corrupt); resuming from Y`` (or ``from scratch``).
    """
    skipped: list[tuple[Path, Path, str]] = []
    result = None
    for path in candidates:
        try:
            result = (path, read(path))
            break
        except Exception as exc:  # a damaged file fails in many ways: OSError, RuntimeError, pickle, zip, EOF
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            skipped.append((path, move_aside(path), f"{type(exc).__name__}: {reason}"))
    target = f"resuming from {result[0]}" if result else "no readable one left, starting from scratch"
    for path, aside, reason in skipped:
        logger.warning("corrupt %s %s (%s), skipped (moved to %s); %s", what, path, reason, aside.name, target)
    return result


def torch_load(path: str | os.PathLike, map_location=None):
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never code."""
    import torch

    return torch.load(path, map_location=map_location, weights_only=True)


class NonFiniteError(ValueError):
    """Tensors of a checkpoint hold NaN/inf (the training that wrote it diverged, or the file is damaged)."""


def nonfinite_tensors(obj, prefix: str = "") -> list[str]:
    """Names (``a/b/c``) of the floating-point tensors inside ``obj`` (nested dicts, lists, tuples) holding NaN/inf."""
    import torch

    if isinstance(obj, torch.Tensor):
        if (obj.is_floating_point() or obj.is_complex()) and not bool(torch.isfinite(obj).all()):
            return [prefix or "tensor"]
        return []
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return []
    bad: list[str] = []
    for k, v in items:
        bad += nonfinite_tensors(v, f"{prefix}/{k}" if prefix else str(k))
    return bad


def require_finite(obj, what: str = "") -> None:
    """Raise :class:`NonFiniteError` when a tensor inside ``obj`` holds NaN/inf (``what`` prefixes the names)."""
    bad = nonfinite_tensors(obj, what)
    if bad:
        raise NonFiniteError(
            f"holds NaN/inf values in {len(bad)} tensor(s) (first: {bad[0]}); the training that wrote it diverged "
            "or the file is damaged"
        )


def read_state_dict(path: str | os.PathLike, map_location="cpu") -> dict:
    """A network state dict from a weights file or a checkpoint that holds one.

    Accepts a plain state dict (``models/model.pt``), an interval checkpoint (``{"network": ...}``)
    and MONAI bundle files (``{"model": ...}``).

    Raises:
        S2S2InputError: missing or unreadable file, or no state dict inside.
    """
    path = Path(path)
    if not path.is_file():
        raise S2S2InputError(
            path,
            "no weights file here",
            "train first (the training bundle writes models/model.pt under output_dir) or give the right path",
        )
    try:
        obj = torch_load(path, map_location)
    except Exception as exc:
        raise S2S2InputError(
            path,
            f"not a readable PyTorch checkpoint ({type(exc).__name__}; truncated, damaged or not weights-only)",
            "give a model.pt / checkpoint written by this project's training",
        ) from None
    if isinstance(obj, dict) and not any(_is_tensor(v) for v in obj.values()):
        for key in ("network", "model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if isinstance(obj, dict) and obj and all(_is_tensor(v) for v in obj.values()):
        try:
            require_finite(obj)
        except NonFiniteError as exc:
            raise S2S2InputError(
                path, str(exc), "use an earlier checkpoint (checkpoints/checkpoint_epoch=N.pt) or retrain"
            ) from None
        return obj
    raise S2S2InputError(
        path,
        "holds no network state dict (expected tensors, or a 'network' / 'model' entry)",
        "give a model.pt / checkpoint written by this project's training",
    )


def _is_tensor(v) -> bool:
    import torch

    return isinstance(v, torch.Tensor)


def load_weights(network, path: str | os.PathLike, device=None, exit_on_error: bool = False):
    """The one weight loader: ``path``'s state dict into ``network`` (DDP unwrapped), strictly.

    Reads with ``weights_only=True`` (:func:`read_state_dict`), refuses non-finite tensors, and
    loads with ``strict=True`` (a missing or extra key is an error, never ignored).

    Raises:
        S2S2InputError: no such file, unreadable, NaN/inf weights, or weights that do not fit the network.
    """
    from s2s2_monai.networks.wrappers import unwrap_network

    path = Path(path)
    try:
        state = read_state_dict(path, map_location=device or "cpu")
        try:
            unwrap_network(network).load_state_dict(state, strict=True)
        except (RuntimeError, ValueError, KeyError) as exc:
            first = " ".join(line.strip() for line in str(exc).strip().splitlines()[:2])[:300]
            raise S2S2InputError(
                path,
                f"the weights do not fit the configured network ({first})",
                "give the config files and --set overrides the model was trained with (e.g. --config train.json "
                "--config cooperative.json)",
            ) from None
    except S2S2InputError as exc:
        exit_or_raise(exc, exit_on_error)
    return network


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_DIGESTS: dict[str, tuple[tuple, str]] = {}


def weights_digest(path: str | os.PathLike) -> str:
    """Which weights a file holds, by content: its SHA-256 (``""`` when absent), memoised per stat.

    Weights copied back with another modification time keep their digest; other weights written with
    the same time do not. The file is re-hashed only when its size, inode, modification or
    status-change time changes (a write cannot set the status-change time back).
    """
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return ""
    key = (st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
    cached = _DIGESTS.get(path)
    if cached is None or cached[0] != key:
        cached = _DIGESTS[path] = (key, file_sha256(path))
    return cached[1]


def record_path(model_path: str | os.PathLike) -> Path:
    """``model.json`` beside ``model.pt``: which weights the file holds (written by the bundle's ``ModelSaver``)."""
    return Path(model_path).with_suffix(".json")


def model_record(model_path: str | os.PathLike) -> dict:
    """The record of ``model_path``: ``{"selection", "epoch", "max_epochs", "metric_name", "metric", "sha256"}``.

    ``{}`` when there is none (weights from elsewhere) or when it does not describe these bytes (its
    ``sha256`` differs: the weights were replaced, or a kill fell between the two writes), with a warning.
    """
    import json

    path = record_path(model_path)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict):
        return {}
    if record.get("sha256") and Path(model_path).is_file() and file_sha256(model_path) != record["sha256"]:
        logger.warning("%s does not describe %s (checksum differs): ignored", path, model_path)
        return {}
    return record
