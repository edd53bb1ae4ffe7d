"""Diffusers side of the stack: conditioning image, SD/ControlNet folders, fine-tuning, diffusion generator.

Everything runs on tiny seeded models built from configs (tests/tiny_diffusers.py), saved with
``save_pretrained`` and loaded back from folders, exactly like a real SD 2.x folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from s2s2_monai.data.datalist import load_datalist
from s2s2_monai.data.slices import SliceDataset, VolumeCache
from s2s2_monai.errors import S2S2InputError
from s2s2_monai.label_maps import SYNAPSE
from s2s2_monai.stack.base import StackGenerator, UnitIntensity
from s2s2_monai.stack.conditioning import render_label_map, resize_images, resize_masks, voc_palette
from s2s2_monai.stack.prompts import build_prompt
from s2s2_monai.stack.sd_folder import (
    check_controlnet_folder,
    check_sd_folder,
    folder_digest,
    load_controlnet,
    load_sd_components,
)

RES = 16  # generation / training size for the tests (tiny VAE x UNet downsample by 4)


@pytest.fixture(scope="module")
def tiny(tiny_sd):
    """(sd_dir, controlnet_dir) of the tiny seeded models (session fixture ``tiny_sd`` in conftest)."""
    return tiny_sd


def _train_config(**kw):
    from s2s2_monai.stack.finetune import ControlNetTrainConfig

    base = dict(epochs=50, batch_size=4, lr=1e-3, resolution=RES, seed=3, checkpoint_every=2)
    base.update(kw)
    return ControlNetTrainConfig(**base)


# ---------------------------------------------------------------- conditioning image


def test_voc_palette_matches_published_colours():
    # PASCAL VOC devkit colours (VOCdevkit/VOCcode/VOClabelcolormap.m)
    ref = {
        0: (0, 0, 0),
        1: (128, 0, 0),
        2: (0, 128, 0),
        3: (128, 128, 0),
        4: (0, 0, 128),
        5: (128, 0, 128),
        8: (64, 0, 0),
        15: (192, 128, 128),
        20: (0, 64, 128),
    }
    pal = voc_palette()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    for cid, rgb in ref.items():
        assert tuple(pal[cid]) == rgb
    assert len({tuple(c) for c in pal}) == 256  # every id its own colour
    with pytest.raises(ValueError):
        voc_palette(0)


def test_render_label_map_colours_and_range():
    mask = np.zeros((6, 10), np.uint8)
    mask[1:4, 2:7] = 5
    mask[4:, 7:] = 1
    img = render_label_map(mask)
    assert img.shape == (1, 3, 6, 10) and img.dtype == torch.float32
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    np.testing.assert_allclose(img[0, :, 2, 3].numpy(), np.array([128, 0, 128]) / 255.0)
    np.testing.assert_allclose(img[0, :, 5, 9].numpy(), np.array([128, 0, 0]) / 255.0)
    assert torch.equal(img[0, :, 0, 0], torch.zeros(3))
    # resizing is nearest-neighbour: only colours of ids present, same for numpy and torch input
    big = render_label_map(torch.as_tensor(mask[None]), 32)
    colours = {tuple(np.round(c * 255).astype(int)) for c in big[0].permute(1, 2, 0).reshape(-1, 3).numpy()}
    assert colours == {(0, 0, 0), (128, 0, 128), (128, 0, 0)}
    with pytest.raises(ValueError):
        render_label_map(np.full((4, 4), 300, np.int32))
    with pytest.raises(ValueError):
        render_label_map(np.full((4, 4), 0.5, np.float32))


@pytest.mark.parametrize("hw", [(40, 40), (37, 52)])
def test_grid_round_trip_keeps_structures_in_place(hw):
    """Mask -> generation grid (nearest) -> back (bilinear): a structure stays where it was."""
    h, w = hw
    mask = np.zeros((h, w), np.uint8)
    mask[7:19, 21:33] = 1
    small = resize_masks(mask, RES)
    back = resize_images((small == 1).float()[:, None], (h, w))[0, 0].numpy()
    ys, xs = np.mgrid[0:h, 0:w]

    def centroid(weights):
        return np.array([(ys * weights).sum(), (xs * weights).sum()]) / weights.sum()

    # pixel-centre conventions agree: centroids within half a generation pixel in mask pixels
    tol = 0.5 * max(h, w) / RES
    assert np.all(np.abs(centroid(back) - centroid(mask.astype(float))) <= tol)
    # and the bulk of the structure overlaps
    inter = ((back > 0.5) & (mask == 1)).sum()
    assert inter / (mask == 1).sum() > 0.7


# ---------------------------------------------------------------- SD / ControlNet folders


def test_tiny_folders_load_like_real_sd(tiny, tmp_path):
    sd, cn = tiny
    assert check_sd_folder(sd) == sd
    parts = load_sd_components(sd)
    assert parts.unet.config.cross_attention_dim == parts.text_encoder.config.hidden_size
    assert parts.tokenizer.model_max_length == 77
    controlnet = load_controlnet(cn, sd)
    assert type(controlnet).__name__ == "ControlNetModel"
    # a tokenizer folder with only vocab.json + merges.txt (as in the SD 2.x repos) gives the same ids
    copy = tmp_path / "sd"
    shutil.copytree(sd, copy)
    (copy / "tokenizer" / "tokenizer.json").unlink()
    check_sd_folder(copy)
    prompt = build_prompt(np.array([[0, 5, 1]]), SYNAPSE)
    ids = load_sd_components(copy).tokenizer(prompt).input_ids
    assert ids == parts.tokenizer(prompt).input_ids
    assert ids[0] == parts.tokenizer.bos_token_id and ids[-1] == parts.tokenizer.eos_token_id


@pytest.mark.parametrize(
    "remove, named",
    [
        ("model_index.json", "model_index.json"),
        ("unet/diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors"),
        ("vae/config.json", "config.json"),
        ("text_encoder/model.safetensors", "text_encoder"),
        ("scheduler/scheduler_config.json", "scheduler_config.json"),
        ("tokenizer/vocab.json", "vocab.json"),
    ],
)
def test_incomplete_sd_folder_names_the_missing_file(tiny, tmp_path, remove, named):
    sd, _ = tiny
    copy = tmp_path / "sd"
    shutil.copytree(sd, copy)
    if remove.startswith("tokenizer/"):
        (copy / "tokenizer" / "tokenizer.json").unlink()
    (copy / remove).unlink()
    with pytest.raises(S2S2InputError) as err:
        check_sd_folder(copy)
    msg = str(err.value)
    assert named in msg and "expected layout" in msg and "model_index.json" in msg


def test_bad_sd_configs(tiny, tmp_path):
    sd, _ = tiny
    with pytest.raises(S2S2InputError, match="not found"):
        check_sd_folder(tmp_path / "nowhere")
    copy = tmp_path / "sd"
    shutil.copytree(sd, copy)
    (copy / "unet" / "config.json").write_text("{broken")
    with pytest.raises(S2S2InputError, match="not valid JSON"):
        check_sd_folder(copy)
    cfg = json.loads((sd / "unet" / "config.json").read_text())
    cfg["cross_attention_dim"] = 64
    (copy / "unet" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(S2S2InputError, match="cross_attention_dim 64 differs"):
        check_sd_folder(copy)
    # corrupt weights: a clean input error, not a traceback
    (copy / "unet" / "config.json").write_text((sd / "unet" / "config.json").read_text())
    (copy / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(S2S2InputError, match="cannot load"):
        load_sd_components(copy)


def test_bad_controlnet_folder(tiny, tmp_path):
    sd, cn = tiny
    with pytest.raises(S2S2InputError, match="ControlNet folder not found"):
        check_controlnet_folder(tmp_path / "none")
    copy = tmp_path / "cn"
    shutil.copytree(cn, copy)
    (copy / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(S2S2InputError, match="diffusion_pytorch_model.safetensors") as err:
        check_controlnet_folder(copy)
    assert "config.json" in str(err.value)  # the expected layout
    # conditioning embedding that downsamples by 4 while the VAE downsamples by 2
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(sd, subfolder="unet", local_files_only=True)
    from diffusers import ControlNetModel

    ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 32)).save_pretrained(tmp_path / "cn4")
    check_controlnet_folder(tmp_path / "cn4")  # fine on its own
    with pytest.raises(S2S2InputError, match="downsamples by 4 but the SD VAE by 2"):
        check_controlnet_folder(tmp_path / "cn4", sd)


def test_folder_digest_tracks_content(tiny, tmp_path):
    _, cn = tiny
    copy = tmp_path / "cn"
    shutil.copytree(cn, copy)
    d0 = folder_digest(copy)
    assert d0 == folder_digest(cn)  # content, not location
    w = copy / "diffusion_pytorch_model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 1
    w.write_bytes(bytes(data))
    assert folder_digest(copy) != d0


# ---------------------------------------------------------------- fine-tuning


def test_training_examples_match_generation_inputs(tiny_demo):
    """Fine-tuning sees unit-space images in [-1, 1], the rendered mask and build_prompt's prompt."""
    from s2s2_monai.stack.finetune import ControlNetSliceDataset

    dl = load_datalist(tiny_demo)
    slices = SliceDataset(VolumeCache(dl, "training", progress=False))
    ds = ControlNetSliceDataset(slices, dl.label_map, UnitIntensity.for_modality(dl.modality), RES)
    assert len(ds) == len(slices)
    for i in (0, len(ds) // 2, len(ds) - 1):
        item, raw = ds[i], slices.slice_item(i)
        mask = raw["label"][0].numpy().astype(np.uint8)
        assert item["prompt"] == build_prompt(mask, SYNAPSE)
        assert torch.equal(item["conditioning"], render_label_map(mask, RES)[0])
        px = item["pixel_values"]
        assert px.shape == (3, RES, RES) and float(px.min()) >= -1.0 and float(px.max()) <= 1.0
        assert torch.equal(px[0], px[2])
        expected = (
            resize_images(torch.from_numpy(raw["image"].numpy().clip(0, 1))[None], (RES, RES)).clamp(0, 1)[0, 0] * 2 - 1
        )
        torch.testing.assert_close(px[0], expected)
    assert any("liver" in ds[i]["prompt"] for i in range(len(ds)))


def _manual_loss(parts, controlnet, scheduler, batch, seed):
    """Independent re-computation of the ControlNet training loss (epsilon or v target)."""
    g = torch.Generator().manual_seed(seed)
    ids = parts.tokenizer(
        list(batch["prompt"]), padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        dist = parts.vae.encode(batch["pixel_values"]).latent_dist
        x0 = (dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g)) * parts.vae.config.scaling_factor
        text = parts.text_encoder(ids)[0]
        eps = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=g)
        abar = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        down, mid = controlnet(
            noisy, t, encoder_hidden_states=text, controlnet_cond=batch["conditioning"], return_dict=False
        )
        pred = parts.unet(
            noisy,
            t,
            encoder_hidden_states=text,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample
    target = eps if scheduler.config.prediction_type == "epsilon" else abar.sqrt() * eps - (1 - abar).sqrt() * x0
    return float(((pred - target) ** 2).mean())


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_controlnet_loss_matches_hand_computation(tiny, tiny_demo, tmp_path, prediction_type):
    from diffusers import DDPMScheduler
    from torch.utils.data import default_collate

    from s2s2_monai.stack.finetune import ControlNetSliceDataset, controlnet_from_unet, controlnet_loss

    sd, _ = tiny
    if prediction_type != "epsilon":
        copy = tmp_path / "sd"
        shutil.copytree(sd, copy)
        cfg_path = copy / "scheduler" / "scheduler_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["prediction_type"] = prediction_type
        cfg_path.write_text(json.dumps(cfg))
        sd = copy
    parts = load_sd_components(sd)
    scheduler = parts.scheduler(DDPMScheduler)
    assert scheduler.config.prediction_type == prediction_type
    torch.manual_seed(0)
    controlnet = controlnet_from_unet(parts.unet, parts.vae)
    with torch.no_grad():  # make the ControlNet matter (from_unet zero-initialises its outputs)
        for p in controlnet.controlnet_down_blocks.parameters():
            p.normal_(0, 0.05)
    dl = load_datalist(tiny_demo)
    ds = ControlNetSliceDataset(
        SliceDataset(VolumeCache(dl, "training", progress=False)), dl.label_map, UnitIntensity(), RES
    )
    batch = default_collate([ds[i] for i in (1, 4, 6)])
    with torch.no_grad():
        got = float(controlnet_loss(parts, controlnet, scheduler, batch, torch.Generator().manual_seed(11)))
    assert got == pytest.approx(_manual_loss(parts, controlnet, scheduler, batch, 11), rel=1e-5)


def test_finetune_overfits_and_writes_loadable_controlnet(tiny, tiny_demo, tmp_path):
    from diffusers import ControlNetModel, DDPMScheduler
    from torch.utils.data import default_collate

    from s2s2_monai.stack.finetune import (
        ControlNetSliceDataset,
        controlnet_from_unet,
        controlnet_loss,
        train_controlnet,
    )

    sd, _ = tiny
    steps = []
    result = train_controlnet(
        sd,
        tiny_demo,
        tmp_path / "run",
        _train_config(max_steps=24, checkpoint_every=10, lr=3e-3),
        progress=False,
        callback=lambda s, _loss: steps.append(s),
    )
    assert result.steps == 24 and steps == list(range(1, 25)) and len(result.losses) == 24
    assert json.loads((tmp_path / "run" / "losses.json").read_text()) == result.losses
    trained = ControlNetModel.from_pretrained(result.controlnet_dir, local_files_only=True)
    # checkpoints at 10, 20 and the end (24); only the newest 2 kept
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-00000020", "step-00000024"]

    # loss on fixed training batches with fixed noise: trained ControlNet << the from_unet start
    parts = load_sd_components(sd)
    sched = parts.scheduler(DDPMScheduler)
    dl = load_datalist(tiny_demo)
    ds = ControlNetSliceDataset(
        SliceDataset(VolumeCache(dl, "training", progress=False)), dl.label_map, UnitIntensity(), RES
    )
    batch = default_collate([ds[i] for i in range(len(ds))])
    initial = controlnet_from_unet(parts.unet, parts.vae)

    def mean_loss(model):
        with torch.no_grad():
            return np.mean(
                [float(controlnet_loss(parts, model, sched, batch, torch.Generator().manual_seed(s))) for s in range(3)]
            )

    before, after = mean_loss(initial), mean_loss(trained)
    assert after < 0.9 * before, (before, after)


def test_resume_after_interruption_gives_the_uninterrupted_result(tiny, tiny_demo, tmp_path):
    from safetensors.torch import load_file

    from s2s2_monai.stack.finetune import latest_checkpoint, train_controlnet

    sd, _ = tiny
    cfg = _train_config(max_steps=5, grad_accum=2, batch_size=3, checkpoint_every=2)
    ref = train_controlnet(sd, tiny_demo, tmp_path / "ref", cfg, progress=False)

    class Interrupt(Exception):
        pass

    def stop_at_3(step, loss):
        if step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_controlnet(sd, tiny_demo, tmp_path / "cut", cfg, progress=False, callback=stop_at_3)
    assert latest_checkpoint(tmp_path / "cut").name == "step-00000002"
    assert not (tmp_path / "cut" / "controlnet").exists()
    with pytest.raises(S2S2InputError, match="--resume"):
        train_controlnet(sd, tiny_demo, tmp_path / "cut", cfg, progress=False)
    with pytest.raises(S2S2InputError, match="different lr"):
        train_controlnet(
            sd,
            tiny_demo,
            tmp_path / "cut",
            _train_config(max_steps=5, grad_accum=2, batch_size=3, checkpoint_every=2, lr=1e-4),
            resume=True,
            progress=False,
        )
    res = train_controlnet(sd, tiny_demo, tmp_path / "cut", cfg, resume=True, progress=False)
    assert res.resumed_from == 2 and res.steps == 5
    assert res.losses == ref.losses
    a = load_file(ref.controlnet_dir / "diffusion_pytorch_model.safetensors")
    b = load_file(res.controlnet_dir / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_skips_a_corrupt_newest_checkpoint(tiny, tiny_demo, tmp_path, caplog):
    from safetensors.torch import load_file

    from s2s2_monai.stack.finetune import train_controlnet

    sd, _ = tiny
    cfg = _train_config(max_steps=4, batch_size=3, checkpoint_every=1)
    ref = train_controlnet(sd, tiny_demo, tmp_path / "ref", cfg, progress=False)

    def stop_at_4(step, loss):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_controlnet(sd, tiny_demo, tmp_path / "cut", cfg, progress=False, callback=stop_at_4)
    state = tmp_path / "cut" / "checkpoints" / "step-00000003" / "training_state.pt"
    state.write_bytes(state.read_bytes()[:100])  # truncated: a full disk during the copy
    with caplog.at_level("WARNING"):
        res = train_controlnet(sd, tiny_demo, tmp_path / "cut", cfg, resume=True, progress=False)
    assert res.resumed_from == 2 and res.steps == 4 and res.losses == ref.losses
    assert (tmp_path / "cut" / "checkpoints" / "step-00000003.corrupt" / "training_state.pt").is_file()  # kept aside
    assert any("corrupt checkpoint" in r.getMessage() and "step-00000002" in r.getMessage() for r in caplog.records)
    a = load_file(ref.controlnet_dir / "diffusion_pytorch_model.safetensors")
    b = load_file(res.controlnet_dir / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_resume_after_kill(tiny, tiny_demo, tmp_path):
    """``s2s2 controlnet train`` killed with SIGKILL, then ``--resume``: same weights as one clean run."""
    from safetensors.torch import load_file

    from s2s2_monai.cli import main
    from s2s2_monai.stack.finetune import train_controlnet

    sd, _ = tiny
    args = [
        "controlnet",
        "train",
        "--sd-dir",
        str(sd),
        "--datalist",
        str(tiny_demo),
        "--epochs",
        "50",
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        "--resolution",
        str(RES),
        "--seed",
        "3",
        "--checkpoint-every",
        "1",
        "--max-steps",
        "6",
        "--quiet",
    ]
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same thread count as this process: same rounding
    proc = subprocess.Popen(
        [sys.executable, "-m", "s2s2_monai", *args, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        deadline = time.time() + 120
        while not (out / "checkpoints" / "step-00000002").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert main([*args, "--out", str(out), "--resume"]) == 0
    ref = train_controlnet(
        sd, tiny_demo, tmp_path / "ref", _train_config(max_steps=6, checkpoint_every=1), progress=False
    )
    a = load_file(ref.controlnet_dir / "diffusion_pytorch_model.safetensors")
    b = load_file(out / "controlnet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((out / "losses.json").read_text()) == ref.losses


def test_cli_reports_bad_input_in_one_line(tiny_demo, tmp_path, capsys):
    from s2s2_monai.cli import main

    rc = main(
        [
            "controlnet",
            "train",
            "--sd-dir",
            str(tmp_path / "nosd"),
            "--datalist",
            str(tiny_demo),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and "\n" not in err and "model_index.json" in err


# ---------------------------------------------------------------- generation


@pytest.fixture(scope="module")
def trained_controlnet(tiny, tiny_demo, tmp_path_factory):
    """A ControlNet fine-tuned a few steps, so that the mask actually steers generation."""
    from s2s2_monai.stack.finetune import train_controlnet

    sd, _ = tiny
    return train_controlnet(
        sd, tiny_demo, tmp_path_factory.mktemp("cn"), _train_config(max_steps=6, lr=3e-2), progress=False
    ).controlnet_dir


def _masks():
    masks = np.zeros((3, 40, 36), np.uint8)
    masks[0, 5:20, 5:30] = 5
    masks[1, 10:30, 12:34] = 1
    masks[1, 2:8, 2:8] = 8
    masks[2, :, :10] = 7
    return masks


def test_diffusion_generator_stack(tiny, trained_controlnet):
    from s2s2_monai.stack.diffusion import DiffusionGenerator

    sd, _ = tiny
    gen = DiffusionGenerator(sd, trained_controlnet, resolution=RES, steps=4, batch_size=2, progress=False)
    assert isinstance(gen, StackGenerator) and gen.name == "diffusion"
    masks = _masks()
    prompts = [build_prompt(m, SYNAPSE) for m in masks]
    seeds = [10, 11, 12]
    out = gen.generate(masks, prompts, seeds, n=3)
    assert out.shape == (3, 3, 40, 36) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.std(out[:, 0] - out[:, 1]) > 1e-4  # members differ
    # determinism per seed: the same call in a freshly loaded generator (another rank) is bit-identical
    other = DiffusionGenerator(sd, trained_controlnet, resolution=RES, steps=4, batch_size=2, progress=False)
    np.testing.assert_array_equal(other.generate(masks, prompts, seeds, n=3), out)
    # batch_size=1: a mask's stack is bit-identical whatever the other masks of the call
    gen.batch_size = 1
    alone = gen.generate(masks[1:2], prompts[1:2], seeds[1:2], n=3)
    np.testing.assert_array_equal(gen.generate(masks, prompts, seeds, n=3)[1:2], alone)
    # other batch sizes and n: same images up to float rounding of differently shaped kernels
    np.testing.assert_allclose(alone, out[1:2], rtol=0, atol=1e-5)
    gen.batch_size = 3
    np.testing.assert_allclose(gen.generate(masks, prompts, seeds, n=3), out, rtol=0, atol=1e-5)
    np.testing.assert_allclose(gen.generate(masks[2:], prompts[2:], seeds[2:], n=1), out[2:, :1], rtol=0, atol=1e-5)
    # another seed, another stack
    assert not np.allclose(gen.generate(masks[:1], prompts[:1], [99], n=1), out[:1, :1])
    # the mask steers generation: same prompt and seed, shifted mask -> other image with the
    # fine-tuned ControlNet, identical image with the zero-initialised one from ControlNetModel.from_unet
    shifted = np.roll(masks[:1], 12, axis=2)
    assert np.abs(gen.generate(shifted, prompts[:1], seeds[:1], n=1) - out[:1, :1]).max() > 1e-3
    untrained = DiffusionGenerator(sd, tiny[1], resolution=RES, steps=4, batch_size=1, progress=False)
    np.testing.assert_array_equal(
        untrained.generate(shifted, prompts[:1], seeds[:1], n=1),
        untrained.generate(masks[:1], prompts[:1], seeds[:1], n=1),
    )
    with pytest.raises(ValueError, match="one prompt and one seed per mask"):
        gen.generate(masks, prompts[:2], seeds, n=1)
    with pytest.raises(ValueError, match="does not define"):
        gen.generate(np.full((1, 8, 8), 42, np.uint8), prompts[:1], seeds[:1], n=1)


def test_diffusion_generator_resizes_back_to_each_mask_grid(tiny, trained_controlnet):
    """Generating from a mask on its own grid == generating at R, then bilinear back to the grid."""
    from s2s2_monai.stack.diffusion import DiffusionGenerator

    sd, _ = tiny
    gen = DiffusionGenerator(
        sd, trained_controlnet, resolution=RES, steps=3, batch_size=4, progress=False, resize_mode="bilinear"
    )
    mask = _masks()[1:2]
    prompt = [build_prompt(mask[0], SYNAPSE)]
    native = gen.generate(mask, prompt, [5], n=2)  # (1, 2, 40, 36)
    at_r = gen.generate(resize_masks(mask, RES).numpy().astype(np.uint8), prompt, [5], n=2)  # (1, 2, R, R)
    expected = resize_images(torch.from_numpy(at_r[0])[:, None], (40, 36))[:, 0].clamp(0, 1).numpy()
    np.testing.assert_allclose(native[0], expected, atol=1e-5)


def test_diffusion_generator_settings(tiny, trained_controlnet):
    from s2s2_monai.stack.diffusion import DiffusionGenerator

    sd, cn0 = tiny
    a = DiffusionGenerator(sd, trained_controlnet, resolution=RES, steps=3, progress=False).settings()
    json.dumps(a)
    for key in ("sd_digest", "controlnet_digest", "steps", "guidance_scale", "eta", "resolution", "dtype"):
        assert key in a
    assert a["guidance_scale"] == 9.0 and a["eta"] == 0.0 and a["dtype"] == "float32"
    assert DiffusionGenerator(sd, trained_controlnet, resolution=RES, steps=3, progress=False).settings() == a
    assert DiffusionGenerator(sd, trained_controlnet, resolution=RES, steps=4, progress=False).settings() != a
    assert (
        DiffusionGenerator(sd, cn0, resolution=RES, steps=3, progress=False).settings()["controlnet_digest"]
        != a["controlnet_digest"]
    )
    with pytest.raises(ValueError, match="multiple of 4"):
        DiffusionGenerator(sd, cn0, resolution=18, progress=False)  # cn0 records no training resolution


def test_controlnet_records_resolution_and_base_model_and_generation_checks_them(tiny, trained_controlnet, tmp_path):
    from s2s2_monai.stack.diffusion import DEFAULT_RESOLUTION, DiffusionGenerator
    from s2s2_monai.stack.sd_folder import controlnet_record, folder_digest

    sd, cn0 = tiny
    record = controlnet_record(trained_controlnet)
    assert record["resolution"] == RES and record["base_model"]["sd_digest"] == folder_digest(sd)
    assert record["base_model"]["sd_dir"] == str(Path(sd).resolve()) and record["label_map"] == "synapse"
    # generation defaults to the training resolution (not 512) and refuses another one
    assert DiffusionGenerator(sd, trained_controlnet, steps=2, progress=False).resolution == RES
    assert DiffusionGenerator(sd, cn0, steps=2, progress=False).resolution == DEFAULT_RESOLUTION == 512
    with pytest.raises(S2S2InputError, match=rf"fine-tuned at {RES} px; generation at {2 * RES} px"):
        DiffusionGenerator(sd, trained_controlnet, resolution=2 * RES, progress=False)
    # another base model (same architecture, other weights): refused, naming the one it was trained on
    other_sd = tmp_path / "other_sd"
    shutil.copytree(sd, other_sd)
    sched = other_sd / "scheduler" / "scheduler_config.json"
    sched.write_text(json.dumps({**json.loads(sched.read_text()), "steps_offset": 7}))
    with pytest.raises(S2S2InputError, match=rf"fine-tuned on the SD folder {re.escape(str(Path(sd).resolve()))}"):
        DiffusionGenerator(other_sd, trained_controlnet, steps=2, progress=False)
