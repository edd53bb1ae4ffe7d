"""A JSON description of a transform pipeline, to tell whether two preprocessings are the same.

``models/model.json`` records the description of the preprocessing a model was trained with; a
consumer that would feed the network through another one (a changed ``hu_window``, another
modality's normalisation) is refused by :class:`~s2s2_monai.model.BundleModel`. The description is
the class of each transform and its public settings, recursively (``Compose`` lists its members).
"""

from __future__ import annotations

from typing import Any

__all__ = ["describe_transform"]

_SKIP = {"R", "backend"}  # random state and capability flags say nothing about what the transform does


def describe_transform(obj: Any, depth: int = 0) -> Any:
    """JSON-safe ``{"class": "module.Name", setting: value, ...}`` of a transform (lists/tuples item by item)."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return round(obj, 10)
    if isinstance(obj, (list, tuple)):
        return [describe_transform(v, depth + 1) for v in obj]
    if isinstance(obj, dict):
        return {str(k): describe_transform(v, depth + 1) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    cls = type(obj)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if hasattr(obj, "tolist") and getattr(obj, "size", 2) == 1:  # numpy / torch scalars
        return describe_transform(obj.tolist(), depth)
    if type(obj).__name__ in ("function", "builtin_function_or_method"):
        return f"{obj.__module__}.{obj.__qualname__}"
    if depth > 6 or not hasattr(obj, "__dict__"):
        return name
    out: dict[str, Any] = {"class": name}
    for key, value in sorted(vars(obj).items()):
        if key.startswith("_") or key in _SKIP:
            continue
        out[key] = describe_transform(value, depth + 1)
    return out
