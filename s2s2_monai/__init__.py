"""S2S2 (semantic stacking for semantic segmentation) on MONAI."""

__version__ = "0.1.0"


def bundle_path(name: str) -> str:
    """Absolute folder of the project's bundle ``bundles/NAME`` (so a bundle runs from any working directory).

    Found beside the package (a checkout or editable install); else ``bundles/NAME`` under the
    current directory.
    """
    from pathlib import Path

    here = Path(__file__).resolve().parent.parent / "bundles" / name
    return str(here if here.is_dir() else Path("bundles") / name)
