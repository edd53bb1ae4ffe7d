"""Resume is the same run; weights are finite everywhere; a diverged loss stops training.

The tiny Synapse bundle (BasicUNet [4, 4, 8, 8, 16, 4] at 32x32, 3 epochs of 4 iterations, appearance
stack n 2) is run as the user runs it (``python -m monai.bundle run training``, ``s2s2 ablation``) in
subprocesses: uninterrupted, and killed with SIGKILL once epoch 1's checkpoint exists, then the same
command again. The resumed run must end with the uninterrupted run's ``model.pt``, byte for byte. An
identity transform that sleeps 20 ms per item (``train#slow``) makes an epoch last long enough for the kill
to land before the run ends (deterministic, so it changes no number).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_bad_input import ENV, REPO, SYNAPSE, TRACEBACK

from s2s2_monai.checkpoints import file_sha256


def write_overlay(path: Path, datalist: Path, stack: Path, out: Path | None = None, **extra) -> Path:
    """The tiny bundle as an overlay of ``bundles/synapse/train.json`` (3 epochs, CPU, no AMP)."""
    o = {
        "bundle_root": str(SYNAPSE),
        "dataset_dir": str(datalist.parent),
        "datalist": str(datalist),
        "stack_dir": str(stack),
        "stack_n": 2,
        "stack_generator": "appearance",
        "input_size": [32, 32],
        "max_epochs": 3,
        "batch_size": 4,
        "num_workers": 0,
        "val_interval": 1,
        "network_name": "basic_unet",
        "networks#basic_unet#features": [4, 4, 8, 8, 16, 4],
        "amp": False,
        "device": "$torch.device('cpu')",
        "train#slow": {"_target_": "Lambda", "func": "$lambda d: (__import__('time').sleep(0.02), d)[1]"},
        "train#random_transforms": "$@train#augmentations[@augmentation] + [@train#resize, @train#to_tensor, @train#slow]",
        **extra,
    }
    if out is not None:
        o["output_dir"] = str(out)
    path.write_text(json.dumps(o))
    return path


def bundle_cmd(overlay: Path, *overrides: str) -> list[str]:
    configs = str([str(SYNAPSE / "train.json"), str(overlay)])
    return [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", configs, *overrides]


def run(cmd: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


def run_killed_after(cmd: list[str], marker: Path, log: Path, timeout: float = 180) -> None:
    """Start ``cmd`` in its own process group, SIGKILL the group as soon as ``marker`` exists."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while not marker.exists():
                if proc.poll() is not None:
                    pytest.fail(f"ended (rc {proc.returncode}) before {marker.name}:\n{log.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"no {marker} after {timeout} s:\n{log.read_text()[-3000:]}")
                time.sleep(0.01)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert list(sa) == list(sb)
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, f"{len(different)} tensors differ, first {different[0]}"
    assert file_sha256(a) == file_sha256(b)  # torch.save of equal state dicts writes equal bytes


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("resume")


@pytest.fixture(scope="module")
def reference(tiny_demo, root) -> dict:
    """One uninterrupted 3-epoch run (it also builds the module's stack)."""
    out = root / "reference"
    overlay = write_overlay(root / "reference.json", tiny_demo, root / "stack", out)
    t0 = time.monotonic()
    r = run(bundle_cmd(overlay))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["checkpoint_epoch=2.pt", "checkpoint_epoch=3.pt"]
    return {"out": out, "model": out / "models" / "model.pt", "seconds": time.monotonic() - t0}


@pytest.mark.parametrize("num_workers", [0, 1])
def test_killed_and_resumed_run_equals_uninterrupted(reference, tiny_demo, root, num_workers):
    """kill -9 after epoch 1's checkpoint, the same command again: model.pt byte-identical to the uninterrupted
    run's. With one (persistent) DataLoader worker too, and then equal to the run without workers: every item
    is drawn from (seed, rank, epoch, index), not from a worker's state."""
    out = root / f"killed_w{num_workers}"
    overlay = write_overlay(
        root / f"killed_w{num_workers}.json", tiny_demo, root / "stack", out, num_workers=num_workers
    )
    cmd = bundle_cmd(overlay)
    run_killed_after(cmd, out / "checkpoints" / "checkpoint_epoch=1.pt", root / f"killed_w{num_workers}.log")
    assert not (out / "models" / "model.pt").exists()  # the kill landed before the run ended

    r = run(cmd)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    assert "resuming from" in log and "Epoch: 1/3" not in log, log[-4000:]  # epoch 1 not redone
    assert_same_weights(out / "models" / "model.pt", reference["model"])
    state = torch.load(out / "checkpoints" / "checkpoint_epoch=3.pt", weights_only=True)
    assert state["trainer"]["seeding"] == {"seed": 1234, "rank": 0, "scheme": "seedsequence(seed,rank,epoch)/v1"}
    assert set(state) == {"network", "optimizer", "lr_scheduler", "trainer"}


def test_cooperative_trainer_resumes_to_the_same_weights(tiny_demo, root):
    """Cooperative training with a stack (latent masks from the masker's generator, input noise from torch's):
    resumed from its epoch-2 checkpoint alone (what a kill right after it leaves), it ends with the
    uninterrupted run's model.pt."""
    ref, resumed = root / "coop_ref", root / "coop_resumed"
    configs = [SYNAPSE / "train.json", SYNAPSE / "cooperative.json"]

    def cmd(out: Path) -> list[str]:
        overlay = write_overlay(root / f"{out.name}.json", tiny_demo, root / "stack", out, use_stack=True)
        return [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
                str([str(c) for c in [*configs, overlay]])]  # fmt: skip

    r = run(cmd(ref))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(ref / "checkpoints" / "checkpoint_epoch=2.pt", resumed / "checkpoints")
    r = run(cmd(resumed))
    log = r.stdout + r.stderr
    assert r.returncode == 0 and "CooperativeTrainer" in log and "Epoch: 2/3" not in log, log[-4000:]
    assert_same_weights(resumed / "models" / "model.pt", ref / "models" / "model.pt")


def test_nan_in_newest_checkpoint_is_moved_aside_and_resume_uses_the_previous(reference, tiny_demo, root):
    """NaN written into the newest checkpoint (epoch 3): one warning, moved to .corrupt, resumed from epoch 2,
    and the result is still the uninterrupted run's."""
    out = root / "nan_ckpt"
    shutil.copytree(reference["out"] / "checkpoints", out / "checkpoints")
    newest = out / "checkpoints" / "checkpoint_epoch=3.pt"
    state = torch.load(newest, weights_only=True)
    name = next(k for k, v in state["network"].items() if v.is_floating_point())
    state["network"][name].view(-1)[0] = float("nan")
    torch.save(state, newest)
    poisoned = newest.read_bytes()

    r = run(bundle_cmd(write_overlay(root / "nan_ckpt.json", tiny_demo, root / "stack", out)))
    log = r.stdout + r.stderr
    assert r.returncode == 0 and TRACEBACK not in log, log[-4000:]
    lines = [ln for ln in log.splitlines() if "corrupt checkpoint" in ln]
    assert len(lines) == 1, log[-4000:]
    assert "checkpoint_epoch=3.pt" in lines[0] and "NaN/inf" in lines[0] and f"network/{name}" in lines[0]
    assert "resuming from" in lines[0] and lines[0].rstrip().endswith("checkpoint_epoch=2.pt")
    assert (out / "checkpoints" / "checkpoint_epoch=3.pt.corrupt").read_bytes() == poisoned  # moved, not deleted
    assert "Epoch: 3/3" in log and "Epoch: 2/3" not in log
    assert_same_weights(out / "models" / "model.pt", reference["model"])


def test_nan_in_optimizer_state_is_treated_as_damage(tmp_path, caplog):
    """The resume handler refuses NaN in the optimizer state (momentum) like NaN in the weights."""
    from ignite.engine import Engine
    from monai.networks.nets import BasicUNet

    from s2s2_monai.training.checkpoint_handlers import AtomicCheckpointSaver, ResumeCheckpointLoader

    net = BasicUNet(2, 1, 2, features=(4, 4, 4, 4, 4, 4))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)

    def step(engine, batch):
        opt.zero_grad()
        net(torch.ones(1, 1, 32, 32)).mean().backward()
        opt.step()

    trainer = Engine(step)
    AtomicCheckpointSaver(
        str(tmp_path), {"network": net, "optimizer": opt}, engine_key="trainer", save_interval=1, n_saved=2
    ).attach(trainer)
    trainer.run([0], max_epochs=2)
    newest = tmp_path / "checkpoint_epoch=2.pt"
    state = torch.load(newest, weights_only=True)
    buf = next(iter(state["optimizer"]["state"].values()))["momentum_buffer"]
    buf.view(-1)[0] = float("inf")
    torch.save(state, newest)

    resumed = Engine(step)
    loader = ResumeCheckpointLoader(str(tmp_path), {"network": net, "optimizer": opt})
    loader.attach(resumed)
    assert loader.found == str(tmp_path / "checkpoint_epoch=1.pt")
    assert (tmp_path / "checkpoint_epoch=2.pt.corrupt").is_file()
    warning = [r.getMessage() for r in caplog.records if "corrupt checkpoint" in r.getMessage()]
    assert len(warning) == 1 and "optimizer/state/" in warning[0] and "momentum_buffer" in warning[0]


def test_learning_rate_that_diverges_stops_with_one_line(tiny_demo, root):
    """--learning_rate 1e30: the loss turns NaN in epoch 1; one error line naming epoch and iteration, exit 2,
    no traceback, no checkpoint and no model.pt."""
    out = root / "diverged"
    r = run(
        bundle_cmd(write_overlay(root / "diverged.json", tiny_demo, root / "stack", out), "--learning_rate", "1e30")
    )
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2, (r.stdout + r.stderr)[-4000:]
    assert len(errors) == 1 and TRACEBACK not in r.stdout + r.stderr
    assert errors[0].startswith("error: training loss is nan at epoch 1, iteration ")
    assert "loss_seg " in errors[0] and errors[0].endswith(
        "Fix: lower --learning_rate, check the data (s2s2 check-data) or resume from an earlier checkpoint"
    )
    assert "terminating due to exception" not in r.stdout + r.stderr  # ignite's echo of the error is dropped
    assert not list((out / "checkpoints").glob("*.pt")) and not (out / "models" / "model.pt").exists()


def test_inf_in_the_data_after_resume_stops_without_writing(reference, tiny_demo, root):
    """Resumed from epoch 2 with an image made infinite by the pipeline: stops at epoch 3, iteration 1; the
    epoch-2 checkpoint is untouched and nothing new is written."""
    out = root / "inf_data"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copy(reference["out"] / "checkpoints" / "checkpoint_epoch=2.pt", out / "checkpoints")
    before = (out / "checkpoints" / "checkpoint_epoch=2.pt").read_bytes()
    poison = {
        "train#poison": {"_target_": "Lambdad", "keys": "image", "func": "$lambda x: x * float('inf')"},
        "train#random_transforms": "$@train#augmentations[@augmentation] + [@train#resize, @train#to_tensor, @train#poison]",
    }
    r = run(bundle_cmd(write_overlay(root / "inf_data.json", tiny_demo, root / "stack", out, **poison)))
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and TRACEBACK not in r.stdout + r.stderr, (r.stdout + r.stderr)[-4000:]
    assert len(errors) == 1 and errors[0].startswith("error: training loss is nan at epoch 3, iteration 1 of 4 ("), (
        errors
    )
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint_epoch=2.pt"]
    assert (out / "checkpoints" / "checkpoint_epoch=2.pt").read_bytes() == before
    assert not (out / "models").exists() or not list((out / "models").iterdir())


def test_weights_left_nonfinite_by_the_last_step_of_an_epoch_stop_the_run(tmp_path):
    """A finite loss whose step leaves NaN weights (here: an optimizer that writes one) is caught after the
    epoch's last step, before EPOCH_COMPLETED (where the checkpoint would be written)."""
    from ignite.engine import Events
    from monai.losses import DiceCELoss
    from monai.networks.nets import BasicUNet

    from s2s2_monai.errors import S2S2InputError
    from s2s2_monai.training.trainer import S2S2Trainer

    torch.manual_seed(0)
    net = BasicUNet(2, 1, 3, features=(4, 4, 8, 8, 16, 4), norm="batch")

    class Breaks(torch.optim.SGD):
        def step(self, closure=None):
            super().step(closure)
            if trainer.state.iteration == 2:
                with torch.no_grad():
                    net.final_conv.weight.view(-1)[0] = float("nan")

    g = torch.Generator().manual_seed(1)
    data = [
        {"image": torch.randn(2, 1, 32, 32, generator=g), "label": torch.randint(0, 3, (2, 1, 32, 32), generator=g)}
        for _ in range(2)
    ]
    trainer = S2S2Trainer(
        device="cpu",
        max_epochs=2,
        train_data_loader=data,
        network=net,
        optimizer=Breaks(net.parameters(), lr=0.01),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        decollate=False,
    )
    completed = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: completed.append(e.state.epoch))
    with pytest.raises(S2S2InputError) as exc:
        trainer.run()
    assert str(exc.value).startswith(
        "training diverged at epoch 1, iteration 2 of 2: the optimizer step left NaN/inf in 1 weight tensor(s) "
        "(first: final_conv.weight). Fix: lower --learning_rate"
    )
    assert completed == []


def test_pretrained_npz_with_nan_is_refused(tmp_path, capsys):
    """load_pretrained refuses a non-finite array with one line naming the file (and the array)."""
    from test_networks_transunet import TINY, _google_npz

    from s2s2_monai.errors import S2S2InputError
    from s2s2_monai.networks import TransUNet, load_pretrained

    arrays = _google_npz(tmp_path / "ok.npz", grid=2)
    arrays["Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel"][0, 0] = np.nan
    path = tmp_path / "R50+ViT-B_16.npz"
    np.savez(path, **arrays)
    net = TransUNet(**TINY)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(S2S2InputError, match=r"R50\+ViT-B_16\.npz: holds NaN/inf values in 1 array\(s\) \(first: "):
        load_pretrained(net, path)
    with pytest.raises(SystemExit) as exc:
        load_pretrained(net, path, exit_on_error=True)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: holds NaN/inf") and "Dense_0/kernel" in err[0]
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # nothing half-loaded
    assert len(load_pretrained(net, tmp_path / "ok.npz")) > 0  # the finite file loads


def test_killed_and_resumed_ablation_arm_equals_uninterrupted(tiny_demo, root):
    """s2s2 ablation (one arm, one seed, 3 epochs) killed after epoch 1's checkpoint and run again: the arm's
    model.pt equals an uninterrupted ablation's."""
    overlay = write_overlay(root / "ablation.json", tiny_demo, root / "stack")

    def argv(out: Path) -> list[str]:
        return [sys.executable, "-m", "s2s2_monai", "ablation", "--config", str(SYNAPSE / "train.json"),
                "--config", str(overlay), "--out", str(out), "--arms", "enc+dec", "--seeds", "1",
                "--corruptions", "none", "--bootstrap", "50", "--no-progress", "--set", "max_epochs=3"]  # fmt: skip

    ref = root / "ablation_ref"
    r = run(argv(ref))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    out = root / "ablation_killed"
    arm = out / "runs" / "enc+dec" / "seed0"
    run_killed_after(argv(out), arm / "checkpoints" / "checkpoint_epoch=1.pt", root / "ablation_killed.log")
    assert not (arm / "models" / "model.pt").exists()
    r = run(argv(out))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert_same_weights(arm / "models" / "model.pt", ref / "runs" / "enc+dec" / "seed0" / "models" / "model.pt")
    assert (out / "ablation.csv").read_text() == (ref / "ablation.csv").read_text()
