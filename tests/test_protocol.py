"""The paper's protocol as the bundle's defaults, and no silent bias (label alignment, test-set selection,
per-rank seeding, TransUNet's network, loss and augmentation, pretrained weights)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from s2s2_monai.data.check import require_data
from s2s2_monai.data.datalist import load_datalist
from s2s2_monai.data.phantom import write_demo_data
from s2s2_monai.errors import S2S2InputError
from s2s2_monai.training.seeding import rank_seed, seed_rank

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "bundles" / "synapse" / "train.json"


def _parser(**overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(TRAIN))
    for key, value in overrides.items():
        parser[key] = value
    return parser


# ---------------------------------------------------------------- label alignment


def _centroid(weights: np.ndarray) -> np.ndarray:
    """Weighted mean pixel index (bicubic ringing is symmetric about each edge, so it cancels)."""
    grid = np.indices(weights.shape).reshape(2, -1).astype(np.float64)
    w = weights.reshape(-1).astype(np.float64)
    return (grid * w).sum(1) / w.sum()


@pytest.mark.parametrize("source", [512, 333])
def test_label_stays_aligned_with_the_image_through_the_training_resize(source):
    """512 -> 224 (Synapse) and an odd size: over many boxes, the label's centroid sits where the image's does
    (mean offset < 0.15 output px); torch's "nearest" (the old setting) shifts it by ~0.5 px."""
    resize = _parser()["train"]["resize"]
    from monai.bundle import ConfigParser

    transform = ConfigParser(
        {
            "t": resize,
            "image_resize_mode": "bicubic",
            "stack_resize_mode": "nearest",
            "input_size": [224, 224],
            "train": {"keys": ["image", "image_stack", "label"]},
        }
    ).get_parsed_content("t")
    assert [m for m in transform.mode] == ["bicubic", "nearest-exact", "nearest-exact"]  # stack members: order 0
    rng = np.random.default_rng(0)
    offsets = []
    for _ in range(60):
        box = np.zeros((source, source), np.float32)
        x0, y0 = rng.integers(20, source // 2, 2)
        w, h = rng.integers(12, source // 3, 2)
        box[x0 : x0 + w, y0 : y0 + h] = 1
        out = transform({"image": box[None], "image_stack": box[None], "label": box[None].astype(np.int64)})
        image = np.asarray(out["image"][0])
        label = np.asarray(out["label"][0]) > 0
        offsets.append(_centroid(label) - _centroid(image))
    bias = np.abs(np.mean(offsets, axis=0)).max()  # per box, the label grid rounds each edge; the mean is the shift
    assert bias < 0.15, bias


# ---------------------------------------------------------------- validation never touches test


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "data_lists").glob("*.json")))
def test_shipped_datalists_keep_test_out_of_training_and_validation(name):
    d = json.loads((REPO / "data_lists" / name).read_text())
    test = {e["image"] for e in d.get("test", [])}
    for section in ("training", "validation"):
        assert not test & {e["image"] for e in d.get(section, [])}, (name, section)


def test_synapse_datalists_follow_transunet_split():
    paper = json.loads((REPO / "data_lists" / "synapse.json").read_text())
    assert (len(paper["training"]), len(paper["validation"]), len(paper["test"])) == (18, 0, 12)
    holdout = json.loads((REPO / "data_lists" / "synapse_holdout.json").read_text())
    assert {e["case_id"] for e in holdout["training"]} | {e["case_id"] for e in holdout["validation"]} == {
        e["case_id"] for e in paper["training"]
    }
    assert [e["case_id"] for e in holdout["validation"]] == ["case0021", "case0030", "case0040"]
    assert holdout["test"] == paper["test"]


@pytest.mark.parametrize("cases", [2, 3, 4, 6, 9])
def test_demo_data_sections_are_disjoint(tmp_path, cases):
    path = write_demo_data(tmp_path, cases=cases, shape=(16, 16, 4), progress=False)
    d = json.loads(Path(path).read_text())
    sections = [{e["image"] for e in d[s]} for s in ("training", "validation", "test")]
    assert sum(map(len, sections)) == cases and len(set().union(*sections)) == cases
    assert sections[0] and sections[2] and (len(sections[1]) == 1) == (cases >= 3)


def test_require_data_refuses_test_cases_in_validation(tiny_demo, tmp_path):
    d = json.loads(tiny_demo.read_text())
    d["validation"] = d["validation"] + d["test"]
    bad = tmp_path / "overlap.json"
    bad.write_text(json.dumps(d))
    with pytest.raises(S2S2InputError, match=r"validation case\(s\) are also test cases.*select the model"):
        require_data(bad, tiny_demo.parent)
    assert load_datalist(bad, tiny_demo.parent).shared_images("validation", "test") == [
        str(tiny_demo.parent / e["image"]) for e in d["test"]
    ]


# ---------------------------------------------------------------- per-rank seeding


def test_rank_seeds_are_distinct_and_reproducible():
    seeds = {(s, r): rank_seed(s, r) for s in range(4) for r in range(4)}
    assert len(set(seeds.values())) == len(seeds)  # seed + rank would collide: (0, 1) vs (1, 0)
    assert rank_seed(1234, 1) == rank_seed(1234, 1) and 0 <= rank_seed(1234, 1) < 2**31
    with pytest.raises(ValueError):
        rank_seed(-1, 0)


def _rank_members(rank: int, world: int, port: int, stack: str, datalist: str, out: str) -> None:
    import torch.distributed as dist

    from s2s2_monai.data.slices import SliceDataset
    from s2s2_monai.stack.pairs import StackPairDataset

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        seed_rank(1234)  # the bundle's initialize step; rank from the process group
        pairs = StackPairDataset(SliceDataset(datalist), stack)
        members = [int(pairs[i]["member"]) for i in range(len(pairs))]
        Path(out, f"rank{rank}.json").write_text(json.dumps(members))
    finally:
        dist.destroy_process_group()


def _spawn_members(stack, datalist, out: Path) -> list[list[int]]:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out.mkdir()
    mp.spawn(_rank_members, args=(2, port, str(stack), str(datalist), str(out)), nprocs=2, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_two_gloo_ranks_draw_different_members_reproducibly(tiny_demo, tmp_path):
    from s2s2_monai.stack.build import build_stack

    stack = tmp_path / "stack"
    build_stack(tiny_demo, stack, n=8, progress=False, qc=False, contact_sheet=False)
    first = _spawn_members(stack, tiny_demo, tmp_path / "a")
    assert first[0] != first[1]  # same member at each position on every rank before (set_determinism(seed))
    assert len(first[0]) >= 16 and sum(a != b for a, b in zip(*first)) >= len(first[0]) // 2
    assert _spawn_members(stack, tiny_demo, tmp_path / "b") == first


# ---------------------------------------------------------------- TransUNet's network, loss, augmentation


def test_paper_bundle_defaults_are_transunet_loss_augmentation_and_selection():
    parser = _parser()
    assert parser["network_name"] == "transunet" and parser["loss_name"] == "transunet"
    assert parser["augmentation"] == "transunet" and parser["model_selection"] == "last"
    assert parser["image_resize_mode"] == "bicubic" and parser["stack_generator"] == "diffusion"
    assert set(parser["networks"]) >= {"transunet", "unetr", "basic_unet"}
    assert set(parser["losses"]) >= {"transunet", "monai_dicece"}
    assert set(parser["train"]["augmentations"]) >= {"transunet", "independent"}
    net = parser.get_parsed_content("network_def")
    assert type(net).__name__ == "TransUNet"
    assert sum(p.numel() for p in net.parameters()) == 105_277_081  # Beckschen/TransUNet R50-ViT-B_16, 9 classes
    assert parser.get_parsed_content("tap_preset") == "transunet"
    loss = parser.get_parsed_content("loss")
    assert loss.dice.batch and loss.dice.squared_pred and loss.lambda_dice == loss.lambda_ce == 0.5


@pytest.mark.parametrize("name", ["unetr", "basic_unet"])
def test_other_networks_selectable_by_name(name):
    parser = _parser(
        network_name=name,
        input_size=[32, 32],
        **{"networks#unetr#hidden_size": 32, "networks#unetr#mlp_dim": 64, "networks#unetr#num_heads": 2},
    )
    assert (
        type(parser.get_parsed_content("network_def")).__name__ == {"unetr": "UNETR", "basic_unet": "BasicUNet"}[name]
    )
    assert parser.get_parsed_content("tap_preset") == name
    assert parser.get_parsed_content("pretrained_weights") is None


def _transunet_dice_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Beckschen/TransUNet utils.DiceLoss(softmax=True) * 0.5 + CrossEntropyLoss * 0.5, written out."""
    n = logits.shape[1]
    ce = torch.nn.functional.cross_entropy(logits, target)
    score = torch.softmax(logits, 1)
    onehot = torch.nn.functional.one_hot(target, n).permute(0, 3, 1, 2).float()
    dice = 0.0
    for i in range(n):
        s, t = score[:, i], onehot[:, i]
        intersect = (s * t).sum()
        dice += 1 - (2 * intersect + 1e-5) / ((s * s).sum() + (t * t).sum() + 1e-5)
    return 0.5 * ce + 0.5 * dice / n


def test_bundle_loss_equals_transunet_reference():
    loss = _parser().get_parsed_content("loss")
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 9, 16, 16, generator=g) * 3
    target = torch.randint(0, 9, (4, 16, 16), generator=g)
    got = loss(logits, target[:, None])
    torch.testing.assert_close(got, _transunet_dice_ce(logits, target), rtol=1e-5, atol=1e-6)
    other = _parser(loss_name="monai_dicece").get_parsed_content("loss")(logits, target[:, None])
    assert abs(float(other) - float(got)) > 1e-3  # the per-sample, unsquared Dice differs


def test_transunet_augmentation_is_rotflip_or_rotate_or_nothing():
    """TransUNet's RandomGenerator: p 0.5 rot90 (k 0-3) + flip, else p 0.5 a +-20 degree rotation, else none."""
    from monai.bundle import ConfigParser

    aug = _parser()["train"]["augmentations"]["transunet"]
    chain = ConfigParser({"a": aug, "train": {"keys": ["image", "image_stack", "label"]}}).get_parsed_content("a")
    from monai.transforms import Compose

    t = Compose(chain).set_random_state(0)
    img = np.arange(20 * 20, dtype=np.float32).reshape(1, 20, 20)
    kinds = {"rot_flip": 0, "rotate": 0, "none": 0}
    for _ in range(400):
        out = np.asarray(t({"image": img.copy(), "image_stack": img.copy(), "label": img.astype(np.int64)})["image"])
        if np.array_equal(out, img):
            kinds["none"] += 1
        elif sorted(out.ravel().tolist()) == sorted(img.ravel().tolist()):
            kinds["rot_flip"] += 1  # a permutation of the pixels
        else:
            kinds["rotate"] += 1
    assert abs(kinds["rot_flip"] / 400 - 0.5) < 0.08, kinds
    assert abs(kinds["rotate"] / 400 - 0.25) < 0.08 and abs(kinds["none"] / 400 - 0.25) < 0.08, kinds


# ---------------------------------------------------------------- pretrained weights, never downloaded


def test_load_pretrained_missing_file_says_where_to_get_it(tmp_path):
    from s2s2_monai.networks import TransUNet, load_pretrained

    net = TransUNet(
        img_size=32,
        hidden_size=32,
        num_layers=1,
        num_heads=4,
        mlp_dim=64,
        block_units=(1, 1, 1),
        width_factor=0.5,
        decoder_channels=(16, 16, 16, 16),
        head_channels=32,
    )
    with pytest.raises(S2S2InputError, match=r"R50%2BViT-B_16\.npz.*--pretrained_weights null"):
        load_pretrained(net, tmp_path / "R50+ViT-B_16.npz")
    assert load_pretrained(net, None) == []
    from monai.networks.nets import BasicUNet

    with pytest.raises(S2S2InputError, match="pretrained_weights are for TransUNet"):
        load_pretrained(BasicUNet(spatial_dims=2, features=(4, 4, 8, 8, 16, 4)), tmp_path / "x.npz")


# ---------------------------------------------------------------- one stack per folder, checked before training


def test_training_refuses_a_stack_of_other_settings_and_leaves_it(tiny_demo, tmp_path):
    from s2s2_monai.stack.build import build_stack, ensure_stack
    from s2s2_monai.stack.cache import StackCache

    stack = tmp_path / "stack"
    build_stack(tiny_demo, stack, n=2, seed=0, progress=False, qc=False, contact_sheet=False)
    digest = StackCache(stack).info()["digest"]
    files = sorted((p.name, p.stat().st_mtime_ns) for p in stack.rglob("*"))
    for kwargs in ({"n": 3}, {"seed": 1}, {"generator": "diffusion"}):
        args = {"generator": "appearance", "n": 2, "seed": 0, **kwargs}
        with pytest.raises(
            S2S2InputError, match=r"holds a stack with generator='appearance', n=2, seed=0; this training asks"
        ):
            ensure_stack(tiny_demo, stack, progress=False, **args)
    assert StackCache(stack).info()["digest"] == digest
    assert sorted((p.name, p.stat().st_mtime_ns) for p in stack.rglob("*")) == files
    assert ensure_stack(tiny_demo, stack, n=2, seed=0, qc=False, progress=False) == str(stack)  # same: reused


def test_diffusion_default_without_model_folders_gives_both_ways_out(tiny_demo, tmp_path):
    from s2s2_monai.stack.build import ensure_stack

    with pytest.raises(S2S2InputError, match=r"--sd_dir DIR --controlnet_dir DIR.*--stack_generator appearance"):
        ensure_stack(
            tiny_demo, tmp_path / "stack", generator="diffusion", sd_dir=tmp_path / "no_sd", controlnet_dir=None
        )
    assert not (tmp_path / "stack").exists()


def test_cli_refuses_a_rebuild_with_other_settings_keeps_the_digest_and_replace_rebuilds(tiny_demo, tmp_path, capsys):
    from s2s2_monai.cli import main
    from s2s2_monai.stack.cache import StackCache

    stack = tmp_path / "stack"
    base = ["stack", "build", "--datalist", str(tiny_demo), "--out", str(stack), "--no-qc", "--no-progress"]
    assert main([*base, "--n", "2"]) == 0
    digest = StackCache(stack).info()["digest"]
    files = sorted((str(p), p.stat().st_mtime_ns) for p in stack.rglob("*"))
    capsys.readouterr()
    for other in (["--n", "3"], ["--n", "2", "--seed", "5"]):
        assert main([*base, *other]) != 0
        err = capsys.readouterr().err
        assert str(stack) in err and "holds another stack" in err and "--replace" in err
        assert ("n: 2 -> 3" in err) if "3" in other else ("seed: 0 -> 5" in err)
    assert sorted((str(p), p.stat().st_mtime_ns) for p in stack.rglob("*")) == files
    assert StackCache(stack).info()["digest"] == digest
    assert main([*base, "--n", "3", "--replace"]) == 0
    info = StackCache(stack).info()
    assert info["complete"] and info["orphans"] == 0 and info["digest"] != digest


# ---------------------------------------------------------------- every deviation from the paper is a named setting


def test_bundle_trains_in_fp32_and_builds_the_papers_stack_by_default():
    """The reference trains in fp32, filters no stack member, resizes generated images with order 0 and samples
    in fp32: so do the bundle's defaults; each alternative is a named setting."""
    parser = _parser()
    assert parser.get_parsed_content("amp") is False  # was "$torch.cuda.is_available()": fp16 AMP on CUDA
    assert parser["train"]["trainer"]["amp"] == parser["validate"]["evaluator"]["amp"] == "@amp"
    assert _parser(amp=True).get_parsed_content("amp") is True  # --amp True
    assert parser.get_parsed_content("stack_qc") is False
    assert parser.get_parsed_content("stack_resize_mode") == "nearest"
    assert parser.get_parsed_content("stack_dtype") == "float32"
    ensure = next(step for step in parser["initialize"] if "ensure_stack(" in step)
    for arg in ("qc=@stack_qc", "resize_mode=@stack_resize_mode", "dtype=@stack_dtype", "resolution=@stack_resolution"):
        assert arg in ensure, arg


def test_controlnet_fine_tuning_defaults_to_fp32():
    from s2s2_monai.stack.finetune import ControlNetTrainConfig

    assert ControlNetTrainConfig().mixed_precision is False  # the reference: pl.Trainer(precision=32)
    assert ControlNetTrainConfig(mixed_precision=True).mixed_precision is True


@pytest.mark.parametrize("size", [(48, 48), (40, 36), (7, 9)])
def test_member_resize_nearest_keeps_only_generated_values(size):
    """Order 0 (the reference's ``zoom(gen_image, ..., order=0)``): a generated image resized back to the slice
    grid holds only values of the generated image; bicubic and bilinear make new ones; bilinear is the former
    conversion bit for bit."""
    from s2s2_monai.stack.conditioning import resize_images
    from s2s2_monai.stack.diffusion import resize_members

    generated = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    present = set(generated.flatten().tolist())
    nearest = resize_members(generated, size)  # the default
    assert nearest.shape[-2:] == size and set(nearest.flatten().tolist()) <= present
    assert torch.equal(nearest, resize_members(generated, size, "nearest"))
    for mode in ("bicubic", "bilinear"):
        other = resize_members(generated, size, mode)
        assert other.shape[-2:] == size and 0.0 <= float(other.min()) and float(other.max()) <= 1.0
        assert not set(other.flatten().tolist()) <= present, mode
    assert torch.equal(resize_members(generated, size, "bilinear"), resize_images(generated, size).clamp(0, 1))
    assert resize_members(generated, (16, 16), "bicubic") is generated  # the generation grid is the slice grid
    with pytest.raises(S2S2InputError, match="resize_mode: got 'cubic'"):
        resize_members(generated, size, "cubic")


def test_member_resize_mode_is_recorded_and_bilinear_keeps_former_stacks():
    from s2s2_monai.stack.diffusion import RESIZE_MODES, _render_version, resize_mode_of

    assert _render_version("bilinear") == "voc-palette/nearest-exact/rgb-mean/bilinear-v1"  # the string stacks hold
    assert len({_render_version(m) for m in RESIZE_MODES}) == len(RESIZE_MODES)
    for mode in RESIZE_MODES:
        assert resize_mode_of({"render": _render_version(mode)}) == mode
    assert resize_mode_of({"render": "something-else"}) is None and resize_mode_of({}) is None


def _blocky(members: np.ndarray, factor: int) -> bool:
    """Every ``factor x factor`` block of every member holds one value (an order-0 upsampling by ``factor``)."""
    m = members.reshape(*members.shape[:-2], members.shape[-2] // factor, factor, members.shape[-1] // factor, factor)
    return bool((m == m[..., :1, :, :1]).all())


def test_diffusion_stack_resizes_members_order0_by_default_and_bicubic_by_name(tiny_demo, tiny_sd, tmp_path, capsys):
    """16 px generation, 48 px slices: the default stack's members are 3 x 3 blocks (order 0) and its manifest
    records the mode and float32; ``bicubic`` is another stack (refused in the same folder, recorded when
    built), and training refuses a stack of another resize mode even where it cannot build one."""
    from s2s2_monai.cli import main
    from s2s2_monai.stack.build import build_stack, ensure_stack
    from s2s2_monai.stack.cache import StackCache
    from s2s2_monai.stack.diffusion import resize_mode_of

    sd, cn = tiny_sd
    stack = tmp_path / "stack"
    args = dict(generator="diffusion", sd_dir=sd, controlnet_dir=cn, resolution=16, n=2, batch_size=8, progress=False)
    build_stack(tiny_demo, stack, qc=False, contact_sheet=False, **args)
    cache = StackCache(stack)
    settings = cache.manifest["settings"]
    assert resize_mode_of(settings) == "nearest" and settings["dtype"] == "float32" and cache.manifest["qc"] is None
    keys = sorted({key for _, _, key in cache.manifest["slices"]})
    members = np.stack([cache.read_member(k, m) for k in keys for m in range(2)])
    assert members.shape[-2:] == (48, 48) and _blocky(members, 3) and len(np.unique(members)) > 8
    digest = cache.info()["digest"]

    with pytest.raises(
        S2S2InputError, match=r"holds another stack \(settings\.render: .*nearest-exact-v1\" -> .*bicubic-v1"
    ):
        build_stack(tiny_demo, stack, qc=False, contact_sheet=False, resize_mode="bicubic", **args)
    assert StackCache(stack).info()["digest"] == digest
    # the training bundle's check, without the model folders here (a stack built elsewhere)
    with pytest.raises(S2S2InputError, match=r"resize_mode='nearest'; this training asks for .*resize_mode='bicubic'"):
        ensure_stack(tiny_demo, stack, generator="diffusion", n=2, seed=0, resize_mode="bicubic", sd_dir=None)
    assert ensure_stack(tiny_demo, stack, generator="diffusion", n=2, seed=0, sd_dir=None) == str(stack)

    base = ["stack", "build", "--datalist", str(tiny_demo), "--out", str(stack), "--generator", "diffusion"]
    base += ["--sd-dir", str(sd), "--controlnet-dir", str(cn), "--resolution", "16", "--n", "2", "--no-qc"]
    assert main([*base, "--no-progress"]) == 0 and StackCache(stack).info()["digest"] == digest  # reused
    capsys.readouterr()
    assert main([*base, "--no-progress", "--resize-mode", "bicubic", "--replace"]) == 0
    cache = StackCache(stack)
    assert resize_mode_of(cache.manifest["settings"]) == "bicubic"
    new_keys = sorted({key for _, _, key in cache.manifest["slices"]})
    assert not set(new_keys) & set(keys)  # the resize mode is part of every entry key
    members = np.stack([cache.read_member(k, m) for k in new_keys for m in range(2)])
    assert members.shape[-2:] == (48, 48) and not _blocky(members, 3)


def test_diffusion_generation_is_fp32_unless_float16_is_named(tiny_sd, caplog):
    from s2s2_monai.stack.diffusion import DiffusionGenerator

    sd, cn = tiny_sd
    gen = DiffusionGenerator(sd, cn, resolution=16, steps=2, progress=False)
    assert gen.dtype == torch.float32 and gen.settings()["dtype"] == "float32" and gen.resize_mode == "nearest"
    with caplog.at_level("WARNING"):
        half = DiffusionGenerator(sd, cn, resolution=16, steps=2, progress=False, dtype="float16", device="cpu")
    assert half.settings()["dtype"] == "float32" and "CUDA only" in caplog.text  # recorded as generated
    with pytest.raises(S2S2InputError, match="dtype: got 'fp16'"):
        DiffusionGenerator(sd, cn, resolution=16, steps=2, progress=False, dtype="fp16")


def test_bundle_stack_has_no_qc_by_default_and_qc_is_another_stack(tiny_demo, tmp_path, capsys):
    """The bundle's stack (ensure_stack's defaults) has no QC, as the paper; --stack_qc True asks for another
    stack, which is refused in that folder (left untouched); the CLI's default (QC on) is refused too, and
    ``--no-qc`` (the paper's) finds the bundle's stack complete."""
    from s2s2_monai.cli import main
    from s2s2_monai.stack.build import ensure_stack
    from s2s2_monai.stack.cache import StackCache

    stack = tmp_path / "stack"
    assert ensure_stack(tiny_demo, stack, n=2, progress=False, contact_sheet=False) == str(stack)
    info = StackCache(stack).info()
    assert StackCache(stack).manifest["qc"] is None and info["qc_pass_rate"] is None
    files = sorted((p.name, p.stat().st_mtime_ns) for p in stack.rglob("*"))
    with pytest.raises(S2S2InputError, match=r"qc=False; this training asks for .*qc=True.*--stack_qc False"):
        ensure_stack(tiny_demo, stack, n=2, qc=True, progress=False)
    with pytest.raises(S2S2InputError, match=r"qc=False; this training asks .*qc=True"):
        ensure_stack(tiny_demo, stack, n=2, qc=True, build_if_missing=False)
    with pytest.raises(S2S2InputError, match=r"--stack_qc: got 'true', expected True or False"):
        ensure_stack(tiny_demo, stack, n=2, qc="true")
    with pytest.raises(S2S2InputError, match=r"--stack_resize_mode: got 'cubic'"):
        ensure_stack(tiny_demo, stack, n=2, resize_mode="cubic")
    with pytest.raises(S2S2InputError, match=r"--stack_dtype: got 'half'"):
        ensure_stack(tiny_demo, stack, n=2, dtype="half")
    assert sorted((p.name, p.stat().st_mtime_ns) for p in stack.rglob("*")) == files

    base = ["stack", "build", "--datalist", str(tiny_demo), "--out", str(stack), "--n", "2", "--no-progress"]
    capsys.readouterr()
    assert main(base) != 0 and "holds another stack (qc: null -> " in capsys.readouterr().err  # CLI: QC on
    assert main([*base, "--no-qc"]) == 0 and StackCache(stack).info()["digest"] == info["digest"]
    # with QC by name, a stack of its own: built, recorded, and reused by the bundle asking for it
    qc_stack = tmp_path / "qc_stack"
    assert ensure_stack(tiny_demo, qc_stack, n=2, qc=True, progress=False, contact_sheet=False) == str(qc_stack)
    assert StackCache(qc_stack).manifest["qc"] is not None
    assert StackCache(qc_stack).info()["qc_pass_rate"] is not None


def test_missing_stack_hint_spells_out_the_papers_settings(tiny_demo, tmp_path):
    from s2s2_monai.stack.build import ensure_stack

    with pytest.raises(S2S2InputError, match=r"--generator appearance --n 2 --seed 0 --no-qc`"):
        ensure_stack(tiny_demo, tmp_path / "none", n=2, build_if_missing=False)
    with pytest.raises(S2S2InputError, match=r"--generator diffusion .* --no-qc --sd-dir SD --controlnet-dir CN "):
        ensure_stack(tiny_demo, tmp_path / "none", generator="diffusion", n=2, build_if_missing=False)
