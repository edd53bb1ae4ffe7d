"""`s2s2` start-up and option names.

- Building the parser (``s2s2 --help``, every sub-command's ``--help``) imports neither torch nor
  MONAI; ``s2s2 evaluate`` on prediction / label folders never imports MONAI (``import monai``
  loads every submodule, ~10 s) and, with the default protocol, not torch either. Functional checks on ``sys.modules`` in a fresh interpreter, not
  timings.
- One option name per concept in every command; the old spellings still parse to the same value
  (hidden from ``--help``, one ``warning:`` line).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from s2s2_monai.cli import build_parser, main
from s2s2_monai.errors import S2S2InputError

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _subcommands(parser):
    """(argv prefix, parser) of every (sub-)command."""
    import argparse

    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append(([name], sub))
                out += [([name, *argv], p) for argv, p in _subcommands(sub)]
    return out


# ---------------------------------------------------------------------------- imports
PARSER_CHECK = r"""
import argparse, sys
from s2s2_monai.cli import build_parser

def helps(parser):
    yield parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from helps(sub)

texts = list(helps(build_parser()))
assert len(texts) > 8, len(texts)
print("HEAVY", sorted(m for m in ("torch", "monai", "torchio", "scipy", "nibabel", "diffusers") if m in sys.modules))
"""


def test_parser_and_every_help_import_no_torch_or_monai():
    r = _python(PARSER_CHECK)
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stdout, r.stdout + r.stderr


def test_help_lists_choices_without_torch():
    r = subprocess.run(
        [sys.executable, "-m", "s2s2_monai", "robustness", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    from s2s2_monai.robustness.corruptions import CORRUPTIONS, SEVERITIES

    for name in CORRUPTIONS:
        assert name in text
    assert "severities 1, 2, 3, 4, 5" in text and tuple(SEVERITIES) == (1, 2, 3, 4, 5)
    for hd in ("medpy", "surface-distance", "monai"):
        assert hd in text
    assert "--ckpt" not in r.stdout and "--quiet" not in r.stdout  # aliases are hidden


def test_leaf_name_modules_match_the_registries():
    from s2s2_monai.evaluation import metrics, names
    from s2s2_monai.robustness import corruptions
    from s2s2_monai.robustness import names as rnames

    assert metrics.HD95_DEFINITIONS is names.HD95_DEFINITIONS and metrics.DEFAULT_HD95 == names.DEFAULT_HD95
    assert tuple(corruptions.CORRUPTIONS) == rnames.CORRUPTION_NAMES
    assert corruptions.SEVERITIES == rnames.SEVERITIES


def _folders(root: Path) -> Path:
    lab = np.zeros((12, 12, 4), np.uint8)
    lab[3:8, 3:8, 1:3] = 1
    lab[8:11, 2:5, :] = 5
    for sub, arr in (("labels", lab), ("pred", np.roll(lab, 1, axis=0)), ("pred2", lab)):
        (root / sub).mkdir(parents=True)
        nib.save(nib.Nifti1Image(arr, np.diag([1.5, 1.5, 3.0, 1.0])), str(root / sub / "c1.nii.gz"))
    return root


EVALUATE_CHECK = r"""
import sys
from s2s2_monai.cli import main
root = sys.argv[1]
for i, hd95 in enumerate(("monai", "surface-distance", "medpy")):
    rc = main(["evaluate", "--pred-dir", f"a={root}/pred", "--pred-dir", f"b={root}/pred2", "--label-dir", f"{root}/labels",
               "--out", f"{root}/out{i}", "--hd95", hd95, "--bootstrap", "10", "--no-progress"])
    assert rc == 0, rc
print("TORCH", "torch" in sys.modules)
rc = main(["evaluate", "--pred-dir", f"{root}/pred", "--label-dir", f"{root}/labels", "--out", f"{root}/legacy", "--legacy-transunet", "--no-progress"])
assert rc == 0, rc
print("MONAI", "monai" in sys.modules, "LEGACY_TORCH", "torch" in sys.modules)
"""


def test_evaluate_on_folders_does_not_import_monai_or_torch(tmp_path):
    """Folder evaluation is numpy + scipy (torch alone costs ~1 s of start-up); MONAI never."""
    root = _folders(tmp_path)
    r = _python(EVALUATE_CHECK, str(root))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "TORCH False" in r.stdout and "MONAI False LEGACY_TORCH False" in r.stdout, r.stdout + r.stderr
    summary = json.loads((root / "out0" / "summary.json").read_text())
    assert (
        summary["methods"]["b"]["overall"]["dice"]["mean"] == 1.0
        and 0 < summary["methods"]["a"]["overall"]["dice"]["mean"] < 1
    )
    assert summary["versions"]["monai"]  # the version is read from the package metadata


# ---------------------------------------------------------------------------- option names
BASE = {
    "robustness": ["robustness", "--bundle", "b", "--datalist", "d.json", "--out", "o"],
    "export-bundle": ["export-bundle", "--config", "c.json", "--out", "o"],
    "controlnet": ["controlnet", "train", "--sd-dir", "sd", "--datalist", "d.json", "--out", "o"],
    "stack": ["stack", "build", "--datalist", "d.json", "--out", "o"],
    "evaluate": ["evaluate", "--pred-dir", "p", "--label-dir", "l", "--out", "o"],
    "demo-data": ["demo-data", "--out", "o"],
}

#: command, other arguments, new spelling, old spelling, dest, parsed value
ALIASES = [
    ("robustness", [], ["--checkpoint", "m.pt"], ["--ckpt", "m.pt"], "checkpoint", "m.pt"),
    ("export-bundle", [], ["--checkpoint", "m.pt"], ["--ckpt", "m.pt"], "checkpoint", "m.pt"),
    ("robustness", ["--checkpoint", "m.pt"], ["--no-progress"], ["--quiet"], "no_progress", True),
    ("controlnet", [], ["--no-progress"], ["--quiet"], "no_progress", True),
    ("stack", [], ["--no-progress"], ["--quiet"], "no_progress", True),
    ("evaluate", [], ["--no-progress"], ["--quiet"], "no_progress", True),
    ("demo-data", [], ["--no-progress"], ["--quiet"], "no_progress", True),
]


@pytest.mark.parametrize(
    ("command", "extra", "new", "old", "dest", "value"), ALIASES, ids=[f"{a[0]}:{a[3][0]}" for a in ALIASES]
)
def test_old_and_new_spellings_parse_alike(command, extra, new, old, dest, value, capsys):
    parser = build_parser()
    base = BASE[command] + extra
    a = parser.parse_args(base + new)
    assert getattr(a, dest) == value
    assert "deprecated" not in capsys.readouterr().err
    b = parser.parse_args(base + old)  # the same parser object, parsed again
    assert vars(a) == vars(b)
    assert f"warning: {old[0]} is deprecated; use {new[0]}" in capsys.readouterr().err
    assert parser.parse_args(base + new) == a  # an earlier alias does not leak into the next parse


def test_alias_satisfies_a_required_option_and_help_hides_it(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(BASE["robustness"])  # neither --checkpoint nor --ckpt
    assert exc.value.code == 2
    assert "required: --checkpoint" in capsys.readouterr().err
    assert parser.parse_args([*BASE["robustness"], "--ckpt=x.pt"]).checkpoint == "x.pt"
    for argv, sub in _subcommands(parser):
        text = sub.format_help()
        assert "--ckpt" not in text and "--quiet" not in text, argv
        assert "--quiet" not in sub.format_usage()


def test_demo_data_out_positional_is_deprecated(tmp_path, capsys):
    parser = build_parser()
    assert parser.parse_args(["demo-data", "d1", "--cases", "2"]).out == "d1"
    assert "a positional DIR is deprecated; use --out DIR" in capsys.readouterr().err
    assert parser.parse_args(["demo-data", "--out", "d2"]).out == "d2"
    assert "deprecated" not in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["demo-data"])


def test_every_command_spells_shared_concepts_alike():
    """No command keeps an old spelling visible; --checkpoint / --no-progress / --config / --out are the names."""
    import argparse

    parser = build_parser()
    seen: dict[str, set[str]] = {}
    for argv, sub in _subcommands(parser):
        for action in sub._actions:
            if action.help != argparse.SUPPRESS:
                for opt in action.option_strings:
                    seen.setdefault(opt, set()).add(" ".join(argv))
    for old in ("--ckpt", "--quiet", "--checkpoint-file", "--output", "--progress"):
        assert old not in seen
    assert {"robustness", "export-bundle"} <= seen["--checkpoint"]
    assert {"robustness", "export-bundle"} <= seen["--config"]
    assert {"robustness", "evaluate", "stack build", "controlnet train", "demo-data"} <= seen["--no-progress"]
    assert {"robustness", "evaluate", "stack build", "controlnet train", "demo-data", "export-bundle"} <= seen["--out"]


def test_robustness_config_is_a_path_relative_to_the_current_folder(tmp_path, monkeypatch, capsys):
    from s2s2_monai.robustness.commands import resolve_configs

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "train.json").write_text("{}")
    (tmp_path / "mine.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert resolve_configs(None, str(bundle)) is None  # the bundle's default
    assert resolve_configs(["mine.json", "bundle/train.json"], str(bundle)) == [
        str(tmp_path / "mine.json"),
        str(bundle / "train.json"),
    ]
    assert "deprecated" not in capsys.readouterr().err
    # old meaning: a name inside --bundle, still read, with a warning naming the new spelling
    assert resolve_configs(["train.json"], str(bundle)) == [str(bundle / "train.json")]
    assert "--config takes a path relative to the current folder: --config " in capsys.readouterr().err
    with pytest.raises(S2S2InputError, match="config file not found"):
        resolve_configs(["nope.json"], str(bundle))
    r = main(
        [
            "robustness",
            "--bundle",
            str(bundle),
            "--config",
            "nope.json",
            "--checkpoint",
            "m.pt",
            "--datalist",
            "d.json",
            "--out",
            "o",
        ]
    )
    assert r == 2 and "nope.json: config file not found" in capsys.readouterr().err
