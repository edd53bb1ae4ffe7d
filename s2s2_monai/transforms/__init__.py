"""Intensity and label transforms (array + dictionary twins)."""

from s2s2_monai.transforms.intensity import CTWindow, CTWindowd, MRINormalize, MRINormalized, intensity_for
from s2s2_monai.transforms.labels import RemapLabels, RemapLabelsd

__all__ = ["intensity_for", "CTWindow", "CTWindowd", "MRINormalize", "MRINormalized", "RemapLabels", "RemapLabelsd"]
