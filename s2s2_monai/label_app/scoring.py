"""MONAI Label active learning with S2S2's own uncertainty: a scoring method and a strategy.

- :class:`S2S2Scoring` (``POST /scoring/s2s2_disagreement``): every unlabeled study is segmented by
  the model and by ``k`` appearance variants painted from that segmentation
  (:func:`~s2s2_monai.active_learning.disagreement.stack_disagreement`); the vote entropy per volume
  and per axial slice is stored in the study's datastore info under :data:`SCORE_KEY`, with the
  model and the SHA-256 of its weights (like MONAI Label's ``epistemic_entropy`` / ``epistemic_ts``).
  A study already scored with these weights and settings is skipped; one that cannot be read is
  skipped with its reason in the log and in the summary (``failed``); the others are scored.
- :class:`MostUncertain` (``POST /activelearning/s2s2_uncertain``): the unlabeled study with the
  highest current score, and in the answer its most uncertain slice (``slice``, ``slice_score``) so a
  client can jump to it. Ties go to the study served least recently, then by id; studies without a
  current score are not considered (the answer's ``note`` counts them); when none has one, a random
  study with a ``note`` saying so.

Settings (``--conf``, a request's params override them): ``scoring_k`` (4), ``scoring_seed`` (0),
``scoring_mix`` (0.5), ``scoring_flips`` (true), ``batch_size`` (slices per forward pass);
``device`` from the request, else the server's (CUDA when available).
"""

from __future__ import annotations

import logging
import math
import random
import time
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy

from s2s2_monai.checkpoints import weights_digest
from s2s2_monai.label_app.bundle import ModelBundle

__all__ = ["S2S2Scoring", "MostUncertain", "SCORE_KEY", "SCORING_METHOD", "STRATEGY", "scoring_settings"]

logger = logging.getLogger(__name__)

#: Datastore info key of the stored scores; the scoring method's and the strategy's names.
SCORE_KEY = "s2s2_disagreement"
SCORING_METHOD = "s2s2_disagreement"
STRATEGY = "s2s2_uncertain"

_DEFAULTS = {"scoring_k": 4, "scoring_seed": 0, "scoring_mix": 0.5, "scoring_flips": True}


def scoring_settings(conf: dict, request: dict | None = None) -> dict:
    """``{"k", "seed", "mix", "flips"}`` from ``--conf`` and a request (the request wins), checked.

    Raises:
        ValueError: a value out of range (k < 1, mix outside [0, 1], not a number).
    """
    merged = {**_DEFAULTS, **{k: v for k, v in (conf or {}).items() if k in _DEFAULTS}}
    for key in ("k", "seed", "mix", "flips"):
        if request and key in request:
            merged[f"scoring_{key}"] = request[key]
    try:
        k, seed, mix = int(merged["scoring_k"]), int(merged["scoring_seed"]), float(merged["scoring_mix"])
    except (TypeError, ValueError):
        raise ValueError(f"scoring settings must be numbers, got {merged}") from None
    flips = merged["scoring_flips"]
    flips = flips if isinstance(flips, bool) else str(flips).lower() in ("1", "true", "yes")
    if k < 1 or not (0.0 <= mix <= 1.0):
        raise ValueError(f"scoring_k must be >= 1 and scoring_mix in [0, 1], got k={k}, mix={mix}")
    return {"k": k, "seed": seed, "mix": mix, "flips": flips}


class S2S2Scoring(ScoringMethod):
    """Score every unlabeled study by the model's disagreement with itself across its appearance stack.

    Args:
        bundle: the model folder whose weights score.
        conf: the app's ``--conf`` (see the module docstring).
        batch_size: slices per forward pass.
    """

    def __init__(self, bundle: ModelBundle, conf: dict | None = None, batch_size: int = 32) -> None:
        super().__init__(
            f"S2S2 stack disagreement of {bundle.name}: vote entropy of the model and k appearance variants "
            "painted from its own segmentation, per volume and per axial slice"
        )
        self.bundle = bundle
        self.conf = dict(conf or {})
        self.batch_size = int(batch_size)
        scoring_settings(self.conf)  # a bad --conf fails at start-up, not at the first request

    def info(self) -> dict[str, Any]:
        return {**super().info(), "model": self.bundle.name, "key": SCORE_KEY, **scoring_settings(self.conf)}

    def __call__(self, request: dict, datastore: Datastore) -> dict:
        import torch

        from s2s2_monai.active_learning.disagreement import stack_disagreement
        from s2s2_monai.label_app.segment import prepare_volume

        settings = scoring_settings(self.conf, request)
        batch_size = int(request.get("batch_size", self.batch_size))
        device = request.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        version = weights_digest(self.bundle.weights_path)  # by content, not by date
        model = self.bundle.load_model(device)
        images = sorted(datastore.get_unlabeled_images())
        t0 = time.time()
        scored, skipped, failed = [], [], {}
        logger.info(
            "%s: %d unlabeled studies, model %s on %s, %s",
            SCORING_METHOD,
            len(images),
            self.bundle.name,
            device,
            settings,
        )
        for i, image_id in enumerate(images, 1):
            previous = datastore.get_image_info(image_id).get(SCORE_KEY) or {}
            if previous.get("weights") == version and previous.get("settings") == settings and "score" in previous:
                skipped.append(image_id)
                continue
            t = time.time()
            try:
                volume = prepare_volume(datastore.get_image_uri(image_id), model)
                result = stack_disagreement(model, volume.image, batch_size=batch_size, device=device, **settings)
            except Exception as exc:  # noqa: BLE001 - one bad study must not stop the others
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
                logger.warning(
                    "%s %d/%d %s: skipped, cannot be scored (%s)", SCORING_METHOD, i, len(images), image_id, reason
                )
                failed[image_id] = reason
                continue
            record = {**result.record(), "model": self.bundle.name, "weights": version, "ts": int(time.time())}
            datastore.update_image_info(image_id, {SCORE_KEY: record})
            scored.append(image_id)
            logger.info(
                "%s %d/%d %s: score %.4f, most uncertain slice %d (%.4f), %.1f s",
                SCORING_METHOD, i, len(images), image_id, record["score"], record["slice"], record["slice_score"], time.time() - t,
            )  # fmt: skip
        summary = {
            "total": len(images),
            "scored": len(scored),
            "skipped": len(skipped),
            "failed": failed,
            "latency": round(time.time() - t0, 3),
        }
        logger.info("%s: %s", SCORING_METHOD, summary)
        return summary


class MostUncertain(Strategy):
    """The unlabeled study with the highest current :data:`SCORE_KEY` score, and its most uncertain slice.

    Args:
        bundles: ``{model name: ModelBundle}``: a score counts only while its model's weights are the
            ones it was computed with.
    """

    def __init__(self, bundles: dict[str, ModelBundle]) -> None:
        super().__init__("Most uncertain study under S2S2 stack disagreement (POST /scoring/s2s2_disagreement first)")
        self.bundles = dict(bundles)

    @staticmethod
    def _current(record: Any, digests: dict[str, str]) -> bool:
        """A finite score of a served model, computed with the weights it serves now (``digests``: by model name)."""
        if not isinstance(record, dict) or not isinstance(record.get("score"), (int, float)):
            return False
        model = record.get("model")
        return model in digests and record.get("weights") == digests[model] and math.isfinite(record["score"])

    def __call__(self, request: dict, datastore: Datastore) -> dict | None:
        images = sorted(datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels")))
        if not images:
            return None
        infos = {image: datastore.get_image_info(image) for image in images}
        digests = {name: weights_digest(bundle.weights_path) for name, bundle in self.bundles.items()}  # once a request
        scores = {
            image: info[SCORE_KEY] for image, info in infos.items() if self._current(info.get(SCORE_KEY), digests)
        }
        if not scores:
            choice = random.Random(request.get("seed")).choice(images)
            note = (
                f"none of the {len(images)} unlabeled studies has a current {SCORE_KEY} score: a random one. "
                f"Fix: POST /scoring/{SCORING_METHOD} (again after training)"
            )
            logger.info("%s: %s -> %s", STRATEGY, note, choice)
            return {"id": choice, "score": None, "slice": None, "note": note}
        best = max(r["score"] for r in scores.values())
        tied = [image for image, r in scores.items() if r["score"] == best]
        served = lambda image: infos[image].get("strategy", {}).get(request.get("strategy", STRATEGY), {}).get("ts", 0)  # noqa: E731
        choice = min(tied, key=lambda image: (served(image), image))  # least recently served, then by id
        record = scores[choice]
        notes = []
        if len(tied) > 1:
            notes.append(f"{len(tied)} studies tie at score {best:.4g}: the one served least recently")
        if len(scores) < len(images):
            notes.append(
                f"{len(images) - len(scores)} of {len(images)} unlabeled studies have no current score and were "
                f"not considered (POST /scoring/{SCORING_METHOD} scores them)"
            )
        answer = {
            "id": choice,
            "score": record["score"],
            "slice": record["slice"],
            "slice_score": record["slice_score"],
            "model": record["model"],
            "note": "; ".join(notes),
        }
        logger.info("%s: %s", STRATEGY, answer)
        return answer
