"""Random-access slice throughput: SliceDataset (volumes cached once) vs reloading the volume per
access (the naive way), plus the resident memory of the cache vs the raw size of its arrays.

    python benchmarks/bench_slices.py [--cases 6 --shape 256 256 64 --accesses 300]
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time

import numpy as np

from s2s2_monai.data.datalist import load_datalist
from s2s2_monai.data.phantom import write_demo_data
from s2s2_monai.data.slices import SliceDataset, VolumeCache, _release_free_heap
from s2s2_monai.data.volumes import load_case
from s2s2_monai.transforms import intensity_for


def rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", type=int, default=6)
    ap.add_argument("--shape", type=int, nargs=3, default=(256, 256, 64))
    ap.add_argument("--accesses", type=int, default=300)
    ap.add_argument("--naive-accesses", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dl_path = write_demo_data(tmp, cases=args.cases, shape=tuple(args.shape), progress=False)
        dl = load_datalist(dl_path)
        entries = dl.items("training")
        load_case(entries[0]["image"], entries[0]["label"], intensity=intensity_for("CT"))  # warm up imports/allocator
        gc.collect()
        _release_free_heap()  # same allocator state before and after
        before = rss_bytes()
        t0 = time.perf_counter()
        cache = VolumeCache(dl, "training", progress=False)
        load_s = time.perf_counter() - t0
        gc.collect()
        resident = rss_bytes() - before
        ds = SliceDataset(cache)
        rng = np.random.default_rng(0)
        idx = rng.integers(0, len(ds), args.accesses)
        t0 = time.perf_counter()
        for i in idx:
            ds[int(i)]
        cached_rate = args.accesses / (time.perf_counter() - t0)

        intensity = intensity_for("CT")
        t0 = time.perf_counter()
        for i in idx[: args.naive_accesses]:
            ci, z = ds.index[int(i)]
            e = entries[ci]
            case = load_case(e["image"], e["label"], intensity=intensity)
            _ = case.image[None, :, :, z].copy(), case.label[None, :, :, z].copy()
        naive_rate = args.naive_accesses / (time.perf_counter() - t0)

    print(f"volumes: {len(cache)} x {tuple(args.shape)}, {len(ds)} slices, cache load {load_s:.2f} s")
    print(f"cached SliceDataset : {cached_rate:10.1f} slices/s")
    print(f"naive reload/access : {naive_rate:10.1f} slices/s")
    print(f"speed-up            : {cached_rate / naive_rate:10.1f}x (target >= 5x)")
    print(
        f"cache arrays {cache.nbytes / 2**20:.1f} MiB, resident growth {resident / 2**20:.1f} MiB, "
        f"ratio {resident / cache.nbytes:.2f} (target <= 1.3)"
    )


if __name__ == "__main__":
    main()
