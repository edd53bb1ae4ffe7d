"""Shared fixtures: the real test volumes in ../shared/data and small project-made phantoms."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

#: The real CT/MR/DICOM test volumes: ``$S2S2_SHARED_DATA``, else ``../shared/data`` beside the clone.
SHARED_DATA = Path(os.environ.get("S2S2_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


def in_ci() -> bool:
    """True under CI (``CI=true``), where a missing fixture is an error, never a silent skip."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_shared(*relative: str) -> Path:
    """``SHARED_DATA``, after checking that ``relative`` paths exist in it.

    Locally a missing folder skips the test with the path in the reason; in CI it fails it.
    """
    missing = [str(SHARED_DATA / r) for r in relative or ("ct",) if not (SHARED_DATA / r).exists()]
    if missing:
        msg = f"real test volumes not found: {', '.join(missing)} (put ../shared beside the clone or set S2S2_SHARED_DATA)"
        if in_ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of the real CT/MR/DICOM test volumes (skips locally when absent, fails in CI)."""
    return require_shared("ct", "mr")


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """Datalist of 4 small phantom cases (48x48x8: 2 training, 1 validation, 1 test), written once per session."""
    from s2s2_monai.data.phantom import write_demo_data

    out = tmp_path_factory.mktemp("tiny_demo")
    return write_demo_data(out, cases=4, seed=0, shape=(48, 48, 8), progress=False)


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One intra-op thread for every test: tests run two per core pair (xdist), where contended threads
    crawl, and the tiny models here are op-overhead bound."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def real_ct(shared_data) -> Path:
    """The real CT slab (TotalSegmentator example, ``_sm``)."""
    return shared_data / "ct" / "totalseg_example_ct_sm.nii.gz"


@pytest.fixture(scope="session")
def real_mr(shared_data) -> Path:
    """The real MR slab (TotalSegmentator MRI example, ``_sm``)."""
    return shared_data / "mr" / "totalseg_example_mr_sm.nii.gz"


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> tuple[Path, Path]:
    """(sd_dir, controlnet_dir): tiny seeded SD 2.x + ControlNet folders (``tests/tiny_diffusers.py``)."""
    from tiny_diffusers import tiny_sd_folders  # conftest's folder is on sys.path

    return tiny_sd_folders(tmp_path_factory.mktemp("tiny_diffusers"))


#: Bundle overrides that shrink the paper bundle's TransUNet to a few milliseconds per step on CPU
#: (same structure: hybrid ResNet + ViT + CUP decoder with three skips), from scratch, appearance stack.
TINY_TRANSUNET = {
    "networks#transunet#hidden_size": 32,
    "networks#transunet#num_layers": 2,
    "networks#transunet#num_heads": 4,
    "networks#transunet#mlp_dim": 64,
    "networks#transunet#block_units": [1, 2, 1],
    "networks#transunet#width_factor": 0.5,
    "networks#transunet#decoder_channels": [32, 16, 16, 16],
    "networks#transunet#head_channels": 64,
    "pretrained_weights": None,
    "stack_generator": "appearance",
}


@pytest.fixture(scope="session")
def tiny_transunet() -> dict:
    """A copy of :data:`TINY_TRANSUNET` (bundle overrides for a tiny TransUNet)."""
    return dict(TINY_TRANSUNET)
