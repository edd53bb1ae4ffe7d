"""MONAI Label app: model folders, modality check, slice segmentation, retraining, and a real server.

The first part needs only the project. The server part starts ``monailabel start_server`` on
127.0.0.1 and skips when monailabel is not importable (the ``label`` extra; ``.ci/run_label``
installs it in its own virtual environment and runs this file).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from s2s2_monai.checkpoints import file_sha256
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


def _write_slab_study(phantom: Path, out: Path) -> None:
    """The phantom with its middle third of slices replaced by seeded HU noise (a corrupted slab)."""
    img = nib.load(str(phantom))
    data = np.asarray(img.dataobj, dtype=np.float32).copy()
    z = data.shape[2]
    rng = np.random.default_rng(0)
    data[:, :, z // 3 : 2 * z // 3] = rng.uniform(-1000, 1000, data[:, :, z // 3 : 2 * z // 3].shape)
    nib.save(nib.Nifti1Image(data, img.affine), str(out))


#: The server's upload limit in the tests (the test uploads are below it; one test goes over it).
MAX_UPLOAD_MB = 1


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
    _write_slab_study(Path(work["items"][0]["image"]), studies / "slab.nii.gz")  # unlabeled, for active learning
    (studies / "broken.nii.gz").write_bytes(gzip.compress(b"not a NIfTI file"))  # cannot be scored
    port = _free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
        "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",  # scoring only when a test asks (no background run at start-up)
    }
    cmd = [
        sys.executable, "-m", "monailabel.main", "start_server",
        "--app", str(app), "--studies", str(studies),
        "--conf", "models", "synapse", "--conf", "models_dir", str(models),
        "--conf", "zoo_source", "local", "--conf", "sam2", "false", "--conf", "batch_size", "8",
        "--conf", "max_upload_mb", str(MAX_UPLOAD_MB),
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


# ---------------------------------------------------------------- hostile clients (issue 19)


def _multipart(fields: dict | None = None, files: dict | None = None) -> tuple[bytes, dict]:
    """A multipart body: ``fields`` {name: text}, ``files`` {name: (filename, bytes)}; with its header."""
    boundary = "s2s2testboundary"
    body = b""
    for name, text in (fields or {}).items():
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{text}\r\n'.encode()
    for name, (filename, data) in (files or {}).items():
        body += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    return body + f"--{boundary}--\r\n".encode(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _detail(status_body) -> str:
    return json.loads(status_body[1])["detail"]


def _nifti_declaring(shape: tuple[int, ...]) -> bytes:
    """A small .nii.gz whose header declares ``shape`` (int16) over a few KB of data."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape(shape)
    header.set_data_offset(352)
    return gzip.compress(header.binaryblock + b"\0" * 4 + b"\0" * 4096)


class _RunsCodeWhenUnpickled:
    """Pickles as ``os.mkdir(marker)``: a plain ``torch.load`` would create the folder."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _still_serving(server) -> None:
    assert _request(server["url"] + "/")[0] == 200
    assert server["proc"].poll() is None


def test_declared_size_checked_before_reading(tmp_path):
    pytest.importorskip("monailabel", reason="monailabel not installed")
    from s2s2_monai.label_app.infer import VolumeTooLarge, check_declared_size

    bomb = tmp_path / "bomb.nii.gz"
    bomb.write_bytes(_nifti_declaring((30000, 30000, 30000)))
    start = time.perf_counter()
    with pytest.raises(
        VolumeTooLarge, match=r"declares 27000000000000 voxels \(shape \(30000, 30000, 30000\)\).*max_voxels 268435456"
    ):
        check_declared_size(bomb, 2**28)
    assert time.perf_counter() - start < 0.5
    check_declared_size(bomb, 30000**3)  # at the limit
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not an image")
    check_declared_size(junk, 1)  # unreadable headers are the reader's to report


def test_infer_task_loads_weights_only(work, monkeypatch, tmp_path):
    """BasicInferTask's torch.load (no weights_only) is never reached: construction, is_valid and info load
    nothing; inference loads once through the project's loader (weights_only=True); a pickle is refused unrun."""
    pytest.importorskip("monailabel", reason="monailabel not installed")
    from s2s2_monai.label_app.infer import S2S2InferTask

    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load called"))
    task = S2S2InferTask(work["bundle"], batch_size=4)
    assert task.is_valid() and task.info()["labels"]["liver"] == 5 and calls == []
    image = work["items"][0]["image"]
    for _ in range(2):  # the second request reuses the loaded network
        out, meta = task({"image": image, "device": "cpu"})
        assert meta["model"] == "synapse" and nib.load(out).shape == nib.load(image).shape
        os.unlink(out)
    assert calls == [True]

    model = tmp_path / "synapse"
    shutil.copytree(work["bundle"].root, model)
    marker = tmp_path / "unpickled"
    torch.save({"conv.weight": _RunsCodeWhenUnpickled(marker)}, model / WEIGHTS)
    evil = S2S2InferTask(load_model_bundle(model), batch_size=4)
    with pytest.raises(S2S2InputError, match="not a readable PyTorch checkpoint"):
        evil({"image": image, "device": "cpu"})
    assert not marker.exists() and set(calls) == {True}


def test_train_request_settings_refuse_code_and_bad_values():
    pytest.importorskip("monailabel", reason="monailabel not installed")
    from s2s2_monai.label_app.train import request_settings

    defaults = {"max_epochs": 50, "use_stack": True, "val_split": 0.2, "from_current": True}
    got = request_settings(
        {"model": "synapse", "device": "cpu", "max_epochs": "3", "use_stack": "false", "batch_size": 4}, defaults
    )
    assert got == {"max_epochs": 3, "use_stack": False, "val_split": 0.2, "from_current": True, "batch_size": 4}
    with pytest.raises(S2S2InputError, match="'overrides' is not accepted"):
        request_settings({"overrides": {"max_epochs": "$__import__('os').getcwd()"}}, defaults)
    with pytest.raises(S2S2InputError, match=r"'stack_generator' is .*Fix: pass one of \['appearance', 'diffusion'\]"):
        request_settings({"stack_generator": "$__import__('os').getcwd()"}, defaults)
    bad = [
        {"max_epochs": 0},
        {"max_epochs": "abc"},
        {"max_epochs": 1.5},
        {"val_split": 1},
        {"learning_rate": 0},
        {"learning_rate": "nan"},
        {"use_stack": "maybe"},
        {"batch_size": True},
        {"num_workers": -1},
    ]
    for request in bad:
        with pytest.raises(S2S2InputError, match=f"train request parameter '{next(iter(request))}'"):
            request_settings(request, defaults)


def test_server_outside_and_absent_answer_the_same_404(server, real_ct):
    """No existence oracle: a file outside the studies folder and a missing one get the same answer."""
    url, studies = server["url"], server["studies"]
    link = studies / "link.nii.gz"  # inside by name, outside by real path
    link.symlink_to(real_ct)
    try:
        images = [
            str(real_ct),  # exists, outside (was served: 200)
            str(real_ct) + "X",  # absent
            "/etc/hostname",  # exists (was 422)
            "/etc/hostnameX",  # absent (was 404)
            "../x",
            f"{studies}/../../{real_ct.name}",
            str(link),
            "link",
            "nosuch",
            "..",
        ]
        details = set()
        for image in images:
            status, body = _request(f"{url}/infer/synapse?image={urllib.parse.quote(image)}&output=image", "POST")
            assert status == 404, (image, body[:300])
            details.add(json.loads(body)["detail"].replace(repr(image), "ID"))
        assert len(details) == 1 and "is not in the studies folder" in details.pop()
    finally:
        link.unlink()
    # a path that does lie in the studies folder is served
    inside = urllib.parse.quote(str(studies / "phantom.nii.gz"))
    assert _request(f"{url}/infer/synapse?image={inside}&output=image", "POST")[0] == 200
    _still_serving(server)


def test_server_refuses_huge_declared_volume_fast(server, tmp_path):
    url = server["url"]
    bomb = tmp_path / "bomb.nii.gz"
    bomb.write_bytes(_nifti_declaring((30000, 30000, 30000)))
    start = time.perf_counter()
    status, body = _upload(f"{url}/infer/synapse?output=image", bomb)
    elapsed = time.perf_counter() - start
    assert status == 413 and "max_voxels 268435456" in _detail((status, body)), body[:300]
    assert elapsed < 2.0, f"{elapsed:.2f} s"
    # the same file in the studies folder is refused the same way
    shutil.copy(bomb, server["studies"] / "bomb.nii.gz")
    try:
        image = urllib.parse.quote(str(server["studies"] / "bomb.nii.gz"))
        status, body = _request(f"{url}/infer/synapse?image={image}&output=image", "POST")
        assert status == 413 and "declares 27000000000000 voxels" in _detail((status, body))
    finally:
        (server["studies"] / "bomb.nii.gz").unlink()
    _still_serving(server)


def _raw_post(url: str, headers: dict, body: bytes = b"", method: str = "POST") -> tuple[int, bytes]:
    """A request over a plain socket: the head, then ``body`` (possibly cut short); (status, body) of the answer.

    urllib sends a whole body before it reads the answer, but a server that refuses a body early
    answers and closes while the client still writes (broken pipe); this client stops writing.
    """
    parts = urllib.parse.urlsplit(url)
    head = f"{method} {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.hostname}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
        sock.sendall(head.encode() + body)
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
        head_in, _, body_in = answer.partition(b"\r\n\r\n")
        length = int(
            dict(line.decode().lower().split(": ", 1) for line in head_in.split(b"\r\n")[1:]).get("content-length", 0)
        )
        while len(body_in) < length and (chunk := sock.recv(65536)):
            body_in += chunk
    return int(head_in.split()[1]), body_in


def test_server_refuses_uploads_over_the_limit(server, tmp_path):
    url = server["url"]
    limit = MAX_UPLOAD_MB * 2**20
    multipart = {"Content-Type": "multipart/form-data; boundary=s2s2testboundary"}
    # declared too large: refused before the body is read
    status, body = _raw_post(f"{url}/infer/synapse?output=image", {**multipart, "Content-Length": str(limit + 1)})
    assert status == 413 and f"max_upload_mb {MAX_UPLOAD_MB}" in json.loads(body)["detail"]
    # chunked (no length): refused once the bytes read pass the limit
    head = b'--s2s2testboundary\r\nContent-Disposition: form-data; name="file"; filename="big.nii.gz"\r\n\r\n'
    chunk = os.urandom(256 * 1024)
    chunks = head + chunk * (limit // len(chunk) + 1)
    encoded = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in (chunks[:65536], chunks[65536:]))
    status, body = _raw_post(
        f"{url}/infer/synapse?output=image", {**multipart, "Transfer-Encoding": "chunked"}, encoded
    )
    assert status == 413 and "max_upload_mb" in body.decode(errors="replace"), body[:300]
    status, body = _raw_post(
        f"{url}/datastore/label?image=phantom", {**multipart, "Content-Length": str(limit + 1)}, method="PUT"
    )
    assert status == 413 and "max_upload_mb" in json.loads(body)["detail"]
    _still_serving(server)


def test_server_bad_parameters_are_4xx(server, tmp_path):
    url = server["url"]
    infer = f"{url}/infer/synapse?image=phantom&output=image"
    cases = [  # (what, fields, expected status, words of the detail)
        ("params not JSON", {"params": "not json"}, 422, "'params' is not valid JSON"),
        ("params a list", {"params": "[1, 2]"}, 422, "not an object"),
        ("params too deep", {"params": "[" * 100000}, 422, "'params' is not valid JSON"),
        ("batch_size 0", {"params": json.dumps({"batch_size": 0})}, 422, "'batch_size' is 0"),
        ("batch_size text", {"params": json.dumps({"batch_size": "many"})}, 422, "'batch_size' is 'many'"),
        ("device", {"params": json.dumps({"device": "tpu:7"})}, 422, "'device'"),
        ("logging", {"params": json.dumps({"logging": "LOUD"})}, 422, "'logging'"),
        ("image in params", {"params": json.dumps({"image": "/etc/hostname"})}, 422, "may not set ['image']"),
    ]
    for what, fields, expected, words in cases:
        data, headers = _multipart(fields)
        status, body = _request(infer, "POST", data, headers)
        assert status == expected and words in _detail((status, body)), (what, status, body[:300])
    # a multipart body cut off inside the file part
    data, headers = _multipart(files={"file": ("ct.nii.gz", b"\x1f\x8b" + b"x" * 5000)})
    status, body = _request(f"{url}/infer/synapse?output=image", "POST", data[:2000], headers)
    assert status == 400 and "no complete 'file' part" in _detail((status, body))
    status, body = _request(f"{url}/infer/synapse?output=image", "POST")
    assert status == 422 and "no image given" in _detail((status, body))
    status, body = _request(f"{url}/infer/synapse?image=phantom&output=dicom_seg", "POST")
    assert status == 422 and "dicom_seg" in _detail((status, body))
    status, body = _request(f"{url}/infer/synapse?image=phantom&output=bogus", "POST")
    assert status == 422
    data, headers = _multipart(files={"file": ("notes.txt", b"hello")})
    status, body = _request(f"{url}/infer/synapse?output=image", "POST", data, headers)
    assert status == 415 and "not a NIfTI file" in _detail((status, body))
    status, body = _request(f"{url}/infer/synapse?session_id=../../x&output=image", "POST")
    assert status == 404 and "session '../../x' not found" in _detail((status, body))
    status, body = _request(f"{url}/infer/nosuch?image=phantom&output=image", "POST")
    assert status == 404 and "unknown model 'nosuch'" in _detail((status, body))
    data, headers = _multipart(files={"file": ("model.pt", b"x")})
    status, body = _request(f"{url}/model/nosuch", "PUT", data, headers)  # was 500
    assert status == 404 and "unknown model 'nosuch'" in _detail((status, body))
    status, body = _request(f"{url}/activelearning/nosuch", "POST")  # was 500
    assert status == 404 and "unknown active-learning strategy 'nosuch'" in _detail((status, body))
    status, body = _request(f"{url}/infer/wsi/synapse?image={urllib.parse.quote('/etc/hostname')}", "POST")
    assert status == 404 and "no whole-slide" in _detail((status, body))
    data, headers = _multipart({"wsi": "not json"})
    status, body = _request(f"{url}/infer/wsi_v2/synapse?image=phantom", "POST", data, headers)  # was 500
    assert status == 422 and "'wsi' is not valid JSON" in _detail((status, body))
    _still_serving(server)


def test_server_datastore_ids_stay_inside(server, tmp_path):
    url, studies = server["url"], server["studies"]
    label = (studies / "labels" / "final" / "phantom.nii.gz").read_bytes()
    data, headers = _multipart(files={"label": ("phantom.nii.gz", label)})
    status, body = _request(f"{url}/datastore/label?image=../x", "PUT", data, headers)  # was 500
    assert status == 404 and "image '../x' is not in the studies folder" in _detail((status, body))
    status, body = _request(f"{url}/datastore/label?image=phantom&tag=../../escaped", "PUT", data, headers)
    assert status == 422 and "label tag '../../escaped' is not a plain file name" in _detail((status, body))
    data_p, headers_p = _multipart({"params": "{oops"}, {"label": ("phantom.nii.gz", label)})
    status, body = _request(f"{url}/datastore/label?image=phantom", "PUT", data_p, headers_p)  # was 500
    assert status == 422 and "'params' is not valid JSON" in _detail((status, body))
    image = (studies / "phantom.nii.gz").read_bytes()
    data, headers = _multipart(files={"file": ("phantom.nii.gz", image)})
    status, body = _request(f"{url}/datastore/image?image=../escaped", "PUT", data, headers)
    assert status == 422 and "image id '../escaped' is not a plain file name" in _detail((status, body))
    assert not list(studies.parent.glob("escaped*")) and not (studies / "labels" / "escaped.nii.gz").exists()
    assert _request(f"{url}/datastore/image?image=../x")[0] == 404
    status, body = _request(f"{url}/datastore/label?id=nosuch&tag=final", "DELETE")
    assert status == 404 and "no label 'nosuch'" in _detail((status, body))
    data, headers = _multipart({"info": "not json"})
    status, body = _request(f"{url}/datastore/image/info?image=phantom", "PUT", data, headers)
    assert status == 422 and "'info' is not valid JSON" in _detail((status, body))
    data, headers = _multipart(files={"files": ("a.zip", b"PK")})
    status, body = _request(f"{url}/session/?uncompress=true", "PUT", data, headers)
    assert status == 422 and "does not unpack archives" in _detail((status, body))
    # good requests still pass through the checked routes: add a study, label it, segment it, remove it
    data, headers = _multipart(files={"file": ("added.nii.gz", image)})
    status, body = _request(f"{url}/datastore/image?image=added", "PUT", data, headers)
    assert status == 200 and json.loads(body) == {"image": "added"}
    try:
        data, headers = _multipart({"params": "{}"}, {"label": ("added.nii.gz", label)})
        status, body = _request(f"{url}/datastore/label?image=added&tag=final", "PUT", data, headers)
        assert status == 200 and (studies / "labels" / "final" / "added.nii.gz").is_file()
        assert _request(f"{url}/infer/synapse?image=added&output=image", "POST")[0] == 200
    finally:
        assert _request(f"{url}/datastore/image?id=added", "DELETE")[0] == 200
    assert not (studies / "added.nii.gz").exists() and not (studies / "labels" / "final" / "added.nii.gz").exists()
    _still_serving(server)


def test_server_info_answers_during_inference(server, tmp_path):
    """The inference runs off the event loop: /info/ answers within a second while inferences run
    (MONAI Label's own route ran them on the event loop: /info/ waited for the whole inference)."""
    url, studies = server["url"], server["studies"]
    rng = np.random.default_rng(0)
    vol = np.full((64, 64, 20), -1000, np.int16)
    vol[8:56, 8:56] = rng.integers(-100, 200, (48, 48, 20), dtype=np.int16)
    volume = studies / "long_ct.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(volume))
    data, headers = _multipart({"params": json.dumps({"batch_size": 1})})
    image = urllib.parse.quote(str(volume))
    statuses, busy = [], threading.Event()

    def infer():  # back-to-back inferences for at least 3 s (their speed depends on the machine's load)
        start = time.perf_counter()
        busy.set()
        while time.perf_counter() - start < 3.0:
            statuses.append(_request(f"{url}/infer/synapse?image={image}&output=image", "POST", data, headers)[0])

    worker = threading.Thread(target=infer)
    try:
        worker.start()
        busy.wait()
        time.sleep(0.2)
        latencies = []
        while worker.is_alive():
            start = time.perf_counter()
            assert _request(url + "/info/", timeout=30)[0] == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(0.1)
    finally:
        worker.join()
        volume.unlink()
    assert statuses and set(statuses) == {200} and len(latencies) >= 5
    assert max(latencies) < 1.0, f"/info/ took up to {max(latencies):.2f} s during {len(statuses)} inferences"
    print(f"/info/ during {len(statuses)} inferences: {len(latencies)} calls, max {max(latencies):.3f} s")


def test_server_refuses_pickled_code_in_weights(server, tmp_path):
    """Weights replaced through MONAI Label's PUT /model/{name}: read weights_only, refused (422), never run."""
    url = server["url"]
    weights = server["models"] / "synapse" / WEIGHTS
    original = weights.read_bytes()
    marker = tmp_path / "unpickled"
    evil = tmp_path / "model.pt"
    torch.save({"conv.weight": _RunsCodeWhenUnpickled(marker)}, evil)
    data, headers = _multipart(files={"file": ("model.pt", evil.read_bytes())})
    assert _request(f"{url}/model/synapse", "PUT", data, headers)[0] == 200
    try:
        status, body = _request(f"{url}/infer/synapse?image=phantom&output=image", "POST")
        assert status == 422 and "not a readable PyTorch checkpoint" in _detail((status, body)), body[:400]
        assert not marker.exists()
    finally:
        restore = weights.with_suffix(".restore")
        restore.write_bytes(original)
        os.replace(restore, weights)
    assert _request(f"{url}/infer/synapse?image=phantom&output=image", "POST")[0] == 200
    _still_serving(server)


def test_server_train_refuses_bundle_expressions(server, tmp_path):
    """POST /train/{model} with free bundle overrides (config expressions run Python) fails, unrun."""
    marker = tmp_path / "expression_ran"
    params = {
        "max_epochs": 1,
        "use_stack": False,
        "overrides": {"stack_seed": f"$__import__('os').mkdir({str(marker)!r})"},
    }
    status, body = _request(
        f"{server['url']}/train/synapse", "POST", json.dumps(params).encode(), {"Content-Type": "application/json"}
    )
    assert status == 200, body[:500]
    deadline = time.time() + 120
    while True:
        task = json.loads(_request(f"{server['url']}/train/")[1])
        if task.get("status") in ("DONE", "ERROR"):
            break
        assert time.time() < deadline, "the train task did not end in 120 s"
        time.sleep(1)
    assert task["status"] == "ERROR" and not marker.exists()
    assert any("'overrides' is not accepted" in line for line in task.get("details", [])), task.get("details", [])[-5:]
    _still_serving(server)


def _post_json(url: str, params: dict | None = None):
    status, body = _request(url, "POST", json.dumps(params or {}).encode(), {"Content-Type": "application/json"})
    return status, json.loads(body) if body else None


def test_server_active_learning_picks_the_most_uncertain_study_and_slice(server):
    """POST /scoring/s2s2_disagreement scores the unlabeled studies (an unreadable one is skipped with its reason),
    POST /activelearning/s2s2_uncertain answers the highest score and its most uncertain slice."""
    from s2s2_monai.active_learning.disagreement import stack_disagreement
    from s2s2_monai.label_app.scoring import SCORE_KEY

    url = server["url"]
    status, info = _post_json(url + "/activelearning/s2s2_uncertain")
    assert status == 200 and info["score"] is None and "random" in info["note"], info  # nothing scored yet
    # as 3D Slicer starts it: a background task (a child process writes the datastore; the server reads it back)
    status, task = _post_json(url + "/scoring/s2s2_disagreement")
    assert status == 200, task
    deadline = time.time() + 300
    while True:
        status, body = _request(url + "/scoring/")
        state = json.loads(body) if status == 200 else {}
        if state.get("status") in ("DONE", "ERROR") or time.time() > deadline:
            break
        time.sleep(1)
    assert state.get("status") == "DONE", state
    details = json.dumps(state) + (server["root"] / "server.log").read_text()
    assert "broken: skipped, cannot be scored" in details  # the unreadable study, with its reason in the log
    assert _request(url + "/info/")[0] == 200  # the server keeps serving
    records = {}
    for image in ("real_ct", "slab", "broken"):
        status, body = _request(f"{url}/datastore/image/info?image={image}")
        assert status == 200, body
        records[image] = json.loads(body).get(SCORE_KEY)
    assert records["broken"] is None and all(records[i]["model"] == "synapse" for i in ("real_ct", "slab"))
    best = max(("real_ct", "slab"), key=lambda i: records[i]["score"])
    status, answer = _post_json(url + "/activelearning/s2s2_uncertain")
    assert status == 200 and answer["id"] == best, (answer, records)
    assert answer["slice"] == records[best]["slice"] == int(np.argmax(records[best]["slice_scores"]))
    assert answer["slice_score"] == pytest.approx(max(records[best]["slice_scores"]), abs=1e-6)
    assert records[best]["weights"] == file_sha256(server["models"] / "synapse" / WEIGHTS)  # weights by content
    os.utime(server["models"] / "synapse" / WEIGHTS)  # the same weights with a new date: the scores still count
    status, again = _post_json(url + "/activelearning/s2s2_uncertain")
    assert status == 200 and again["id"] == best and again["score"] is not None, again
    # the same score in this process, from the served model folder and the server's settings (batch_size 8)
    model = load_model_bundle(server["models"] / "synapse").load_model()
    volume = prepare_volume(server["studies"] / "slab.nii.gz", model)
    ref = stack_disagreement(model, volume.image, k=4, seed=0, batch_size=8)
    assert records["slab"]["score"] == pytest.approx(ref.score, rel=1e-4, abs=1e-6)
    assert records["slab"]["slice"] == ref.most_uncertain_slice
    # a second run (in the server, synchronously) skips what is scored with these weights and settings
    status, again = _post_json(url + "/scoring/s2s2_disagreement?run_sync=true")
    assert status == 200 and again["scored"] == 0 and again["skipped"] >= 2 and set(again["failed"]) == {"broken"}, (
        again
    )
    status, body = _request(url + "/activelearning/nosuch", "POST", b"{}", {"Content-Type": "application/json"})
    assert status == 404 and b"s2s2_uncertain" in body
