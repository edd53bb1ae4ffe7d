"""Checkpoint finding, corrupt-file recovery and the one state-dict reader."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from s2s2_monai.checkpoints import STEP_DIR, newest_readable, numbered_checkpoints, read_state_dict, torch_load
from s2s2_monai.errors import S2S2InputError


def test_numbered_checkpoints_newest_first_numeric_not_lexical(tmp_path):
    for n in (2, 10, 9):
        torch.save({"n": n}, tmp_path / f"checkpoint_epoch={n}.pt")
    (tmp_path / "checkpoint_epoch=11.pt.corrupt").write_bytes(b"x")
    (tmp_path / "model.pt").write_bytes(b"x")
    assert [p.name for p in numbered_checkpoints(tmp_path)] == [
        "checkpoint_epoch=10.pt",
        "checkpoint_epoch=9.pt",
        "checkpoint_epoch=2.pt",
    ]
    for name in ("step-00000005", "step-00000040", "step-00000041.corrupt", ".tmp-step-00000050-1"):
        (tmp_path / name).mkdir()
    assert [p.name for p in numbered_checkpoints(tmp_path, STEP_DIR)] == ["step-00000040", "step-00000005"]
    assert numbered_checkpoints(tmp_path / "absent") == []


def test_newest_readable_moves_every_unreadable_one_aside(tmp_path, caplog):
    for n in (1, 2, 3):
        torch.save({"n": torch.tensor(n)}, tmp_path / f"checkpoint_epoch={n}.pt")
    (tmp_path / "checkpoint_epoch=3.pt").write_bytes(b"")  # empty
    p2 = tmp_path / "checkpoint_epoch=2.pt"
    p2.write_bytes(p2.read_bytes()[:-40])  # truncated
    with caplog.at_level(logging.WARNING):
        path, obj = newest_readable(numbered_checkpoints(tmp_path), torch_load)
    assert path.name == "checkpoint_epoch=1.pt" and int(obj["n"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint_epoch=1.pt",
        "checkpoint_epoch=2.pt.corrupt",
        "checkpoint_epoch=3.pt.corrupt",
    ]
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 2 and all("resuming from" in m and "checkpoint_epoch=1.pt" in m for m in msgs)
    # nothing readable left: None, and the last one is moved aside too
    (tmp_path / "checkpoint_epoch=1.pt").write_bytes(b"junk")
    assert newest_readable(numbered_checkpoints(tmp_path), torch_load) is None
    assert (tmp_path / "checkpoint_epoch=1.pt.corrupt").is_file()
    # a second corrupt file of the same name does not overwrite the first one moved aside
    (tmp_path / "checkpoint_epoch=1.pt").write_bytes(b"junk2")
    newest_readable(numbered_checkpoints(tmp_path), torch_load)
    assert (tmp_path / "checkpoint_epoch=1.pt.corrupt-1").read_bytes() == b"junk2"


def test_read_state_dict_accepts_the_project_layouts_and_rejects_others(tmp_path):
    state = {"w": torch.ones(2), "b": torch.zeros(1)}
    for name, obj in {
        "plain": state,
        "interval": {"network": state, "trainer": {"epoch": 3}},
        "bundle": {"model": state},
    }.items():
        torch.save(obj, tmp_path / f"{name}.pt")
        got = read_state_dict(tmp_path / f"{name}.pt")
        assert set(got) == {"w", "b"} and torch.equal(got["w"], state["w"])
    torch.save({"epoch": 3}, tmp_path / "nostate.pt")
    with pytest.raises(S2S2InputError, match="no network state dict"):
        read_state_dict(tmp_path / "nostate.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(S2S2InputError, match="not a readable PyTorch checkpoint"):
        read_state_dict(tmp_path / "junk.pt")
    with pytest.raises(S2S2InputError, match="no weights file"):
        read_state_dict(tmp_path / "missing.pt")
    torch.save({"w": torch.ones(1), "code": print}, tmp_path / "unsafe.pt")  # weights_only refuses objects
    with pytest.raises(S2S2InputError, match="not a readable PyTorch checkpoint"):
        read_state_dict(tmp_path / "unsafe.pt")


def test_weights_digest_is_by_content_not_by_date(tmp_path):
    import hashlib

    from s2s2_monai.checkpoints import weights_digest

    path = tmp_path / "model.pt"
    assert weights_digest(path) == ""  # no weights yet
    path.write_bytes(b"weights A")
    first = weights_digest(path)
    assert first == hashlib.sha256(b"weights A").hexdigest()
    os.utime(path, ns=(1, 10**18))  # the same bytes copied back with another date: the same weights
    assert weights_digest(path) == first
    stamp = path.stat().st_mtime_ns
    path.write_bytes(b"weights B")  # other bytes written with the same date (and size): other weights
    os.utime(path, ns=(1, stamp))
    assert path.stat().st_mtime_ns == stamp and weights_digest(path) == hashlib.sha256(b"weights B").hexdigest()
