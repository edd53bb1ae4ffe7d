"""The S2S2 trainer: MONAI's :class:`~monai.engines.SupervisedTrainer` fed with (x0, x1, y).

Each iteration runs the network twice, once on the real slice x0 (``image``) and once on a stack
member x1 (``image_stack``), in **two forward passes** (one batch of 2B would mix BatchNorm
statistics), and sums the segmentation loss of both:

    loss = Lseg(net(x0), y) + Lseg(net(x1), y)

The data path is MONAI's: :class:`PrepareStackBatch` (a ``prepare_batch``) moves x0, y and x1 to the
device and hands x1 on as a keyword argument; :class:`PairedTrainer` writes the iteration out
explicitly (same steps, AMP, gradient accumulation and ``IterationEvents`` as MONAI 1.6's
``SupervisedTrainer._iteration``: FORWARD_COMPLETED after both passes, LOSS_COMPLETED,
BACKWARD_COMPLETED, MODEL_COMPLETED), with two small hooks a variant overrides (nnU-Net style):
``forward`` (the passes) and ``loss`` (the terms). The consistency terms ``alpha * D(f(x0), f(x1))``
are added at LOSS_COMPLETED by :class:`~s2s2_monai.training.handlers.ConsistencyHandler` event
handlers. A batch without ``image_stack`` (or ``use_stack=False``) runs the plain single-pass
baseline, identical to ``SupervisedTrainer``.

Extra keys in ``engine.state.output``: ``pred_stack`` (prediction of x1), ``loss_seg`` and
``loss_seg_stack`` (detached terms), plus ``loss_<name>`` from each consistency handler.

**Divergence stops the run.** A non-finite total loss (checked after LOSS_COMPLETED, before the backward
pass and the optimizer step) raises an :class:`~s2s2_monai.errors.S2S2InputError` naming the epoch, the
iteration and every term (``error: training loss is nan at epoch 3, iteration 17 of 40 (loss_seg nan, ...)``,
exit 2 under the bundles' excepthook); after the last step of each epoch the weights are checked finite too.
Nothing is saved from the diverged state: the error leaves the engine before EPOCH_COMPLETED and COMPLETED,
where the checkpoint and ``model.pt`` are written.

**Resume.** The trainer's checkpointed state (``state_dict``) carries, besides ignite's counters, the
seeding record of :class:`~s2s2_monai.training.seeding.EpochSeeding` (``seeding``) and the AMP
``GradScaler`` state (``amp_scaler``): plain numbers, loadable with ``weights_only=True``.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Mapping
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents, PrepareBatch, default_prepare_batch
from monai.utils import CommonKeys as Keys

from s2s2_monai.errors import S2S2InputError, user_error_in

__all__ = ["PairedTrainer", "PrepareStackBatch", "S2S2Trainer", "STACK_KEY", "PRED_STACK_KEY"]

#: batch key of the stack member x1 and output key of its prediction
STACK_KEY = "image_stack"
PRED_STACK_KEY = "pred_stack"

#: how to get out of a diverged training run
DIVERGED_FIX = "lower --learning_rate, check the data (s2s2 check-data) or resume from an earlier checkpoint"

logger = logging.getLogger(__name__)


def _drop_user_error_echo(record: logging.LogRecord) -> bool:
    """Logging filter: ignite logs an exception it is about to re-raise ("... terminating due to exception: ...");
    for bad input the one ``error:`` line printed at the top says it, so the echo is dropped."""
    return not ("terminating due to exception" in record.getMessage() and user_error_in(sys.exc_info()[1]))


def _format_terms(out: Mapping) -> str:
    terms = []
    for k, v in out.items():
        k = str(k)
        if k.startswith("loss_") and isinstance(v, torch.Tensor) and v.numel() == 1:
            terms.append(f"{k} {float(v):.4g}")
    return ", ".join(terms)


class PrepareStackBatch(PrepareBatch):
    """``prepare_batch`` for pairs: ``(x0, y, (), {stack_key: x1})`` on the device (x1 absent: ``{}``)."""

    def __init__(self, stack_key: str = STACK_KEY) -> None:
        self.stack_key = stack_key

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs: Any):
        x0, y = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        x1 = batchdata.get(self.stack_key) if isinstance(batchdata, Mapping) else None
        extra = (
            {}
            if x1 is None
            else {self.stack_key: torch.as_tensor(x1).to(device=device, non_blocking=non_blocking, **kwargs)}
        )
        return x0, y, (), extra


class PairedTrainer(SupervisedTrainer):
    """A ``SupervisedTrainer`` whose iteration is written out with two hooks, for (x0, x1, y) training.

    Subclasses implement :meth:`forward` (returns the passes, ``"pred"`` at least) and :meth:`loss`
    (returns the total loss and detached terms); nothing travels through attributes of the trainer.

    Args:
        stack_key: batch key of x1 (default ``"image_stack"``), same intensity space as ``image``.
        use_stack: ``False`` ignores x1 even when the batch has it.
        kwargs: every argument of ``SupervisedTrainer`` (``prepare_batch`` defaults to :class:`PrepareStackBatch`).
    """

    def __init__(self, *args: Any, stack_key: str = STACK_KEY, use_stack: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("prepare_batch", PrepareStackBatch(stack_key))
        self.seeding: dict | None = None  # set by EpochSeeding.attach (the bundles' resume handler)
        super().__init__(*args, **kwargs)
        self.stack_key = stack_key
        self.use_stack = bool(use_stack)
        if _drop_user_error_echo not in self.logger.filters:
            self.logger.addFilter(_drop_user_error_echo)

    def _handle_exception(self, e: BaseException) -> None:
        """Bad input (an :class:`~s2s2_monai.errors.S2S2InputError` or a file-system refusal behind ``e``)
        stops the run with its one-line message; MONAI's handlers would log a traceback first."""
        if user_error_in(e) is not None:
            raise e
        super()._handle_exception(e)

    def reseed(self, seed: int) -> None:
        """Re-seed the trainer's own generators at the start of an epoch (called by
        :class:`~s2s2_monai.training.seeding.EpochSeeding`); the global ones are seeded already."""

    def state_dict(self):
        """Ignite's state plus ``seeding`` (the seed record) and ``amp_scaler`` (the ``GradScaler`` state)."""
        state = super().state_dict()
        if self.seeding is not None:
            state["seeding"] = dict(self.seeding)
        if getattr(self, "scaler", None) is not None:
            state["amp_scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Ignite's ``load_state_dict``; restores the ``GradScaler`` and warns when the checkpoint was written
        with another seed (or before checkpoints recorded one): the resumed run then differs from an
        uninterrupted one."""
        state = dict(state_dict)
        seeding, scaler = state.pop("seeding", None), state.pop("amp_scaler", None)
        super().load_state_dict(state)
        if scaler and getattr(self, "scaler", None) is not None:
            self.scaler.load_state_dict(scaler)
        if self.seeding is None:
            return
        if seeding is None:
            logger.warning(
                "the checkpoint records no seed (written by an older version): resuming with seed %s; the result "
                "differs from an uninterrupted run",
                self.seeding.get("seed"),
            )
        elif any(seeding.get(k) != self.seeding.get(k) for k in ("seed", "rank", "scheme")):
            logger.warning(
                "the checkpoint was written with seed %s (rank %s), this run has seed %s (rank %s): resuming with "
                "seed %s; the result is neither run's uninterrupted result",
                seeding.get("seed"),
                seeding.get("rank"),
                self.seeding.get("seed"),
                self.seeding.get("rank"),
                self.seeding.get("seed"),
            )

    def _where(self, engine: PairedTrainer) -> str:
        length = engine.state.epoch_length
        if not length:
            return f"epoch {engine.state.epoch}, iteration {engine.state.iteration}"
        return f"epoch {engine.state.epoch}, iteration {(engine.state.iteration - 1) % length + 1} of {length}"

    def _check_loss(self, engine: PairedTrainer, out: Mapping) -> None:
        """Stop the run (one ``error:`` line) when the total loss is NaN/inf, naming epoch, iteration and terms."""
        loss = out[Keys.LOSS]
        value = float(loss.detach().float().sum()) if isinstance(loss, torch.Tensor) else float(loss)
        if math.isfinite(value):
            return
        terms = _format_terms(out)
        raise S2S2InputError(
            None,
            f"training loss is {value} at {self._where(engine)}" + (f" ({terms})" if terms else ""),
            DIVERGED_FIX,
        )

    def _check_weights(self, engine: PairedTrainer) -> None:
        """Stop the run when the step left NaN/inf weights (before the epoch's checkpoint is written)."""
        from s2s2_monai.checkpoints import nonfinite_tensors
        from s2s2_monai.networks.wrappers import unwrap_network

        bad = nonfinite_tensors(unwrap_network(engine.network).state_dict())
        if bad:
            raise S2S2InputError(
                None,
                f"training diverged at {self._where(engine)}: the optimizer step left NaN/inf in {len(bad)} weight "
                f"tensor(s) (first: {bad[0]})",
                DIVERGED_FIX,
            )

    def forward(
        self, engine: PairedTrainer, x0: torch.Tensor, x1: torch.Tensor | None, args: tuple, kwargs: dict
    ) -> dict:
        """The forward passes of one iteration: ``{"pred": ..., ...}`` (kept in ``state.output``)."""
        raise NotImplementedError

    def loss(self, engine: PairedTrainer, passes: dict, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """``(total loss, {"loss_<term>": detached value})`` from the passes."""
        raise NotImplementedError

    def _iteration(self, engine: PairedTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        x0, y, args, kwargs = (*batch, (), {}) if len(batch) == 2 else batch
        kwargs = dict(kwargs)
        x1 = kwargs.pop(self.stack_key, None)
        x1 = x1 if self.use_stack else None
        engine.state.output = out = {Keys.IMAGE: x0, Keys.LABEL: y}

        def compute() -> None:
            passes = self.forward(engine, x0, x1, args, kwargs)
            out.update({Keys.PRED if k == "pred" else k: v for k, v in passes.items() if not k.startswith("_")})
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            total, terms = self.loss(engine, passes, y)
            out.update(terms)
            out[Keys.LOSS] = total
            engine.fire_event(IterationEvents.LOSS_COMPLETED)

        acc = engine.accumulation_steps
        local = (
            (engine.state.iteration - 1) % engine.state.epoch_length
            if engine.state.epoch_length
            else engine.state.iteration - 1
        )
        zero_grad = acc <= 1 or local % acc == 0
        step = (
            acc <= 1
            or (local + 1) % acc == 0
            or (engine.state.epoch_length is not None and local + 1 == engine.state.epoch_length)
        )
        engine.network.train()
        if zero_grad:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        scaler = engine.scaler if engine.amp else None
        if scaler is not None:
            with torch.autocast("cuda", **engine.amp_kwargs):
                compute()
        else:
            compute()
        self._check_loss(engine, out)  # before backward and step: a diverged loss never reaches the weights
        loss = out[Keys.LOSS] / acc if acc > 1 else out[Keys.LOSS]  # read after LOSS_COMPLETED: handlers add terms
        (scaler.scale(loss) if scaler is not None else loss).backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if step:
            if scaler is not None:
                scaler.step(engine.optimizer)
                scaler.update()
            else:
                engine.optimizer.step()
        if engine.state.epoch_length is not None and local + 1 == engine.state.epoch_length:
            self._check_weights(engine)  # the epoch's checkpoint is written next
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return out


class S2S2Trainer(PairedTrainer):
    """:class:`PairedTrainer` with a second forward pass on the stack member and ``Lseg`` on both.

    Takes every argument of ``SupervisedTrainer`` plus ``stack_key`` and ``use_stack`` (``False``: the
    plain baseline, identical to ``SupervisedTrainer``).
    """

    def forward(self, engine, x0, x1, args, kwargs) -> dict:
        passes = {"pred": engine.inferer(x0, engine.network, *args, **kwargs)}
        if x1 is not None:
            passes[PRED_STACK_KEY] = engine.inferer(x1, engine.network, *args, **kwargs)
        return passes

    def loss(self, engine, passes, y) -> tuple[torch.Tensor, dict]:
        loss = engine.loss_function(passes["pred"], y).mean()
        terms = {"loss_seg": loss.detach()}
        if PRED_STACK_KEY in passes:
            loss_stack = engine.loss_function(passes[PRED_STACK_KEY], y).mean()
            terms["loss_seg_stack"] = loss_stack.detach()
            loss = loss + loss_stack
        return loss, terms
