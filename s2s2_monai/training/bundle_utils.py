"""Helpers the bundles call by dotted name: data checks, demo data, the stack, datasets, checkpoints.

Bundles (``bundles/*/*.json``) hold configuration only; everything they *do* lives here:

- :func:`require_data`: stop with a clear message when the dataset is missing;
- :func:`ensure_demo_data` / :func:`ensure_stack`: build the demo phantoms / the stack cache if missing;
- :func:`training_dataset`: (x0, x1, y) pairs (or plain slices for the baseline) with one transform;
- :class:`AtomicCheckpointSaver` / :class:`ResumeCheckpointLoader` / :func:`latest_checkpoint`:
  per-epoch checkpoints written atomically, and resuming from the newest after ``kill -9``;
- :func:`load_weights` / :func:`infer_to_nifti`: the inference bundle (whole volumes -> NIfTI
  label maps in each input's own geometry).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ignite.handlers import DiskSaver
from monai.handlers import CheckpointLoader, CheckpointSaver

from s2s2_monai.errors import S2S2InputError

__all__ = [
    "DEMO_COMMAND",
    "require_data",
    "ensure_demo_data",
    "ensure_stack",
    "training_dataset",
    "latest_checkpoint",
    "load_weights",
    "infer_to_nifti",
    "AtomicCheckpointSaver",
    "ResumeCheckpointLoader",
]

logger = logging.getLogger(__name__)

#: The demo command quoted by error messages.
DEMO_COMMAND = "python -m monai.bundle run training --config_file \"['bundles/synapse/train.json','bundles/synapse/demo.json']\""


def require_data(
    datalist: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    sections: tuple[str, ...] = ("training", "validation"),
    demo_command: str = DEMO_COMMAND,
    exit_on_error: bool = False,
) -> str:
    """Check that every image/label of ``datalist`` exists under ``dataset_dir``.

    Args:
        datalist: datalist JSON (paths relative to ``dataset_dir``).
        dataset_dir: the data root.
        sections: sections that must be complete.
        demo_command: quoted in the message as the alternative.
        exit_on_error: print ``error: ...`` and exit with status 2 instead of raising (bundle use:
            no traceback in front of the message).

    Returns:
        the datalist path.

    Raises:
        S2S2InputError: missing datalist or files; the message names the first missing files and
            says how to set ``dataset_dir`` or run the demo.
    """
    from s2s2_monai.data.datalist import load_datalist

    try:
        dl = load_datalist(datalist, dataset_dir)
        missing = [
            e[k] for s in sections for e in dl.items(s) for k in ("image", "label") if k in e and not Path(e[k]).exists()
        ]
        total = sum(len([k for k in ("image", "label") if k in e]) for s in sections for e in dl.items(s))
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise S2S2InputError(
                dataset_dir,
                f"{len(missing)} of {total} files listed in {os.path.normpath(datalist)} are missing (expected e.g. {shown})",
                f"point dataset_dir at the folder holding them (add --dataset_dir /path/to/data to the command), or run the demo on phantom data: {demo_command}",
            )
    except S2S2InputError as exc:
        if exit_on_error:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
    return str(datalist)


def ensure_demo_data(out_dir: str | os.PathLike, cases: int = 6, shape=(96, 96, 24), seed: int = 0) -> str:
    """The datalist of ``s2s2 demo-data`` phantoms in ``out_dir``, written first if missing or incomplete."""
    from s2s2_monai.data.phantom import write_demo_data

    path = Path(out_dir) / "datalist.json"
    if path.is_file():
        try:
            return require_data(path, out_dir)
        except S2S2InputError:
            logger.info("demo data in %s incomplete, rewriting", out_dir)
    logger.info("writing %d demo phantom cases to %s", cases, out_dir)
    return str(write_demo_data(out_dir, cases=cases, seed=seed, shape=tuple(shape), progress=False))


def ensure_stack(
    datalist: str | os.PathLike,
    stack_dir: str | os.PathLike,
    use_stack: bool = True,
    build_if_missing: bool = True,
    generator: str = "appearance",
    n: int = 16,
    seed: int = 0,
    data_root: str | os.PathLike | None = None,
    **build_kwargs: Any,
) -> str | None:
    """The stack cache folder for training (``None`` for the baseline).

    With ``build_if_missing``, :func:`s2s2_monai.stack.build.build_stack` completes the cache
    (existing valid entries are skipped, so a complete cache costs one check). Otherwise the
    cache must exist.

    Raises:
        S2S2InputError: no cache and ``build_if_missing`` is false.
    """
    if not use_stack:
        return None
    stack_dir = Path(stack_dir)
    if build_if_missing:
        from s2s2_monai.stack.build import build_stack

        build_kwargs.setdefault("verify_existing", False)
        build_stack(datalist, stack_dir, generator=generator, n=n, seed=seed, data_root=data_root, **build_kwargs)
    elif not (stack_dir / "manifest.json").is_file():
        raise S2S2InputError(stack_dir, "no stack cache here", f"build it with `s2s2 stack build --datalist {datalist} --out {stack_dir}` or set build_stack_if_missing true")
    return str(stack_dir)


def training_dataset(
    datalist: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    transform: Callable | None = None,
    stack_dir: str | os.PathLike | None = None,
    section: str = "training",
    labelled_only: bool = False,
):
    """Training slices: S2S2 pairs (``image``, ``image_stack``, ``label``) when ``stack_dir`` is given,
    else plain slices (the baseline). ``transform`` sees all keys of an item at once."""
    from s2s2_monai.data.slices import SliceDataset, VolumeCache

    volumes = VolumeCache(datalist, section, data_root)
    if stack_dir is None:
        return SliceDataset(volumes, section, transform=transform, labelled_only=labelled_only)
    from s2s2_monai.stack.pairs import StackPairDataset

    return StackPairDataset(SliceDataset(volumes, section, labelled_only=labelled_only), stack_dir, transform=transform)


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> str | None:
    """The ``*epoch=N.pt`` file of ``ckpt_dir`` with the largest N (``None`` when there is none)."""
    from s2s2_monai.checkpoints import numbered_checkpoints

    found = numbered_checkpoints(ckpt_dir)
    return str(found[0]) if found else None


class _AtomicDiskSaver(DiskSaver):
    """DiskSaver writing temp + rename (a kill never leaves half a file), with normal permissions
    and optional fixed filename (as MONAI's CheckpointSaver needs)."""

    def __init__(self, dirname: str, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, require_empty=False, atomic=True)
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        filename = self.filename or filename
        super().__call__(checkpoint, filename, metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(Path(self.dirname) / filename, 0o666 & ~umask)

    def remove(self, filename: str) -> None:
        super().remove(self.filename or filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI :class:`~monai.handlers.CheckpointSaver` whose files are written atomically.

    Same arguments, plus ``engine_key``: when set, the engine the saver is attached to (the
    trainer) is saved under that key too, so the bundle need not reference the trainer from its
    own handler list. Interval checkpoints are named ``checkpoint_epoch=N.pt`` (epoch level) as in
    MONAI, which :class:`ResumeCheckpointLoader` finds.
    """

    def __init__(self, save_dir: str, save_dict: dict, engine_key: str | None = None, **kwargs: Any) -> None:
        super().__init__(save_dir=save_dir, save_dict=save_dict, **kwargs)
        self.engine_key = engine_key
        for ckpt in self._checkpoints():
            ckpt.save_handler = _AtomicDiskSaver(self.save_dir, getattr(ckpt.save_handler, "filename", None))

    def _checkpoints(self) -> list:
        return [c for c in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint) if c is not None]

    def attach(self, engine) -> None:
        if self.engine_key is not None:
            for ckpt in self._checkpoints():
                ckpt.to_save = {**ckpt.to_save, self.engine_key: engine}
        super().attach(engine)


class ResumeCheckpointLoader(CheckpointLoader):
    """Loads the newest readable ``checkpoint_epoch=N.pt`` of ``ckpt_dir`` when the run starts; no-op if none.

    Put the network, optimizer and lr scheduler in ``load_dict``; the engine it is attached to (the
    trainer) is restored under ``engine_key`` (as saved by :class:`AtomicCheckpointSaver` with the
    same key): a run killed at any moment continues after its last completed epoch. A checkpoint
    that cannot be read (truncated, damaged) is moved aside to ``NAME.corrupt`` with one warning and
    the next newest is used (:func:`s2s2_monai.checkpoints.newest_readable`); none left: from scratch.

    Args:
        ckpt_dir: folder of the interval checkpoints.
        load_dict: objects to restore.
        engine_key: key of the engine's own state (``None``: do not restore the engine).
        kwargs: other :class:`~monai.handlers.CheckpointLoader` arguments (``map_location``, ``strict``).
    """

    def __init__(self, ckpt_dir: str | os.PathLike, load_dict: dict, engine_key: str | None = "trainer", **kwargs: Any) -> None:
        super().__init__(load_path=str(ckpt_dir), load_dict=dict(load_dict), **kwargs)
        self.ckpt_dir = str(ckpt_dir)
        self.engine_key = engine_key
        self.found: str | None = None

    def attach(self, engine) -> None:
        from s2s2_monai.checkpoints import newest_readable, numbered_checkpoints, torch_load

        def full_read(path):  # finds damage anywhere in the file; MONAI's __call__ then reads the good one again
            torch_load(path, "cpu")

        readable = newest_readable(numbered_checkpoints(self.ckpt_dir), full_read)
        if readable is None:
            logger.info("no checkpoint in %s: starting from scratch", self.ckpt_dir)
            return
        self.found = self.load_path = str(readable[0])
        logger.info("resuming from %s", self.found)
        if self.engine_key is not None:
            self.load_dict[self.engine_key] = engine
        super().attach(engine)


def _fail(exc: S2S2InputError, exit_on_error: bool):
    if exit_on_error:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2)
    raise exc


def load_weights(network, path: str | os.PathLike, device=None, exit_on_error: bool = False):
    """Load a state dict saved by the bundle (``models/model.pt``) into ``network`` (DDP unwrapped).

    Raises:
        S2S2InputError: no such file, or weights that do not fit the network.
    """

    from s2s2_monai.checkpoints import read_state_dict
    from s2s2_monai.training.taps import unwrap_network

    path = Path(path)
    try:
        state = read_state_dict(path, map_location=device)
    except S2S2InputError as exc:
        _fail(exc, exit_on_error)
    try:
        unwrap_network(network).load_state_dict(state)
    except RuntimeError as exc:
        _fail(S2S2InputError(path, f"weights do not fit the configured network ({str(exc).splitlines()[0]})", "use the network_def the model was trained with"), exit_on_error)
    return network


def _inference_inputs(inputs, section: str, data_root) -> list[tuple[str, str | None]]:
    """(image path, case id) pairs from a datalist JSON, a folder of NIfTI files or a list of paths."""
    from s2s2_monai.data.datalist import load_datalist

    if isinstance(inputs, (str, os.PathLike)):
        p = Path(inputs)
        if p.suffix == ".json":
            dl = load_datalist(p, data_root)
            entries = dl.items(section)
            if not entries:
                raise S2S2InputError(p, f"datalist has no entries in section {section!r}", "choose another infer_section")
            return [(e["image"], e.get("case_id")) for e in entries]
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.name.endswith((".nii", ".nii.gz")))
            if not files:
                raise S2S2InputError(p, "folder holds no .nii/.nii.gz images", "point infer_input at NIfTI images, a datalist or a list of files")
            return [(str(f), None) for f in files]
        if p.is_file():
            return [(str(p), None)]
        raise S2S2InputError(p, "no such file or folder", "point infer_input at NIfTI images, a datalist or a list of files")
    return [(str(f), None) for f in inputs]


def infer_to_nifti(
    network,
    inputs,
    out_dir: str | os.PathLike,
    label_map="synapse",
    input_size=None,
    section: str = "test",
    data_root: str | os.PathLike | None = None,
    batch_size: int = 32,
    device=None,
    progress: bool = True,
) -> list[str]:
    """Segment whole volumes and write ``out_dir/<case>.nii.gz`` label maps in each input's geometry.

    Args:
        network: 2D network (B, 1, H, W) -> (B, C, H, W).
        inputs: datalist JSON (its ``section``), a folder of NIfTI images, one image or a list of paths.
        out_dir: output folder.
        label_map: selects the intensity transform (its modality).
        input_size: network input (H, W); ``None`` feeds native slices.
        section / data_root: for datalist inputs.
        batch_size / device: of :func:`~s2s2_monai.evaluation.inference.predict_volume`.

    Returns:
        the written paths.
    """
    import torch
    from tqdm.auto import tqdm

    from s2s2_monai.data.slices import intensity_for
    from s2s2_monai.data.volumes import case_id_of, load_case, save_nifti_atomic, to_source_orientation
    from s2s2_monai.evaluation.inference import predict_volume
    from s2s2_monai.label_maps import get_label_map

    lm = get_label_map(label_map)
    intensity = intensity_for(lm.modality)
    written = []
    for image, case_id in tqdm(_inference_inputs(inputs, section, data_root), desc="inference", unit="case", disable=not progress):
        case = load_case(image, None, intensity=intensity, case_id=case_id or case_id_of(image))
        pred = predict_volume(network, case.image, input_size=input_size, batch_size=batch_size, device=device)
        arr = to_source_orientation(pred.to(torch.uint8), case.affine, case.source_affine)
        path = Path(out_dir) / f"{case.case_id}.nii.gz"
        save_nifti_atomic(arr.cpu().numpy(), case.source_affine, path)
        written.append(str(path))
    return written
