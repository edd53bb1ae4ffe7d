"""FTN/STN shapes, the cooperative step's terms against hand-built references, and a short training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from s2s2_monai.cooperative import CooperativeNet, CooperativeTrainer, LatentMasker
from s2s2_monai.cooperative.losses import (
    HARD_TERMS,
    STANDARD_TERMS,
    LabelCELoss,
    cooperative_loss,
    ftn_pass,
    hard_examples,
    hard_terms,
    label_ce,
    standard_terms,
)
from s2s2_monai.cooperative.networks import to_shape_input
from s2s2_monai.cooperative.trainer import cooperative_network

K = 4
CH = (4, 8, 8)  # two stride-2 levels: inputs divisible by 4


def _batch(b=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, size, size, generator=g)
    y = torch.randint(0, K, (b, 1, size, size), generator=g).float()
    return x, y


def test_ftn_stn_shapes_and_codes():
    torch.manual_seed(0)
    net = CooperativeNet(1, K, channels=CH)
    x, y = _batch()
    z_i, z_s = net.ftn.encode(x)
    assert z_i.shape == z_s.shape == (3, 8, 4, 4)
    assert (z_i >= 0).all() and (z_s >= 0).all()  # ReLU codes, as upstream
    assert net.ftn.reconstruct(z_i).shape == x.shape
    assert net.ftn.segment(z_s).shape == (3, K, 16, 16)
    assert net.stn(y).shape == (3, K, 16, 16)
    assert net(x).shape == (3, K, 16, 16)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), net.stn(net.ftn(x)))  # inference: FTN, then STN
        net.refine = False
        torch.testing.assert_close(net(x), net.ftn(x))
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.rand(1, 1, 18, 16))
    with pytest.raises(ValueError):
        CooperativeNet(1, K, channels=(4,))
    with pytest.raises(ValueError):
        CooperativeNet(1, K, spatial_dims=3)


def test_default_sizes_match_upstream_fcn16():
    net = CooperativeNet(1, 4)
    z_i, z_s = net.ftn.encode(torch.rand(1, 1, 64, 64))
    assert z_i.shape == z_s.shape == (1, 128, 4, 4)  # 512 // 4 channels at 1/16
    assert len(net.ftn.decoupler.layers) == 2  # two conv layers


def test_shape_input_softmax_and_onehot():
    logits = torch.randn(2, K, 5, 5)
    torch.testing.assert_close(to_shape_input(logits, K), torch.softmax(logits, 1))
    labels = torch.tensor([[[0, 3], [2, 1]]])
    oh = to_shape_input(labels.unsqueeze(1).float(), K)
    assert oh.shape == (1, K, 2, 2)
    assert oh.argmax(1).tolist() == labels.tolist() and torch.all(oh.sum(1) == 1)


def test_label_ce_is_cross_entropy():
    logits, y = torch.randn(2, K, 6, 6), torch.randint(0, K, (2, 1, 6, 6))
    ref = F.cross_entropy(logits, y[:, 0])
    torch.testing.assert_close(label_ce(logits, y.float()), ref)
    torch.testing.assert_close(LabelCELoss()(logits, y[:, 0]), ref)


def test_standard_terms_against_hand_computation():
    torch.manual_seed(1)
    net = CooperativeNet(1, K, channels=CH).eval()  # eval: deterministic BatchNorm, so passes can be repeated
    x, y = _batch()
    noisy = x + 0.05
    with torch.no_grad():
        terms, ftn = standard_terms(net, x, y, net_input=noisy)
        logits = net.ftn(noisy)
        z_i = net.ftn.encoder(noisy)
        ref = {
            "seg": F.cross_entropy(logits, y[:, 0].long()),
            "recon": 0.5 * ((net.ftn.image_decoder(z_i) - x) ** 2).mean(),  # target: the clean image
            "shape_pred": F.cross_entropy(net.stn.decoder(net.stn.encoder(torch.softmax(logits, 1))), y[:, 0].long()),
            "shape_gt": F.cross_entropy(
                net.stn.decoder(net.stn.encoder(F.one_hot(y[:, 0].long(), K).permute(0, 3, 1, 2).float())),
                y[:, 0].long(),
            ),
        }
    assert tuple(terms) == STANDARD_TERMS
    for k in STANDARD_TERMS:
        torch.testing.assert_close(terms[k], ref[k])
    torch.testing.assert_close(ftn["logits"], logits)


def test_hard_examples_are_decoded_masked_codes_with_frozen_decoders():
    torch.manual_seed(2)
    net = CooperativeNet(1, K, channels=CH).train()
    x, y = _batch()
    ftn = ftn_pass(net, x)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    hard = hard_examples(net, ftn["z_i"], ftn["z_s"], x, y, LatentMasker(seed=0), kind="spatial")
    for k, v in net.state_dict().items():  # no parameter or BatchNorm statistic changed
        torch.testing.assert_close(v, before[k])
    assert all(p.grad is None for p in net.parameters())
    assert hard["kind"] == "spatial" and hard["mask_i"].shape == (3, 1, 4, 4) and hard["mask_s"].shape == (3, 1, 4, 4)
    assert not hard["image"].requires_grad and not hard["seg"].requires_grad  # constants
    # independent reference: decode the masked codes with BatchNorm statistics saved and restored
    with torch.no_grad():
        saved = {k: v.clone() for k, v in net.state_dict().items()}
        ref_img = net.ftn.image_decoder(ftn["z_i"] * hard["mask_i"])
        ref_seg = net.ftn.seg_decoder(ftn["z_s"] * hard["mask_s"])
        net.load_state_dict(saved)
    torch.testing.assert_close(hard["image"], ref_img)
    torch.testing.assert_close(hard["seg"], ref_seg)
    assert not torch.allclose(hard["image"], net.ftn.image_decoder(ftn["z_i"]).detach())  # the mask changed the output


def test_hard_terms_use_the_hard_image_and_corrupted_segmentation():
    torch.manual_seed(3)
    net = CooperativeNet(1, K, channels=CH).eval()
    x, y = _batch()
    hard = {"image": torch.rand_like(x), "seg": torch.randn(3, K, 16, 16)}
    with torch.no_grad():
        terms = hard_terms(net, hard, x, y)
        ref_std, _ = standard_terms(net, x, y, net_input=hard["image"], gt_shape=False)
        ref_corrupt = F.cross_entropy(net.stn(hard["seg"]), y[:, 0].long())
    assert tuple(terms) == HARD_TERMS
    for k, v in ref_std.items():
        torch.testing.assert_close(terms[f"hard_{k}"], v)
    torch.testing.assert_close(terms["hard_shape_corrupt"], ref_corrupt)


def test_cooperative_loss_is_the_sum_and_one_backward_reaches_every_part():
    torch.manual_seed(4)
    net = CooperativeNet(1, K, channels=CH).train()
    x, y = _batch()
    total, terms, ftn = cooperative_loss(net, x, y, masker=LatentMasker(seed=1))
    assert set(terms) == {f"loss_{k}" for k in STANDARD_TERMS + HARD_TERMS}
    torch.testing.assert_close(total, torch.stack(list(terms.values())).sum())
    assert ftn["kind"] in ("dropout", "channel", "spatial")
    total.backward()
    for name, part in [
        ("encoder", net.ftn.encoder),
        ("decoupler", net.ftn.decoupler),
        ("seg", net.ftn.seg_decoder),
        ("image", net.ftn.image_decoder),
        ("stn", net.stn),
    ]:
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0, name
    # without a masker: the standard terms only
    _, plain, _ = cooperative_loss(net, x, y, masker=None, input_noise=0.0)
    assert set(plain) == {f"loss_{k}" for k in STANDARD_TERMS}


def _tiny_loader(datalist, size=32, batch_size=4):
    from monai.transforms import Compose, EnsureTyped, Resized
    from torch.utils.data import DataLoader

    from s2s2_monai.training.datasets import training_dataset

    tf = Compose(
        [
            Resized(["image", "label"], (size, size), mode=["bilinear", "nearest"]),
            EnsureTyped(["image", "label"], track_meta=False),
        ]
    )
    ds = training_dataset(datalist, transform=tf)
    return DataLoader(ds, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))


def test_cooperative_training_on_demo_data_improves(tiny_demo):
    """A short training through MONAI's engine, validated with the project's volume evaluator."""
    from ignite.engine import Events
    from monai.handlers import ValidationHandler
    from monai.utils import set_determinism

    from s2s2_monai.training.validation import VolumeDataset, VolumeEvaluator, volume_loader

    set_determinism(0)
    net = CooperativeNet(1, 9, channels=(8, 16, 32, 32))
    evaluator = VolumeEvaluator(
        "cpu", volume_loader(VolumeDataset(tiny_demo, "training")), net, "synapse", input_size=(32, 32)
    )
    trainer = CooperativeTrainer(
        device="cpu",
        max_epochs=8,
        train_data_loader=_tiny_loader(tiny_demo),
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 5e-3),
        decollate=False,
        train_handlers=[ValidationHandler(1, evaluator, epoch_level=True)],
    )
    losses: dict[int, list[float]] = {}
    dice: list[float] = []
    kinds: set[str] = set()
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: (
            losses.setdefault(e.state.epoch, []).append(float(e.state.output["loss"].detach())),
            kinds.add(e.state.output["mask_kind"]),
        ),
    )
    evaluator.add_event_handler(Events.COMPLETED, lambda e: dice.append(e.state.metrics["val_mean_dice"]))
    trainer.run()
    assert {"loss_hard_seg", "loss_hard_shape_corrupt", "loss_shape_gt"} <= set(trainer.state.output)
    assert len(kinds) >= 2  # the mask kind is drawn per step
    first, last = np.mean(losses[1]), np.mean(losses[8])
    assert np.isfinite(last) and last < 0.5 * first
    assert len(dice) == 8 and max(dice[-3:]) > dice[0] + 0.03


def test_trainer_adds_s2s2_terms_with_a_stack_member():
    from s2s2_monai.training.consistency import consistency_distance

    torch.manual_seed(5)
    net = CooperativeNet(1, K, channels=CH)
    x, y = _batch(b=2)
    batch = [{"image": x, "image_stack": (x + 0.1).clamp(0, 1), "label": y}]
    trainer = CooperativeTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=batch,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), 0.0),
        decollate=False,
        use_stack=True,
        alpha_enc=0.5,
        alpha_dec=0.0,
        latent_da=False,
        input_noise=0.0,
    )
    trainer.run()
    out = trainer.state.output
    assert {"loss_seg_stack", "loss_enc", "loss_dec"} <= set(out)
    assert 0 < float(out["loss_enc"]) < 2
    expected = sum(
        float(out[k]) for k in ("loss_seg", "loss_recon", "loss_shape_pred", "loss_shape_gt", "loss_seg_stack")
    ) + 0.5 * float(out["loss_enc"])
    assert float(out["loss"].detach()) == pytest.approx(expected, rel=1e-5)
    a, b = torch.rand(2, 3, 4), torch.rand(2, 3, 4)
    assert float(consistency_distance(a, a)) == pytest.approx(0.0, abs=1e-6) and float(consistency_distance(a, b)) > 0
    with pytest.raises(TypeError):
        cooperative_network(torch.nn.Conv2d(1, 1, 1))
