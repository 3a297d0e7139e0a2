"""A history row's details as the page shows them: every parameter and timing, each cell plain text (ui/text.py)."""

from __future__ import annotations

from typing import Any

from krea2 import CHECKPOINTS
from storage.models import Generation

from .text import table


def seed_cell(generation: Generation, position: int | None) -> str:
    """The seed of the image shown and, for a batch, all of them; a run cancelled before it drew one has none."""
    seeds = [image.seed for image in generation.images if image.seed is not None]
    if len(seeds) > 1:
        shown = seeds[position] if position is not None and 0 <= position < len(seeds) else seeds[0]
        return f"{shown} (image {seeds.index(shown) + 1} of {len(seeds)}; batch: {', '.join(map(str, seeds))})"
    if generation.seed is None:
        return "— (none drawn: the run stopped before it started)"
    return str(generation.seed)


def loras_text(loras: list[Any]) -> str:
    """LoRAs (history rows or a result's) as `ink 0.8, styles/paper -0.5`."""
    return ", ".join(f"{lora.name} {lora.weight:g}" for lora in loras)


def describe(generation: Generation, position: int | None = None) -> str:
    """Every parameter and timing of a history row, as an HTML table whose every cell is plain text (ui/text.py)."""
    spec = CHECKPOINTS.get(generation.checkpoint)
    rows = [
        ("Status", generation.status + (f": {generation.error}" if generation.error else "")),
        ("Checkpoint", spec.display_name if spec else generation.checkpoint),
        ("Prompt", generation.prompt),
        ("Negative prompt", generation.negative_prompt or "—"),
        ("Seed", seed_cell(generation, position)),
        ("Steps", generation.steps),
        ("Guidance", generation.guidance),
        ("Size", f"{generation.width}×{generation.height}"),
        # What was asked for; a run that kept none (blocked, failed, cancelled) says so.
        (
            "Images",
            generation.num_images
            if generation.images or generation.status == "running"
            else f"none kept ({generation.num_images} asked for)",
        ),
        ("Created", generation.created_at.strftime("%Y-%m-%d %H:%M:%S UTC")),
        ("Timings", ", ".join(f"{k[:-3]} {v} ms" for k, v in generation.timings_ms().items() if v is not None) or "—"),
        ("Device", f"{generation.device} ({generation.placement})" if generation.device else "—"),
    ]
    if generation.loras:
        rows.append(("LoRAs", "; ".join(f"{x.name} {x.weight:g}" + (f" (hash {x.hash[:12]})" if x.hash else "")
                                          for x in generation.loras)))  # fmt: skip
    if generation.source_sha256:  # started from an image
        started = f"{generation.mode}, strength {generation.strength}, init image {generation.source_sha256[:10]}"
        if generation.mask_sha256:
            started += f", mask {generation.mask_sha256[:10]}"
        rows.append(("Started from", started))
    if generation.comparison_id:
        rows.append(("Comparison", generation.comparison_id[:8]))
    if generation.files_missing:
        rows.append(("Files", "missing on disk"))
    return table(rows)
