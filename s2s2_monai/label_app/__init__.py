"""MONAI Label app serving S2S2 bundle models (3D Slicer / OHIF "auto segmentation" and "train").

The app folder (this package's directory, ``main.py``) is what ``monailabel start_server --app``
loads. The modules here split into pieces that need only the project (importable everywhere,
tested in the main environment) and pieces that need ``monailabel`` (the ``label`` extra):

- :mod:`.bundle`: models in MONAI Label's bundle layout (``configs/``, ``models/model.pt``):
  :func:`~.bundle.export_bundle` (``s2s2 export-bundle``), :func:`~.bundle.load_model_bundle`.
- :mod:`.segment`: one file in, one label NIfTI out, in the file's own geometry.
- :mod:`.retrain`: run the bundle's training on labelled studies, publish the new weights.
- :mod:`.infer` / :mod:`.train` / ``main.py``: the MONAI Label tasks and app (need monailabel).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["APP_DIR"]

#: The folder to pass to ``monailabel start_server --app``.
APP_DIR = Path(__file__).resolve().parent
