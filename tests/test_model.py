"""One model object: a non-default CT window reaches every stage, and weights refuse another one.

The tiny Synapse bundle is trained for one epoch with ``hu_window [-160, 240]``; then every consumer
(the bundle's stack build, the evaluate and inference bundles, ``s2s2 predict``, ``s2s2 robustness``,
the MONAI Label segmentation path) is run and the network's inputs are recorded with a forward hook.
Each must equal the bundle's ``train#deterministic_transforms`` applied to the raw volume, and that
must differ from the default window (so the check can fail).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import pytest
import torch

from s2s2_monai.errors import S2S2InputError
from s2s2_monai.model import BundleModel

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "synapse"
WINDOW = [-160, 240]


def _overlay(path: Path, demo: Path, out: Path, **extra) -> Path:
    o = {
        "dataset_dir": str(demo.parent),
        "datalist": str(demo),
        "output_dir": str(out),
        "stack_dir": str(out / "stack"),
        "stack_generator": "appearance",
        "stack_n": 2,
        "input_size": [48, 48],  # the phantoms' own size: slices reach the network without a resize
        "max_epochs": 1,
        "batch_size": 8,
        "num_workers": 0,
        "val_interval": 1,
        "amp": False,
        "device": "$torch.device('cpu')",
        "network_name": "basic_unet",
        "networks#basic_unet#features": [4, 4, 8, 8, 16, 4],
        "pretrained_weights": None,
        **extra,
    }
    path.write_text(json.dumps(o))
    return path


@pytest.fixture(scope="module")
def trained(tiny_demo, tmp_path_factory):
    """One epoch of the bundle with the non-default window; the stack it built."""
    from monai.bundle import ConfigWorkflow

    root = tmp_path_factory.mktemp("model")
    overlay = _overlay(root / "tiny.json", tiny_demo, root / "run", stack_qc=True)  # QC bounds follow the window
    configs = [str(BUNDLE / "train.json"), str(overlay)]
    wf = ConfigWorkflow(config_file=configs, logging_file=False, workflow_type="train", hu_window=WINDOW)
    wf.initialize()
    wf.run()
    wf.finalize()
    return {"root": root, "configs": configs, "ckpt": root / "run" / "models" / "model.pt", "demo": tiny_demo}


class Recorder:
    """Forward pre-hook keeping every network input batch."""

    def __init__(self, network) -> None:
        self.inputs: list[torch.Tensor] = []
        self.handle = network.register_forward_pre_hook(lambda m, args: self.inputs.append(args[0].detach().clone()))

    def volume(self, start: int = 0) -> torch.Tensor:
        """The first volume seen (from batch ``start``): (X, Y, Z) from the (Z, 1, X, Y) slices."""
        return torch.cat(self.inputs[start:])[:, 0].permute(1, 2, 0)


def _reference(configs, image: Path, window) -> torch.Tensor:
    """``train#deterministic_transforms`` of the bundle with ``hu_window=window`` on the raw RAS volume."""
    from monai.transforms import Compose

    from s2s2_monai.bundle_config import read_config
    from s2s2_monai.data.volumes import load_volume

    parser = read_config(configs, overrides={"hu_window": window})
    transform = Compose(parser.get_parsed_content("train#deterministic_transforms"))
    return torch.as_tensor(transform({"image": load_volume(image)})["image"])[0].float()


def test_every_stage_feeds_the_network_the_bundle_preprocessing(trained, tmp_path):
    from monai.bundle import ConfigWorkflow

    from s2s2_monai.evaluation.predictions import predict_to_folder
    from s2s2_monai.label_app.bundle import export_bundle
    from s2s2_monai.label_app.segment import prepare_volume, segment_file
    from s2s2_monai.robustness.run import robustness_evaluation
    from s2s2_monai.stack.cache import StackCache
    from s2s2_monai.stack.quality import QualityBounds

    configs, demo = trained["configs"], trained["demo"]
    dl = json.loads(demo.read_text())
    test_image = demo.parent / dl["test"][0]["image"]
    expected = _reference(configs, test_image, WINDOW)
    default = _reference(configs, test_image, [-125, 275])
    assert not torch.equal(expected, default)  # the window matters for this volume
    # the windowed values, independently: HU clipped to [-160, 240], scaled to [0, 1]
    raw = torch.as_tensor(nib.as_closest_canonical(nib.load(test_image)).get_fdata(), dtype=torch.float32)
    torch.testing.assert_close(expected, ((raw + 160) / 400).clamp(0, 1), atol=1e-6, rtol=0)

    model = BundleModel.from_configs(configs, {"hu_window": WINDOW}, checkpoint=trained["ckpt"], device="cpu")

    # s2s2 predict (and the inference bundle's writer)
    rec = Recorder(model.network)
    predict_to_folder(model, test_image, tmp_path / "pred", progress=False, announce=False)
    assert torch.equal(rec.volume(), expected)
    rec.handle.remove()

    # robustness: the clean copy is the bundle's preprocessing
    rec = Recorder(model.network)
    robustness_evaluation(model, demo, tmp_path / "rob", corruptions=["gamma"], copies=1, n_boot=10, progress=False)
    assert torch.equal(rec.volume()[..., : expected.shape[-1]], expected)
    rec.handle.remove()

    # the MONAI Label app's path (prepare_volume -> the model's inferer), through an exported folder
    bundle = export_bundle(configs, trained["ckpt"], tmp_path / "models" / "synapse", overrides={"hu_window": WINDOW})
    assert torch.equal(torch.as_tensor(prepare_volume(test_image, bundle.model).image), expected)
    app_model = bundle.load_model()
    rec = Recorder(app_model.network)
    segment_file(app_model, test_image, tmp_path / "app.nii.gz")
    assert torch.equal(rec.volume(), expected)
    rec.handle.remove()

    # the evaluate and inference bundles
    for name, workflow_type in (("evaluate.json", "eval"), ("inference.json", "infer")):
        wf = ConfigWorkflow(
            config_file=[configs[0], str(BUNDLE / name), configs[1]],
            logging_file=False,
            workflow_type=workflow_type,
            hu_window=WINDOW,
            model_path=str(trained["ckpt"]),
            eval_dir=str(tmp_path / "eval"),
            infer_dir=str(tmp_path / "infer"),
        )
        wf.initialize()
        rec = Recorder(wf.parser.get_parsed_content("network"))
        wf.run()
        wf.finalize()
        assert torch.equal(rec.volume(), expected), name

    # the stack: built by the training bundle from the windowed volumes; its QC bounds follow the window
    manifest = StackCache(trained["root"] / "run" / "stack").manifest
    windowed = QualityBounds.fit_volumes(model.volumes(demo, "training", progress=False)).to_dict()
    from s2s2_monai.data.slices import VolumeCache

    paper = QualityBounds.fit_volumes(VolumeCache(demo, "training", progress=False)).to_dict()
    assert manifest["qc"] == windowed and windowed != paper


def test_weights_refuse_a_config_of_other_settings(trained):
    configs, ckpt = trained["configs"], trained["ckpt"]
    record = json.loads(ckpt.with_suffix(".json").read_text())
    assert record["preprocessing"]["transforms"][0]["transform"] == {
        "class": "s2s2_monai.transforms.intensity.CTWindow",
        "a_min": -160.0,
        "a_max": 240.0,
    }
    with pytest.raises(S2S2InputError, match=r"preprocessing.*a_max: trained 240.0, config 275.0"):
        BundleModel.from_configs(configs, checkpoint=ckpt, device="cpu")  # the default window
    with pytest.raises(S2S2InputError, match=r"image_resize_mode: trained \"bicubic\", config \"bilinear\""):
        BundleModel.from_configs(
            configs, {"hu_window": WINDOW, "image_resize_mode": "bilinear"}, checkpoint=ckpt, device="cpu"
        )
    model = BundleModel.from_configs(configs, {"hu_window": WINDOW}, checkpoint=ckpt, device="cpu")
    assert model.record["epoch"] == 1 and model.provenance()["checkpoint"] == str(ckpt)
    assert "preprocessing" not in model.provenance()  # reports name the weights, the settings live in model.json


def test_model_refuses_a_datalist_of_other_organs(trained, tmp_path):
    model = BundleModel.from_configs(trained["configs"], {"hu_window": WINDOW}, checkpoint=trained["ckpt"])
    demo = trained["demo"]
    other = json.loads(demo.read_text())
    other.pop("label_map", None)
    other["labels"] = {"1": "liver"}
    for section in ("training", "validation", "test"):
        for e in other[section]:
            e["image"], e["label"] = str(demo.parent / e["image"]), str(demo.parent / e["label"])
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(S2S2InputError, match="declares the organs"):
        list(model.cases(tmp_path / "other.json", "test"))


def test_describe_transform_tells_windows_apart():
    from monai.transforms import Compose

    from s2s2_monai.transforms import CTWindowd, MRINormalized
    from s2s2_monai.transforms.describe import describe_transform

    a = describe_transform(Compose([CTWindowd("image", -125, 275)]))
    assert a == describe_transform(Compose([CTWindowd("image", -125, 275)]))
    assert a != describe_transform(Compose([CTWindowd("image", -160, 240)]))
    assert a != describe_transform(Compose([MRINormalized("image")]))
    json.dumps(a)  # JSON-safe
