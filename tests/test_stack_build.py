"""Stack builds: content keys, reuse, corruption rebuild, kill -9 resume, torchrun sharding, CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from s2s2_monai.cli import main
from s2s2_monai.errors import S2S2InputError
from s2s2_monai.stack.base import StackGenerator
from s2s2_monai.stack.build import build_stack
from s2s2_monai.stack.cache import StackCache

N = 4


def _entry_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "entries").glob("*/*.stk"))}


@pytest.fixture(scope="module")
def reference(tiny_demo, tmp_path_factory) -> tuple[Path, dict]:
    """An uninterrupted single-process build of the tiny demo (n=4)."""
    out = tmp_path_factory.mktemp("stack_ref") / "stack"
    return out, build_stack(tiny_demo, out, n=N, seed=0, batch_size=3, progress=False)


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "S2S2_STACK_KILL_AT")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_build_covers_every_training_slice(reference, tiny_demo):
    out, summary = reference
    cache = StackCache(out)
    manifest = cache.manifest
    # 2 training cases x 8 slices, background-only slices included; identical masks share entries
    assert summary["slices"] == len(manifest["slices"]) == 16
    assert summary["entries"] == len({k for _, _, k in manifest["slices"]}) <= 16
    assert summary["generated"] == summary["entries"] and summary["skipped"] == 0
    assert summary["members"] == summary["entries"] * N
    assert summary["bytes_per_pixel"] <= 1.0 + 0.05  # one channel, <= 1 byte per pixel (+ header)
    assert summary["qc_pass_rate"] is not None and summary["qc_pass_rate"] >= 0.9
    assert Path(summary["contact_sheet"]).stat().st_size > 1000
    info = cache.verify()
    assert info["complete"] and info["digest"] == summary["digest"] and info["temp_files"] == 0
    # stacks are stored at the slice grid and aligned with the mask: organ medians track the organ
    from s2s2_monai.data.slices import VolumeCache

    vol = VolumeCache(tiny_demo, "training", progress=False)
    case_id, z, key = max(
        manifest["slices"],
        key=lambda r: len(np.unique(vol.cases[[c.case_id for c in vol.cases].index(r[0])].label[:, :, r[1]])),
    )
    mask = vol.cases[[c.case_id for c in vol.cases].index(case_id)].label[:, :, z]
    member = cache.read_member(key, 0)
    assert member.shape == mask.shape == (48, 48)
    stats = manifest["settings"]["stats"]
    for k in np.unique(mask)[1:]:
        if (mask == k).sum() >= 30:
            assert abs(np.median(member[mask == k]) / 255 - stats[str(k)]["mean"]) < 0.12


def test_rebuild_reuses_repairs_corruption_and_never_reuses_stale_settings(reference, tiny_demo, tmp_path):
    ref_out, ref = reference
    out = tmp_path / "stack"
    shutil.copytree(ref_out, out)
    again = build_stack(tiny_demo, out, n=N, seed=0, progress=False, contact_sheet=False)
    assert again["generated"] == 0 and again["skipped"] == ref["entries"] and again["digest"] == ref["digest"]
    # flip one byte inside an entry's member data: verify fails (exit 1), the next build rebuilds it
    victim = sorted((out / "entries").glob("*/*.stk"))[0]
    raw = bytearray(victim.read_bytes())
    raw[-7] ^= 0x55
    victim.write_bytes(bytes(raw))
    assert main(["stack", "verify", str(out)]) == 1
    fixed = build_stack(tiny_demo, out, n=N, seed=0, progress=False, contact_sheet=False)
    assert fixed["rebuilt"] == 1 and fixed["generated"] == 1 and fixed["digest"] == ref["digest"]
    assert main(["stack", "verify", str(out)]) == 0
    # another seed: refused (one folder, one stack); --replace rebuilds it whole, no orphans left
    with pytest.raises(S2S2InputError, match=r"holds another stack \(seed: 0 -> 1\)"):
        build_stack(tiny_demo, out, n=N, seed=1, progress=False, contact_sheet=False)
    assert StackCache(out).info()["digest"] == ref["digest"]
    other = build_stack(tiny_demo, out, n=N, seed=1, progress=False, contact_sheet=False, replace=True)
    assert other["generated"] == other["entries"] and other["skipped"] == 0 and other["digest"] != ref["digest"]
    assert StackCache(out).info()["orphans"] == 0
    # another generator setting: refused, naming the setting
    from s2s2_monai.data.slices import VolumeCache
    from s2s2_monai.stack.appearance import AppearanceGenerator

    vol = VolumeCache(tiny_demo, "training", progress=False)
    gen = AppearanceGenerator.fit(vol, noise_max=0.05)
    with pytest.raises(S2S2InputError, match=r"settings\.noise_max: "):
        build_stack(vol, out, generator=gen, n=N, seed=1, progress=False, contact_sheet=False)
    # back to the reference settings by replacement: the same seed gives the same stack, bit for bit
    back = build_stack(tiny_demo, out, n=N, seed=0, progress=False, contact_sheet=False, replace=True)
    assert back["generated"] == back["entries"] and back["digest"] == ref["digest"]


def test_kill_minus_9_then_resume_is_bit_identical(reference, tiny_demo, tmp_path):
    ref_out, ref = reference
    out = tmp_path / "stack"
    cmd = [
        sys.executable,
        "-m",
        "s2s2_monai",
        "stack",
        "build",
        "--datalist",
        str(tiny_demo),
        "--out",
        str(out),
        "--n",
        str(N),
        "--batch-size",
        "2",
        "--no-progress",
    ]
    # 1) killed after the 5th entry's temporary file is written, before its rename
    r = subprocess.run(cmd, env={**_env(), "S2S2_STACK_KILL_AT": "tmp:5"}, capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stderr[-2000:]
    cache = StackCache(out)
    assert len(cache.temp_files()) == 1 and len(cache.stored_keys()) == 4
    assert all(cache.check_entry(k) == "ok" for k in cache.stored_keys())  # only whole entries
    # 2) resumed, and killed again right after 3 more entries
    r = subprocess.run(
        cmd, env={**_env(), "S2S2_STACK_KILL_AT": "entry:3"}, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == -9, r.stderr[-2000:]
    assert len(StackCache(out).stored_keys()) == 7
    # 3) resumed to the end (in this process: same code path as the CLI, without a second start-up)
    done = build_stack(tiny_demo, out, n=N, seed=0, batch_size=2, progress=False)
    assert done["skipped"] == 7 and done["generated"] == done["entries"] - 7
    info = StackCache(out).verify()
    assert info["complete"] and info["temp_files"] == 0 and info["digest"] == ref["digest"]
    assert _entry_bytes(out) == _entry_bytes(ref_out)  # bit-identical files, not only equal digests


def test_torchrun_two_processes_gloo(reference, tiny_demo, tmp_path):
    _, ref = reference
    out = tmp_path / "stack"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "s2s2_monai",
        "stack",
        "build",
        "--datalist",
        str(tiny_demo),
        "--out",
        str(out),
        "--members",
        str(N),
        "--no-progress",
    ]
    r = subprocess.run(cmd, env={**_env(), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert f"digest {ref['digest']}" in r.stdout
    assert r.stdout.count("digest") == 1  # only rank 0 reports
    info = StackCache(out).verify()
    assert info["complete"] and info["digest"] == ref["digest"]


class _WrongShape(StackGenerator):
    name = "wrong"

    def settings(self):
        return {}

    def generate(self, masks, prompts, seeds, n):
        return np.zeros((len(masks), n, masks.shape[1] // 2, masks.shape[2] // 2), np.float32)


def test_bad_inputs(tiny_demo, tmp_path):
    with pytest.raises(ValueError, match="aligned with the masks"):
        build_stack(tiny_demo, tmp_path / "w", generator=_WrongShape(), n=2, progress=False, qc=False)
    with pytest.raises(S2S2InputError, match="sd-dir"):
        build_stack(tiny_demo, tmp_path / "d", generator="diffusion", n=2, progress=False)
    with pytest.raises(S2S2InputError, match="unknown stack generator"):
        build_stack(tiny_demo, tmp_path / "u", generator="gan", n=2, progress=False)
    with pytest.raises(S2S2InputError, match="--n"):
        build_stack(tiny_demo, tmp_path / "z", n=0, progress=False)
    # a training case without a label cannot get a stack
    dl = json.loads(Path(tiny_demo).read_text())
    dl["training"] = [{"image": e["image"]} for e in dl["training"]]
    path = Path(tiny_demo).parent / "nolabel.json"
    path.write_text(json.dumps(dl))
    with pytest.raises(S2S2InputError, match="no label"):
        build_stack(path, tmp_path / "n", n=2, progress=False)


def test_cli_exit_codes(reference, tmp_path, capsys):
    out, ref = reference
    assert main(["stack", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["digest"] == ref["digest"] and info["complete"] and info["qc_pass_rate"] is not None
    assert main(["stack", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "QC pass rate" in text and ref["digest"] in text and "bytes on disk" in text
    assert main(["stack", "verify", str(out)]) == 0
    assert main(["stack", "info", str(tmp_path)]) == 2  # not a cache: one error line, exit 2
    assert "not a stack cache" in capsys.readouterr().err
    assert main(["stack", "build", "--datalist", str(tmp_path / "none.json"), "--out", str(tmp_path / "s")]) == 2
    assert (
        main(
            [
                "stack",
                "build",
                "--datalist",
                str(tmp_path / "none.json"),
                "--out",
                str(tmp_path / "s"),
                "--generator",
                "diffusion",
            ]
        )
        == 2
    )
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    next((broken / "entries").glob("*/*.stk")).unlink()
    assert main(["stack", "verify", str(broken)]) == 1
    assert "missing" in capsys.readouterr().out


class _BatchSensitive(StackGenerator):
    """Output depends on which masks share the call (like a batched diffusion pipeline's rounding)."""

    name = "batch-sensitive"

    def settings(self) -> dict:
        return {"v": 1}

    def generate(self, masks, prompts, seeds, n):
        tweak = (sum(seeds) % 97) / 97.0 * 0.5
        return np.broadcast_to(
            masks[:, None].astype(np.float32) / 16.0 + tweak, (len(masks), n, *masks.shape[1:])
        ).copy()


def test_interrupted_batched_build_regroups_identically(tiny_demo, tmp_path):
    full = tmp_path / "full"
    build_stack(tiny_demo, full, _BatchSensitive(), n=2, batch_size=3, progress=False, qc=False, contact_sheet=False)
    part = tmp_path / "part"
    shutil.copytree(full, part)
    entries = sorted(p for p in part.rglob("*") if p.is_file() and p.parent != part)
    for p in entries[1::2]:  # as if the build had been killed with every other entry missing
        p.unlink()
    summary = build_stack(
        tiny_demo, part, _BatchSensitive(), n=2, batch_size=3, progress=False, qc=False, contact_sheet=False
    )
    assert summary["generated"] == len(entries[1::2]) > 0
    assert StackCache(part).info(full=True)["digest"] == StackCache(full).info(full=True)["digest"]
