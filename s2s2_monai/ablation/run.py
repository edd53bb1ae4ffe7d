"""Train every arm x seed with the bundle (resumable) and score every trained model per case and class.

Layout of ``OUT``::

    OUT/stack_<generator>/            the one stack every arm and seed uses (unless the config names one)
    OUT/runs/<arm>/seed<k>/           the bundle's output_dir: checkpoints/, models/model.pt + model.json
    OUT/runs/<arm>/seed<k>/scores.csv the model's rows (written atomically once scored, with scores.json)
    OUT/ablation.csv, ablation.json, report.html
    OUT/.locks/                       lock files of concurrent jobs (stack.lock, <arm>.seed<k>.lock)

A finished arm x seed (``models/model.json`` of the last epoch and ``scores.json`` of the same settings) is
skipped on a re-run; a killed one resumes from its newest checkpoint (the bundle's resume handler).

Many jobs (``s2s2 ablation --shard K/N`` or ``--only ARM:SEED``, e.g. a SLURM array) may write into one
``OUT`` at once: :func:`select_pairs` picks a job's arm x seed runs, :func:`run_pairs` trains and scores them
without summarising, and a plain run (:func:`run_ablation`) then finds them finished and summarises.
Two exclusive file locks (``fcntl.flock``) keep concurrent jobs apart, see :func:`run_pairs` and :func:`train_arm`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from s2s2_monai.ablation.arms import Arm
from s2s2_monai.errors import S2S2InputError

__all__ = [
    "FIELDS",
    "AblationPlan",
    "run_ablation",
    "run_pairs",
    "all_pairs",
    "parse_shard",
    "select_pairs",
    "train_arm",
    "score_model",
]

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


@contextlib.contextmanager
def _exclusive_lock(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``path`` (created, never deleted); says so when it has to wait.

    The kernel drops the lock when the process dies (``kill -9``, a SLURM time limit), so a lock is never
    left stale. On NFS, Linux implements ``flock`` with NFS byte-range locks, which hold across nodes.
    """
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:  # "a": never truncates what another job holds open
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for {what}: another job holds {path}", file=sys.stderr, flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _lock_dir(plan: AblationPlan) -> Path:
    return plan.out / ".locks"


def train_arm(plan: AblationPlan, arm: Arm, seed: int, stack_dir: str) -> Path:
    """Train one arm x seed with the bundle (skipped when finished; resumes when killed); returns its model.pt.

    All arms share one stack folder (:func:`shared_stack_dir`), which the bundle's own ``initialize`` builds
    or completes (``ensure_stack``; it also rewrites the manifest and removes temporary files of the folder,
    and makes the demo data when the config asks). So the whole ``initialize`` runs under the exclusive lock
    ``OUT/.locks/stack.lock``: the first job builds the stack with exactly the bundle's settings while the
    others wait, then each finds it complete (one check) in turn; training itself, which only reads the
    stack, runs unlocked and in parallel.
    """
    from s2s2_monai.bundle_runner import run_training_bundle

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
    run_training_bundle(
        plan.arm_configs(arm),
        overrides,
        meta_file=folder / "metadata.json",
        logging_file=folder / "logging.conf",
        initialize_lock=_exclusive_lock(_lock_dir(plan) / "stack.lock", "the shared stack folder"),
    )
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
    """Rows of one trained model through the shared clean/corrupted loop (:mod:`s2s2_monai.robustness.variants`).

    The model is the arm's :class:`~s2s2_monai.model.BundleModel`: in-domain cases and every
    out-of-domain datalist of the model's modality go through its preprocessing (the bundle's
    ``train#deterministic_transforms``); an out-of-domain datalist of *another* modality (CT model, MR
    test set) through that modality's paper default (:func:`~s2s2_monai.transforms.intensity_for`: the
    MRI clip + z-norm), as cross-modality papers normalise each modality its own way.
    """
    from monai.transforms import Compose, Lambdad
    from tqdm.auto import tqdm

    from s2s2_monai.bundle_config import parse_setting
    from s2s2_monai.data.cases import as_datalist
    from s2s2_monai.evaluation.metrics import compute_case_metrics
    from s2s2_monai.model import BundleModel
    from s2s2_monai.robustness.variants import count_variants, segment_variants
    from s2s2_monai.transforms import intensity_for

    overrides = {**plan.sets, **arm.overrides, "output_dir": str(run_dir), "seed": seed}
    import torch

    device = plan.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = BundleModel.from_configs(
        plan.arm_configs(arm), overrides, checkpoint=run_dir / "models" / "model.pt", device=device
    )
    where = plan.configs[0]
    setting = lambda key: parse_setting(model.parser, key, where, f"set {key} in the config")  # noqa: E731
    names = {c: model.label_map.name_of(c) for c in model.label_map.classes}
    test = as_datalist(setting("datalist"), setting("dataset_dir"))

    rows: list[dict] = []
    domains = [("test", test)] + [(Path(d).stem, as_datalist(d)) for d in plan.ood]
    for domain, dl in domains:
        own = dl.modality.upper().startswith("MR") == model.modality.upper().startswith("MR")
        preprocessing = None if own else Compose([Lambdad("image", intensity_for(dl.modality))])
        corruptions = plan.corruptions if domain == "test" else ()
        for case in model.cases(
            dl,
            "test",
            labelled_only=True,
            progress=progress,
            desc=f"{arm.name} seed {seed} {domain}",
            preprocessing=preprocessing,
        ):
            base = {"arm": arm.name, "seed": seed, "domain": domain, "case": case.case_id}
            bar = tqdm(
                total=count_variants(corruptions, plan.severities, plan.copies),
                disable=not progress or not corruptions,
                leave=False,
                desc=f"corruptions {case.case_id}",
            )
            for v in segment_variants(model, case, corruptions, plan.severities, plan.copies, seed, batch_size=16):
                metrics = compute_case_metrics(v.pred, case.label, case.spacing, list(names), hd95=model.hd95)
                where_ = {"corruption": v.corruption or "none", "severity": v.severity}
                rows += _rows_for(metrics, names, {**base, **where_})
                bar.update()
            bar.close()
    return rows


def run_ablation(plan: AblationPlan, n_boot: int = 2000, progress: bool = True) -> dict:
    """Train and score every arm x seed, then write ``ablation.csv``, ``ablation.json`` and ``report.html``.

    Arm x seed runs finished earlier (by this command, or by ``--shard`` / ``--only`` jobs) are not trained
    again and their cached scores are read.
    """
    from s2s2_monai.ablation.report import write_ablation_report
    from s2s2_monai.ablation.summary import summarize_ablation

    rows, _ = run_pairs(plan, all_pairs(plan), progress=progress)
    stack_dir = shared_stack_dir(plan)
    summary = summarize_ablation(rows, [a.name for a in plan.arms], n_boot=n_boot)
    summary["settings"] = _settings(plan, stack_dir)
    write_ablation_report(plan.out, rows, summary)
    return summary


def all_pairs(plan: AblationPlan) -> list[tuple[Arm, int]]:
    """Every arm x seed in the fixed order shards count in: the arms as given, each with seeds 0..N-1."""
    return [(arm, seed) for arm in plan.arms for seed in plan.seeds]


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)``, 1-based: shard K of N (``1/4`` .. ``4/4``).

    Raises:
        S2S2InputError: not two whole numbers, N < 1, or K outside 1..N.
    """
    k, sep, n = str(text).partition("/")
    try:
        k_i, n_i = int(k), int(n)
    except ValueError:
        k_i = n_i = None
    if not sep or k_i is None:
        raise S2S2InputError("--shard", f"got {text!r}, expected K/N", "pass e.g. --shard 1/4 (shard K of N, K from 1)")
    if n_i < 1 or not 1 <= k_i <= n_i:
        n_ok = max(n_i, 1)
        raise S2S2InputError(
            "--shard",
            f"got {text!r}: K must be 1..N and N at least 1",
            f"pass --shard 1/{n_ok} .. --shard {n_ok}/{n_ok} (K counts from 1)",
        )
    return k_i, n_i


def select_pairs(
    plan: AblationPlan, shard: tuple[int, int] | None = None, only: Sequence[str] = ()
) -> list[tuple[Arm, int]]:
    """The arm x seed runs of one job, in :func:`all_pairs` order.

    Args:
        plan: the ablation.
        shard: ``(K, N)``, 1-based: the pairs whose index in :func:`all_pairs` is ``K - 1`` modulo N (none
            when K exceeds the number of pairs).
        only: ``"ARM:SEED"`` values, ARM one of the plan's arms and SEED one of its seeds.

    Raises:
        S2S2InputError: a malformed ``--only`` value, an arm not in ``--arms``, a seed outside ``--seeds``.
    """
    pairs = all_pairs(plan)
    chosen = set(range(len(pairs)))
    if shard is not None:
        chosen = {i for i in chosen if i % shard[1] == shard[0] - 1}
    if only:
        index = {(arm.name, seed): i for i, (arm, seed) in enumerate(pairs)}
        names = ", ".join(a.name for a in plan.arms)
        wanted = set()
        for value in only:
            arm, sep, seed = str(value).rpartition(":")
            try:
                seed_i = int(seed)
            except ValueError:
                seed_i = None
            if not sep or not arm or seed_i is None:
                raise S2S2InputError(
                    "--only", f"got {value!r}, expected ARM:SEED", "pass e.g. --only baseline:0; repeat for more"
                )
            if arm not in {a.name for a in plan.arms}:
                raise S2S2InputError(
                    "--only",
                    f"arm {arm!r} of {value!r} is not one of this run's arms ({names})",
                    f"pass an arm of --arms, e.g. --only {plan.arms[0].name}:0",
                )
            if seed_i not in plan.seeds:
                raise S2S2InputError(
                    "--only",
                    f"seed {seed_i} of {value!r} is outside --seeds {len(plan.seeds)} (seeds 0..{len(plan.seeds) - 1})",
                    f"pass a seed from 0 to {len(plan.seeds) - 1}, or raise --seeds",
                )
            wanted.add(index[(arm, seed_i)])
        chosen &= wanted
    return [pairs[i] for i in sorted(chosen)]


def run_pairs(
    plan: AblationPlan, pairs: Sequence[tuple[Arm, int]], progress: bool = True
) -> tuple[list[dict], dict[str, list[str]]]:
    """Train (unless finished) and score each arm x seed of ``pairs``; writes no summary.

    Each pair is trained and scored under the exclusive lock ``OUT/.locks/<arm>.seed<k>.lock``: a job given
    a pair that another job is training (overlapping ``--only``, or a plain run started early) waits for it,
    then finds it finished and reads its cached scores instead of training it a second time into the same
    folder. The shared stack has its own lock (:func:`train_arm`); locks are always taken pair first, stack
    second, so jobs cannot deadlock.

    Returns:
        ``(rows, {"trained": ["arm:seed", ...], "already_trained": [...]})``: the score rows of all pairs in
        order, and which pairs this call trained and which it found finished.
    """
    plan.out.mkdir(parents=True, exist_ok=True)
    stack_dir = shared_stack_dir(plan)
    rows: list[dict] = []
    done: dict[str, list[str]] = {"trained": [], "already_trained": []}
    for arm, seed in pairs:
        with _exclusive_lock(_lock_dir(plan) / f"{arm.name}.seed{seed}.lock", f"{arm.name} seed {seed}"):
            finished = _is_trained(plan.run_dir(arm, seed))
            train_arm(plan, arm, seed, stack_dir)
            rows += score_model(plan, arm, seed, progress=progress)
        done["already_trained" if finished else "trained"].append(f"{arm.name}:{seed}")
    return rows, done


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
