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
            "input_size": [224, 224],
            "train": {"keys": ["image", "image_stack", "label"]},
        }
    ).get_parsed_content("t")
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
