"""The steps the bundles call: data checks, demo data, the stack, checkpoints, weights, NIfTI inference."""

from __future__ import annotations

import json
import os
import stat

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.networks.nets import BasicUNet

from s2s2_monai.checkpoints import load_weights, numbered_checkpoints
from s2s2_monai.data.check import require_data
from s2s2_monai.data.phantom import ensure_demo_data
from s2s2_monai.errors import S2S2InputError
from s2s2_monai.evaluation.predictions import predict_to_folder
from s2s2_monai.model import BundleModel
from s2s2_monai.stack.build import ensure_stack
from s2s2_monai.training.checkpoint_handlers import AtomicCheckpointSaver, ResumeCheckpointLoader
from s2s2_monai.training.datasets import training_dataset
from s2s2_monai.training.handlers import ConsistencyHandler
from s2s2_monai.training.taps import TAP_PRESETS
from s2s2_monai.transforms import CTWindowd


def test_require_data_names_missing_files(tiny_demo, tmp_path, capsys):
    assert require_data(tiny_demo, tiny_demo.parent) == str(tiny_demo)
    with pytest.raises(S2S2InputError) as err:
        require_data(tiny_demo, tmp_path)
    msg = str(err.value)
    assert "6 of 6 files" in msg and "phantom_000.nii.gz" in msg and "dataset_dir" in msg and "demo.json" in msg
    with pytest.raises(SystemExit) as ex:
        require_data(tmp_path / "none.json", tmp_path, exit_on_error=True)
    assert ex.value.code == 2 and capsys.readouterr().err.startswith("error: ")


def test_ensure_demo_data_writes_once_and_repairs(tmp_path):
    path = ensure_demo_data(tmp_path, cases=2, shape=(16, 16, 3))
    image = tmp_path / json.loads(open(path).read())["training"][0]["image"]
    mtime = image.stat().st_mtime_ns
    assert ensure_demo_data(tmp_path, cases=2, shape=(16, 16, 3)) == path and image.stat().st_mtime_ns == mtime
    image.unlink()
    ensure_demo_data(tmp_path, cases=2, shape=(16, 16, 3))
    assert image.is_file()


def test_ensure_stack_and_training_dataset(tiny_demo, tmp_path):
    assert ensure_stack(tiny_demo, tmp_path / "s", use_stack=False) is None
    with pytest.raises(S2S2InputError, match="stack build"):
        ensure_stack(tiny_demo, tmp_path / "s", build_if_missing=False)
    stack = ensure_stack(tiny_demo, tmp_path / "s", n=2, progress=False, contact_sheet=False)
    pairs = training_dataset(tiny_demo, stack_dir=stack)
    plain = training_dataset(tiny_demo)
    assert len(pairs) == len(plain) > 0
    item = pairs[0]
    assert item["image_stack"].shape == item["image"].shape and "image_stack" not in plain[0]


def _engine_with_state(epochs: int) -> Engine:
    e = Engine(lambda e, b: None)
    e.run([0, 1], max_epochs=epochs)
    return e


def test_atomic_saver_and_resume_loader(tmp_path):
    net = BasicUNet(2, 1, 2, features=(4, 4, 4, 4, 4, 4))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    assert numbered_checkpoints(tmp_path / "nothing") == []
    saver = AtomicCheckpointSaver(
        str(tmp_path),
        {"network": net, "optimizer": opt},
        engine_key="trainer",
        save_interval=1,
        n_saved=2,
        epoch_level=True,
    )
    trainer = Engine(lambda e, b: None)
    saver.attach(trainer)
    trainer.run([0, 1, 2], max_epochs=3)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["checkpoint_epoch=2.pt", "checkpoint_epoch=3.pt"]  # n_saved=2, no temp files left
    assert numbered_checkpoints(tmp_path)[0].name == "checkpoint_epoch=3.pt"
    mode = stat.S_IMODE(os.stat(tmp_path / files[-1]).st_mode)
    assert mode & stat.S_IRGRP  # not the 0600 of a raw temp file
    ckpt = torch.load(tmp_path / files[-1], weights_only=True)
    assert ckpt["trainer"]["iteration"] == 9

    fresh = BasicUNet(2, 1, 2, features=(4, 4, 4, 4, 4, 4))
    resumed = Engine(lambda e, b: None)
    seen = []
    resumed.add_event_handler(Events.EPOCH_STARTED, lambda e: seen.append(e.state.epoch))
    ResumeCheckpointLoader(str(tmp_path), {"network": fresh}, strict=False).attach(resumed)
    resumed.run([0, 1, 2], max_epochs=5)
    assert seen == [4, 5]  # epochs 1-3 were done
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), net.state_dict().values()))
    ResumeCheckpointLoader(str(tmp_path / "empty"), {"network": fresh}).attach(Engine(lambda e, b: None))  # no-op


def test_resume_skips_a_corrupt_newest_checkpoint(tmp_path, caplog):
    net = BasicUNet(2, 1, 2, features=(4, 4, 4, 4, 4, 4))
    saver = AtomicCheckpointSaver(
        str(tmp_path), {"network": net}, engine_key="trainer", save_interval=1, n_saved=2, epoch_level=True
    )
    trainer = Engine(lambda e, b: None)
    saver.attach(trainer)
    trainer.run([0, 1], max_epochs=3)
    newest = tmp_path / "checkpoint_epoch=3.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a full disk / half a copy
    resumed = Engine(lambda e, b: None)
    seen = []
    resumed.add_event_handler(Events.EPOCH_STARTED, lambda e: seen.append(e.state.epoch))
    with caplog.at_level("WARNING"):
        ResumeCheckpointLoader(str(tmp_path), {"network": BasicUNet(2, 1, 2, features=(4, 4, 4, 4, 4, 4))}).attach(
            resumed
        )
        resumed.run([0, 1], max_epochs=4)
    assert seen == [3, 4]  # resumed after epoch 2, the intact one
    assert (tmp_path / "checkpoint_epoch=3.pt.corrupt").is_file()  # moved aside, never deleted
    line = [r.getMessage() for r in caplog.records if "corrupt checkpoint" in r.getMessage()]
    assert (
        len(line) == 1 and "checkpoint_epoch=3.pt" in line[0] and "resuming from" in line[0] and "epoch=2.pt" in line[0]
    )


def test_load_weights_and_predict_to_folder(tiny_demo, tmp_path):
    net = BasicUNet(2, 1, 9, features=(4, 4, 4, 4, 4, 4)).eval()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    other = BasicUNet(2, 1, 9, features=(4, 4, 4, 4, 4, 4))
    load_weights(other, tmp_path / "model.pt")
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), net.state_dict().values()))
    with pytest.raises(S2S2InputError, match="no weights file"):
        load_weights(other, tmp_path / "missing.pt")
    with pytest.raises(S2S2InputError, match="do not fit"):
        load_weights(BasicUNet(2, 1, 3, features=(4, 4, 4, 4, 4, 4)), tmp_path / "model.pt")
    bad = {k: v.clone() for k, v in net.state_dict().items()}
    next(v for v in bad.values() if v.is_floating_point())[0] = float("nan")
    torch.save(bad, tmp_path / "nan.pt")
    with pytest.raises(S2S2InputError, match="NaN/inf"):
        load_weights(other, tmp_path / "nan.pt")

    model = BundleModel(net, [CTWindowd("image")], "synapse", input_size=(32, 32))
    images = tiny_demo.parent / "imagesTr"
    run = predict_to_folder(model, images, tmp_path / "pred", progress=False, announce=False)
    assert len(run.written) == len(list(images.glob("*.nii.gz")))
    for w in run.written:
        src, out = nib.load(images / os.path.basename(w)), nib.load(w)
        assert out.shape == src.shape and np.allclose(out.affine, src.affine) and out.get_data_dtype() == np.uint8
    again = predict_to_folder(model, images, tmp_path / "pred", progress=False, announce=False)
    assert not again.written and len(again.kept) == len(run.written)  # an interrupted run continues
    assert len(predict_to_folder(model, tiny_demo, tmp_path / "p2", section="validation", progress=False).written) == 1
    with pytest.raises(S2S2InputError, match="no such file"):
        predict_to_folder(model, tmp_path / "nope", tmp_path / "p3")
    with pytest.raises(S2S2InputError, match="no entries"):
        predict_to_folder(model, tiny_demo, tmp_path / "p3", section="nosuch")


def test_consistency_handler_accepts_preset_names():
    h = ConsistencyHandler("unetr.enc", alpha=0.5, name="enc")
    assert h.spec == TAP_PRESETS["unetr"]["enc"] and h.key == "loss_enc"
    assert ConsistencyHandler("down_layers.3").spec.module == "down_layers.3"
