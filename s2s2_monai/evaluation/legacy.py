"""TransUNet's published evaluation protocol, for numbers comparable with the paper tables.

As in TransUNet ``utils.test_single_volume`` / ``calculate_metric_percase``:

1. each axial slice is resized to 224 x 224 with ``scipy.ndimage.zoom(order=3)``, the network's
   softmax/argmax is resized back with ``zoom(order=0)`` (:func:`legacy_predict_volume`);
2. per class, medpy ``dc`` and ``hd95`` **without voxel spacing** (HD95 in voxels);
3. empty rule: prediction and ground truth non-empty -> (dc, hd95); prediction non-empty and
   ground truth empty -> (1, 0); anything else -> (0, 0) (:func:`legacy_case_metrics`);
4. mean over the cases per class, then over the classes (:func:`legacy_summary`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy.ndimage import zoom

from s2s2_monai.evaluation.metrics import as_label_array, compute_case_metrics, dice_per_class

__all__ = ["LEGACY_INPUT_SIZE", "LEGACY_KEYS", "legacy_predict_volume", "legacy_case_metrics", "legacy_summary"]

LEGACY_INPUT_SIZE = (224, 224)
#: Keys of a legacy per-class result: Dice and HD95 in voxels.
LEGACY_KEYS = ("dice", "hd95_vox")

if TYPE_CHECKING:  # torch is loaded only to predict: evaluating folders under this protocol needs none
    import torch


def legacy_predict_volume(
    network: torch.nn.Module,
    image,
    input_size: Sequence[int] = LEGACY_INPUT_SIZE,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    return_probabilities: bool = False,
) -> torch.Tensor:
    """TransUNet's slice inference: cubic zoom to ``input_size``, argmax, nearest zoom back.

    Args:
        network: 2D network (B, 1, H, W) -> logits (B, C, H, W).
        image: (X, Y, Z) or (1, X, Y, Z) intensity-transformed volume.
        input_size: network input size (224 x 224 in TransUNet).
        batch_size: slices per forward pass (the resizing is per slice, as upstream).
        device: where the network runs (default: its own device).
        return_probabilities: return the float32 (C, X, Y, Z) softmax instead, zoomed back with the
            labels' nearest sampling (so its argmax is the label volume).

    Returns:
        int64 (X, Y, Z) labels, or (C, X, Y, Z) probabilities, on ``device``.
    """
    import torch

    from s2s2_monai.evaluation.inference import first_output, network_device

    device = torch.device(device) if device is not None else network_device(network)
    vol = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32)
    if vol.ndim == 4 and vol.shape[0] == 1:
        vol = vol[0]
    x, y, z = vol.shape
    h, w = (int(s) for s in input_size)
    resize = (x, y) != (h, w)
    was_training = network.training
    network.eval()
    out = None if return_probabilities else torch.empty((x, y, z), dtype=torch.int64, device=device)
    try:
        for start in range(0, z, batch_size):
            idx = range(start, min(z, start + batch_size))
            batch = np.stack([zoom(vol[:, :, i], (h / x, w / y), order=3) if resize else vol[:, :, i] for i in idx])
            with torch.inference_mode():
                logits = first_output(network(torch.from_numpy(batch)[:, None].to(device)))
                probs = torch.softmax(logits.float(), dim=1)
            # per slice: (C, h, w) probabilities or (h, w) labels, zoomed back with the same nearest sampling
            slices = probs.cpu().numpy() if return_probabilities else torch.argmax(probs, dim=1).cpu().numpy()
            if out is None:
                out = torch.empty((slices.shape[1], x, y, z), dtype=torch.float32, device=device)
            factors = (1,) * (slices.ndim - 3) + (x / h, y / w)
            for j, i in enumerate(idx):
                back = zoom(slices[j], factors, order=0) if resize else slices[j]
                out[..., i] = torch.from_numpy(np.asarray(back)).to(device=device, dtype=out.dtype)
    finally:
        network.train(was_training)
    return out


def legacy_case_metrics(pred, gt, class_ids: Iterable[int]) -> dict[int, dict[str, float]]:
    """TransUNet ``calculate_metric_percase`` for every class: ``{id: {"dice", "hd95_vox"}}``."""
    pred_t = as_label_array(pred)
    gt_t = as_label_array(gt, like=pred_t)
    class_ids = [int(c) for c in class_ids]
    k = max([*class_ids, int(pred_t.max()), int(gt_t.max())]) + 1
    _, n_pred, n_gt = dice_per_class(pred_t, gt_t, k)
    both = [c for c in class_ids if n_pred[c] > 0 and n_gt[c] > 0]
    measured = compute_case_metrics(pred_t, gt_t, (1.0, 1.0, 1.0), both, hd95="medpy") if both else {}
    out = {}
    for c in class_ids:
        if c in measured:
            out[c] = {"dice": measured[c]["dice"], "hd95_vox": measured[c]["hd95_mm"]}
        elif n_pred[c] > 0:  # prediction without ground truth
            out[c] = {"dice": 1.0, "hd95_vox": 0.0}
        else:
            out[c] = {"dice": 0.0, "hd95_vox": 0.0}
    return out


def legacy_summary(per_case: Mapping[str, Mapping[int, Mapping[str, float]]]) -> dict:
    """Mean over cases per class, then over classes (TransUNet's ``metric_list / len(db_test)``).

    Args:
        per_case: ``{case: legacy_case_metrics(...)}``.

    Returns:
        ``{"per_class": {id: {"dice", "hd95_vox"}}, "mean_dice", "mean_hd95_vox", "num_cases"}``.
    """
    if not per_case:
        raise ValueError("no cases to summarise")
    cases = list(per_case.values())
    class_ids = sorted(cases[0])
    per_class = {c: {k: float(np.mean([m[c][k] for m in cases])) for k in LEGACY_KEYS} for c in class_ids}
    return {
        "per_class": per_class,
        "mean_dice": float(np.mean([v["dice"] for v in per_class.values()])),
        "mean_hd95_vox": float(np.mean([v["hd95_vox"] for v in per_class.values()])),
        "num_cases": len(cases),
    }
