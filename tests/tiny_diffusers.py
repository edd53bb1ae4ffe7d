"""Tiny seeded Stable Diffusion + ControlNet folders built from configs (no download).

Used by the stack tests and by ``benchmarks/bench_generation.py``. Everything is created from
configs with a fixed seed and written with ``save_pretrained`` in the diffusers folder layout
(``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``),
so the code under test loads it exactly as it loads a real SD 2.x folder.

Sizes: a 2-level VAE (downsampling factor 2), a 2-level UNet with 8/16 channels and
``cross_attention_dim`` 32 = the CLIP text encoder's hidden size, a ControlNet from
``ControlNetModel.from_unet`` whose conditioning embedding also downsamples by 2.
The tokenizer is a byte-level BPE CLIP tokenizer over a generated vocabulary in which every
prompt word of the project's label maps is a few tokens at most (``model_max_length=77``).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

__all__ = [
    "TINY_RESOLUTION",
    "prompt_words",
    "write_tiny_tokenizer",
    "build_tiny_sd",
    "build_tiny_controlnet",
    "tiny_sd_folders",
]

#: image size the tiny models are meant for (multiple of 2 x 2 = VAE x UNet downsampling)
TINY_RESOLUTION = 32


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable unicode table (the byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def prompt_words() -> list[str]:
    """Lower-case words of every prompt the project can build (all label maps)."""
    from s2s2_monai.label_maps import LABEL_MAPS
    from s2s2_monai.stack.prompts import prompt_prefix

    words: set[str] = {"background"}
    for lm in LABEL_MAPS.values():
        text = prompt_prefix(lm) + " ".join(lm.classes.values())
        words.update(w.strip(",").lower() for w in text.split())
    return sorted(w for w in words if w)


def write_tiny_tokenizer(folder: str | os.PathLike) -> Path:
    """Write ``vocab.json`` + ``merges.txt`` of a small CLIP BPE and save a ``CLIPTokenizer`` there."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = list(_bytes_to_unicode().values())
    vocab_list = alphabet + [c + "</w>" for c in alphabet]
    merges: list[str] = []
    for word in prompt_words():
        # left-to-right merges that turn each whole word into one token
        sym = word[0]
        for i, ch in enumerate(word[1:], start=1):
            nxt = ch + ("</w>" if i == len(word) - 1 else "")
            merges.append(f"{sym} {nxt}")
            sym += nxt
            vocab_list.append(sym)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab: dict[str, int] = {}
    for tok in vocab_list:
        vocab.setdefault(tok, len(vocab))
    merges = list(dict.fromkeys(merges))
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tok = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=77)
    tok.save_pretrained(folder)
    return folder


def build_tiny_sd(out: str | os.PathLike, seed: int = 0, prediction_type: str = "epsilon") -> Path:
    """Write a tiny Stable Diffusion folder (diffusers layout) to ``out`` and return it."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    out = Path(out)
    # vocab.json + merges.txt stay in tokenizer/ (the layout of a real SD 2.x folder)
    tokenizer = CLIPTokenizer.from_pretrained(write_tiny_tokenizer(out / "tokenizer"), local_files_only=True)
    torch.manual_seed(seed)
    hidden = 32
    unet = UNet2DConditionModel(
        sample_size=TINY_RESOLUTION // 2,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=hidden,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=TINY_RESOLUTION,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out)
    return out


def build_tiny_controlnet(sd_dir: str | os.PathLike, out: str | os.PathLike) -> Path:
    """ControlNet initialised from the tiny SD UNet (``ControlNetModel.from_unet``), saved to ``out``."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(sd_dir, subfolder="unet", local_files_only=True)
    # conditioning embedding downsamples by 2**(len-1) = 2, the tiny VAE's factor
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16))
    controlnet.save_pretrained(out)
    return Path(out)


def tiny_sd_folders(root: str | os.PathLike, seed: int = 0) -> tuple[Path, Path]:
    """Build (once) ``root/sd`` and ``root/controlnet``; return both paths."""
    root = Path(root)
    sd, cn = root / "sd", root / "controlnet"
    if not (sd / "model_index.json").is_file():
        build_tiny_sd(sd, seed=seed)
    if not (cn / "config.json").is_file():
        build_tiny_controlnet(sd, cn)
    return sd, cn
