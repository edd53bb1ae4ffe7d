"""TransUNet (R50-ViT-B/16 hybrid): parameter count of the reference, shapes, taps and weight loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from s2s2_monai.errors import S2S2InputError
from s2s2_monai.networks import TRANSUNET_TAPS, TransUNet, load_r50_vit_npz, load_timm_weights

# Counted from the reference code (Beckschen/TransUNet networks/vit_seg_modeling.py + vit_seg_modeling_resnet_skip.py,
# copied to a scratch folder outside this repo): VisionTransformer(CONFIGS["R50-ViT-B_16"], img_size=224,
# num_classes=9) with config.n_classes = 9, n_skip = 3, patches.grid = (14, 14) as its train.py sets them.
REFERENCE_PARAMS = 105_277_081
REFERENCE_PART_PARAMS = {
    "transformer.embeddings.hybrid_model": 11_894_848,  # ResNet trunk
    "transformer": 97_888_576,  # trunk + patch/position embeddings + 12 ViT blocks + encoder_norm
    "decoder": 7_387_200,  # CUP
    "segmentation_head": 1_305,
}

TINY = {
    "img_size": 32,
    "hidden_size": 32,
    "num_layers": 2,
    "num_heads": 4,
    "mlp_dim": 64,
    "block_units": (1, 2, 1),
    "width_factor": 0.5,
    "decoder_channels": (32, 16, 16, 16),
    "head_channels": 64,
}
H, WIDTH = TINY["hidden_size"], int(64 * TINY["width_factor"])


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _stages():
    """(stage index, unit index, in, mid, out channels) of the tiny ResNet trunk."""
    cin = WIDTH
    for s, depth in enumerate(TINY["block_units"]):
        cmid, cout = WIDTH * 2**s, 4 * WIDTH * 2**s
        for u in range(depth):
            yield s, u, (cin if u == 0 else cout), cmid, cout
        cin = cout


def _google_npz(path, grid: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A random ``R50+ViT-B_16.npz`` look-alike for TINY: Google's key names and HWIO / (in, heads, dim) shapes."""
    rng = np.random.default_rng(seed)
    heads = TINY["num_heads"]
    shapes = {
        "cls": (1, 1, H),
        "head/kernel": (H, 5),
        "head/bias": (5,),
        "pre_logits/kernel": (H, H),
        "pre_logits/bias": (H,),
        "embedding/kernel": (1, 1, 16 * WIDTH, H),
        "embedding/bias": (H,),
        "Transformer/posembed_input/pos_embedding": (1, 1 + grid * grid, H),
        "Transformer/encoder_norm/scale": (H,),
        "Transformer/encoder_norm/bias": (H,),
        "conv_root/kernel": (7, 7, 3, WIDTH),
        "gn_root/scale": (WIDTH,),
        "gn_root/bias": (WIDTH,),
    }
    for i in range(TINY["num_layers"]):
        blk = f"Transformer/encoderblock_{i}/"
        for name in ("query", "key", "value"):
            shapes[f"{blk}MultiHeadDotProductAttention_1/{name}/kernel"] = (H, heads, H // heads)
            shapes[f"{blk}MultiHeadDotProductAttention_1/{name}/bias"] = (heads, H // heads)
        shapes[f"{blk}MultiHeadDotProductAttention_1/out/kernel"] = (heads, H // heads, H)
        shapes[f"{blk}MultiHeadDotProductAttention_1/out/bias"] = (H,)
        shapes[f"{blk}MlpBlock_3/Dense_0/kernel"] = (H, TINY["mlp_dim"])
        shapes[f"{blk}MlpBlock_3/Dense_0/bias"] = (TINY["mlp_dim"],)
        shapes[f"{blk}MlpBlock_3/Dense_1/kernel"] = (TINY["mlp_dim"], H)
        shapes[f"{blk}MlpBlock_3/Dense_1/bias"] = (H,)
        for norm in ("LayerNorm_0", "LayerNorm_2"):
            shapes[f"{blk}{norm}/scale"] = shapes[f"{blk}{norm}/bias"] = (H,)
    for s, u, cin, cmid, cout in _stages():
        unit = f"block{s + 1}/unit{u + 1}/"
        shapes.update({unit + "conv1/kernel": (1, 1, cin, cmid), unit + "conv2/kernel": (3, 3, cmid, cmid)})
        shapes.update({unit + "conv3/kernel": (1, 1, cmid, cout)})
        for k, c in ((1, cmid), (2, cmid), (3, cout)):
            shapes[f"{unit}gn{k}/scale"] = shapes[f"{unit}gn{k}/bias"] = (c,)
        if u == 0:
            shapes.update(
                {
                    unit + "conv_proj/kernel": (1, 1, cin, cout),
                    unit + "gn_proj/scale": (cout,),
                    unit + "gn_proj/bias": (cout,),
                }
            )
    arrays = {k: rng.standard_normal(v).astype(np.float32) for k, v in shapes.items()}
    np.savez(path, **arrays)
    return arrays


def _timm_state(grid: int) -> dict[str, torch.Tensor]:
    """A random timm ``vit_base_r50_s16_*`` state dict for TINY, key names and shapes as timm's ResNetV2 / ViT."""
    shapes = {
        "cls_token": (1, 1, H),
        "pos_embed": (1, 1 + grid * grid, H),
        "head.weight": (1000, H),
        "head.bias": (1000,),
        "patch_embed.proj.weight": (H, 16 * WIDTH, 1, 1),
        "patch_embed.proj.bias": (H,),
        "patch_embed.backbone.stem.conv.weight": (WIDTH, 3, 7, 7),
        "patch_embed.backbone.stem.norm.weight": (WIDTH,),
        "patch_embed.backbone.stem.norm.bias": (WIDTH,),
        "norm.weight": (H,),
        "norm.bias": (H,),
    }
    for s, u, cin, cmid, cout in _stages():
        blk = f"patch_embed.backbone.stages.{s}.blocks.{u}."
        shapes.update({blk + "conv1.weight": (cmid, cin, 1, 1), blk + "conv2.weight": (cmid, cmid, 3, 3)})
        shapes.update({blk + "conv3.weight": (cout, cmid, 1, 1)})
        for k, c in ((1, cmid), (2, cmid), (3, cout)):
            shapes[f"{blk}norm{k}.weight"] = shapes[f"{blk}norm{k}.bias"] = (c,)
        if u == 0:
            shapes[blk + "downsample.conv.weight"] = (cout, cin, 1, 1)
            shapes[blk + "downsample.norm.weight"] = shapes[blk + "downsample.norm.bias"] = (cout,)
    for i in range(TINY["num_layers"]):
        blk = f"blocks.{i}."
        shapes.update({blk + "attn.qkv.weight": (3 * H, H), blk + "attn.qkv.bias": (3 * H,)})
        shapes.update({blk + "attn.proj.weight": (H, H), blk + "attn.proj.bias": (H,)})
        shapes.update({blk + "mlp.fc1.weight": (TINY["mlp_dim"], H), blk + "mlp.fc1.bias": (TINY["mlp_dim"],)})
        shapes.update({blk + "mlp.fc2.weight": (H, TINY["mlp_dim"]), blk + "mlp.fc2.bias": (H,)})
        for norm in ("norm1", "norm2"):
            shapes[f"{blk}{norm}.weight"] = shapes[f"{blk}{norm}.bias"] = (H,)
    gen = torch.Generator().manual_seed(1)
    return {k: torch.randn(v, generator=gen) for k, v in shapes.items()}


def test_parameter_count_equals_reference():
    with torch.device("meta"):
        net = TransUNet(in_channels=1, out_channels=9, img_size=224)
    assert _numel(net) == REFERENCE_PARAMS
    assert {name: _numel(net.get_submodule(name)) for name in REFERENCE_PART_PARAMS} == REFERENCE_PART_PARAMS
    assert net.transformer.embeddings.position_embeddings.shape == (1, 196, 768)


@pytest.mark.parametrize("img_size", [32, (32, 48)])
def test_output_and_tap_shapes(img_size):
    net = TransUNet(in_channels=1, out_channels=3, **{**TINY, "img_size": img_size}).eval()
    size = (img_size, img_size) if isinstance(img_size, int) else img_size
    seen = {}
    for key, name in TRANSUNET_TAPS.items():
        net.get_submodule(name).register_forward_hook(lambda m, i, o, key=key: seen.setdefault(key, o))
    with torch.no_grad():
        out = net(torch.randn(2, 1, *size))
    assert out.shape == (2, 3, *size)
    assert seen["enc"].shape == (2, size[0] // 16 * size[1] // 16, H)
    assert seen["dec"].shape == (2, 16, *size)


def test_invalid_sizes_raise():
    with pytest.raises(ValueError, match="multiple of 16"):
        TransUNet(**{**TINY, "img_size": 40})
    net = TransUNet(**TINY)
    with pytest.raises(ValueError, match="expects"):
        net(torch.randn(1, 1, 48, 48))


def test_backward_reaches_every_parameter():
    net = TransUNet(in_channels=1, out_channels=4, **TINY).train()
    loss = net(torch.randn(2, 1, 32, 32)).square().mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("grid", [2, 3])  # the model's grid (32 / 16) and a different one to resize from
def test_npz_loader_google_layout(tmp_path, grid):
    path = tmp_path / "R50+ViT-B_16.npz"
    arrays = _google_npz(path, grid)
    net = TransUNet(**TINY)
    decoder_before = {k: v.clone() for k, v in net.decoder.state_dict().items()}
    loaded = load_r50_vit_npz(net, path)
    assert set(loaded) == {f"transformer.{n}" for n, _ in net.transformer.named_parameters()}
    p = dict(net.named_parameters())
    res, blk = "transformer.embeddings.hybrid_model.", "transformer.encoder.layer.1."
    torch.testing.assert_close(
        p[res + "root.conv.weight"], torch.from_numpy(arrays["conv_root/kernel"].transpose(3, 2, 0, 1))
    )
    proj = arrays["block2/unit1/conv_proj/kernel"].transpose(3, 2, 0, 1)
    torch.testing.assert_close(p[res + "body.block2.unit1.downsample.weight"], torch.from_numpy(proj))
    torch.testing.assert_close(p[res + "body.block2.unit2.gn3.bias"], torch.from_numpy(arrays["block2/unit2/gn3/bias"]))
    attn = "Transformer/encoderblock_1/MultiHeadDotProductAttention_1/"
    torch.testing.assert_close(
        p[blk + "attn.query.weight"], torch.from_numpy(arrays[attn + "query/kernel"].reshape(H, H).T)
    )
    torch.testing.assert_close(p[blk + "attn.value.bias"], torch.from_numpy(arrays[attn + "value/bias"].reshape(-1)))
    torch.testing.assert_close(
        p[blk + "attn.out.weight"], torch.from_numpy(arrays[attn + "out/kernel"].reshape(H, H).T)
    )
    dense = arrays["Transformer/encoderblock_1/MlpBlock_3/Dense_1/kernel"].T
    torch.testing.assert_close(p[blk + "ffn.fc2.weight"], torch.from_numpy(dense))
    embed = arrays["embedding/kernel"].transpose(3, 2, 0, 1)
    torch.testing.assert_close(p["transformer.embeddings.patch_embeddings.weight"], torch.from_numpy(embed))
    posemb = arrays["Transformer/posembed_input/pos_embedding"][0, 1:]  # class token dropped
    if grid != 2:
        posemb = ndimage.zoom(posemb.reshape(grid, grid, H), (2 / grid, 2 / grid, 1), order=1)
    torch.testing.assert_close(
        p["transformer.embeddings.position_embeddings"], torch.from_numpy(posemb.reshape(1, 4, H))
    )
    assert all(torch.equal(v, net.decoder.state_dict()[k]) for k, v in decoder_before.items())


def test_npz_loader_errors_name_the_file(tmp_path):
    arrays = _google_npz(tmp_path / "full.npz", grid=2)
    net = TransUNet(**TINY)
    missing = {k: v for k, v in arrays.items() if k != "block1/unit1/gn2/scale"}
    np.savez(tmp_path / "missing.npz", **missing)
    with pytest.raises(S2S2InputError, match=r"missing\.npz.*block1/unit1/gn2/scale"):
        load_r50_vit_npz(net, tmp_path / "missing.npz")
    np.savez(tmp_path / "extra.npz", **arrays, **{"Transformer/extra/kernel": np.zeros(3, np.float32)})
    with pytest.raises(S2S2InputError, match=r"extra\.npz.*unknown"):
        load_r50_vit_npz(net, tmp_path / "extra.npz")
    assert load_r50_vit_npz(net, tmp_path / "extra.npz", strict=False)
    with pytest.raises(S2S2InputError, match=r"full\.npz.*does not fit"):
        load_r50_vit_npz(TransUNet(**{**TINY, "hidden_size": 64}), tmp_path / "full.npz")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_loader(tmp_path, suffix):
    state = _timm_state(grid=2)
    path = tmp_path / f"vit_base_r50_s16_224{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    net = TransUNet(**TINY)
    decoder_before = {k: v.clone() for k, v in net.decoder.state_dict().items()}
    loaded = load_timm_weights(net, path)
    assert set(loaded) == {f"transformer.{n}" for n, _ in net.transformer.named_parameters()}
    p = dict(net.named_parameters())
    res, blk = "transformer.embeddings.hybrid_model.", "transformer.encoder.layer.0."
    torch.testing.assert_close(p[res + "root.conv.weight"], state["patch_embed.backbone.stem.conv.weight"])
    torch.testing.assert_close(p[res + "root.gn.bias"], state["patch_embed.backbone.stem.norm.bias"])
    tb = "patch_embed.backbone.stages.1."
    torch.testing.assert_close(p[res + "body.block2.unit2.conv2.weight"], state[tb + "blocks.1.conv2.weight"])
    torch.testing.assert_close(p[res + "body.block2.unit2.gn1.weight"], state[tb + "blocks.1.norm1.weight"])
    torch.testing.assert_close(
        p[res + "body.block2.unit1.downsample.weight"], state[tb + "blocks.0.downsample.conv.weight"]
    )
    torch.testing.assert_close(
        p[res + "body.block2.unit1.gn_proj.weight"], state[tb + "blocks.0.downsample.norm.weight"]
    )
    qkv_w, qkv_b = state["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.bias"]
    for j, name in enumerate(("query", "key", "value")):
        torch.testing.assert_close(p[f"{blk}attn.{name}.weight"], qkv_w[j * H : (j + 1) * H])
        torch.testing.assert_close(p[f"{blk}attn.{name}.bias"], qkv_b[j * H : (j + 1) * H])
    torch.testing.assert_close(p[blk + "attn.out.weight"], state["blocks.0.attn.proj.weight"])
    torch.testing.assert_close(p[blk + "attention_norm.weight"], state["blocks.0.norm1.weight"])
    torch.testing.assert_close(p[blk + "ffn.fc1.weight"], state["blocks.0.mlp.fc1.weight"])
    torch.testing.assert_close(p["transformer.encoder.encoder_norm.bias"], state["norm.bias"])
    torch.testing.assert_close(p["transformer.embeddings.patch_embeddings.weight"], state["patch_embed.proj.weight"])
    torch.testing.assert_close(p["transformer.embeddings.position_embeddings"], state["pos_embed"][:, 1:])
    assert all(torch.equal(v, net.decoder.state_dict()[k]) for k, v in decoder_before.items())


def test_timm_loader_missing_key(tmp_path):
    state = _timm_state(grid=3)
    del state["blocks.1.attn.qkv.bias"]
    torch.save({"state_dict": state}, tmp_path / "partial.pth")
    with pytest.raises(S2S2InputError, match=r"partial\.pth.*blocks\.1\.attn\.qkv\.bias"):
        load_timm_weights(TransUNet(**TINY), tmp_path / "partial.pth")


def test_unreadable_files_raise(tmp_path):
    for name, loader in (
        ("bad.npz", load_r50_vit_npz),
        ("bad.pth", load_timm_weights),
        ("bad.safetensors", load_timm_weights),
    ):
        (tmp_path / name).write_bytes(b"not a weights file")
        with pytest.raises(S2S2InputError, match=name.replace(".", r"\.")):
            loader(TransUNet(**TINY), tmp_path / name)
