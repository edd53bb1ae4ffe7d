"""S2S2 training step vs the plain baseline, same network, same batch, same run; data-wait fraction.

Both runs use the bundle's real pipeline (phantom volumes -> :class:`~s2s2_monai.data.slices.SliceDataset`
-> appearance-generator stack -> :class:`~s2s2_monai.stack.pairs.StackPairDataset` -> the bundle's
random rotate/flip + resize -> MONAI DataLoader with workers) and the same trainer class:

- ``baseline``: :class:`~s2s2_monai.training.trainer.S2S2Trainer` on plain slices, no handlers
  (bit-identical to MONAI's ``SupervisedTrainer``: one forward, one backward);
- ``s2s2``: x0 and x1 in two forward passes + the ``enc``/``dec`` consistency handlers.

Two measurements, same network and batch size:

1. *Step ratio*: one batch from the S2S2 pipeline (and the same batch without ``image_stack`` for
   the baseline); baseline and S2S2 iterations are interleaved one by one (ignite runs resumed one
   epoch at a time), so machine-load drift hits both alike. The ratio is the median of the per-pair
   ratios (target <= 2.05x; two images per step make 2.0x the floor).
2. *Data wait*: full epochs through the DataLoader; per iteration the wait for the batch (ignite
   ``GET_BATCH_STARTED`` -> ``GET_BATCH_COMPLETED``) vs the whole step; the S2S2 share should be
   <= 5 %.

On CPU, glibc hands large activation buffers back to the OS after every step (mmap threshold), so
the S2S2 step, which holds two graphs, pays extra page faults (about 2.14x instead of 2.04x for
the same work). ``--malloc-tuning on`` (default) re-executes the benchmark with
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` raised, as CPU tuning guides recommend
(or use jemalloc/tcmalloc); it applies to both modes. GPUs have a caching allocator anyway.

    python benchmarks/bench_train.py [--net unetr|basic_unet] [--size 128] [--batch 8] [--pairs 20]
        [--workers 2] [--threads N] [--device cpu|cuda] [--malloc-tuning on|off]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.losses import DiceCELoss
from monai.networks.nets import UNETR, BasicUNet
from monai.transforms import Compose, EnsureTyped, RandFlipd, RandRotate90d, RandRotated, Resized
from monai.utils import set_determinism

from s2s2_monai.data.phantom import write_demo_data
from s2s2_monai.stack.build import build_stack
from s2s2_monai.training.datasets import training_dataset
from s2s2_monai.training.handlers import ConsistencyHandler
from s2s2_monai.training.taps import get_tap_preset
from s2s2_monai.training.trainer import S2S2Trainer

KEYS = ["image", "image_stack", "label"]


def _transform(size: int) -> Compose:
    """The bundle's training transform (bundles/synapse/train.json, train#preprocessing)."""
    modes = ["bilinear", "bilinear", "nearest"]
    return Compose(
        [
            RandRotate90d(KEYS, prob=0.5, max_k=3, allow_missing_keys=True),
            RandFlipd(KEYS, prob=0.25, spatial_axis=0, allow_missing_keys=True),
            RandFlipd(KEYS, prob=0.25, spatial_axis=1, allow_missing_keys=True),
            RandRotated(KEYS, range_x=0.349, prob=0.5, mode=modes, padding_mode="zeros", allow_missing_keys=True),
            Resized(KEYS, spatial_size=(size, size), mode=modes, allow_missing_keys=True),
            EnsureTyped(KEYS, track_meta=False, allow_missing_keys=True),
        ]
    )


def _network(name: str, size: int, paper: bool) -> torch.nn.Module:
    if name == "unetr":
        width = (
            dict(hidden_size=768, mlp_dim=3072, num_heads=12, feature_size=16)
            if paper
            else dict(hidden_size=192, mlp_dim=768, num_heads=4, feature_size=16)
        )
        return UNETR(1, 9, img_size=(size, size), spatial_dims=2, norm_name="batch", **width)
    return BasicUNet(2, 1, 9, features=(32, 32, 64, 128, 256, 32), norm="batch")


def _trainer(mode: str, args, loader, device: torch.device, epoch_length: int | None = None) -> S2S2Trainer:
    set_determinism(seed=0)
    net = _network(args.net, args.size, args.paper).to(device)
    handlers = []
    if mode == "s2s2":
        taps = get_tap_preset(args.net)
        handlers = [ConsistencyHandler(taps["enc"], 1.0, "enc"), ConsistencyHandler(taps["dec"], 1.0, "dec")]
    return S2S2Trainer(
        device=device,
        max_epochs=1,
        epoch_length=epoch_length,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.5, lambda_ce=0.5),
        train_handlers=handlers,
        decollate=False,
        amp=device.type == "cuda",
    )


class _Clock:
    """Per-iteration batch wait and compute time of an ignite engine (after ``skip`` iterations)."""

    def __init__(self, engine, device: torch.device, skip: int = 0) -> None:
        self.device, self.skip, self.t = device, skip, {}
        self.data: list[float] = []
        self.compute: list[float] = []
        engine.add_event_handler(Events.GET_BATCH_STARTED, lambda e: self.t.__setitem__("b", time.perf_counter()))
        engine.add_event_handler(
            Events.GET_BATCH_COMPLETED, lambda e: self.t.__setitem__("bd", time.perf_counter() - self.t["b"])
        )
        engine.add_event_handler(Events.ITERATION_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._done)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _start(self, e) -> None:
        self._sync()
        self.t["i"] = time.perf_counter()

    def _done(self, e) -> None:
        self._sync()
        if e.state.iteration > self.skip:
            self.data.append(self.t["bd"])
            self.compute.append(time.perf_counter() - self.t["i"])


def _loader(args, datalist: Path, stack: Path | None) -> DataLoader:
    ds = training_dataset(datalist, transform=_transform(args.size), stack_dir=stack)
    return DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.workers, drop_last=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--net", choices=["unetr", "basic_unet"], default="unetr")
    p.add_argument("--paper", action="store_true", help="ViT-B/16 UNETR (the paper-scale bundle network; GPU)")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--pairs", type=int, default=20, help="interleaved baseline/S2S2 steps for the ratio")
    p.add_argument("--epochs", type=int, default=1, help="DataLoader epochs per mode for the data-wait share")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--malloc-tuning", choices=["on", "off"], default="on", help="raise glibc's mmap/trim thresholds (CPU)"
    )
    args = p.parse_args()
    if args.malloc_tuning == "on" and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 40), "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        datalist = write_demo_data(Path(tmp) / "data", cases=4, seed=0, shape=(128, 128, 24), progress=False)
        stack = Path(tmp) / "stack"
        build_stack(datalist, stack, generator="appearance", n=4, seed=0, progress=False, contact_sheet=False)
        print(f"data + stack ready in {time.perf_counter() - t0:.1f} s")

        # 1. step ratio on one batch, interleaved
        batch = next(iter(_loader(args, datalist, stack)))
        plain = {k: v for k, v in batch.items() if k != "image_stack"}
        engines = {
            "baseline": _trainer("baseline", args, [plain], device),
            "s2s2": _trainer("s2s2", args, [batch], device),
        }
        clocks = {m: _Clock(e, device, skip=args.warmup) for m, e in engines.items()}
        for epoch in range(1, args.warmup + args.pairs + 1):
            for e in engines.values():
                e.state.max_epochs = epoch  # MONAI's Workflow.run() resumes up to state.max_epochs
                e.run()
        ratios = [s / b for s, b in zip(clocks["s2s2"].compute, clocks["baseline"].compute)]

        # 2. data wait through the real DataLoader
        wait, step = {}, {}
        for mode in ("baseline", "s2s2"):
            loader = _loader(args, datalist, stack if mode == "s2s2" else None)
            eng = _trainer(mode, args, loader, device)
            clock = _Clock(eng, device, skip=args.warmup)
            eng.state.max_epochs = args.epochs
            eng.run()
            total = sum(clock.data) + sum(clock.compute)
            wait[mode], step[mode] = sum(clock.data) / total, total / len(clock.compute)
            del loader, eng

    print(
        f"net={args.net}{' (paper size)' if args.paper else ''} input={args.size} batch={args.batch} device={device} "
        f"threads={torch.get_num_threads()} workers={args.workers} malloc-tuning={args.malloc_tuning}"
    )
    b, s2 = statistics.median(clocks["baseline"].compute), statistics.median(clocks["s2s2"].compute)
    print(f"interleaved steps: baseline {b:.4f} s, S2S2 {s2:.4f} s (medians of {len(ratios)})")
    print(
        f"S2S2 / baseline step time (median of paired ratios): {statistics.median(ratios):.3f}x  (target <= 2.05x; 2.0x floor)"
    )
    for mode in ("baseline", "s2s2"):
        print(f"DataLoader run, {mode:8s}: {step[mode]:.4f} s/step, waiting for data {100 * wait[mode]:.2f} %")
    print(f"S2S2 data wait share: {100 * wait['s2s2']:.2f} %  (target <= 5 %)")


if __name__ == "__main__":
    main()
