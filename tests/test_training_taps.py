"""Feature taps: presets read the right tensors of real MONAI networks."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNETR, BasicUNet, SegResNet, SwinUNETR
from torch import nn

from s2s2_monai.networks import TransUNet
from s2s2_monai.training.taps import (
    TAP_PRESETS,
    FeatureTap,
    TapSpec,
    get_tap_preset,
    preset_for_network,
    resolve_module,
    unwrap_network,
)

_BUILDERS = {
    "basic_unet": (lambda: BasicUNet(2, 1, 3, features=(4, 4, 8, 8, 16, 4)), "final_conv"),
    "unetr": (
        lambda: UNETR(1, 3, img_size=(32, 32), spatial_dims=2, feature_size=4, hidden_size=32, mlp_dim=64, num_heads=2),
        "out",
    ),
    "swin_unetr": (
        lambda: SwinUNETR(in_channels=1, out_channels=3, spatial_dims=2, feature_size=12, depths=(1, 1, 1, 1)),
        "out",
    ),
    "segresnet": (lambda: SegResNet(spatial_dims=2, in_channels=1, out_channels=3, init_filters=8), "conv_final"),
    "transunet": (
        lambda: TransUNet(
            1,
            3,
            img_size=32,
            hidden_size=32,
            num_layers=1,
            num_heads=2,
            mlp_dim=64,
            block_units=(1, 1, 1),
            width_factor=0.5,
        ),
        "segmentation_head",
    ),
}


def _net(name):
    torch.manual_seed(0)
    build, head = _BUILDERS[name]
    return build(), head


@pytest.mark.parametrize("preset", sorted(TAP_PRESETS))
def test_presets_tap_pre_head_decoder_and_encoder(preset):
    net, head = _net(preset)
    net.eval()
    assert preset_for_network(net) is TAP_PRESETS[preset]
    taps = {k: FeatureTap(net, spec) for k, spec in get_tap_preset(preset).items()}
    size = 64 if preset == "swin_unetr" else 32  # Swin needs 2 pixels at its 1/32 stage
    x0, x1 = torch.randn(2, 1, size, size), torch.randn(2, 1, size, size)
    for t in taps.values():
        t.arm()
    with torch.no_grad():
        y0, y1 = net(x0), net(x1)
    enc, dec = taps["enc"].features, taps["dec"].features
    assert len(enc) == 2 and len(dec) == 2  # one record per forward pass
    # the decoder tap is the head's input: head(dec) reproduces the network output
    with torch.no_grad():
        assert torch.allclose(resolve_module(net, head)(dec[0]), y0, atol=1e-5)
        assert torch.allclose(resolve_module(net, head)(dec[1]), y1, atol=1e-5)
    # encoder features are batch-first, with channels along channel_dim, deeper than the input
    spec = get_tap_preset(preset)["enc"]
    assert enc[0].shape[0] == 2 and enc[0].shape == enc[1].shape
    assert enc[0].shape[spec.channel_dim] > 1
    for t in taps.values():
        t.remove()


def test_unetr_encoder_tap_is_the_vit_token_output():
    net, _ = _net("unetr")
    net.eval()
    tap = FeatureTap(net, get_tap_preset("unetr")["enc"])
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad(), tap:
        net(x)
        tokens = net.vit(x)[0]
    assert tokens.shape == (1, 4, 32)  # (B, N=(32/16)^2, hidden)
    assert torch.equal(tap.features[0], tokens)


def test_disarmed_tap_records_nothing_and_remove_detaches():
    net = BasicUNet(2, 1, 2, features=(4, 4, 4, 4, 4, 4)).eval()
    tap = FeatureTap(net, "down_4")
    net(torch.zeros(1, 1, 32, 32))
    assert tap.features == []
    with tap:
        net(torch.zeros(1, 1, 32, 32))
    assert len(tap.features) == 1
    tap.remove()
    tap.armed = True
    net(torch.zeros(1, 1, 32, 32))
    assert tap.features == []


def test_wrappers_are_removed_and_bad_names_explained():
    net = BasicUNet(2, 1, 2, features=(4, 4, 4, 4, 4, 4))
    wrapped = nn.DataParallel(net)
    assert unwrap_network(wrapped) is net
    assert resolve_module(wrapped, "down_4") is net.down_4
    with pytest.raises(ValueError, match="down_4"):
        resolve_module(net, "down4")
    with pytest.raises(KeyError, match="known"):
        get_tap_preset("resnet")
    with pytest.raises(KeyError, match="no tap preset"):
        preset_for_network(nn.Linear(2, 2))
    assert TapSpec.of({"module": "vit", "channel_dim": -1, "output_index": 0}) == TapSpec("vit", -1, 0)
    assert TapSpec.of("down_4") == TapSpec("down_4")
    with pytest.raises(TypeError):
        TapSpec.of(3)


def test_tuple_output_without_index_is_an_error():
    net, _ = _net("unetr")
    tap = FeatureTap(net, TapSpec("vit"))
    with tap, pytest.raises(TypeError, match="output_index"):
        net(torch.randn(1, 1, 32, 32))
