"""The one place that knows each Krea 2 checkpoint: where it comes from, its defaults and its ranges.

Behaviour elsewhere follows these fields (``is_distilled``, ``default_guidance``, ...), never the checkpoint's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CheckpointKey = Literal["raw", "turbo"]


@dataclass(frozen=True)
class CheckpointSpec:
    key: CheckpointKey
    display_name: str
    default_source: str  # Hub repo id; a local folder with the same layout also works
    source_env_var: str
    # Turbo's repo is a whole diffusers pipeline; Raw's ships only `transformer/` and borrows the rest from Turbo.
    ships_full_pipeline: bool
    is_distilled: bool
    default_steps: int
    default_guidance: float
    steps_range: tuple[int, int]
    guidance_range: tuple[float, float]
    recommended_megapixels: tuple[float, float]
    description: str  # how it behaves (steps, guidance, negative prompt)
    size_advice: str  # the sizes it draws best at (the demo model's are its own: ui/presets.py)

    def source(self, override: str | None = None) -> str:
        """Where to load from: the override given (the app's KREA2_RAW / KREA2_TURBO setting), else the Hub default."""
        return override or self.default_source

    def uses_negative_prompt(self, guidance: float) -> bool:
        # Krea's guidance convention: CFG (and so the negative prompt) is on whenever guidance > 0.
        return guidance > 0


RAW = CheckpointSpec(
    key="raw",
    display_name="Krea 2 Raw",
    default_source="krea/Krea-2-Raw",
    source_env_var="KREA2_RAW",
    ships_full_pipeline=False,
    is_distilled=False,
    default_steps=52,
    default_guidance=3.5,
    steps_range=(1, 100),
    guidance_range=(0.0, 20.0),
    recommended_megapixels=(0.25, 1.0),
    description="Undistilled base: 52 steps, guidance 3.5, negative prompt applies.",
    size_advice="Best up to ~1 MP.",
)

TURBO = CheckpointSpec(
    key="turbo",
    display_name="Krea 2 Turbo",
    default_source="krea/Krea-2-Turbo",
    source_env_var="KREA2_TURBO",
    ships_full_pipeline=True,
    is_distilled=True,
    default_steps=8,
    default_guidance=0.0,
    steps_range=(1, 100),
    guidance_range=(0.0, 20.0),
    recommended_megapixels=(1.0, 4.0),
    description="Distilled: 8 steps, guidance 0 by default (a negative prompt applies only with guidance above 0).",
    size_advice="Best at 1-4 MP.",
)

CHECKPOINTS: dict[str, CheckpointSpec] = {"raw": RAW, "turbo": TURBO}
DEFAULT_CHECKPOINT: CheckpointKey = TURBO.key  # what a request runs when it names none


def get_spec(key: str) -> CheckpointSpec:
    try:
        return CHECKPOINTS[key]
    except KeyError:
        raise KeyError(f"unknown checkpoint {key!r}; choose one of: {', '.join(CHECKPOINTS)}") from None
