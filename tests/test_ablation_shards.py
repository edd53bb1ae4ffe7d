"""`s2s2 ablation --shard K/N` / `--only ARM:SEED`: jobs that share one OUT, then a plain run that summarises.

Tiny ablations as in tests/test_ablation.py (4 phantom cases of 48x48x8, 1 epoch, a 32x32 BasicUNet).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_ablation import _tiny_sets
from test_bad_input import ENV

from s2s2_monai.cli import main

REPO = Path(__file__).resolve().parents[1]
SUMMARY = ("ablation.csv", "ablation.json", "report.html")


def _argv(tiny_demo: Path, out: Path, arms: str = "enc+dec,baseline", seeds: int = 2) -> list[str]:
    argv = ["ablation", "--config", str(REPO / "bundles/synapse/train.json"), "--out", str(out), "--arms", arms,
            "--seeds", str(seeds), "--corruptions", "gaussian_noise", "--severities", "1", "--bootstrap", "100",
            "--no-progress"]  # fmt: skip
    return argv + _tiny_sets(tiny_demo)


def _stamps(out: Path) -> dict[str, int]:
    files = sorted(out.glob("runs/*/seed*/models/model.pt")) + sorted(out.glob("runs/*/seed*/scores.csv"))
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in files}


def test_concurrent_shards_then_plain_run_equal_one_plain_run(tiny_demo, tmp_path, capsys):
    """Two shard jobs at once (separate processes, one shared stack built under the lock), then a plain run:
    the same ablation.csv, byte for byte, as one plain run; the plain run retrains and rescores nothing."""
    ref = tmp_path / "plain"
    assert main(_argv(tiny_demo, ref)) == 0
    capsys.readouterr()

    out = tmp_path / "sharded"
    # arms enc+dec first: pairs enc+dec:0, enc+dec:1, baseline:0, baseline:1, so each shard starts with a
    # stack arm and both jobs reach the shared stack at about the same time
    jobs = [
        subprocess.Popen(
            [sys.executable, "-m", "s2s2_monai", *_argv(tiny_demo, out), "--shard", f"{k}/2"],
            cwd=REPO,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in (1, 2)
    ]
    results = [job.communicate(timeout=240) for job in jobs]
    for job, (_, stderr) in zip(jobs, results):
        assert job.returncode == 0, stderr[-3000:]
        assert "Traceback" not in stderr
    lines = [stdout.strip().splitlines()[-1] for stdout, _ in results]
    assert lines[0].startswith(
        "shard 1/2: 2 of 4 arm x seed runs (trained now: enc+dec:0, baseline:0; trained before: none)"
    )
    assert lines[1].startswith(
        "shard 2/2: 2 of 4 arm x seed runs (trained now: enc+dec:1, baseline:1; trained before: none)"
    )
    assert all("a plain run (the same command without --shard/--only) writes ablation.csv" in line for line in lines)
    assert not any((out / name).exists() for name in SUMMARY)  # shards never summarise
    assert not list(out.rglob(".tmp-*"))

    from s2s2_monai.stack.cache import StackCache

    stacks = [p.parent for p in out.glob("stack_*/manifest.json")]
    assert len(stacks) == 1 and StackCache(stacks[0]).info(full=True)["complete"]

    stamps = _stamps(out)
    assert len(stamps) == 8  # 4 models + 4 score files
    assert main(_argv(tiny_demo, out)) == 0  # plain: finds all four finished, summarises
    assert "enc+dec" in capsys.readouterr().out
    assert _stamps(out) == stamps  # nothing retrained, nothing rescored
    assert (out / "ablation.csv").read_bytes() == (ref / "ablation.csv").read_bytes()
    assert (out / "report.html").is_file()


def test_only_trains_one_pair_once(tiny_demo, tmp_path, capsys):
    out = tmp_path / "only"
    argv = _argv(tiny_demo, out, arms="baseline,enc+dec", seeds=2)
    assert main([*argv, "--only", "enc+dec:1"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("--only: 1 of 4 arm x seed runs (trained now: enc+dec:1; trained before: none)")
    assert [p.relative_to(out).as_posix() for p in sorted(out.glob("runs/*/seed*"))] == ["runs/enc+dec/seed1"]
    assert not any((out / name).exists() for name in SUMMARY)
    stamps = _stamps(out)
    assert main([*argv, "--only", "enc+dec:1", "--only", "enc+dec:1"]) == 0  # finished: neither retrained nor rescored
    assert "(trained now: none; trained before: enc+dec:1)" in capsys.readouterr().out
    assert _stamps(out) == stamps
    assert main([*argv, "--shard", "4/4"]) == 0  # pair index 3 = enc+dec:1 again
    assert "shard 4/4: 1 of 4 arm x seed runs (trained now: none; trained before: enc+dec:1)" in capsys.readouterr().out
    assert main([*argv, "--shard", "7/9"]) == 0  # an array larger than the pairs: an empty shard is fine
    assert "shard 7/9: 0 of 4 arm x seed runs (trained now: none; trained before: none)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--shard", "3/2"], "error: --shard: got '3/2': K must be 1..N and N at least 1. Fix: pass --shard 1/2 .."),
        (["--shard", "0/2"], "error: --shard: got '0/2': K must be 1..N"),
        (["--shard", "x"], "error: --shard: got 'x', expected K/N. Fix: pass e.g. --shard 1/4"),
        (["--shard", "1/0"], "error: --shard: got '1/0': K must be 1..N and N at least 1"),
        (
            ["--only", "nope:0"],
            "error: --only: arm 'nope' of 'nope:0' is not one of this run's arms (baseline, enc+dec)",
        ),
        (["--only", "baseline:9"], "error: --only: seed 9 of 'baseline:9' is outside --seeds 3 (seeds 0..2)"),
        (["--only", "baseline"], "error: --only: got 'baseline', expected ARM:SEED"),
        (["--shard", "1/2", "--only", "baseline:0"], "error: --only: not allowed with argument --shard"),
    ],
)
def test_bad_shard_and_only_exit_2(tiny_demo, tmp_path, capsys, extra, expected):
    out = tmp_path / "bad"
    try:
        status = main([*_argv(tiny_demo, out, arms="baseline,enc+dec", seeds=3), *extra])
    except SystemExit as exc:  # argparse's own usage errors (mutually exclusive options) exit from the parser
        status = exc.code
    assert status == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(expected), err
    assert "Traceback" not in captured.err and not out.exists()


def test_bundle_runner_order_hook_lock_and_finalize_on_error(tmp_path):
    """initialize (under the lock only) -> hook -> run -> finalize; finalize also when run raises."""
    from s2s2_monai.bundle_runner import run_training_bundle

    log = tmp_path / "log.txt"
    step = lambda what: f"$open(@log_file, 'a').write('{what};')"  # noqa: E731
    config = tmp_path / "train.json"
    config.write_text(
        json.dumps(
            {
                "log_file": "unset",
                "divisor": 1,
                "initialize": [step("init")],
                "run": [step("run"), "$1 // @divisor"],
                "finalize": [step("final")],
            }
        )
    )

    class Lock:
        def __enter__(self):
            log.open("a").write("lock;")

        def __exit__(self, *exc):
            log.open("a").write("unlock;")

    hook = lambda wf: log.open("a").write(f"hook {wf.parser['divisor']};")  # noqa: E731
    workflow = run_training_bundle(
        config, {"log_file": str(log)}, logging_file=False, before_run=hook, initialize_lock=Lock()
    )
    assert log.read_text() == "lock;init;unlock;hook 1;run;final;" and workflow.parser["log_file"] == str(log)
    log.unlink()
    with pytest.raises(Exception) as info:
        run_training_bundle([config], {"log_file": str(log), "divisor": 0}, logging_file=False)
    chain, exc = [], info.value
    while exc is not None:
        chain.append(type(exc))
        exc = exc.__cause__ or exc.__context__
    assert ZeroDivisionError in chain
    assert log.read_text() == "init;run;final;"
