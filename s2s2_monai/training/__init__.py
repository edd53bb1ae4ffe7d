"""S2S2 training: feature taps, the consistency loss, the two-pass trainer, its event handlers,
volume validation and the helpers the bundles call."""

from s2s2_monai.training.consistency import ConsistencyLoss, consistency_distance
from s2s2_monai.training.handlers import ConsistencyHandler, loss_terms
from s2s2_monai.training.taps import TAP_PRESETS, FeatureTap, TapSpec, get_tap_preset, preset_for_network
from s2s2_monai.training.trainer import S2S2Trainer
from s2s2_monai.training.validation import VolumeEvaluator, VolumeMetric

__all__ = [
    "ConsistencyLoss",
    "consistency_distance",
    "ConsistencyHandler",
    "loss_terms",
    "TAP_PRESETS",
    "FeatureTap",
    "TapSpec",
    "get_tap_preset",
    "preset_for_network",
    "S2S2Trainer",
    "VolumeEvaluator",
    "VolumeMetric",
]
