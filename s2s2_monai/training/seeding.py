"""Per-rank seeding: one reproducible random stream per DDP rank (and, through it, per DataLoader worker).

``monai.utils.set_determinism(seed)`` on every rank gives every rank the *same* global RNG state, so at each
step all ranks draw the same stack member and the same augmentation parameters: a DDP run of N ranks then
sees far less variety than N times the batch. :func:`seed_rank` seeds rank ``r`` with
:func:`rank_seed` ``(seed, r)``, a value derived from ``(seed, r)`` by numpy's ``SeedSequence`` (so streams
of different ranks and different base seeds do not overlap as ``seed + rank`` would). Rank 0 of a single
process run gets ``rank_seed(seed, 0)``.

Everything random downstream comes from that global state: the stack member (torch's global RNG in
:class:`~s2s2_monai.stack.pairs.StackPairDataset`), MONAI's random transforms (seeded from torch's RNG when
MONAI's ``DataLoader`` is built, or per worker by its ``worker_init_fn``), and the workers' own seeds
(torch derives each worker's seed from the main process's RNG and the worker id). Network initialisation
differs between ranks too, which DDP removes by broadcasting rank 0's parameters. ``DistributedSampler``
keeps its own seed (the same on all ranks, as it must, to partition one permutation).
"""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["rank_seed", "seed_rank", "current_rank"]

logger = logging.getLogger(__name__)


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
