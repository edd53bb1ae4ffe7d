"""Step time of cooperative training (FTN + STN, latent masks) vs the plain supervised baseline.

Same :class:`~s2s2_monai.cooperative.CooperativeNet`, same batch, same optimizer (Adam):

- ``baseline``: one supervised step on the FTN (forward, cross-entropy, backward, step), i.e. what
  MONAI's ``SupervisedTrainer`` does with this network;
- ``standard``: the cooperative standard terms only (FTN on the noisy image, reconstruction,
  STN on the prediction and on the ground truth), no latent augmentation;
- ``cooperative``: standard + hard-example terms (mask gradients with frozen decoders, hard image
  and segmentation, their losses), one backward pass.

Prints median seconds per step and the ratios to the baseline.

    python benchmarks/bench_cooperative.py [--size 128] [--batch 8] [--steps 6] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from s2s2_monai.cooperative import CooperativeNet, LatentMasker, cooperative_loss, label_ce


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(step, steps: int, warmup: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        _sync(device)
        t = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t)
    return times


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128, help="slice size H = W (divisible by 16)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--classes", type=int, default=9)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads on CPU (0: leave as is)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = CooperativeNet(1, args.classes).to(device).train()
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    x = torch.rand(args.batch, 1, args.size, args.size, device=device)
    y = torch.randint(0, args.classes, (args.batch, 1, args.size, args.size), device=device).float()
    masker = LatentMasker(seed=0)

    def baseline():
        opt.zero_grad(set_to_none=True)
        label_ce(net.ftn(x), y).backward()
        opt.step()

    def standard():
        opt.zero_grad(set_to_none=True)
        cooperative_loss(net, x, y, masker=None)[0].backward()
        opt.step()

    def cooperative():
        opt.zero_grad(set_to_none=True)
        cooperative_loss(net, x, y, masker=masker)[0].backward()
        opt.step()

    res = {}
    for name, fn in [("baseline", baseline), ("standard", standard), ("cooperative", cooperative)]:
        res[name] = statistics.median(_time(fn, args.steps, args.warmup, device))
    params = sum(p.numel() for p in net.parameters())
    print(
        f"device {device} ({torch.get_num_threads()} threads), batch {args.batch} x 1 x {args.size} x {args.size}, {args.classes} classes, {params / 1e6:.2f} M parameters"
    )
    for name, t in res.items():
        print(f"{name:>12}: {t * 1000:8.1f} ms/step   ratio to baseline {t / res['baseline']:.2f}x")
    return res


if __name__ == "__main__":
    main()
