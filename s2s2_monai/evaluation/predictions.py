"""Segment whole volumes and write the label maps as NIfTI, each in its input file's own geometry."""

from __future__ import annotations

import os
from pathlib import Path

from s2s2_monai.errors import S2S2InputError

__all__ = ["infer_to_nifti"]


def _inference_inputs(inputs, section: str, data_root) -> list[tuple[str, str | None]]:
    """(image path, case id) pairs from a datalist JSON, a folder of NIfTI files or a list of paths."""
    from s2s2_monai.data.datalist import load_datalist

    if isinstance(inputs, (str, os.PathLike)):
        p = Path(inputs)
        if p.suffix == ".json":
            dl = load_datalist(p, data_root)
            entries = dl.items(section)
            if not entries:
                raise S2S2InputError(
                    p, f"datalist has no entries in section {section!r}", "choose another infer_section"
                )
            return [(e["image"], e.get("case_id")) for e in entries]
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.name.endswith((".nii", ".nii.gz")))
            if not files:
                raise S2S2InputError(
                    p,
                    "folder holds no .nii/.nii.gz images",
                    "point infer_input at NIfTI images, a datalist or a list of files",
                )
            return [(str(f), None) for f in files]
        if p.is_file():
            return [(str(p), None)]
        raise S2S2InputError(
            p, "no such file or folder", "point infer_input at NIfTI images, a datalist or a list of files"
        )
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
    transform=None,
    mode: str = "bilinear",
) -> list[str]:
    """Segment whole volumes and write ``out_dir/<case>.nii.gz`` label maps in each input's geometry.

    Args:
        network: 2D network (B, 1, H, W) -> (B, C, H, W).
        inputs: datalist JSON (its ``section``), a folder of NIfTI images, one image or a list of paths.
        out_dir: output folder.
        label_map: selects the intensity transform (its modality).
        input_size: network input (H, W); ``None`` feeds native slices.
        section / data_root: for datalist inputs.
        batch_size / device / mode: of :func:`~s2s2_monai.evaluation.inference.predict_volume`.
        transform: per-volume preprocessing (a bundle's ``train#deterministic_transforms``); default
            the paper's for the label map's modality.

    Returns:
        the written paths.
    """
    from tqdm.auto import tqdm

    from s2s2_monai.data.volumes import case_id_of, load_case, write_prediction
    from s2s2_monai.evaluation.inference import predict_volume
    from s2s2_monai.label_maps import get_label_map
    from s2s2_monai.transforms import intensity_for

    intensity = None if transform is not None else intensity_for(get_label_map(label_map).modality)
    written = []
    for image, case_id in tqdm(
        _inference_inputs(inputs, section, data_root), desc="inference", unit="case", disable=not progress
    ):
        case = load_case(image, None, intensity=intensity, transform=transform, case_id=case_id or case_id_of(image))
        pred = predict_volume(
            network, case.image, input_size=input_size, batch_size=batch_size, device=device, mode=mode
        )
        path = write_prediction(pred, case.affine, case.source_affine, Path(out_dir) / f"{case.case_id}.nii.gz")
        written.append(str(path))
    return written
