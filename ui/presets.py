"""Size presets by aspect ratio. Sides are multiples of 16 and within the 256..2048 request limits."""

from __future__ import annotations

from krea2 import CHECKPOINTS
from krea2.demo import DEMO_SIDES

# ~1 MP, good for both checkpoints.
PRESETS_1MP: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "4:3": (1152, 864),
    "3:4": (864, 1152),
    "3:2": (1216, 832),
    "2:3": (832, 1216),
    "16:9": (1344, 768),
    "9:16": (768, 1344),
}
# For a checkpoint recommended beyond 1 MP (Turbo, trained up to 2K): the largest size of each ratio within the
# 2048-pixel side limit (1:1 is 4 MP).
PRESETS_LARGE: dict[str, tuple[int, int]] = {
    "1:1": (2048, 2048),
    "4:3": (2048, 1536),
    "3:4": (1536, 2048),
    "3:2": (2048, 1360),
    "2:3": (1360, 2048),
    "16:9": (2048, 1152),
    "9:16": (1152, 2048),
}
CUSTOM = "Custom"


def preset_label(ratio: str, size: tuple[int, int]) -> str:
    width, height = size
    return f"{ratio} · {width}×{height} ({width * height / 1e6:.1f} MP)"


# The demo model's own sizes (squares: what it learned), offered first in demo mode.
DEMO_LABELS: dict[str, tuple[int, int]] = {f"1:1 · {side}×{side} (demo model)": (side, side) for side in DEMO_SIDES}
SIZES: dict[str, tuple[int, int]] = {
    **DEMO_LABELS,
    **{preset_label(ratio, size): size for table in (PRESETS_1MP, PRESETS_LARGE) for ratio, size in table.items()},
}


def preset_choices(checkpoint: str, demo: bool = False) -> list[str]:
    """The sizes offered for a checkpoint. The demo model's own sizes come first in demo mode, where the sizes beyond
    1 MP are left out: the demo model learned 512² at most, and a 4 MP picture on a CPU takes minutes."""
    labels = [*DEMO_LABELS] if demo else []
    labels += [preset_label(r, s) for r, s in PRESETS_1MP.items()]
    spec = CHECKPOINTS.get(checkpoint)
    if not demo and spec is not None and spec.recommended_megapixels[1] > 1:
        labels += [preset_label(r, s) for r, s in PRESETS_LARGE.items()]
    return [*labels, CUSTOM]


def checkpoint_note(checkpoint: str, demo: bool = False) -> str:
    """What the UI says under the checkpoint toggle: how it behaves and the sizes it draws best at, which in demo mode
    are the demo model's (the real checkpoint's "1-4 MP" is far beyond what the demo model learned)."""
    spec = CHECKPOINTS[checkpoint]
    side = DEMO_SIDES[0]
    advice = f"The demo model draws best at {side}×{side}." if demo else spec.size_advice
    return f"{spec.description} {advice}"


def preset_size(label: object) -> tuple[int, int] | None:
    """The size a preset label names; None for Custom or anything else a client sends (a list is not a label)."""
    return SIZES.get(label) if isinstance(label, str) else None


def preset_for(width: float | None, height: float | None, checkpoint: str, demo: bool = False) -> str:
    """The preset of exactly this size for this checkpoint, else Custom: going back to 1024 x 1024 by hand shows 1:1."""
    for label in preset_choices(checkpoint, demo):
        if preset_size(label) == (width, height):
            return label
    return CUSTOM
