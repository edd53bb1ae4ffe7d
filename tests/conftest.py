"""Shared fixtures: the real test volumes in ../shared/data and small project-made phantoms."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of the real CT/MR/DICOM test volumes (skips when absent)."""
    if not (SHARED_DATA / "ct").is_dir():
        pytest.skip(f"real test volumes not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """Datalist of 3 small phantom cases (48x48x8), written once per session."""
    from s2s2_monai.data.phantom import write_demo_data

    out = tmp_path_factory.mktemp("tiny_demo")
    return write_demo_data(out, cases=3, seed=0, shape=(48, 48, 8), progress=False)


@pytest.fixture
def one_thread():
    """One intra-op thread: tests run two per core pair (xdist), where contended threads crawl."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
