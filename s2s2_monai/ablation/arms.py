"""The arms of the ablation: what each changes in the training bundle (Pan et al. 2025, Table 6)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Arm", "ARMS", "DEFAULT_ARMS", "parse_arms"]


@dataclass(frozen=True)
class Arm:
    """One arm: bundle overrides (and extra config files, relative to the first config's folder)."""

    name: str
    description: str
    overrides: dict = field(default_factory=dict)
    extra_configs: tuple[str, ...] = ()


ARMS: dict[str, Arm] = {
    a.name: a
    for a in (
        Arm("baseline", "real slices x0 only", {"use_stack": False}),
        Arm(
            "synthetic",
            "x0 and a stack member x1, both segmentation losses, no consistency (terms logged, weight 0)",
            {"use_stack": True, "alpha_enc": 0.0, "alpha_dec": 0.0},
        ),
        Arm("enc", "+ encoder consistency only (alpha_dec = 0)", {"use_stack": True, "alpha_dec": 0.0}),
        Arm("enc+dec", "+ encoder and decoder consistency (the paper's S2S2)", {"use_stack": True}),
        Arm("cooperative", "cooperative training with latent-space augmentation", {}, ("cooperative.json",)),
    )
}

#: The paper's four arms, in Table 6 order.
DEFAULT_ARMS = ("baseline", "synthetic", "enc", "enc+dec")


def parse_arms(text: str | None) -> list[Arm]:
    """``"baseline,enc+dec"`` -> the arms, in the given order (default :data:`DEFAULT_ARMS`)."""
    from s2s2_monai.errors import S2S2InputError

    names = [n.strip() for n in (text or ",".join(DEFAULT_ARMS)).split(",") if n.strip()]
    unknown = [n for n in names if n not in ARMS]
    if unknown or not names or len(set(names)) != len(names):
        raise S2S2InputError(
            "--arms", f"unknown, repeated or no arms in {text!r}", f"a comma-separated list of {', '.join(ARMS)}"
        )
    return [ARMS[n] for n in names]
