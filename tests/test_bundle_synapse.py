"""The Synapse and CHAOS bundles, tested the model-zoo way: ConfigWorkflow on tiny NIfTI files with
shrinking overrides + check_properties(); plus the real command line for resume, torchrun (gloo) and
the no-data message."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow, verify_metadata

REPO = Path(__file__).resolve().parents[1]
SYNAPSE = REPO / "bundles" / "synapse"
SCHEMA = REPO / "bundles" / "schema" / "metadata_schema.json"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def tiny_overrides(tiny_demo: Path, out: Path, stack: Path, tiny_network: dict, **extra) -> dict:
    """Shrink the paper configuration to seconds: 32x32 inputs, ``tiny_network`` (fixture ``tiny_transunet``), 2 epochs."""
    o = {
        "bundle_root": str(SYNAPSE),
        "dataset_dir": str(tiny_demo.parent),
        "datalist": str(tiny_demo),
        "output_dir": str(out),
        "stack_dir": str(stack),
        "stack_n": 2,
        "input_size": [32, 32],
        "max_epochs": 2,
        "batch_size": 4,
        "num_workers": 0,
        "val_interval": 1,
        **tiny_network,
    }
    o.update(extra)
    return o


def _workflow(files, overrides, workflow_type="train"):
    files = [str(SYNAPSE / f) for f in files]
    return ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(SYNAPSE / "metadata.json"),
        logging_file=str(SYNAPSE / "logging.conf"),
        workflow_type=workflow_type,
        **overrides,
    )


@pytest.fixture(scope="module")
def trained(tiny_demo, tmp_path_factory, tiny_transunet):
    """One tiny S2S2 training run of bundles/synapse/train.json."""
    root = tmp_path_factory.mktemp("synapse_bundle")
    overrides = tiny_overrides(tiny_demo, root / "run", root / "stack", tiny_transunet)
    w = _workflow(["train.json"], overrides)
    w.initialize()
    missing = w.check_properties()
    w.run()
    w.finalize()
    return {"root": root, "overrides": overrides, "missing": missing, "workflow": w}


def test_train_bundle_runs_and_leaves_checkpoint_logs_and_dice(trained):
    assert not trained["missing"]  # check_properties(): every required train property is defined
    run = trained["root"] / "run"
    ckpt = run / "checkpoints" / "checkpoint_epoch=2.pt"
    assert ckpt.is_file() and (run / "models" / "model.pt").is_file()
    state = torch.load(ckpt, weights_only=True)
    assert set(state) == {"network", "optimizer", "lr_scheduler", "trainer"}
    assert state["trainer"]["iteration"] == 2 * state["trainer"]["epoch_length"]
    assert state["lr_scheduler"]["last_epoch"] == state["trainer"]["iteration"]  # poly decay steps per iteration
    (events,) = run.glob("events.out.tfevents.*")  # one writer for training and validation: no empty second file
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(events)).Reload().Tags()["scalars"]
    assert {"loss_seg", "loss_enc", "loss_dec", "val_mean_dice"} <= set(tags), tags
    metrics = dict(line.split(",") for line in (run / "metrics.csv").read_text().splitlines())
    assert 0.0 <= float(metrics["val_mean_dice"]) <= 1.0 and "val_dice_liver" in metrics
    assert (trained["root"] / "stack" / "manifest.json").is_file()
    trainer = trained["workflow"].trainer
    assert {"loss_enc", "loss_dec", "loss_seg", "loss_seg_stack"} <= set(map(str, trainer.state.output))


def test_preprocessing_is_visible_and_editable_in_the_bundle(tiny_demo, tmp_path, tiny_transunet):
    import nibabel as nib

    o = tiny_overrides(
        tiny_demo, tmp_path / "run", tmp_path / "stack", tiny_transunet, use_stack=False, hu_window=[0, 100]
    )
    w = _workflow(["train.json"], o)
    w.initialize()
    assert not (tmp_path / "stack").exists()  # baseline: initialize builds no stack
    case = w.parser.get_parsed_content("train#volumes").cases[0]
    hu = nib.as_closest_canonical(nib.load(case.image_path)).get_fdata()
    np.testing.assert_allclose(
        case.image, np.clip(hu / 100.0, 0.0, 1.0), atol=1e-5
    )  # the bundle's window, not [-125, 275]
    assert w.parser.get_parsed_content("validate#volumes").cases[0].image.max() <= 1.0
    # visible per modality in the config; the datalist's modality (CT here) picks the list
    assert w.parser["train#preprocessing_by_modality"]["CT"][0]["_target_"].endswith("CTWindowd")
    assert w.parser["train#preprocessing_by_modality"]["MRI"][0]["_target_"].endswith("MRINormalized")
    assert w.parser.get_parsed_content("modality") == "CT"


def test_evaluate_and_inference_bundles(trained, tiny_demo):
    root, o = trained["root"], trained["overrides"]
    w = _workflow(["train.json", "evaluate.json"], {**o, "eval_section": "test"}, workflow_type="infer")
    w.initialize()
    w.run()
    w.finalize()
    summary = json.loads((root / "run" / "eval_test" / "summary.json").read_text())
    assert summary  # report written by the evaluation package
    assert (root / "run" / "eval_test" / "metrics.csv").is_file()

    w = _workflow(["train.json", "inference.json"], {**o, "infer_dir": str(root / "pred")}, workflow_type="infer")
    w.initialize()
    w.run()
    w.finalize()
    entry = json.loads(tiny_demo.read_text())["test"][0]
    src = nib.load(tiny_demo.parent / entry["image"])
    pred = nib.load(root / "pred" / f"{Path(entry['image']).name.split('.')[0]}.nii.gz")
    assert pred.shape == src.shape and np.allclose(pred.affine, src.affine)
    assert set(np.unique(np.asarray(pred.dataobj))) <= set(range(9))


def test_demo_overlay_makes_data_and_stack(tmp_path):
    o = {
        "bundle_root": str(SYNAPSE),
        "dataset_dir": str(tmp_path / "demo"),
        "output_dir": str(tmp_path / "out"),
        "demo_cases": 2,
        "demo_shape": [32, 32, 4],
        "stack_n": 2,
    }
    w = _workflow(["train.json", "demo.json"], o)
    w.initialize()
    assert not w.check_properties()
    assert (tmp_path / "demo" / "datalist.json").is_file()
    assert (tmp_path / "out" / "stack_appearance" / "manifest.json").is_file()
    assert type(w.parser.get_parsed_content("network_def")).__name__ == "BasicUNet"
    assert w.parser.get_parsed_content("tap_preset") == "basic_unet"


@pytest.mark.parametrize("bundle", ["synapse", "chaos_t2spir"])
def test_metadata_verifies_offline(bundle, tmp_path):
    verify_metadata(meta_file=str(REPO / "bundles" / bundle / "metadata.json"), filepath=str(SCHEMA))
    bad = json.loads((REPO / "bundles" / bundle / "metadata.json").read_text())
    del bad["network_data_format"]["inputs"]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(Exception, match="inputs"):
        verify_metadata(meta_file=str(tmp_path / "bad.json"), filepath=str(SCHEMA))


def test_chaos_bundle_trains_on_real_mr(shared_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # bundles run from any working directory
    mr = {
        "image": str(shared_data / "mr" / "totalseg_example_mr_sm.nii.gz"),
        "label": str(shared_data / "mr" / "totalseg_example_mr_sm_seg.nii.gz"),
    }
    datalist = tmp_path / "chaos.json"
    datalist.write_text(
        json.dumps(
            {
                "label_map": "chaos_t2spir",
                "label_remap": "totalseg_mr_to_chaos",
                "modality": "MRI",
                "training": [mr],
                "validation": [mr],
            }
        )
    )
    overrides = {
        "dataset_dir": str(tmp_path),
        "datalist": str(datalist),
        "output_dir": str(tmp_path / "run"),
        "stack_dir": str(tmp_path / "stack"),
        "stack_n": 2,
        "input_size": [32, 32],
        "max_epochs": 1,
        "batch_size": 4,
        "num_workers": 0,
        "val_interval": 1,
        "networks#basic_unet#features": [4, 4, 8, 8, 16, 4],
        "stack_generator": "appearance",
    }
    chaos = REPO / "bundles" / "chaos_t2spir"
    w = ConfigWorkflow(
        config_file=[str(SYNAPSE / "train.json"), str(chaos / "train.json")],
        meta_file=str(chaos / "metadata.json"),
        logging_file=str(chaos / "logging.conf"),
        workflow_type="train",
        **overrides,
    )
    w.initialize()
    assert not w.check_properties()
    manifest = json.loads((tmp_path / "stack" / "manifest.json").read_text())
    assert manifest["label_map"] == "chaos_t2spir" and manifest["unit"] != [0.0, 1.0]  # MRI unit space
    w.run()
    w.finalize()
    metrics = dict(line.split(",") for line in (tmp_path / "run" / "metrics.csv").read_text().splitlines())
    assert {"val_dice_liver", "val_dice_spleen", "val_dice_right_kidney", "val_dice_left_kidney"} <= set(metrics)
    assert w.trainer.state.output["loss_enc"] >= 0 and "loss_dec" in map(str, w.trainer.state.output)
    image = w.parser.get_parsed_content("train#volumes").cases[0].image  # the overlay's MRINormalized
    assert abs(float(image.mean())) < 1e-3 and abs(float(image.std()) - 1.0) < 1e-2


# ---------------------------------------------------------------------------- command line
def _overlay(path: Path, overrides: dict) -> str:
    """Overrides as a third config file (fire parses nested/list values awkwardly)."""
    path.write_text(json.dumps(overrides))
    return str(path)


def _bundle_cmd(configs: list[str]) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(configs)]


def test_no_data_stops_with_a_clear_message(tmp_path):
    out = tmp_path / "never_written"
    cmd = _bundle_cmd([str(SYNAPSE / "train.json")]) + [
        "--dataset_dir",
        str(tmp_path / "nothing"),
        "--output_dir",
        str(out),
    ]
    r = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert line, r.stderr[-2000:]
    msg = line[0]
    assert "img0005.nii.gz" in msg and "label0005.nii.gz" in msg and "synapse.json" in msg
    assert "dataset_dir" in msg and "demo.json" in msg
    assert not out.exists()  # nothing half-written


def test_resume_after_kill_9(trained, tiny_demo, tmp_path, tiny_transunet):
    o = tiny_overrides(
        tiny_demo, tmp_path / "run", trained["root"] / "stack", tiny_transunet, max_epochs=5, val_interval=5
    )
    cmd = _bundle_cmd([str(SYNAPSE / "train.json"), _overlay(tmp_path / "tiny.json", o)])
    log1 = open(tmp_path / "first.log", "w")
    p = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=log1, stderr=subprocess.STDOUT, start_new_session=True)
    ckpts = tmp_path / "run" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None and not (ckpts / "checkpoint_epoch=2.pt").exists():
        time.sleep(0.2)
    assert p.poll() is None, "training ended before it could be killed"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    log1.close()
    done = sorted(int(f.name.split("=")[1][:-3]) for f in ckpts.glob("checkpoint_epoch=*.pt"))
    assert done and max(done) < 5
    r = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert f"checkpoint_epoch={max(done)}.pt" in log  # resumed from the newest checkpoint
    assert f"Epoch: {max(done)}/5" not in log and f"Epoch: {max(done) + 1}/5" in log  # finished epochs not redone
    final = torch.load(ckpts / "checkpoint_epoch=5.pt", weights_only=True)
    assert final["trainer"]["iteration"] == 5 * final["trainer"]["epoch_length"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_gloo(trained, tiny_demo, tmp_path, tiny_transunet):
    o = tiny_overrides(tiny_demo, tmp_path / "run", trained["root"] / "stack", tiny_transunet, max_epochs=2)
    # each rank saves its replica at the end: DDP must keep them identical through the two-pass steps
    o["finalize"] = [
        "$torch.save(@network.module.state_dict(), @output_dir + '/rank%d.pt' % torch.distributed.get_rank())",
        "$torch.distributed.destroy_process_group()",
    ]
    configs = [str(SYNAPSE / "train.json"), str(SYNAPSE / "multi_gpu_train.json"), _overlay(tmp_path / "tiny.json", o)]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        str(configs),
    ]
    r = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    state = torch.load(tmp_path / "run" / "checkpoints" / "checkpoint_epoch=2.pt", weights_only=True)
    n_slices = sum(
        nib.load(tiny_demo.parent / e["image"]).shape[2] for e in json.loads(tiny_demo.read_text())["training"]
    )
    per_rank = -(-n_slices // 2)  # DistributedSampler(even_divisible=True) shard
    assert state["trainer"]["epoch_length"] == -(-per_rank // o["batch_size"])
    assert (tmp_path / "run" / "models" / "model.pt").is_file()
    r0, r1 = (torch.load(tmp_path / "run" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    params = [k for k in r0 if "running" not in k and "num_batches" not in k]  # BN buffers stay per rank
    assert all(torch.equal(r0[k], r1[k]) for k in params)
    assert all(torch.equal(r0[k], state["network"][k]) for k in params)
