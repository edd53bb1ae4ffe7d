"""The slice-and-reassemble prediction as a MONAI :class:`~monai.inferers.Inferer` (the bundles' ``validate#inferer``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.inferers import Inferer

from s2s2_monai.evaluation.inference import predict_volume

__all__ = ["SliceVolumeInferer"]


class SliceVolumeInferer(Inferer):
    """A 2D network over every axial slice of a volume, reassembled into (X, Y, Z) class ids.

    Calls :func:`~s2s2_monai.evaluation.inference.predict_volume` (the code every evaluation path
    uses) or, with ``legacy_transunet``, TransUNet's cubic-zoom round trip
    (:func:`~s2s2_monai.evaluation.legacy.legacy_predict_volume`).

    Args:
        input_size: (H, W) the network expects; slices are resized to it and the logits back.
        batch_size: slices per forward pass.
        legacy_transunet: TransUNet's inference protocol.
        mode: interpolation of the image slices to ``input_size`` (the training resize's, e.g. ``"bicubic"``).
    """

    def __init__(
        self,
        input_size: Sequence[int] | None = None,
        batch_size: int = 32,
        legacy_transunet: bool = False,
        mode: str = "bilinear",
    ) -> None:
        super().__init__()
        self.input_size = None if input_size is None else tuple(int(s) for s in input_size)
        self.batch_size = int(batch_size)
        self.legacy_transunet = bool(legacy_transunet)
        self.mode = str(mode)

    def __call__(
        self, inputs: torch.Tensor, network: torch.nn.Module, *args: Any, device=None, **kwargs: Any
    ) -> torch.Tensor:
        """(X, Y, Z) or (1, X, Y, Z) volume -> int64 (X, Y, Z) labels on ``device`` (default the network's)."""
        return self._run(inputs, network, device, probabilities=False)

    def probabilities(self, inputs, network: torch.nn.Module, device=None) -> torch.Tensor:
        """The same procedure's float32 (C, X, Y, Z) softmax; its argmax is what :meth:`__call__` returns."""
        return self._run(inputs, network, device, probabilities=True)

    def _run(self, inputs, network, device, probabilities: bool) -> torch.Tensor:
        if self.legacy_transunet:
            from s2s2_monai.evaluation.legacy import LEGACY_INPUT_SIZE, legacy_predict_volume

            return legacy_predict_volume(
                network,
                inputs,
                input_size=self.input_size or LEGACY_INPUT_SIZE,
                batch_size=self.batch_size,
                device=device,
                return_probabilities=probabilities,
            )
        out = predict_volume(
            network,
            inputs,
            input_size=self.input_size,
            batch_size=self.batch_size,
            device=device,
            mode=self.mode,
            return_logits=probabilities,
        )
        return torch.softmax(out, dim=0) if probabilities else out
