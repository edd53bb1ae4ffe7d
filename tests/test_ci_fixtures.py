"""A missing ../shared/data fails tests in CI (CI=true) and skips them, with the path, elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST = "tests/test_transforms.py::test_ct_window_matches_numpy_on_real_ct"


@pytest.mark.parametrize("ci, outcome", [("true", "1 error"), ("", "1 skipped")])  # fail in a fixture = error
def test_missing_shared_data_fails_in_ci_and_skips_locally(tmp_path, ci, outcome):
    env = {**os.environ, "CI": ci, "S2S2_SHARED_DATA": str(tmp_path / "nowhere")}
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "no:xdist", TEST],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert outcome in r.stdout, r.stdout[-2000:]
    assert f"real test volumes not found: {tmp_path / 'nowhere'}" in r.stdout
    assert r.returncode == (1 if ci else 0)
