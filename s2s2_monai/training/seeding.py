"""Seeding: one reproducible random stream per DDP rank, re-derived at the start of every epoch.

**Per rank.** ``monai.utils.set_determinism(seed)`` on every rank gives every rank the *same* global RNG
state, so at each step all ranks would draw the same stack member and the same augmentation parameters: a
DDP run of N ranks then sees far less variety than N times the batch. :func:`seed_rank` seeds rank ``r``
with :func:`rank_seed` ``(seed, r)``, a value derived from ``(seed, r)`` by numpy's ``SeedSequence`` (so
streams of different ranks and different base seeds do not overlap as ``seed + rank`` would). Rank 0 of a
single process run gets ``rank_seed(seed, 0)``. This seeds what happens before training (network
initialisation; DDP then broadcasts rank 0's parameters).

**Per epoch (resume is the same run).** :class:`EpochSeeding` (attached by the bundles' resume handler,
:class:`~s2s2_monai.training.checkpoint_handlers.ResumeCheckpointLoader`) re-derives, at the start of
epoch ``k``, every random state the run draws from out of ``SeedSequence([seed, rank, k])``
(:func:`epoch_streams`):

- python ``random``, numpy's global state, torch's CPU and CUDA generators (dropout, the cooperative
  trainer's input noise, anything else drawing from the global state);
- the DataLoader's shuffle (the ``RandomSampler``'s own generator; a ``DistributedSampler`` is
  seeded by MONAI from its seed and the epoch) and the seeds of its workers (``loader.generator``);
- every training item (:class:`~s2s2_monai.training.datasets.TrainingDataset`): the stack member x1 and
  the MONAI random transforms of item ``i`` are drawn from ``SeedSequence([items, i])``, so an item does
  not depend on which worker builds it, on how many workers there are, or on how many items a
  persistent worker built before;
- the trainer's own generators (:meth:`~s2s2_monai.training.trainer.PairedTrainer.reseed`, e.g. the
  cooperative trainer's latent masks).

Why re-derive instead of saving generator states in the checkpoint: a checkpoint is written at the end of
an epoch, but the states that matter then live in places a checkpoint cannot reach or restore exactly:
persistent DataLoader workers (their transforms' ``RandomState`` and torch state advance with every item
they build, in an order that depends on prefetching), MONAI transforms rebuilt by the config, and the
global generators, which a resumed process consumes differently before training starts (network
initialisation, DataLoader construction). Deriving everything from ``(seed, rank, epoch)`` makes epoch ``k``
of a resumed run the same computation as epoch ``k`` of an uninterrupted run by construction, and the
checkpoint stays tensors and plain numbers (``torch.load(weights_only=True)``): it records only the seed
(:meth:`EpochSeeding.record`), so a resume with another seed is reported.
"""

from __future__ import annotations

import logging
import random

import numpy as np

__all__ = [
    "rank_seed",
    "seed_rank",
    "current_rank",
    "epoch_streams",
    "seed_globals",
    "EpochSeeding",
    "SEEDING_SCHEME",
]

logger = logging.getLogger(__name__)

#: Name of the per-epoch derivation recorded in checkpoints (changes if :func:`epoch_streams` changes).
SEEDING_SCHEME = "seedsequence(seed,rank,epoch)/v1"

#: The streams of one epoch, in the order :func:`epoch_streams` derives them.
STREAMS = ("global", "sampler", "loader", "items", "trainer")


def current_rank() -> int:
    """This process's rank in the default process group (0 when not distributed)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def rank_seed(seed: int, rank: int) -> int:
    """The seed of ``rank`` for base ``seed``: a 31-bit value from ``SeedSequence([seed, rank])``."""
    if seed < 0 or rank < 0:
        raise ValueError(f"seed and rank must be >= 0, got seed={seed}, rank={rank}")
    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1, dtype=np.uint32)[0] >> 1)


def seed_rank(seed: int, rank: int | None = None) -> int:
    """``monai.utils.set_determinism`` with this rank's seed (default: the current process's rank); returns it."""
    from monai.utils import set_determinism

    rank = current_rank() if rank is None else int(rank)
    value = rank_seed(seed, rank)
    set_determinism(seed=value)
    logger.info("rank %d seeded with %d (base seed %d)", rank, value, seed)
    return value


def epoch_streams(seed: int, rank: int, epoch: int) -> dict[str, int]:
    """Independent 63-bit seeds of epoch ``epoch`` on ``rank``: ``{"global", "sampler", "loader", "items", "trainer"}``.

    All from ``SeedSequence([seed, rank, epoch])``; the same arguments give the same values in any process.
    """
    if min(seed, rank, epoch) < 0:
        raise ValueError(f"seed, rank and epoch must be >= 0, got {seed}, {rank}, {epoch}")
    words = np.random.SeedSequence([int(seed), int(rank), int(epoch)]).generate_state(len(STREAMS), dtype=np.uint64)
    return {name: int(w >> np.uint64(1)) for name, w in zip(STREAMS, words)}


def seed_globals(value: int) -> None:
    """Seed python ``random``, numpy's global state and torch's CPU and CUDA generators from ``value``."""
    import torch

    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)  # every CUDA device too


def _torch_generator(value: int):
    import torch

    return torch.Generator().manual_seed(value)


class EpochSeeding:
    """Re-derives every random state of a training run at the start of each epoch from ``(seed, rank, epoch)``.

    Attach it to the trainer (an ignite ``Engine`` with ``data_loader`` or ``state.dataloader``): at
    ``EPOCH_STARTED`` (before the epoch's DataLoader iterator exists) it seeds the global generators
    (:func:`seed_globals`), gives the loader's ``RandomSampler`` and the loader itself (worker seeds) fresh
    generators, hands the dataset its item seed (``set_epoch_seed``, see
    :class:`~s2s2_monai.training.datasets.TrainingDataset`; another dataset gets its MONAI transforms
    re-seeded with ``set_rnd``, exact for the main process and non-persistent workers only) and calls
    ``engine.reseed(seed)`` when the engine has it. Why this instead of saving generator states: see the
    module docstring.

    Args:
        seed: the run's base seed (the bundle's ``seed``).
        rank: this process's rank (default :func:`current_rank` when attached).
    """

    def __init__(self, seed: int, rank: int | None = None) -> None:
        seed = int(seed)
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.seed = seed
        self.rank = rank

    def record(self) -> dict:
        """What a checkpoint stores about the seeding: ``{"seed", "rank", "scheme"}`` (plain values)."""
        return {"seed": self.seed, "rank": int(self.rank or 0), "scheme": SEEDING_SCHEME}

    def attach(self, engine) -> None:
        """Register on ``engine`` and announce the record to it (``engine.seeding``, saved with its state)."""
        from ignite.engine import Events

        if self.rank is None:
            self.rank = current_rank()
        engine.seeding = self.record()
        if not engine.has_event_handler(self, Events.EPOCH_STARTED):
            engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine) -> None:
        self.apply(engine, int(engine.state.epoch))

    def apply(self, engine, epoch: int) -> dict[str, int]:
        """Seed everything for ``epoch``; returns the epoch's streams (:func:`epoch_streams`)."""
        from torch.utils.data import DataLoader, RandomSampler

        streams = epoch_streams(self.seed, int(self.rank or 0), epoch)
        seed_globals(streams["global"])
        loader = getattr(engine, "data_loader", None) or getattr(engine.state, "dataloader", None)
        if isinstance(loader, DataLoader):
            loader.generator = _torch_generator(streams["loader"])  # worker base seed of a new iterator
            if isinstance(loader.sampler, RandomSampler):
                loader.sampler.generator = _torch_generator(streams["sampler"])
            dataset = loader.dataset
            if hasattr(dataset, "set_epoch_seed"):
                dataset.set_epoch_seed(streams["items"])
            else:  # another dataset: its MONAI transforms per epoch (exact without workers or with non-persistent ones)
                from monai.data.utils import set_rnd
                from monai.utils import MAX_SEED

                set_rnd(dataset, streams["items"] % MAX_SEED)
        reseed = getattr(engine, "reseed", None)
        if callable(reseed):
            reseed(streams["trainer"])
        logger.debug("epoch %d seeded from (seed %d, rank %d)", epoch, self.seed, self.rank or 0)
        return streams
