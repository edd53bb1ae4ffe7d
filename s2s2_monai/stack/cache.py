"""The stack cache: one compact, checksummed, content-addressed file per mask.

Layout of a cache folder::

    DIR/manifest.json          generator name + settings, n, seed, QC bounds, and the slice index
                               [[case_id, slice_index, key], ...] the build was asked for
    DIR/entries/ab/<key>.stk   one entry per distinct key (identical masks share one entry)
    DIR/contact_sheet.png      a few masks with their members, for a person to look at

An entry file is ``MAGIC (8 B) | header length (uint32 LE) | sha256(header) (32 B) | header JSON |
member chunks``. Each member is the unit-space image quantised to **uint8, one channel, at the
slice's own grid**, stored as the smallest of: raw bytes, zstd, or zstd of the row-wise byte
delta (so <= 1 byte per pixel, usually less; zstd decodes several times faster than zlib). The
header lists every chunk's offset, length, codec, the crc32 of the stored chunk (checked on every
read) and the sha256 of the *decoded pixels* (checked by ``verify``, and the basis of digests);
reading one member reads the small header and that member's chunk only. Files are written to a temporary name, fsynced and ``os.replace``-d.

Keys hash the content that determines the images: mask bytes + shape, prompt, generator name and
settings, n, global seed and the QC settings. A change of any of them gives a new key, so stale
images are never reused. The cache digest (:meth:`StackCache.info`) is the sha256 of the sorted
per-entry digests, so it does not depend on the order (or the rank) in which entries were built.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from s2s2_monai.atomic import write_bytes
from s2s2_monai.errors import S2S2InputError, file_system_errors

__all__ = [
    "StackCache",
    "CorruptEntryError",
    "mask_digest",
    "entry_key",
    "slice_seed",
    "to_uint8",
    "from_uint8",
    "canonical_json",
]

MAGIC = b"S2STACK1"
FORMAT = "s2s2-stack/1"
_PREFIX = struct.Struct("<I")
_ENTRY_SUFFIX = ".stk"
_TMP_PREFIX = ".tmp-"


class CorruptEntryError(Exception):
    """A cache entry failed its checksum or could not be parsed."""


def canonical_json(obj) -> str:
    """JSON with sorted keys and no whitespace: the form that is hashed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _sha256(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def mask_digest(mask: np.ndarray) -> str:
    """sha256 of a 2D mask's uint8 bytes and its shape."""
    m = np.ascontiguousarray(np.asarray(mask), dtype=np.uint8)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2D, got shape {m.shape}")
    return _sha256(f"{m.shape[0]}x{m.shape[1]}:".encode() + m.tobytes())


def slice_seed(global_seed: int, mask: np.ndarray | str, prompt: str) -> int:
    """Seed of one mask, derived from the global seed and the mask content (not its position).

    The same mask gets the same seed whatever the build order, rank, or generator settings,
    so two generator settings can be compared on the same noise.
    """
    digest = mask if isinstance(mask, str) else mask_digest(mask)
    h = _sha256(canonical_json({"seed": int(global_seed), "mask": digest, "prompt": prompt}))
    return int(h[:16], 16) & (2**63 - 1)


def entry_key(mask: np.ndarray | str, prompt: str, spec: dict) -> str:
    """Content key of one entry.

    Args:
        mask: the (H, W) uint8 mask or its :func:`mask_digest`.
        prompt: the generation prompt.
        spec: the build spec: ``generator`` (name), ``settings``, ``n``, ``seed``, ``qc``
            (QC settings or ``None``); other keys are ignored.
    """
    digest = mask if isinstance(mask, str) else mask_digest(mask)
    material = {
        "mask": digest,
        "prompt": prompt,
        "generator": spec["generator"],
        "settings": spec["settings"],
        "n": int(spec["n"]),
        "seed": int(spec["seed"]),
        "qc": spec.get("qc"),
    }
    return _sha256(canonical_json(material))


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Unit-space [0, 1] floats -> uint8 (round to nearest, clipped)."""
    x = np.asarray(images, dtype=np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError("stack images hold NaN or infinite values")
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def from_uint8(images: np.ndarray) -> np.ndarray:
    """uint8 -> unit-space float32 in [0, 1]."""
    return np.asarray(images, dtype=np.float32) / 255.0


_ZSTD_LEVEL = 3
_DELTA_GAIN = 0.9  # a delta codec must be 10% smaller than plain zstd to pay for its decode cost


def _encode(member: np.ndarray) -> tuple[str, bytes]:
    """Smallest of raw / zstd / zstd(row delta) for one uint8 (H, W) member (never > 1 B/pixel).

    zstd decodes several times faster than zlib, which keeps single-member reads cheap.
    """
    import zstandard

    raw = np.ascontiguousarray(member).tobytes()
    comp = zstandard.ZstdCompressor(level=_ZSTD_LEVEL, write_checksum=False, write_content_size=True)
    best = ("raw", raw)
    plain = comp.compress(raw)
    if len(plain) < len(best[1]):
        best = ("zstd", plain)
    delta = member.copy()
    delta[:, 1:] = member[:, 1:] - member[:, :-1]  # uint8 wraps around
    zdelta = comp.compress(delta.tobytes())
    if len(zdelta) < _DELTA_GAIN * len(best[1]):
        best = ("zstd-delta", zdelta)
    return best


def _decode(codec: str, data: bytes, shape: tuple[int, int]) -> np.ndarray:
    import zstandard

    try:
        if codec == "raw":
            buf = data
        elif codec in ("zstd", "zstd-delta"):
            buf = zstandard.ZstdDecompressor().decompress(data, max_output_size=shape[0] * shape[1])
        else:
            raise CorruptEntryError(f"unknown codec {codec!r}")
    except zstandard.ZstdError as exc:
        raise CorruptEntryError(f"member does not decompress ({exc})") from None
    if len(buf) != shape[0] * shape[1]:
        raise CorruptEntryError(f"member has {len(buf)} bytes, expected {shape[0] * shape[1]}")
    arr = np.frombuffer(buf, dtype=np.uint8).reshape(shape)
    if codec == "zstd-delta":
        arr = np.cumsum(arr, axis=1, dtype=np.uint8)
    return arr


def atomic_write_bytes(path: Path, data: bytes, fault: str | None = None) -> None:
    """:func:`s2s2_monai.atomic.write_bytes` with fsync, and an optional test fault point before the rename."""
    write_bytes(path, data, fsync=True, before_replace=(lambda: _fault_point(fault)) if fault else None)


_FAULT_COUNTS: dict[str, int] = {}


def _fault_point(name: str) -> None:
    """Test hook: ``S2S2_STACK_KILL_AT="tmp:3"`` SIGKILLs this process at the 3rd ``tmp`` point.

    Used by the tests to simulate ``kill -9`` at chosen moments of a build: ``tmp`` = after an
    entry's temporary file is written and fsynced but before its rename, ``entry`` = right after
    an entry is complete.
    """
    spec = os.environ.get("S2S2_STACK_KILL_AT")
    if not spec:
        return
    where, _, count = spec.partition(":")
    if where != name:
        return
    _FAULT_COUNTS[name] = _FAULT_COUNTS.get(name, 0) + 1
    if _FAULT_COUNTS[name] >= int(count or 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


class StackCache:
    """Reader/writer of one stack cache folder.

    Args:
        root: the cache folder (created by :meth:`write_manifest` / ``s2s2 stack build``).
        verify_reads: check each member's crc32 when it is read (the full sha256 check is
            :meth:`verify`'s job).
    """

    def __init__(self, root: str | os.PathLike, verify_reads: bool = True) -> None:
        self.root = Path(root)
        self.verify_reads = verify_reads
        self.bytes_read = 0  # bytes read from entry files by this instance
        self._headers: dict[str, tuple[dict, int]] = {}
        self._manifest: dict | None = None

    # ---------------------------------------------------------------- manifest
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def manifest(self) -> dict:
        """The cache's manifest (raises :class:`S2S2InputError` if there is none)."""
        if self._manifest is None:
            path = self.manifest_path
            if not path.is_file():
                raise S2S2InputError(
                    self.root, "is not a stack cache (no manifest.json)", "build one with `s2s2 stack build --out DIR`"
                )
            try:
                manifest = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise S2S2InputError(
                    path, f"manifest is not valid JSON ({exc})", "re-run `s2s2 stack build` on this folder"
                ) from None
            if manifest.get("format") != FORMAT:
                raise S2S2InputError(
                    path,
                    f"unknown stack cache format {manifest.get('format')!r} (expected {FORMAT!r})",
                    "rebuild the stack with this version",
                )
            self._manifest = manifest
        return self._manifest

    def write_manifest(self, manifest: dict) -> None:
        """Write the manifest atomically (adds the ``format`` field)."""
        manifest = {**manifest, "format": FORMAT}
        self._write(self.manifest_path, (json.dumps(manifest, sort_keys=True, indent=1) + "\n").encode())
        self._manifest = manifest

    def _write(self, path: Path, data: bytes, fault: str | None = None) -> None:
        """:func:`atomic_write_bytes`; a read-only, full or forbidden folder is one error naming the stack folder."""
        with file_system_errors(self.root):
            atomic_write_bytes(path, data, fault=fault)

    # ---------------------------------------------------------------- entries
    def entry_path(self, key: str) -> Path:
        return self.root / "entries" / key[:2] / f"{key}{_ENTRY_SUFFIX}"

    def has(self, key: str) -> bool:
        return self.entry_path(key).is_file()

    def write_entry(self, key: str, members: np.ndarray, meta: dict | None = None) -> Path:
        """Store ``members`` (n, H, W) uint8 under ``key`` atomically; ``meta`` goes into the header."""
        members = np.asarray(members)
        if members.dtype != np.uint8 or members.ndim != 3:
            raise ValueError(f"members must be uint8 (n, H, W), got {members.dtype} {members.shape}")
        chunks, index, offset = [], [], 0
        for m in members:
            codec, data = _encode(m)
            index.append(
                {
                    "offset": offset,
                    "length": len(data),
                    "codec": codec,
                    "crc32": zlib.crc32(data),
                    "sha256": _sha256(np.ascontiguousarray(m).tobytes()),
                }
            )
            chunks.append(data)
            offset += len(data)
        header = {
            "key": key,
            "shape": [int(members.shape[1]), int(members.shape[2])],
            "n": int(members.shape[0]),
            "members": index,
            **(meta or {}),
        }
        hbytes = canonical_json(header).encode()
        blob = b"".join([MAGIC, _PREFIX.pack(len(hbytes)), hashlib.sha256(hbytes).digest(), hbytes, *chunks])
        path = self.entry_path(key)
        self._write(path, blob, fault="tmp")
        self._headers.pop(key, None)
        _fault_point("entry")
        return path

    def _read_header(self, fh, key: str) -> tuple[dict, int]:
        head = fh.read(len(MAGIC) + _PREFIX.size + 32)
        self.bytes_read += len(head)
        if len(head) < len(MAGIC) + _PREFIX.size + 32 or head[: len(MAGIC)] != MAGIC:
            raise CorruptEntryError("bad magic or truncated header")
        (hlen,) = _PREFIX.unpack_from(head, len(MAGIC))
        if hlen > 64 * 1024 * 1024:
            raise CorruptEntryError("implausible header length")
        hbytes = fh.read(hlen)
        self.bytes_read += len(hbytes)
        if len(hbytes) != hlen or hashlib.sha256(hbytes).digest() != head[len(MAGIC) + _PREFIX.size :]:
            raise CorruptEntryError("header checksum mismatch")
        try:
            header = json.loads(hbytes)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CorruptEntryError("header is not JSON") from None
        if header.get("key") != key:
            raise CorruptEntryError(f"entry holds key {header.get('key')!r}")
        return header, len(head) + hlen

    def header(self, key: str) -> dict:
        """The header of entry ``key`` (cached per instance)."""
        if key not in self._headers:
            path = self.entry_path(key)
            if not path.is_file():
                raise KeyError(key)
            with open(path, "rb") as fh:
                self._headers[key] = self._read_header(fh, key)
        return self._headers[key][0]

    def read_member(self, key: str, member: int, full_check: bool = False) -> np.ndarray:
        """Member ``member`` of entry ``key`` as uint8 (H, W), reading only that member's bytes.

        Args:
            full_check: also check the sha256 of the decoded pixels.

        Raises:
            KeyError: no such entry.
            IndexError: ``member`` out of range.
            CorruptEntryError: checksum or format failure.
        """
        self.header(key)
        header, data_start = self._headers[key]
        members = header["members"]
        if not 0 <= member < len(members):
            raise IndexError(f"member {member} out of range for an entry of {len(members)}")
        info = members[member]
        with open(self.entry_path(key), "rb") as fh:
            fh.seek(data_start + int(info["offset"]))
            data = fh.read(int(info["length"]))
        self.bytes_read += len(data)
        if len(data) != int(info["length"]):
            raise CorruptEntryError(f"member {member} truncated")
        if (self.verify_reads or full_check) and zlib.crc32(data) != info["crc32"]:
            raise CorruptEntryError(f"member {member} crc32 mismatch")
        arr = _decode(info["codec"], data, tuple(header["shape"]))
        if full_check and _sha256(arr.tobytes()) != info["sha256"]:
            raise CorruptEntryError(f"member {member} sha256 mismatch")
        return arr

    def read_entry(self, key: str) -> np.ndarray:
        """All members of entry ``key`` as uint8 (n, H, W)."""
        n = len(self.header(key)["members"])
        return np.stack([self.read_member(key, m) for m in range(n)])

    def check_entry(self, key: str, full: bool = True) -> str:
        """``"ok"``, ``"missing"`` or ``"corrupt"``.

        ``full`` decodes every member and checks its sha256; otherwise only the header checksum
        and the file size are checked.
        """
        path = self.entry_path(key)
        if not path.is_file():
            return "missing"
        self._headers.pop(key, None)
        try:
            header = self.header(key)
            _, data_start = self._headers[key]
            end = max((m["offset"] + m["length"] for m in header["members"]), default=0)
            if path.stat().st_size != data_start + end:
                return "corrupt"
            if full:
                for m in range(len(header["members"])):
                    self.read_member(key, m, full_check=True)
        except (CorruptEntryError, KeyError, ValueError, TypeError):
            self._headers.pop(key, None)
            return "corrupt"
        return "ok"

    def remove_entry(self, key: str) -> None:
        self._headers.pop(key, None)
        path = self.entry_path(key)
        if path.exists():
            path.unlink()

    def entry_digest(self, key: str) -> str:
        """sha256 over the key and its members' pixel checksums (from the header)."""
        header = self.header(key)
        return _sha256(key + ":" + ",".join(m["sha256"] for m in header["members"]))

    # ---------------------------------------------------------------- housekeeping
    def temp_files(self) -> list[Path]:
        """Leftover temporary files (from a killed writer)."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.rglob(f"{_TMP_PREFIX}*") if p.is_file())

    def clean_temp(self) -> int:
        """Remove leftover temporary files; returns how many."""
        files = self.temp_files()
        for p in files:
            p.unlink(missing_ok=True)
        return len(files)

    def clear(self) -> int:
        """Delete every entry and the manifest (an explicit stack replacement); returns the entries removed."""
        keys = self.stored_keys()
        for key in keys:
            self.remove_entry(key)
        self.manifest_path.unlink(missing_ok=True)
        self._manifest = None
        self._headers.clear()
        return len(keys)

    def stored_keys(self) -> list[str]:
        """Keys of all entry files present (referenced by the manifest or not)."""
        base = self.root / "entries"
        if not base.is_dir():
            return []
        return sorted(p.name[: -len(_ENTRY_SUFFIX)] for p in base.glob(f"*/*{_ENTRY_SUFFIX}"))

    def expected_keys(self) -> list[str]:
        """Distinct keys the manifest's slice index refers to, sorted."""
        return sorted({row[2] for row in self.manifest.get("slices", [])})

    def info(self, full: bool = False) -> dict:
        """Summary of the cache.

        Args:
            full: verify every member checksum (as :meth:`verify`); otherwise corrupt entries are
                those with a bad header or a wrong file size.

        Returns:
            dict with ``slices``, ``entries`` (expected), ``present``, ``missing``, ``corrupt``
            (lists of keys), ``orphans`` (entries of other settings), ``members``, ``bytes_on_disk``,
            ``bytes_per_member``, ``bytes_per_pixel``, ``qc_pass_rate``, ``qc_flagged``,
            ``temp_files``, ``digest`` (``None`` unless complete), ``generator``, ``settings_digest``.
        """
        manifest = self.manifest
        expected = self.expected_keys()
        missing, corrupt, members, pixels, qc_total, qc_pass, flagged = [], [], 0, 0, 0, 0, 0
        digests = []
        for key in expected:
            status = self.check_entry(key, full=full)
            if status == "missing":
                missing.append(key)
                continue
            if status == "corrupt":
                corrupt.append(key)
                continue
            header = self.header(key)
            members += len(header["members"])
            pixels += len(header["members"]) * header["shape"][0] * header["shape"][1]
            digests.append(self.entry_digest(key))
            for q in header.get("qc") or []:
                qc_total += 1
                qc_pass += bool(q["pass"])
                flagged += not q["pass"]
        stored = self.stored_keys()
        orphans = sorted(set(stored) - set(expected))
        files = [p for p in self.root.rglob("*") if p.is_file()]
        entry_bytes = sum(self.entry_path(k).stat().st_size for k in expected if k not in missing)
        complete = not missing and not corrupt
        return {
            "root": str(self.root),
            "generator": manifest.get("generator"),
            "settings_digest": _sha256(canonical_json(manifest.get("settings"))),
            "n": manifest.get("n"),
            "seed": manifest.get("seed"),
            "slices": len(manifest.get("slices", [])),
            "entries": len(expected),
            "present": len(expected) - len(missing) - len(corrupt),
            "missing": missing,
            "corrupt": corrupt,
            "orphans": len(orphans),
            "members": members,
            "bytes_on_disk": sum(p.stat().st_size for p in files),
            "entry_bytes": entry_bytes,
            "bytes_per_member": entry_bytes / members if members else 0.0,
            "bytes_per_pixel": entry_bytes / pixels if pixels else 0.0,
            "qc_members": qc_total,
            "qc_pass_rate": (qc_pass / qc_total) if qc_total else None,
            "qc_flagged": flagged,
            "temp_files": len(self.temp_files()),
            "complete": complete,
            "verified": full,
            "digest": _sha256("\n".join(sorted(digests))) if complete else None,
        }

    def verify(self) -> dict:
        """:meth:`info` with every member checksum checked."""
        return self.info(full=True)
