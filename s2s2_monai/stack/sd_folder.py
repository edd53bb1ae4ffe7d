"""Local Stable Diffusion and ControlNet folders: layout checks, loading, content digests.

Nothing is ever downloaded: every load is ``from_pretrained(folder, local_files_only=True)``.
A Stable Diffusion folder is in the diffusers layout (what ``StableDiffusionPipeline.save_pretrained``
writes, and what the SD 2.x repositories hold)::

    model_index.json
    unet/config.json            unet/diffusion_pytorch_model.safetensors (or .bin, fp16 variant, shards)
    vae/config.json             vae/diffusion_pytorch_model.safetensors
    text_encoder/config.json    text_encoder/model.safetensors (or pytorch_model.bin)
    tokenizer/vocab.json + tokenizer/merges.txt (or tokenizer/tokenizer.json)
    scheduler/scheduler_config.json

A ControlNet folder is what ``ControlNetModel.save_pretrained`` writes: ``config.json`` +
``diffusion_pytorch_model.safetensors``. Missing pieces raise :class:`S2S2InputError` naming the
missing file and the expected layout. One written by ``s2s2 controlnet train`` also holds
``s2s2_controlnet.json`` (:data:`CONTROLNET_RECORD`): its training ``resolution`` and ``base_model``
(the SD folder and its content digest); loading it with another SD folder, or generating at another
resolution, is refused (:func:`controlnet_record`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s2s2_monai.errors import S2S2InputError

__all__ = [
    "SD_LAYOUT",
    "CONTROLNET_LAYOUT",
    "CONTROLNET_RECORD",
    "controlnet_record",
    "SDComponents",
    "check_sd_folder",
    "check_controlnet_folder",
    "load_sd_components",
    "load_controlnet",
    "folder_digest",
]

SD_LAYOUT = (
    "model_index.json, unet/{config.json, diffusion_pytorch_model.safetensors}, "
    "vae/{config.json, diffusion_pytorch_model.safetensors}, text_encoder/{config.json, model.safetensors}, "
    "tokenizer/{vocab.json, merges.txt} (or tokenizer/tokenizer.json), scheduler/scheduler_config.json"
)
CONTROLNET_LAYOUT = "config.json, diffusion_pytorch_model.safetensors (as written by ControlNetModel.save_pretrained)"
#: What ``s2s2 controlnet train`` records next to the ControlNet weights: resolution, base model, data.
CONTROLNET_RECORD = "s2s2_controlnet.json"

_WEIGHT_STEMS = {
    "unet": ("diffusion_pytorch_model",),
    "vae": ("diffusion_pytorch_model",),
    "text_encoder": ("model", "pytorch_model"),
}


def _weight_file(folder: Path, stems: tuple[str, ...]) -> Path | None:
    """The weights of a component folder (plain, fp16 variant, or a shard index), or ``None``."""
    for stem in stems:
        for variant in ("", ".fp16"):
            for ext in (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json"):
                f = folder / f"{stem}{variant}{ext}"
                if f.is_file():
                    return f
    return None


def _read_json(path: Path, what: str, layout: str) -> dict:
    if not path.is_file():
        raise S2S2InputError(path, f"missing {path.name} of the {what}", f"expected layout: {layout}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise S2S2InputError(
            path, f"{path.name} of the {what} is not valid JSON ({exc})", "restore the file from the model repository"
        ) from None


def check_sd_folder(sd_dir: str | os.PathLike) -> Path:
    """Check a Stable Diffusion folder's layout and configs; return it as a ``Path``.

    Also checks that the UNet's ``cross_attention_dim`` equals the text encoder's hidden size.
    """
    root = Path(sd_dir)
    what = "Stable Diffusion folder"
    if not root.is_dir():
        raise S2S2InputError(
            root, f"{what} not found", f"pass --sd-dir pointing at a local folder in diffusers layout: {SD_LAYOUT}"
        )
    _read_json(root / "model_index.json", what, SD_LAYOUT)
    configs = {}
    for sub, cfg in (
        ("unet", "config.json"),
        ("vae", "config.json"),
        ("text_encoder", "config.json"),
        ("scheduler", "scheduler_config.json"),
    ):
        configs[sub] = _read_json(root / sub / cfg, what, SD_LAYOUT)
        if sub in _WEIGHT_STEMS and _weight_file(root / sub, _WEIGHT_STEMS[sub]) is None:
            missing = root / sub / f"{_WEIGHT_STEMS[sub][0]}.safetensors"
            raise S2S2InputError(missing, f"missing {sub} weights of the {what}", f"expected layout: {SD_LAYOUT}")
    tok = root / "tokenizer"
    if not (tok / "tokenizer.json").is_file():
        for name in ("vocab.json", "merges.txt"):
            if not (tok / name).is_file():
                raise S2S2InputError(
                    tok / name, f"missing tokenizer/{name} of the {what}", f"expected layout: {SD_LAYOUT}"
                )
    cross, hidden = configs["unet"].get("cross_attention_dim"), configs["text_encoder"].get("hidden_size")
    if cross is not None and hidden is not None and cross != hidden:
        raise S2S2InputError(
            root / "unet" / "config.json",
            f"unet cross_attention_dim {cross} differs from the text encoder hidden_size {hidden}",
            "use a UNet and text encoder from the same Stable Diffusion release",
        )
    return root


def check_controlnet_folder(controlnet_dir: str | os.PathLike, sd_dir: str | os.PathLike | None = None) -> Path:
    """Check a ControlNet folder; with ``sd_dir``, also that it fits that SD's UNet and VAE."""
    root = Path(controlnet_dir)
    what = "ControlNet folder"
    if not root.is_dir():
        raise S2S2InputError(
            root,
            f"{what} not found",
            f"train one with `s2s2 controlnet train` or pass a folder holding {CONTROLNET_LAYOUT}",
        )
    cfg = _read_json(root / "config.json", what, CONTROLNET_LAYOUT)
    if _weight_file(root, ("diffusion_pytorch_model",)) is None:
        raise S2S2InputError(
            root / "diffusion_pytorch_model.safetensors",
            f"missing weights of the {what}",
            f"expected layout: {CONTROLNET_LAYOUT}",
        )
    if sd_dir is not None:
        sd = Path(sd_dir)
        base = (controlnet_record(root) or {}).get("base_model") or {}
        if base.get("sd_digest") and base["sd_digest"] != folder_digest(sd):
            raise S2S2InputError(
                root / CONTROLNET_RECORD,
                f"this ControlNet was fine-tuned on the SD folder {base.get('sd_dir')} (digest {base['sd_digest'][:12]}), "
                f"not on {sd} (digest {folder_digest(sd)[:12]})",
                f"pass --sd-dir {base.get('sd_dir')} (the base model it was trained on), or fine-tune a ControlNet on {sd}",
            )
        unet = _read_json(sd / "unet" / "config.json", "Stable Diffusion folder", SD_LAYOUT)
        vae = _read_json(sd / "vae" / "config.json", "Stable Diffusion folder", SD_LAYOUT)
        # the ControlNet's residuals are added to the UNet's down and mid blocks: same widths and depths
        for key in ("cross_attention_dim", "in_channels", "block_out_channels", "layers_per_block"):
            if key in cfg and key in unet and _as_list(cfg[key]) != _as_list(unet[key]):
                raise S2S2InputError(
                    root / "config.json",
                    f"ControlNet {key} {cfg[key]} does not match the SD UNet's {unet[key]} ({sd / 'unet' / 'config.json'}): it was made for another base model",
                    "use the ControlNet trained on this --sd-dir (s2s2 controlnet train --sd-dir ...)",
                )
        cond = cfg.get("conditioning_embedding_out_channels") or (16, 32, 96, 256)
        cond_factor, vae_factor = 2 ** (len(cond) - 1), 2 ** (len(vae.get("block_out_channels", [0])) - 1)
        if cond_factor != vae_factor:
            raise S2S2InputError(
                root / "config.json",
                f"ControlNet conditioning embedding downsamples by {cond_factor} but the SD VAE by {vae_factor}",
                "use the ControlNet trained on this --sd-dir",
            )
    return root


def controlnet_record(controlnet_dir: str | os.PathLike) -> dict | None:
    """The folder's :data:`CONTROLNET_RECORD` (``resolution``, ``base_model``, ...); ``None`` if it has none."""
    path = Path(controlnet_dir) / CONTROLNET_RECORD
    return (
        _read_json(path, "ControlNet record", "a JSON object written by s2s2 controlnet train")
        if path.is_file()
        else None
    )


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else value


@dataclass
class SDComponents:
    """The frozen parts of a Stable Diffusion folder."""

    vae: Any
    text_encoder: Any
    tokenizer: Any
    unet: Any
    sd_dir: Path

    def scheduler(self, cls):
        """``cls.from_pretrained(sd_dir, subfolder="scheduler")`` (e.g. DDPMScheduler, DDIMScheduler)."""
        return cls.from_pretrained(self.sd_dir, subfolder="scheduler", local_files_only=True)


def _variant(folder: Path, stems: tuple[str, ...]) -> str | None:
    f = _weight_file(folder, stems)
    return "fp16" if f is not None and ".fp16." in f.name else None


def _realign(model):
    """Copy parameters and buffers into fresh (64-byte aligned) storage.

    Weights loaded from safetensors may sit at unaligned offsets; CPU kernels then take other
    vectorisation paths and round differently than for freshly allocated tensors, which would
    break bit-identical resume. Copying once makes loaded models compute like built ones.
    """
    import torch

    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.data = t.data.clone(memory_format=torch.contiguous_format)
    return model


def _load(what: Path, fn, *args, **kwargs):
    try:
        obj = fn(*args, **kwargs)
        return _realign(obj) if hasattr(obj, "parameters") else obj
    except S2S2InputError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise S2S2InputError(
            what,
            f"cannot load ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
            "check that the folder is complete and matches the expected layout",
        ) from None


def load_sd_components(sd_dir: str | os.PathLike, torch_dtype=None, device=None) -> SDComponents:
    """Load VAE, text encoder, tokenizer and UNet from a checked SD folder (``local_files_only``)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    root = check_sd_folder(sd_dir)
    common = {"local_files_only": True, "low_cpu_mem_usage": False}
    vae, unet = (
        _load(
            root / name,
            cls.from_pretrained,
            root,
            subfolder=name,
            torch_dtype=torch_dtype,
            variant=_variant(root / name, _WEIGHT_STEMS[name]),
            **common,
        )
        for name, cls in (("vae", AutoencoderKL), ("unet", UNet2DConditionModel))
    )
    te_kwargs = {"local_files_only": True, "variant": _variant(root / "text_encoder", _WEIGHT_STEMS["text_encoder"])}
    if torch_dtype is not None:
        te_kwargs["dtype"] = torch_dtype
    text_encoder = _load(root / "text_encoder", CLIPTextModel.from_pretrained, root / "text_encoder", **te_kwargs)
    tokenizer = _load(root / "tokenizer", CLIPTokenizer.from_pretrained, root / "tokenizer", local_files_only=True)
    parts = SDComponents(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, sd_dir=root)
    if device is not None:
        for m in (vae, text_encoder, unet):
            m.to(device)
    return parts


def load_controlnet(
    controlnet_dir: str | os.PathLike, sd_dir: str | os.PathLike | None = None, torch_dtype=None, device=None
):
    """``ControlNetModel.from_pretrained(dir, local_files_only=True)`` after :func:`check_controlnet_folder`."""
    from diffusers import ControlNetModel

    root = check_controlnet_folder(controlnet_dir, sd_dir)
    model = _load(
        root,
        ControlNetModel.from_pretrained,
        root,
        torch_dtype=torch_dtype,
        local_files_only=True,
        low_cpu_mem_usage=False,
        variant=_variant(root, ("diffusion_pytorch_model",)),
    )
    return model.to(device) if device is not None else model


_DIGESTS: dict[tuple, str] = {}


def folder_digest(folder: str | os.PathLike) -> str:
    """SHA-256 of a folder's files (relative paths + bytes, sorted); memoised per (size, mtime) listing."""
    root = Path(folder).resolve()
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    listing = tuple((p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    key = (str(root), listing)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        for p, (rel, size, _) in zip(files, listing):
            h.update(f"{rel}\0{size}\0".encode())
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]
