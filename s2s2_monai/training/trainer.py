"""The S2S2 trainer: MONAI's :class:`~monai.engines.SupervisedTrainer` fed with (x0, x1, y).

Each iteration runs the network twice, once on the real slice x0 (``image``) and once on a stack
member x1 (``image_stack``), in **two forward passes** (one batch of 2B would mix BatchNorm
statistics), and sums the segmentation loss of both:

    loss = Lseg(net(x0), y) + Lseg(net(x1), y)

The iteration itself is MONAI's: this class only swaps in an inferer that makes the second pass and
a loss that adds the second term, so AMP, gradient accumulation and the standard
``IterationEvents`` (FORWARD_COMPLETED after both passes, LOSS_COMPLETED, BACKWARD_COMPLETED,
MODEL_COMPLETED) behave exactly as in MONAI. The consistency terms ``alpha * D(f(x0), f(x1))``
are added at LOSS_COMPLETED by :class:`~s2s2_monai.training.handlers.ConsistencyHandler` event
handlers. A batch without ``image_stack`` (or ``use_stack=False``) runs the plain single-pass
baseline, identical to ``SupervisedTrainer``.

Extra keys in ``engine.state.output``: ``pred_stack`` (prediction of x1), ``loss_seg`` and
``loss_seg_stack`` (detached terms), plus ``loss_<name>`` from each consistency handler.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.inferers import Inferer, SimpleInferer

__all__ = ["S2S2Trainer", "STACK_KEY", "PRED_STACK_KEY"]

#: batch key of the stack member x1 and output key of its prediction
STACK_KEY = "image_stack"
PRED_STACK_KEY = "pred_stack"


class _TwoPassInferer(Inferer):
    """Runs ``base`` on x0 and, when the trainer holds a stack batch, on x1 in a second pass."""

    def __init__(self, base: Inferer, trainer: S2S2Trainer) -> None:
        super().__init__()
        self.base = base
        self.trainer = trainer

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any) -> Any:
        pred = self.base(inputs, network, *args, **kwargs)
        stack = self.trainer._stack_batch
        if stack is not None:
            self.trainer.state.output[PRED_STACK_KEY] = self.base(stack, network, *args, **kwargs)
        return pred


class _PairLoss:
    """``Lseg(pred, y) + Lseg(pred_stack, y)``; records both terms in ``engine.state.output``."""

    def __init__(self, base: Callable, trainer: S2S2Trainer) -> None:
        self.base = base
        self.trainer = trainer

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        out = self.trainer.state.output
        loss = self.base(pred, target).mean()
        out["loss_seg"] = loss.detach()
        if PRED_STACK_KEY in out:
            loss_stack = self.base(out[PRED_STACK_KEY], target).mean()
            out["loss_seg_stack"] = loss_stack.detach()
            loss = loss + loss_stack
        return loss


def stack_batch(engine: SupervisedTrainer, batchdata, key: str, use_stack: bool) -> torch.Tensor | None:
    """The batch's stack member x1 on the engine's device, or ``None`` (no stack / disabled)."""
    stack = batchdata.get(key) if isinstance(batchdata, Mapping) and use_stack else None
    if stack is None:
        return None
    return torch.as_tensor(stack).to(engine.state.device, non_blocking=engine.non_blocking, **engine.to_kwargs)


class S2S2Trainer(SupervisedTrainer):
    """:class:`~monai.engines.SupervisedTrainer` with a second forward pass on the stack member.

    Takes every argument of ``SupervisedTrainer`` plus:

    Args:
        stack_key: batch key of x1 (default ``"image_stack"``), same intensity space as ``image``.
        use_stack: ``False`` ignores x1 even when the batch has it (the plain baseline).
    """

    def __init__(self, *args: Any, stack_key: str = STACK_KEY, use_stack: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stack_key = stack_key
        self.use_stack = use_stack
        self._stack_batch: torch.Tensor | None = None
        self.inferer = _TwoPassInferer(self.inferer if self.inferer is not None else SimpleInferer(), self)
        self.loss_function = _PairLoss(self.loss_function, self)

    def _iteration(self, engine: SupervisedTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        self._stack_batch = stack_batch(engine, batchdata, self.stack_key, self.use_stack)
        try:
            return super()._iteration(engine, batchdata)
        finally:
            self._stack_batch = None
