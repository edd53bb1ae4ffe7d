"""Train every arm x seed with the bundle (resumable) and score every trained model per case and class.

Layout of ``OUT``::

    OUT/stack_<generator>/            the one stack every arm and seed uses (unless the config names one)
    OUT/runs/<arm>/seed<k>/           the bundle's output_dir: checkpoints/, models/model.pt + model.json
    OUT/runs/<arm>/seed<k>/scores.csv the model's rows (written atomically once scored, with scores.json)
    OUT/ablation.csv, ablation.json, report.html

A finished arm x seed (``models/model.json`` of the last epoch and ``scores.json`` of the same settings) is
skipped on a re-run; a killed one resumes from its newest checkpoint (the bundle's resume handler).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from s2s2_monai.ablation.arms import Arm
from s2s2_monai.errors import S2S2InputError

__all__ = ["FIELDS", "AblationPlan", "run_ablation", "train_arm", "score_model"]

logger = logging.getLogger(__name__)

#: Columns of ablation.csv (and of every scores.csv).
FIELDS = ("arm", "seed", "domain", "corruption", "severity", "case", "class_name", "dice", "hd95_mm")


class AblationPlan:
    """The settings of one ablation (what ``ablation.json`` records under ``settings``)."""

    def __init__(
        self,
        configs: Sequence[str | os.PathLike],
        out: str | os.PathLike,
        arms: Sequence[Arm],
        seeds: int = 3,
        ood_datalists: Sequence[str | os.PathLike] = (),
        corruptions: Sequence[str] = (),
        severities: Sequence[int] = (1, 2, 3, 4, 5),
        sets: dict | None = None,
        copies: int = 1,
        device: str | None = None,
    ) -> None:
        self.configs = [str(Path(c).resolve()) for c in configs]
        for c in self.configs:
            if not Path(c).is_file():
                raise S2S2InputError(c, "config file not found", "pass the bundle's train.json (and its overlays)")
        self.out = Path(out).resolve()
        self.arms = list(arms)
        if seeds < 1:
            raise S2S2InputError("--seeds", f"got {seeds}", "pass --seeds 1 or more (3 for intervals over seeds)")
        self.seeds = list(range(int(seeds)))
        for d in ood_datalists:
            if not Path(d).is_file():
                raise S2S2InputError(d, "out-of-domain datalist not found", "pass a datalist JSON with a test section")
        self.ood = [str(Path(d).resolve()) for d in ood_datalists]
        from s2s2_monai.robustness.corruptions import CORRUPTIONS, SEVERITIES

        bad = [c for c in corruptions if c not in CORRUPTIONS]
        if bad:
            raise S2S2InputError(
                "--corruptions", f"unknown corruption(s) {bad}", f"choose from {', '.join(CORRUPTIONS)}"
            )
        if any(s not in SEVERITIES for s in severities):
            raise S2S2InputError("--severities", f"got {list(severities)}", f"choose from {list(SEVERITIES)}")
        self.corruptions = list(corruptions)
        self.severities = sorted(set(int(s) for s in severities))
        self.sets = dict(sets or {})
        self.copies = int(copies)
        self.device = device

    def run_dir(self, arm: Arm, seed: int) -> Path:
        return self.out / "runs" / arm.name / f"seed{seed}"

    def arm_configs(self, arm: Arm) -> list[str]:
        folder = Path(self.configs[0]).parent
        return self.configs + [str(folder / c) for c in arm.extra_configs]

    def scoring_settings(self) -> dict:
        """What a model's scores depend on besides its weights (a change rescores)."""
        return {"ood": self.ood, "corruptions": self.corruptions, "severities": self.severities, "copies": self.copies}


def _parser(plan: AblationPlan, arm: Arm, overrides: dict):
    from s2s2_monai.bundle_config import read_config

    return read_config(plan.arm_configs(arm), overrides={**plan.sets, **arm.overrides, **overrides})


def shared_stack_dir(plan: AblationPlan) -> str:
    """The stack folder all arms share: the config's ``stack_dir`` evaluated with ``output_dir = OUT``."""
    from s2s2_monai.ablation.arms import ARMS
    from s2s2_monai.bundle_config import parse_setting

    parser = _parser(plan, ARMS["enc+dec"], {"output_dir": str(plan.out)})
    return str(Path(parse_setting(parser, "stack_dir", plan.configs[0], "set stack_dir in the config")).resolve())


def _is_trained(run_dir: Path) -> bool:
    from s2s2_monai.checkpoints import model_record

    record = model_record(run_dir / "models" / "model.pt")
    return bool(record) and record.get("epoch") == record.get("max_epochs") and record.get("selection") == "last"


def train_arm(plan: AblationPlan, arm: Arm, seed: int, stack_dir: str) -> Path:
    """Train one arm x seed with the bundle (skipped when finished; resumes when killed); returns its model.pt."""
    from monai.bundle import ConfigWorkflow

    run_dir = plan.run_dir(arm, seed)
    model = run_dir / "models" / "model.pt"
    if _is_trained(run_dir):
        logger.info("%s seed %d: trained already (%s)", arm.name, seed, model)
        return model
    folder = Path(plan.configs[0]).parent
    overrides = {**plan.sets, **arm.overrides, "output_dir": str(run_dir), "seed": seed, "stack_dir": stack_dir}
    overrides["model_selection"] = "last"  # test data never selects; the last epoch is the paper's choice
    if plan.device:
        overrides["device"] = f"$torch.device('{plan.device}')"
    configs = plan.arm_configs(arm)
    workflow = ConfigWorkflow(
        config_file=configs if len(configs) > 1 else configs[0],
        meta_file=str(folder / "metadata.json"),
        logging_file=str(folder / "logging.conf"),
        workflow_type="train",
        **overrides,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    if not _is_trained(run_dir):
        raise S2S2InputError(run_dir, "training ended without a last-epoch models/model.pt", "re-run to resume it")
    return model


def _rows_for(metrics: dict, names: dict, base: dict) -> list[dict]:
    return [
        {**base, "class_name": names[c], "dice": metrics[c]["dice"], "hd95_mm": metrics[c]["hd95_mm"]} for c in names
    ]


def score_model(plan: AblationPlan, arm: Arm, seed: int, progress: bool = True) -> list[dict]:
    """Rows of one trained model: clean test section, every OOD datalist, corruptions x severities on test.

    In-domain cases go through the bundle's ``train#deterministic_transforms``; an out-of-domain datalist
    through the default preprocessing of its own modality (e.g. MRI normalisation for an MR datalist).
    Cached in ``scores.csv`` (recomputed when :meth:`AblationPlan.scoring_settings` change).
    """
    from s2s2_monai.atomic import write_json, write_text

    run_dir = plan.run_dir(arm, seed)
    cache, stamp = run_dir / "scores.csv", run_dir / "scores.json"
    settings = plan.scoring_settings()
    if cache.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == settings:
        with open(cache, newline="") as fh:
            return list(csv.DictReader(fh))
    rows = _score(plan, arm, seed, run_dir, progress)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    write_text(cache, buf.getvalue())
    write_json(stamp, settings)
    return [{k: str(v) for k, v in r.items()} for r in rows]


def _score(plan: AblationPlan, arm: Arm, seed: int, run_dir: Path, progress: bool) -> list[dict]:
    import torch
    from monai.transforms import Compose
    from tqdm.auto import tqdm

    from s2s2_monai.bundle_config import load_trained_network, parse_setting
    from s2s2_monai.data.cases import as_datalist, iter_cases
    from s2s2_monai.evaluation.inference import predict_volume
    from s2s2_monai.evaluation.metrics import compute_case_metrics
    from s2s2_monai.label_maps import get_label_map
    from s2s2_monai.robustness.corruptions import copy_seed, corrupt_volume

    parser = _parser(plan, arm, {"output_dir": str(run_dir), "seed": seed})
    where = plan.configs[0]
    device = torch.device(plan.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    network = load_trained_network(parser, run_dir / "models" / "model.pt", where, device=device)
    setting = lambda key: parse_setting(parser, key, where, f"set {key} in the config")  # noqa: E731
    input_size, mode, hd95 = setting("input_size"), setting("image_resize_mode"), setting("hd95")
    label_map = get_label_map(setting("label_map"))
    names = {c: label_map.name_of(c) for c in label_map.classes}
    test = as_datalist(setting("datalist"), setting("dataset_dir"))
    transform = Compose(setting("train#deterministic_transforms"))

    def predict(image):
        return predict_volume(network, image, input_size=input_size, batch_size=16, device=device, mode=mode)

    def score(pred, case):
        return compute_case_metrics(pred, case.label, case.spacing, list(names), hd95=hd95)

    rows: list[dict] = []
    domains = [("test", test, transform)] + [(Path(d).stem, as_datalist(d), None) for d in plan.ood]
    for domain, dl, tf in domains:
        if dl.label_map.name != label_map.name:
            raise S2S2InputError(
                dl.path,
                f"label map {dl.label_map.name!r}, the model's is {label_map.name!r}",
                "remap its labels to the model's (label_remap)",
            )
        for case in iter_cases(
            dl, "test", transform=tf, labelled_only=True, progress=progress, desc=f"{arm.name} seed {seed} {domain}"
        ):
            base = {"arm": arm.name, "seed": seed, "domain": domain, "case": case.case_id}
            rows += _rows_for(score(predict(case.image), case), names, {**base, "corruption": "none", "severity": 0})
            if domain != "test" or not plan.corruptions:
                continue
            bar = tqdm(
                total=len(plan.corruptions) * len(plan.severities) * plan.copies,
                disable=not progress,
                leave=False,
                desc=f"corruptions {case.case_id}",
            )
            for name in plan.corruptions:
                for k in range(plan.copies):
                    s = copy_seed(seed, name, case.case_id, k)
                    for sev in plan.severities:
                        image = corrupt_volume(case.image, name, s, case.spacing, severity=sev)
                        metrics = score(predict(image), case)
                        rows += _rows_for(metrics, names, {**base, "corruption": name, "severity": sev})
                        bar.update()
            bar.close()
    return rows


def run_ablation(plan: AblationPlan, n_boot: int = 2000, progress: bool = True) -> dict:
    """Train and score every arm x seed, then write ``ablation.csv``, ``ablation.json`` and ``report.html``."""
    from s2s2_monai.ablation.report import write_ablation_report
    from s2s2_monai.ablation.summary import summarize_ablation

    plan.out.mkdir(parents=True, exist_ok=True)
    stack_dir = shared_stack_dir(plan)
    rows: list[dict] = []
    for arm in plan.arms:
        for seed in plan.seeds:
            train_arm(plan, arm, seed, stack_dir)
            rows += score_model(plan, arm, seed, progress=progress)
    summary = summarize_ablation(rows, [a.name for a in plan.arms], n_boot=n_boot)
    summary["settings"] = _settings(plan, stack_dir)
    write_ablation_report(plan.out, rows, summary)
    return summary


def _settings(plan: AblationPlan, stack_dir: str) -> dict:
    from s2s2_monai.ablation.arms import ARMS
    from s2s2_monai.bundle_config import parse_setting
    from s2s2_monai.robustness.corruptions import CORRUPTIONS

    parser = _parser(plan, ARMS["enc+dec"], {"output_dir": str(plan.out)})
    get = lambda key: parse_setting(parser, key, plan.configs[0], f"set {key}", default=None)  # noqa: E731
    manifest = Path(stack_dir) / "manifest.json"
    stack = json.loads(manifest.read_text()) if manifest.is_file() else {}
    digest = None
    if stack:
        from s2s2_monai.stack.cache import StackCache

        digest = StackCache(stack_dir).info().get("digest")
    return {
        "configs": plan.configs,
        "sets": plan.sets,
        "arms": {
            a.name: {"description": a.description, "overrides": a.overrides, "configs": list(a.extra_configs)}
            for a in plan.arms
        },
        "seeds": plan.seeds,
        "max_epochs": get("max_epochs"),
        "network_name": get("network_name"),
        "model_selection": "last",
        "hd95": get("hd95"),
        "datalist": str(get("datalist")),
        "ood_datalists": plan.ood,
        "stack": {
            "dir": stack_dir,
            "generator": stack.get("generator"),
            "n": stack.get("n"),
            "seed": stack.get("seed"),
            "digest": digest,
        },
        "corruptions": {c: {str(s): CORRUPTIONS[c].record(s) for s in plan.severities} for c in plan.corruptions},
        "severities": plan.severities,
        "copies": plan.copies,
    }
