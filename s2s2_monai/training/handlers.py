"""The S2S2 consistency terms as ignite event handlers, and loss logging helpers.

A :class:`ConsistencyHandler` taps one feature of the network (see
:mod:`s2s2_monai.training.taps`), records it for x0 and x1 during the two forward passes of
:class:`~s2s2_monai.training.trainer.S2S2Trainer`, and at ``IterationEvents.LOSS_COMPLETED`` adds

    alpha * D(f(x0), f(x1)),   D = 1 - cos over the channel dimension

to ``engine.state.output["loss"]`` before the backward pass, storing the unweighted term as
``engine.state.output["loss_<name>"]``. Attach one per term (``enc``, ``dec``) through the
bundle's ``train#handlers``; without them (or on batches without a stack member) training is the
plain baseline. :func:`loss_terms` turns the output into ``{"loss": ..., "loss_enc": ...}`` so
``StatsHandler`` / ``TensorBoardStatsHandler`` log every term separately.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from torch import nn

from s2s2_monai.training.consistency import consistency_distance
from s2s2_monai.training.taps import TAP_PRESETS, FeatureTap, TapSpec, get_tap_preset

__all__ = ["ConsistencyHandler", "loss_terms"]


class ConsistencyHandler:
    """Adds ``alpha * D(f(x0), f(x1))`` for one tapped feature ``f`` to the training loss.

    Args:
        tap: what to tap: a :class:`TapSpec`, a dict of its fields, a module name, or
            ``"<preset>.<enc|dec>"`` (e.g. ``"unetr.enc"``, see :data:`~s2s2_monai.training.taps.TAP_PRESETS`).
        alpha: weight of the term (0 logs the term without training on it).
        name: term name; logged as ``loss_<name>``.
        network: network to tap; default the engine's ``network`` when the run starts.
        eps: norm guard of the cosine.
    """

    def __init__(
        self,
        tap: TapSpec | dict | str,
        alpha: float = 1.0,
        name: str = "enc",
        network: nn.Module | None = None,
        eps: float = 1e-8,
    ) -> None:
        if isinstance(tap, str) and "." in tap and tap.split(".", 1)[0] in TAP_PRESETS:
            preset, part = tap.split(".", 1)
            tap = get_tap_preset(preset)[part]
        self.spec = TapSpec.of(tap)
        self.alpha = float(alpha)
        self.name = name
        self.key = f"loss_{name}"
        self.eps = eps
        self.tap: FeatureTap | None = FeatureTap(network, self.spec) if network is not None else None

    def attach(self, engine: Engine) -> None:
        """Register on ``engine`` (an :class:`~s2s2_monai.training.trainer.S2S2Trainer`)."""
        engine.add_event_handler(Events.STARTED, self._install)
        engine.add_event_handler(Events.ITERATION_STARTED, self._arm)
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self.add_term)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._disarm)

    def _install(self, engine: Engine) -> None:
        if self.tap is None:
            self.tap = FeatureTap(engine.network, self.spec)

    def _arm(self, engine: Engine) -> None:
        self.tap.arm()

    def _disarm(self, engine: Engine) -> None:
        self.tap.disarm()

    def add_term(self, engine: Engine) -> None:
        """Add the weighted term to ``engine.state.output["loss"]`` (no-op without a stack pass)."""
        feats = self.tap.features
        self.tap.disarm()
        if len(feats) < 2:  # baseline batch: one forward pass only
            return
        if len(feats) > 2:
            raise RuntimeError(
                f"tap {self.spec.module!r} fired {len(feats)} times in one iteration; tap a module that runs once per forward pass"
            )
        out = engine.state.output
        if self.alpha == 0.0:
            with torch.no_grad():
                out[self.key] = consistency_distance(feats[0], feats[1], self.spec.channel_dim, self.eps)
            return
        term = consistency_distance(feats[0], feats[1], self.spec.channel_dim, self.eps)
        out[self.key] = term.detach()
        out[Keys.LOSS] = out[Keys.LOSS] + self.alpha * term


def _scalar(v: Any) -> float | None:
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return float(v.detach().item())
    if isinstance(v, (int, float)):
        return float(v)
    return None


def loss_terms(output: Mapping | Sequence | None) -> dict[str, float] | None:
    """``{"loss": total, "loss_seg": ..., "loss_enc": ...}`` from a trainer's ``engine.state.output``.

    Works on the batch dict and on its decollated list (first item). Use as ``output_transform`` of
    ``StatsHandler`` / ``TensorBoardStatsHandler`` to log each term on its own.
    """
    if output is None:
        return None
    if isinstance(output, Sequence) and not isinstance(output, (str, bytes)):
        if not output:
            return None
        output = output[0]
    terms = {}
    for k, v in output.items():
        k = str(k)
        if k == Keys.LOSS or k.startswith("loss_"):
            value = _scalar(v)
            if value is not None:
                terms[k] = value
    return terms
