"""MONAI Label app: model folders, modality check, slice segmentation, retraining, and a real server.

The first part needs only the project. The server part starts ``monailabel start_server`` on
127.0.0.1 and skips when monailabel is not importable (the ``label`` extra; ``.ci/run_label``
installs it in its own virtual environment and runs this file).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from s2s2_monai.cli import main as cli_main
from s2s2_monai.data.modality import check_modality_range
from s2s2_monai.data.phantom import write_demo_data
from s2s2_monai.data.volumes import load_volume
from s2s2_monai.errors import S2S2InputError
from s2s2_monai.evaluation.inference import predict_volume
from s2s2_monai.label_app import APP_DIR
from s2s2_monai.label_app.bundle import (
    WEIGHTS,
    export_bundle,
    load_model_bundle,
    read_state_dict,
    resolve_models,
)
from s2s2_monai.label_app.retrain import retrain, split_items, write_studies_datalist
from s2s2_monai.label_app.segment import prepare_volume, segment_file
from s2s2_monai.label_maps import get_label_map

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "synapse"

#: Shrinks the Synapse bundle to a network that runs in milliseconds on CPU.
TINY = {
    "input_size": [32, 32],
    "batch_size": 4,
    "num_workers": 0,
    "val_interval": 1,
    "max_epochs": 1,
    "amp": False,
    "device": "$torch.device('cpu')",
    "stack_n": 2,
}


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_transunet):
    """Phantoms, a tiny overlay, a seeded checkpoint and its exported model folder."""
    root = tmp_path_factory.mktemp("label_app")
    datalist = write_demo_data(root / "data", cases=4, shape=(48, 48, 12), seed=3, progress=False)
    overlay = root / "tiny.json"
    overlay.write_text(json.dumps({**TINY, **tiny_transunet}))
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "train.json"), str(overlay)])
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    ckpt = root / "checkpoint_epoch=1.pt"
    torch.save({"network": network.state_dict(), "optimizer": {}}, ckpt)
    bundle = export_bundle([BUNDLE / "train.json", overlay], ckpt, root / "models" / "synapse")
    entries = json.loads(datalist.read_text())
    items = [
        {"image": str(root / "data" / e["image"]), "label": str(root / "data" / e["label"])}
        for e in entries["training"] + entries["validation"]
    ]
    return {"root": root, "overlay": overlay, "ckpt": ckpt, "bundle": bundle, "network": network, "items": items}


# ---------------------------------------------------------------- model folders


def test_export_layout_and_weights(work):
    b = work["bundle"]
    assert (b.root / "configs" / "train.json").is_file() and (b.root / WEIGHTS).is_file()
    assert (b.root / "configs" / "metadata.json").is_file()
    inf = json.loads((b.root / "configs" / "inference.json").read_text())
    assert inf["model_path"] == "$@bundle_root + '/models/model.pt'" and inf["input_size"] == [32, 32]
    assert b.label_map == get_label_map("synapse") and b.input_size == (32, 32) and b.modality == "CT"
    record = json.loads((b.root / "models" / "model.json").read_text())  # what the weights were trained with
    assert record["label_map"] == get_label_map("synapse").to_dict() and record["input_size"] == [32, 32]
    assert b.labels() == {
        "spleen": 1,
        "right kidney": 2,
        "left kidney": 3,
        "gallbladder": 4,
        "liver": 5,
        "stomach": 6,
        "aorta": 7,
        "pancreas": 8,
    }
    saved = read_state_dict(b.weights_path)
    for k, v in work["network"].state_dict().items():
        assert torch.equal(saved[k], v), k
    net = b.load_network()
    assert not net.training
    x = torch.randn(2, 1, 32, 32)
    work["network"].eval()
    torch.testing.assert_close(net(x), work["network"](x))


def test_export_bad_input(work, tmp_path):
    with pytest.raises(S2S2InputError, match="already exists"):
        export_bundle([BUNDLE / "train.json", work["overlay"]], work["ckpt"], work["bundle"].root)
    # trained with the tiny overlay, exported without it: shapes differ
    with pytest.raises(S2S2InputError, match="do not fit the configured network"):
        export_bundle([BUNDLE / "train.json"], work["ckpt"], tmp_path / "m")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(S2S2InputError, match="not a readable PyTorch checkpoint"):
        export_bundle([BUNDLE / "train.json", work["overlay"]], bad, tmp_path / "m")
    with pytest.raises(S2S2InputError, match="config file not found"):
        export_bundle([tmp_path / "nope.json"], work["ckpt"], tmp_path / "m")
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".m.tmp*"))
    with pytest.raises(S2S2InputError, match="not an exported S2S2 model"):
        load_model_bundle(tmp_path)


def test_export_bundle_cli(work, tmp_path, capsys):
    out = tmp_path / "models" / "ct"
    args = [
        "export-bundle",
        "--config",
        str(BUNDLE / "train.json"),
        "--config",
        str(work["overlay"]),
        "--checkpoint",
        str(work["ckpt"]),
        "--out",
        str(out),
    ]
    assert cli_main(args) == 0
    assert "monailabel start_server" in capsys.readouterr().out
    assert cli_main(args) == 2  # exists
    assert "already exists" in capsys.readouterr().err
    assert cli_main(args + ["--force"]) == 0
    assert [p.name for p in resolve_models(tmp_path / "models")] == ["ct"]
    assert resolve_models(tmp_path / "models", "ct") == [out]
    with pytest.raises(S2S2InputError, match=r"no model folder for \['liver'\]"):
        resolve_models(tmp_path / "models", "ct,liver")
    with pytest.raises(S2S2InputError, match="holds no exported model"):
        resolve_models(tmp_path / "empty")


def test_exported_folder_runs_as_monai_bundle(work, tmp_path):
    """configs/inference.json of the export runs with MONAI's ConfigWorkflow on models/model.pt,
    and its predictions equal the app's segmentation of the same volume."""
    from monai.bundle import ConfigWorkflow

    b = work["bundle"]
    data = work["root"] / "data"
    wf = ConfigWorkflow(
        config_file=str(b.root / "configs" / "inference.json"),
        meta_file=str(b.root / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type="infer",
        datalist=str(data / "datalist.json"),
        dataset_dir=str(data),
        output_dir=str(tmp_path / "bundle_run"),
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    image = data / "imagesTr" / "phantom_003.nii.gz"  # the test section
    assert b.image_resize_mode == "bicubic"  # the paper bundle's: the app resizes as training did
    ref = segment_file(b.load_model(), image, tmp_path / "app.nii.gz")
    got = nib.load(str(tmp_path / "bundle_run" / "predictions" / "phantom_003.nii.gz"))
    np.testing.assert_allclose(got.affine, nib.load(str(ref)).affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(got.dataobj), np.asarray(nib.load(str(ref)).dataobj))


# ---------------------------------------------------------------- modality check


def test_modality_range_hand_computed():
    vol = np.zeros((10, 10, 10), np.float32)
    vol.flat[:2] = -1000.0  # 0.2% air
    assert check_modality_range(vol, "CT") == pytest.approx(0.002)
    with pytest.raises(S2S2InputError, match="expects MRI"):
        check_modality_range(vol, "MRI")
    vol.flat[:2] = -499.0  # not air
    with pytest.raises(S2S2InputError, match="do not look like CT"):
        check_modality_range(vol, "CT")
    assert check_modality_range(vol, "MRI") == 0.0
    with pytest.raises(S2S2InputError, match="empty"):
        check_modality_range(np.zeros((0, 3, 3)), "CT")


def test_modality_range_real_volumes(real_ct, real_mr):
    assert check_modality_range(load_volume(real_ct), "CT") > 0.01
    with pytest.raises(S2S2InputError, match=r"-47\.\.833 do not look like CT"):
        check_modality_range(load_volume(real_mr), "CT")
    check_modality_range(load_volume(real_mr), "MRI")
    with pytest.raises(S2S2InputError, match="expects MRI"):
        check_modality_range(load_volume(real_ct), "MRI")


# ---------------------------------------------------------------- segmentation


def _check_label_file(out: Path, image_path: Path, label_map) -> np.ndarray:
    ref, got = nib.load(str(image_path)), nib.load(str(out))
    assert got.shape == ref.shape
    np.testing.assert_allclose(got.affine, ref.affine, atol=1e-4)
    assert nib.aff2axcodes(got.affine) == nib.aff2axcodes(ref.affine)
    arr = np.asarray(got.dataobj)
    assert arr.dtype == np.uint8 and set(np.unique(arr).tolist()) <= label_map.valid_ids()
    return arr


@pytest.mark.parametrize("case", ["phantom", "real_ct"])
def test_segment_file_keeps_geometry(work, tmp_path, case, request):
    image = (
        Path(work["items"][0]["image"]) if case == "phantom" else request.getfixturevalue("real_ct")
    )  # phantom: LPS on disk; real: RAS
    b = work["bundle"]
    model = b.load_model()
    net = model.network
    out = segment_file(model, image, tmp_path / "pred.nii.gz", batch_size=5)
    _check_label_file(out, image, b.label_map)
    # independent path: the written file read back into RAS equals the RAS prediction
    vol = prepare_volume(image, model)
    expected = predict_volume(net, vol.image, input_size=b.input_size, batch_size=32, mode="bicubic")
    np.testing.assert_array_equal(load_volume(out, is_label=True)[0].numpy(), expected.numpy())


def test_segment_file_rejects_mri_for_ct_model(work, tmp_path, real_mr):
    with pytest.raises(S2S2InputError, match="this model expects CT"):
        segment_file(work["bundle"].load_model(), real_mr, tmp_path / "x.nii.gz")
    assert not (tmp_path / "x.nii.gz").exists()


# ---------------------------------------------------------------- retraining


def test_split_and_datalist(tmp_path):
    items = [{"image": f"/i{i}.nii.gz", "label": f"/l{i}.nii.gz"} for i in range(6)]
    tr, va = split_items(items, 0.2)
    assert [i["image"] for i in va] == ["/i4.nii.gz", "/i5.nii.gz"] and len(tr) == 4  # ceil(6 * 0.2) = 2
    assert split_items(items[:2], 0.9) == (items[:1], items[1:2])  # always one left to train on
    assert split_items(items[:1]) == (items[:1], items[:1])
    with pytest.raises(S2S2InputError, match="no labelled study"):
        split_items([])
    dl = json.loads(write_studies_datalist(items, get_label_map("synapse"), tmp_path / "d.json").read_text())
    assert dl["label_map"] == get_label_map("synapse").to_dict() and dl["modality"] == "CT" and len(dl["training"]) == 4


def test_retrain_with_stack_publishes_weights(work, tmp_path):
    """One epoch of the bundle's S2S2 training (appearance stack) on labelled studies."""
    model = tmp_path / "synapse"
    shutil.copytree(work["bundle"].root, model)
    b = load_model_bundle(model)
    before = read_state_dict(b.weights_path)
    result = retrain(b, work["items"], run_dir=tmp_path / "run", max_epochs=1, use_stack=True)
    assert result["published"] == str(b.weights_path) and result["train_items"] == 2 and result["val_items"] == 1
    assert (tmp_path / "run" / "stack" / "manifest.json").is_file()
    after = read_state_dict(b.weights_path)
    assert after.keys() == before.keys()
    assert any(not torch.equal(after[k], before[k]) for k in before if after[k].is_floating_point())
    b.load_network()  # strict load of the published weights


# ---------------------------------------------------------------- the real server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(
    url: str, method: str = "GET", data: bytes | None = None, headers: dict | None = None, timeout: float = 120
):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _upload(url: str, path: Path):
    boundary = "s2s2testboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return _request(url, "POST", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})


@pytest.fixture(scope="module")
def server(work, tmp_path_factory, real_ct):
    pytest.importorskip(
        "monailabel", reason="monailabel not installed: install the 'label' extra (.ci/run_label does, in its own venv)"
    )
    root = tmp_path_factory.mktemp("server")
    app = root / "app"
    app.mkdir()
    shutil.copy(APP_DIR / "main.py", app / "main.py")  # the server writes model/ logs/ into the app folder
    models = root / "models"
    shutil.copytree(work["bundle"].root, models / "synapse")
    studies = root / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    shutil.copy(work["items"][0]["image"], studies / "phantom.nii.gz")
    shutil.copy(work["items"][0]["label"], studies / "labels" / "final" / "phantom.nii.gz")
    shutil.copy(real_ct, studies / "real_ct.nii.gz")
    port = _free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
    }
    cmd = [
        sys.executable, "-m", "monailabel.main", "start_server",
        "--app", str(app), "--studies", str(studies),
        "--conf", "models", "synapse", "--conf", "models_dir", str(models),
        "--conf", "zoo_source", "local", "--conf", "sam2", "false", "--conf", "batch_size", "8",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{(root / 'server.log').read_text()[-3000:]}")
            try:
                if _request(url + "/", timeout=5)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.time() > deadline:
                pytest.fail(f"server did not answer GET / within 240 s:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(1)
        yield {"url": url, "studies": studies, "models": models, "proc": proc, "root": root}
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()


def _infer_and_check(server, work, image_id: str, image_path: Path, tmp_path: Path) -> np.ndarray:
    status, body = _request(f"{server['url']}/infer/synapse?image={image_id}&output=image", "POST")
    assert status == 200, body[:500]
    out = tmp_path / f"{image_id}_server.nii.gz"
    out.write_bytes(body)
    arr = _check_label_file(out, image_path, work["bundle"].label_map)
    # the same model run in-process gives the same labels
    b = load_model_bundle(server["models"] / "synapse")
    ref = segment_file(
        b.load_model(),
        image_path,
        tmp_path / f"{image_id}_ref.nii.gz",
    )
    np.testing.assert_array_equal(arr, np.asarray(nib.load(str(ref)).dataobj))
    return arr


def test_server_info(server):
    status, body = _request(server["url"] + "/info/")
    info = json.loads(body)
    assert status == 200 and set(info["models"]) == {"synapse"} and set(info["trainers"]) == {"synapse"}
    assert info["models"]["synapse"]["labels"]["liver"] == 5 and info["models"]["synapse"]["modality"] == "CT"


def test_server_infer_phantom(server, work, tmp_path):
    _infer_and_check(server, work, "phantom", server["studies"] / "phantom.nii.gz", tmp_path)


def test_server_infer_real_ct(server, work, tmp_path):
    _infer_and_check(server, work, "real_ct", server["studies"] / "real_ct.nii.gz", tmp_path)


def test_server_bad_requests_keep_serving(server, work, tmp_path, real_mr):
    url = server["url"]
    status, body = _request(f"{url}/infer/nosuch?image=phantom&output=image", "POST")
    assert status == 404 and "unknown model 'nosuch'" in json.loads(body)["detail"]
    status, body = _request(f"{url}/infer/synapse?image=nosuch&output=image", "POST")
    assert status == 404 and "not in the studies folder" in json.loads(body)["detail"]
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"this is not an image")
    status, body = _upload(f"{url}/infer/synapse?output=image", junk)
    assert status == 422 and "cannot read this NIfTI file" in json.loads(body)["detail"]
    status, body = _upload(f"{url}/infer/synapse?output=image", real_mr)
    detail = json.loads(body)["detail"]
    assert status == 422 and "do not look like CT" in detail and "expects CT" in detail
    assert _request(url + "/")[0] == 200
    assert server["proc"].poll() is None
    _infer_and_check(server, work, "phantom", server["studies"] / "phantom.nii.gz", tmp_path)


def test_server_train_then_infer(server, work, tmp_path):
    """The "Train" button: the bundle's training in MONAI Label's child process, then inference with the new weights."""
    weights = server["models"] / "synapse" / WEIGHTS
    before = weights.stat().st_mtime_ns
    params = json.dumps({"max_epochs": 1, "use_stack": False, "val_split": 0.2}).encode()
    status, body = _request(f"{server['url']}/train/synapse", "POST", params, {"Content-Type": "application/json"})
    assert status == 200, body[:500]
    deadline = time.time() + 300
    while True:
        status, body = _request(f"{server['url']}/train/")
        task = json.loads(body)
        if task.get("status") in ("DONE", "ERROR"):
            break
        assert time.time() < deadline, "training did not finish in 300 s"
        time.sleep(2)
    assert task["status"] == "DONE", "\n".join(task.get("details", []))
    assert weights.stat().st_mtime_ns != before
    runs = list((server["models"] / "synapse" / "train_runs").iterdir())
    assert len(runs) == 1 and json.loads((runs[0] / "datalist.json").read_text())["training"][0]["label"].endswith(
        "labels/final/phantom.nii.gz"
    )
    _infer_and_check(server, work, "phantom", server["studies"] / "phantom.nii.gz", tmp_path)
