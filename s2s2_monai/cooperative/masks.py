"""Latent-code masks of cooperative training (Chen et al., MICCAI 2021), one concept: masking a code.

Every generator returns a multiplicative mask broadcastable to the code ``(B, C, h, w)``:

``"dropout"`` (:func:`channel_dropout_mask`)
    random channel dropout, as ``F.dropout2d(code, p)``: each channel of each sample is zeroed with
    probability ``p`` and the kept channels are scaled by ``1 / (1 - p)``. Shape (B, C, 1, 1).
``"channel"`` (:func:`channel_mask`)
    targeted: the gradient of the task loss w.r.t. the code is averaged over positions; the
    ``int(C * p)`` channels with the largest (signed) mean gradient are masked. Shape (B, C, 1, 1).
``"spatial"`` (:func:`spatial_mask`)
    targeted: the gradient averaged over channels; the ``int(h * w * p)`` locations with the
    largest mean gradient are masked. Shape (B, 1, h, w).

Targeted masks draw ``p ~ U(0, max_p)`` (``max_p = 0.5``) per call; *hard* masks set the masked
entries to 0, *soft* masks multiply them by ``a ~ U(0, 0.5)`` (one draw per masked entry);
unmasked entries are 1. This follows upstream ``mask_latent_code_channel_wise`` /
``mask_latent_code_spatial_wise`` (ranking by the signed mean gradient, descending) and
``perturb_latent_code`` (dropout with the fixed rate ``max_threshold = 0.5``, never soft).

The gradient comes from :func:`code_gradient`, which runs the decoder *frozen* (no parameter
gradients, BatchNorm running statistics untouched, still in training mode as upstream).
:class:`LatentMasker` picks one mask kind at random per step and masks a code with it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

__all__ = [
    "MASK_KINDS",
    "frozen",
    "code_gradient",
    "channel_dropout_mask",
    "channel_mask",
    "spatial_mask",
    "LatentMasker",
]

MASK_KINDS: tuple[str, ...] = ("dropout", "channel", "spatial")


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Freeze ``module`` for the duration: ``requires_grad=False`` on every parameter and BatchNorm
    running statistics left untouched (momentum 0), training mode kept; everything restored after."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in bns]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        for m in bns:
            m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
        yield module
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, momentum, n in saved:
            m.momentum = momentum
            if n is not None:
                m.num_batches_tracked.copy_(n)


def code_gradient(
    code: torch.Tensor, decoder: Callable[[torch.Tensor], torch.Tensor], loss_fn: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Gradient of ``loss_fn(decoder(code))`` w.r.t. ``code`` (detached), with ``decoder`` frozen.

    Args:
        code: latent code (B, C, h, w); not modified, its graph is not used.
        decoder: maps the code to the output space; an ``nn.Module`` is frozen (see :func:`frozen`).
        loss_fn: task loss of the decoder output (MSE to the clean image, CE to the label...).
    """
    leaf = code.detach().requires_grad_(True)
    ctx = frozen(decoder) if isinstance(decoder, nn.Module) else contextlib.nullcontext()
    with torch.enable_grad(), ctx:
        loss = loss_fn(decoder(leaf))
        (grad,) = torch.autograd.grad(loss, [leaf])
    return grad.detach()


def _uniform(
    shape: Sequence[int], high: float, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    return torch.rand(tuple(shape), generator=generator, device=device) * high


def _top_mask(scores: torch.Tensor, p: float, soft: bool, generator: torch.Generator | None) -> torch.Tensor:
    """(B, N) scores -> (B, N) mask: the ``int(N * p)`` largest scores per row get 0 or U(0, 0.5)."""
    b, n = scores.shape
    k = int(n * float(p))
    mask = torch.ones_like(scores)
    if k <= 0:
        return mask
    idx = torch.topk(scores, k, dim=1, largest=True, sorted=False).indices
    values = (
        _uniform((b, k), 0.5, generator, scores.device).to(scores.dtype)
        if soft
        else torch.zeros((b, k), dtype=scores.dtype, device=scores.device)
    )
    return mask.scatter(1, idx, values)


def channel_dropout_mask(code: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random channel dropout mask (B, C, 1, 1): 0 with probability ``p``, else ``1 / (1 - p)``."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {p}")
    keep = torch.rand((code.shape[0], code.shape[1], 1, 1), generator=generator, device=code.device) >= p
    return keep.to(code.dtype) / (1.0 - p)


def channel_mask(
    grad: torch.Tensor, p: float, soft: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Targeted channel mask (B, C, 1, 1) from the code gradient (B, C, h, w): top ``int(C p)`` channels."""
    b, c = grad.shape[:2]
    return _top_mask(grad.reshape(b, c, -1).mean(2), p, soft, generator).view(b, c, 1, 1)


def spatial_mask(
    grad: torch.Tensor, p: float, soft: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Targeted spatial mask (B, 1, h, w) from the code gradient (B, C, h, w): top ``int(h w p)`` locations."""
    b, _, h, w = grad.shape
    return _top_mask(grad.mean(1).reshape(b, h * w), p, soft, generator).view(b, 1, h, w)


class LatentMasker:
    """Masks latent codes with one mask kind drawn at random per step.

    Args:
        kinds: the pool (subset of :data:`MASK_KINDS`).
        max_p: targeted masks draw ``p ~ U(0, max_p)``.
        soft: soft targeted masks (factor ``U(0, 0.5)``) instead of zeros.
        dropout_p: rate of the random channel dropout.
        seed: seed of the masker's own generator (kind, ``p``, dropout and soft factors).
    """

    def __init__(
        self,
        kinds: Sequence[str] = MASK_KINDS,
        max_p: float = 0.5,
        soft: bool = True,
        dropout_p: float = 0.5,
        seed: int | None = 0,
    ) -> None:
        kinds = tuple(kinds)
        bad = [k for k in kinds if k not in MASK_KINDS]
        if not kinds or bad:
            raise ValueError(f"mask kinds must be a non-empty subset of {list(MASK_KINDS)}, got {list(kinds)}")
        if not 0.0 <= max_p <= 1.0:
            raise ValueError(f"max_p must be in [0, 1], got {max_p}")
        self.kinds = kinds
        self.max_p = float(max_p)
        self.soft = bool(soft)
        self.dropout_p = float(dropout_p)
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        """The masker's generator on ``device`` (seeded once with ``seed``)."""
        device = torch.device(device)
        if device not in self._generators:
            g = torch.Generator(device=device)
            if self.seed is None:
                g.seed()
            else:
                g.manual_seed(int(self.seed))
            self._generators[device] = g
        return self._generators[device]

    def draw_kind(self) -> str:
        """One mask kind from the pool, uniformly."""
        i = int(torch.randint(len(self.kinds), (1,), generator=self.generator("cpu")))
        return self.kinds[i]

    def draw_p(self) -> float:
        """A masking proportion ``p ~ U(0, max_p)``."""
        return float(torch.rand((), generator=self.generator("cpu"))) * self.max_p

    def mask(
        self,
        code: torch.Tensor,
        kind: str,
        decoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
        loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask ``code`` with ``kind``; returns ``(masked code (detached), mask)``.

        Targeted kinds need ``decoder`` and ``loss_fn`` (see :func:`code_gradient`).
        """
        code = code.detach()
        g = self.generator(code.device)
        if kind == "dropout":
            m = channel_dropout_mask(code, self.dropout_p, g)
        elif kind in ("channel", "spatial"):
            if decoder is None or loss_fn is None:
                raise ValueError(f"the {kind!r} mask is targeted: pass the decoder and the task loss")
            grad = code_gradient(code, decoder, loss_fn)
            fn = channel_mask if kind == "channel" else spatial_mask
            m = fn(grad, self.draw_p(), self.soft, g)
        else:
            raise ValueError(f"unknown mask kind {kind!r}; use one of {list(MASK_KINDS)}")
        return code * m, m
