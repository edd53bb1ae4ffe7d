"""Stack storage and generation benchmark: this project's cache vs upstream's npz layout.

Upstream (ymp5078/Semantic-Stacking, ``ControlNet/generate_seg2image.py``) saves each slice's
stack with ``np.savez(path, image=results[1:])``: 16 float32 RGB images of 512x512 (the decoded
SD output in [-1, 1]), uncompressed, ~50 MB per slice; training loads the whole file to use one
member. Here: one uint8 channel per member, compressed per member, read one member at a time.

(a) bytes on disk per member, (b) time and bytes read to fetch one random member (page cache
warm for both), ratio printed (target >= 20x), (c) appearance-generator throughput vs batch size.

Masks are real: the TotalSegmentator example CT in ../shared/data (remapped to Synapse ids),
upsampled to 512x512 with nearest neighbour; the appearance generator is fitted on that CT.
Falls back to project phantoms when the shared data is absent.

Run: ``python benchmarks/bench_stack.py [--slices 4] [--reps 30]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import zoom

from s2s2_monai.data.slices import VolumeCache
from s2s2_monai.stack.appearance import AppearanceGenerator
from s2s2_monai.stack.cache import StackCache, entry_key, slice_seed, to_uint8
from s2s2_monai.stack.prompts import build_prompt

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def load_volumes(tmp: Path) -> tuple[VolumeCache, str]:
    if (SHARED / "ct").is_dir():
        from s2s2_monai.data.datalist import load_datalist

        return VolumeCache(
            load_datalist(REPO / "data_lists" / "totalseg_examples.json", SHARED), "training", progress=False
        ), "real CT (TotalSegmentator example)"
    from s2s2_monai.data.phantom import write_demo_data

    return VolumeCache(
        write_demo_data(tmp / "demo", cases=2, shape=(128, 128, 16), progress=False), "training", progress=False
    ), "phantom CT"


def masks_512(volumes: VolumeCache, count: int) -> list[np.ndarray]:
    """The ``count`` slices with most organs, upsampled to 512x512 (nearest)."""
    case = volumes.cases[0]
    order = sorted(range(case.num_slices), key=lambda z: -len(np.unique(case.label[:, :, z])))[:count]
    out = []
    for z in order:
        m = case.label[:, :, z]
        out.append(zoom(m, (512 / m.shape[0], 512 / m.shape[1]), order=0)[:512, :512].astype(np.uint8))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=4, help="masks to store (default 4)")
    ap.add_argument("--n", type=int, default=16, help="members per mask (default 16, as the paper)")
    ap.add_argument("--reps", type=int, default=30, help="random single-member fetches to time")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        volumes, source = load_volumes(tmp)
        gen = AppearanceGenerator.fit(volumes)
        masks = masks_512(volumes, args.slices)
        label_map = volumes.datalist.label_map
        spec = {"generator": gen.name, "settings": gen.settings(), "n": args.n, "seed": 0, "qc": None}
        cache = StackCache(tmp / "cache")
        keys, npz_paths = [], []
        print(f"masks: {len(masks)} x 512x512 from {source}; n = {args.n} members per mask\n")
        for i, mask in enumerate(masks):
            prompt = build_prompt(mask, label_map)
            images = gen.generate(mask[None], [prompt], [slice_seed(0, mask, prompt)], args.n)[0]
            key = entry_key(mask, prompt, spec)
            cache.write_entry(key, to_uint8(images))
            keys.append(key)
            # upstream layout: float32 RGB in [-1, 1], np.savez (uncompressed) of the 16 members
            rgb = np.repeat((images * 2 - 1)[..., None], 3, axis=-1).astype(np.float32)
            path = tmp / f"upstream_{i}.npz"
            np.savez(path, image=list(rgb))
            npz_paths.append(path)

        # (a) bytes on disk per member
        ours = sum(cache.entry_path(k).stat().st_size for k in keys) / (len(keys) * args.n)
        upstream = sum(p.stat().st_size for p in npz_paths) / (len(keys) * args.n)
        print("(a) bytes on disk per member (512x512)")
        print(
            f"    upstream np.savez float32 RGB : {upstream:12,.0f} B  ({upstream * 16 / 1e6:.1f} MB per 16-member slice)"
        )
        print(
            f"    s2s2_monai uint8 + zstd       : {ours:12,.0f} B  ({ours / 512**2:.3f} B/pixel, {ours * 16 / 1e6:.2f} MB per slice)"
        )
        print(f"    ratio                         : {upstream / ours:12.1f}x smaller\n")

        # (b) fetch one random member
        def fetch_ours(i, m):
            reader = StackCache(tmp / "cache")  # fresh reader: header read every time, like a new worker
            x = reader.read_member(keys[i], m)
            return x, reader.bytes_read

        def fetch_upstream(i, m):
            with np.load(npz_paths[i]) as z:
                arr = z["image"]  # upstream loads the whole stack, then indexes one member
            return arr[m], arr.nbytes

        picks = [(int(rng.integers(len(keys))), int(rng.integers(args.n))) for _ in range(args.reps)]
        for f in (fetch_ours, fetch_upstream):  # warm the page cache for both
            for i in range(len(keys)):
                f(i, 0)
        res = {}
        for name, f in (("ours", fetch_ours), ("upstream", fetch_upstream)):
            t0 = time.perf_counter()
            nbytes = 0
            for i, m in picks:
                _, b = f(i, m)
                nbytes += b
            res[name] = ((time.perf_counter() - t0) / len(picks), nbytes / len(picks))
        (t_o, b_o), (t_u, b_u) = res["ours"], res["upstream"]
        print("(b) fetch one random member (warm page cache, mean of", len(picks), "fetches)")
        print(f"    upstream np.load whole npz    : {t_u * 1e3:9.2f} ms, {b_u:14,.0f} B read")
        print(f"    s2s2_monai read_member        : {t_o * 1e3:9.2f} ms, {b_o:14,.0f} B read")
        print(
            f"    ratio                         : {t_u / t_o:9.1f}x faster, {b_u / b_o:.0f}x fewer bytes (target >= 20x)\n"
        )

        # (c) generation throughput vs batch size (appearance generator, 512x512)
        n_c = 4
        print(f"(c) appearance generator throughput at 512x512, n = {n_c} members per mask, {os.cpu_count()} CPU cores")
        base = None
        for bs in (1, 2, 4, 8):
            batch = np.stack([masks[i % len(masks)] for i in range(bs)])
            prompts = [build_prompt(m, label_map) for m in batch]
            t0 = time.perf_counter()
            reps = max(1, 8 // bs)
            for r in range(reps):
                gen.generate(batch, prompts, list(range(r * bs, (r + 1) * bs)), n_c)
            per_mask = (time.perf_counter() - t0) / (reps * bs)
            base = base or per_mask
            print(
                f"    batch {bs:2d}: {1 / per_mask:6.2f} masks/s, {n_c / per_mask:6.1f} members/s  (x{base / per_mask:.2f} vs batch 1)"
            )
        t0 = time.perf_counter()
        imgs = gen.generate(masks[:1], ["p"], [0], n_c)[0]
        t_gen = time.perf_counter() - t0
        t0 = time.perf_counter()
        cache.write_entry("0" * 64, to_uint8(imgs))
        t_write = time.perf_counter() - t0
        print(
            f"    quantise + encode + fsync'd write of one {n_c}-member entry: {t_write * 1e3:.1f} ms ({100 * t_write / (t_gen + t_write):.0f}% of generate + write)"
        )
        print("    (the appearance generator draws each member from its own seeded RNG, so batching does not")
        print("     change throughput; batch size matters for the diffusion generator, measured on a GPU.)")


if __name__ == "__main__":
    main()
