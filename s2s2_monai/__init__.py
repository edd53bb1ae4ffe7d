"""S2S2 (semantic stacking for semantic segmentation) on MONAI."""

__version__ = "0.1.0"
