"""Bundle settings and file-system refusals are one clear line, and leftovers of killed runs go (issue 19).

Every user-facing case runs the real command in a subprocess and checks what the user sees, with the
helpers of ``tests/test_bad_input.py``: exit 2, exactly one ``error: WHERE: problem. Fix: how`` line, no
traceback, and nothing written (no output folder, no stack, no event file, no temporary folder).

Read-only and full disks: the tests run as root here, where ``chmod 0o555`` does not stop a write, so the
command runs under ``unshare -rm`` (its own user and mount namespace, nothing outside it changes) with its
``--out`` on a read-only or a 16 KiB tmpfs; they skip where user namespaces are not allowed. A path through
a file (``ENOTDIR``) needs no privilege and always runs.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_bad_input import ENV, REPO, SYNAPSE, TRACEBACK, Demo, assert_clean_error, files_of, run_bundle, run_s2s2
from test_bad_input import tiny_overlay as _tiny_overlay

from s2s2_monai.atomic import _HOST, remove_stale_temp, require_writable, stage_dir
from s2s2_monai.errors import S2S2InputError, file_system_error, user_error_in
from s2s2_monai.training.settings import INPUT_SIZE_RULES, check_training_settings, unknown_override_keys

MONAI_MAIN = str(Path(__import__("monai").__file__).parent / "bundle" / "__main__.py")


@pytest.fixture(scope="module")
def demo(tiny_demo) -> Demo:
    return Demo(tiny_demo)


def tiny_overlay(tmp: Path, demo: Demo, **extra) -> Path:
    return _tiny_overlay(tmp / "tiny.json", demo, tmp / "run", tmp / "stack", **extra)


def assert_nothing_written(tmp: Path) -> None:
    assert not (tmp / "run").exists(), sorted(files_of(tmp / "run"))  # no output folder, event file, checkpoint
    assert not (tmp / "stack").exists(), sorted(files_of(tmp / "stack"))
    assert not [p for p in tmp.rglob("*") if ".tmp" in p.name]


# ---------------------------------------------------------------------------- bundle settings
@pytest.mark.parametrize(
    "override, names",
    [
        (("--input_size", "[7,7]"), ("--input_size", "[7, 7]", "basic_unet", ">= 16", "--input_size [16,16]")),
        (
            ("--network_name", "unetr", "--input_size", "[24,24]"),
            ("--input_size", "unetr", "multiple of 16", "--input_size [32,32]"),
        ),
        (("--num_classes", "3"), ("--num_classes", "got 3", "'synapse' has 9 classes")),
        (("--hu_window", "[275,-125]"), ("--hu_window", "[275, -125]", "min < max", "[-125,275]")),
        (("--hu_window", "[0]"), ("--hu_window", "[0]", "two numbers")),
        (("--mri_upper_percentile", "0"), ("--mri_upper_percentile", "(0, 100]")),
        (("--mri_upper_percentile", "101"), ("--mri_upper_percentile", "101")),
        (("--image_size", "7"), ("--image_size", "not a setting of this bundle", "did you mean --input_size?")),
        (("--image-size=7",), ("--image_size", "did you mean --input_size?")),
        (("--max_epoch", "2"), ("--max_epoch", "did you mean --max_epochs?")),
    ],
    ids=[
        "input_size 7x7",
        "input_size 24 for unetr",
        "num_classes 3 with 9-class labels",
        "hu_window min > max",
        "hu_window one number",
        "mri_upper_percentile 0",
        "mri_upper_percentile 101",
        "unknown key image_size",
        "unknown key image-size=",
        "unknown key max_epoch",
    ],
)
def test_bundle_setting_refused_before_anything_is_written(override, names, demo, tmp_path):
    overlay = tiny_overlay(tmp_path, demo)
    r = run_bundle([SYNAPSE / "train.json", overlay], *override)
    assert_clean_error(r, *names)
    assert_nothing_written(tmp_path)


def test_best_validation_without_validation_leaves_nothing(demo, tmp_path):
    """``--model_selection best_validation`` on a datalist without validation cases: refused before the stack
    is built and before the trainer makes its TensorBoard event file."""
    raw = json.loads(demo.datalist.read_text())
    raw.pop("validation")
    for section in ("training", "test"):
        for e in raw[section]:
            e["image"], e["label"] = str(demo.root / e["image"]), str(demo.root / e["label"])
    datalist = tmp_path / "no_validation.json"
    datalist.write_text(json.dumps(raw))
    overlay = tiny_overlay(tmp_path, demo, datalist=str(datalist))
    r = run_bundle([SYNAPSE / "train.json", overlay], "--model_selection", "best_validation")
    assert_clean_error(r, "--model_selection", "best_validation", str(datalist), "--model_selection last")
    assert_nothing_written(tmp_path)
    assert not list(tmp_path.rglob("events.out.tfevents*"))


def test_known_overrides_and_args_file_pass(demo, tmp_path):
    """Keys the config files define (nested ones too, ``--noKEY``, an ``--args_file``) are not refused; only a
    ``monai.bundle run`` command line is read."""
    overlay = tiny_overlay(tmp_path, demo)
    config_files = [str(SYNAPSE / "train.json"), str(overlay)]
    files = str(config_files)
    argv = [MONAI_MAIN, "run", "training", "--config_file", files, "--max_epochs", "1", "--nouse_stack"]
    assert unknown_override_keys([*argv, "--networks#basic_unet#features", "[4,4,8,8,16,4]", "--hu_window=[0,1]"]) == []
    assert unknown_override_keys(["pytest", "run", "--config_file", files, "--image_size", "7"]) == []
    assert unknown_override_keys([*argv, "--stack-dr", "x"]) == [("stack_dr", config_files, "stack_dir")]
    # MONAI's own tracking settings are settings of the run once --tracking adds them
    tracked = [*argv, "--tracking", "mlflow", "--tracking_uri", "sqlite:///x.db", "--experiment_name", "e"]
    assert unknown_override_keys(tracked) == []
    assert [k for k, _, _ in unknown_override_keys([*argv, "--tracking_uri", "sqlite:///x.db"])] == ["tracking_uri"]
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"config_file": config_files, "imag_size": 3}))
    assert [k for k, _, _ in unknown_override_keys([MONAI_MAIN, "run", "training", "--args_file", str(args_file)])] == [
        "imag_size"
    ]
    check_training_settings({"input_size": [96, 112], "network_name": "basic_unet", "hu_window": [-160, 240]})


def _runs(net: torch.nn.Module, side: int) -> bool:
    try:
        out = net(torch.zeros(2, 1, side, side))
    except (RuntimeError, ValueError):
        return False
    return tuple(out.shape[2:]) == (side, side)


@pytest.mark.parametrize("name", sorted(INPUT_SIZE_RULES))
def test_input_size_rules_are_the_networks_own(name):
    """:data:`INPUT_SIZE_RULES` says yes exactly for the sides (1 to 64) at which the network runs and gives
    the input size back (tiny widths; the constraints do not depend on them)."""
    from monai.networks.nets import UNETR, BasicUNet

    from s2s2_monai.networks import TransUNet

    def build(side: int) -> torch.nn.Module:
        if name == "basic_unet":
            return BasicUNet(spatial_dims=2, in_channels=1, out_channels=3, features=(4, 4, 4, 4, 4, 4), norm="batch")
        if name == "unetr":
            return UNETR(
                in_channels=1,
                out_channels=3,
                img_size=(side, side),
                feature_size=4,
                hidden_size=16,
                mlp_dim=16,
                num_heads=2,
                norm_name="batch",
                spatial_dims=2,
            )
        return TransUNet(
            1,
            3,
            side,
            hidden_size=32,
            num_layers=1,
            num_heads=4,
            mlp_dim=32,
            block_units=(1, 1, 1),
            width_factor=0.5,
            decoder_channels=(16, 16, 16, 16),
            head_channels=32,
        )

    torch.manual_seed(0)
    shared = build(16) if name == "basic_unet" else None
    for side in range(1, 65):
        try:
            net = shared or build(side)
        except ValueError:
            works = False
        else:
            with torch.no_grad():
                works = _runs(net.train(), side)
        multiple, minimum, _ = INPUT_SIZE_RULES[name]
        assert works == (side >= minimum and side % multiple == 0), (name, side, works)


# ---------------------------------------------------------------------------- file-system refusals
def _userns_ok() -> bool:
    if not shutil.which("unshare"):
        return False
    r = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    return r.returncode == 0


needs_userns = pytest.mark.skipif(not _userns_ok(), reason="unshare -rm (user + mount namespace) is not allowed here")


def run_in_mount(mount_opts: str, mount_at: Path, argv: list, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m s2s2_monai ARGV`` in its own user + mount namespace with a tmpfs (``mount_opts``) at
    ``mount_at``; the mount is gone when the command ends."""
    cmd = " ".join(shlex.quote(str(a)) for a in [sys.executable, "-m", "s2s2_monai", *argv])
    script = f"mount -t tmpfs -o {mount_opts} s2s2test {shlex.quote(str(mount_at))} && exec {cmd}"
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def folders(demo, tmp_path) -> Path:
    """``pred/`` and ``labels/``: three identical phantom label maps, plus a second method ``pred2/``."""
    for name in ("labels", "pred", "pred2"):
        (tmp_path / name).mkdir()
        for i in range(3):
            shutil.copyfile(demo.label, tmp_path / name / f"case{i}.nii.gz")
    return tmp_path


def evaluate_argv(folders: Path, out: Path) -> list:
    return ["evaluate", "--pred-dir", f"a={folders / 'pred'}", "--pred-dir", f"b={folders / 'pred2'}",
            "--label-dir", folders / "labels", "--out", out, "--no-progress", "--bootstrap", "200"]  # fmt: skip


@needs_userns
def test_evaluate_out_on_read_only_file_system(folders):
    (folders / "ro").mkdir()
    out = folders / "ro" / "report"
    r = run_in_mount("ro,size=1m", folders / "ro", evaluate_argv(folders, out))
    assert_clean_error(r, out, "read-only file system", "another --out")
    assert not list((folders / "ro").iterdir())


@needs_userns
def test_evaluate_out_on_full_disk(folders):
    """The report does not fit in 16 KiB: one line naming --out, and the staging folder is gone."""
    (folders / "small").mkdir()
    out = folders / "small" / "report"
    argv = evaluate_argv(folders, out)
    script_ls = f"; echo LEFT; ls -A {shlex.quote(str(folders / 'small'))}"
    cmd = " ".join(shlex.quote(str(a)) for a in [sys.executable, "-m", "s2s2_monai", *argv])
    script = f"mount -t tmpfs -o size=16k s2s2test {shlex.quote(str(folders / 'small'))} && {cmd}; rc=$?{script_ls}; exit $rc"
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=REPO, env=ENV, capture_output=True, text=True)
    stdout, _, left = r.stdout.partition("LEFT\n")
    r = subprocess.CompletedProcess(r.args, r.returncode, stdout, r.stderr)
    assert_clean_error(r, out, "no space left on the device", "free space")
    assert left.strip() == "", f"left on the full disk: {left!r}"  # no report, no staging folder


@needs_userns
def test_stack_build_out_on_read_only_file_system(demo, tmp_path):
    (tmp_path / "ro").mkdir()
    out = tmp_path / "ro" / "stack"
    argv = ["stack", "build", "--datalist", demo.datalist, "--out", out, "--n", "1", "--no-progress", "--no-qc"]
    r = run_in_mount("ro,size=1m", tmp_path / "ro", argv)
    assert_clean_error(r, out, "read-only file system")


def test_stack_build_out_below_a_file(demo, tmp_path):
    """``--out`` whose parent is a file (ENOTDIR, which no privilege overrides): one line, nothing written."""
    (tmp_path / "notes.txt").write_text("a file\n")
    out = tmp_path / "notes.txt" / "stack"
    argv = ["stack", "build", "--datalist", demo.datalist, "--out", out, "--n", "1", "--no-progress", "--no-qc"]
    assert_clean_error(run_s2s2(*argv), out, "is a file, not a folder")
    assert (tmp_path / "notes.txt").read_text() == "a file\n" and sorted(p.name for p in tmp_path.iterdir()) == [
        "notes.txt"
    ]


def test_evaluate_out_below_a_file_refused_before_scoring(folders):
    (folders / "notes.txt").write_text("x")
    out = folders / "notes.txt" / "report"
    assert_clean_error(run_s2s2(*evaluate_argv(folders, out)), out, "notes.txt is a file, not a folder")


def test_excepthook_turns_file_system_errors_into_one_line(tmp_path):
    """The bundles' excepthook: an uncaught ENOSPC / EROFS with a path is one line (exit 2); a bug keeps its
    traceback."""
    for code, words in ((errno.ENOSPC, "no space left"), (errno.EROFS, "read-only"), (errno.EDQUOT, "quota")):
        src = (
            "import errno, os; from s2s2_monai.errors import install_excepthook; install_excepthook(); "
            f"raise RuntimeError('wrapped') from OSError({code}, os.strerror({code}), '/data/run/x.pt')"
        )
        r = subprocess.run([sys.executable, "-c", src], cwd=REPO, env=ENV, capture_output=True, text=True)
        assert_clean_error(r, "/data/run/x.pt", words)
    src = "from s2s2_monai.errors import install_excepthook; install_excepthook(); raise OSError(5, 'I/O error', '/x')"
    r = subprocess.run([sys.executable, "-c", src], cwd=REPO, env=ENV, capture_output=True, text=True)
    assert r.returncode == 1 and TRACEBACK in r.stderr  # EIO is not the user's to fix


def test_file_system_error_translation():
    for code in (errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.ENOTDIR):
        err = file_system_error(OSError(code, os.strerror(code), "/o/x"))
        assert isinstance(err, S2S2InputError) and err.path == "/o/x" and err.fix, code
        assert file_system_error(OSError(code, os.strerror(code)), path="/out").path == "/out"
    assert file_system_error(OSError(errno.ENOSPC, "full")).path is None  # a full disk says so without a path
    assert file_system_error(PermissionError(errno.EACCES, "denied")) is None  # no path: not the user's
    assert file_system_error(OSError(errno.EIO, "I/O error", "/x")) is None
    assert user_error_in(ValueError("bug")) is None
    with pytest.raises(S2S2InputError, match="is a file, not a folder"):
        require_writable(Path(__file__) / "out")


# ---------------------------------------------------------------------------- leftovers of killed runs
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_staging_of_a_killed_evaluate_is_removed_by_the_rerun(folders):
    """``kill -9`` of ``s2s2 evaluate`` while it writes its report leaves ``.OUT.tmpPID@HOST-*``; the next
    run removes it (its writer is gone) and writes the report."""
    out = folders / "report"
    cmd = [sys.executable, "-m", "s2s2_monai", *map(str, evaluate_argv(folders, out))]
    left = []
    for _ in range(5):  # the staging folder lives for about a second: catch it
        p = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while p.poll() is None and not left:
            left = [q for q in folders.iterdir() if q.name.startswith(".report.tmp")]
            time.sleep(0.005)
        if left:
            p.send_signal(signal.SIGKILL)
            p.wait()
            break
        shutil.rmtree(out, ignore_errors=True)
    assert left and left[0].exists() and not out.exists(), "could not kill evaluate while it staged its report"
    assert left[0].name.startswith(f".report.tmp{p.pid}@{_HOST}-")
    r = run_s2s2(*evaluate_argv(folders, out))
    assert r.returncode == 0 and TRACEBACK not in r.stderr, r.stderr[-3000:]
    assert not left[0].exists() and (out / "report.html").is_file()
    assert not [q for q in folders.iterdir() if ".tmp" in q.name]


def test_remove_stale_temp_touches_only_its_own_leftovers(tmp_path):
    dead, me = _dead_pid(), os.getpid()
    old = time.time() - 3600
    stale = [
        f".out.tmp{dead}@{_HOST}-abcdefgh",  # stage_dir of a dead process
        f".out.robustness{dead}@{_HOST}-a1b2c3d_",
        f".tmp-out.{dead}",  # write_folder / tmp_name
        f".old-out.{dead}",
        f".out.tmp{dead}",  # .NAME.tmpPID writers
        f".out.tmp{me}@{_HOST}-zzzzzzzz",  # this pid, but written before this process started: pid reused
        ".out.tmpabcdefgh",  # an earlier version's staging folder, older than this run
    ]
    kept = [
        f".out.tmp{me}@{_HOST}-abcdefgh",  # this process's own
        f".out.tmp{dead}@otherhost-abcdefgh",  # another machine's: cannot tell
        ".out.tmpqwertyui",  # pid-less, but newer than this run
        ".other.tmpabcdefgh",  # another output's
        ".out.tmpabc",  # not the project's naming
        "out.tmpabcdefgh",  # not hidden
        ".out.tmp12x",
        "out",
        ".out.keep",
    ]
    for name in stale + kept:
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text("x")
    for name in (f".out.tmp{me}@{_HOST}-zzzzzzzz", ".out.tmpabcdefgh", ".other.tmpabcdefgh"):
        os.utime(tmp_path / name, (old, old))
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "precious").write_text("keep me")
    (tmp_path / f".out.tmp{dead}@{_HOST}-symlink_").symlink_to(target)  # removed as a link, never followed
    removed = remove_stale_temp(tmp_path / "out")
    assert sorted(p.name for p in removed) == sorted([*stale, f".out.tmp{dead}@{_HOST}-symlink_"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, "elsewhere"])
    assert (target / "precious").read_text() == "keep me"
    stage = stage_dir(tmp_path / "out")
    assert stage.name.startswith(f".out.tmp{me}@{_HOST}-") and remove_stale_temp(tmp_path / "out") == []
    assert np.all([(tmp_path / n).exists() for n in kept])
    held = tmp_path / f".out.tmp{dead}@{_HOST}-held____"  # a dead writer's, but holding what is being published
    (held / "report").mkdir(parents=True)
    assert remove_stale_temp(tmp_path / "out", keep=[held / "report"]) == [] and held.exists()
