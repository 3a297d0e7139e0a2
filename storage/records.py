"""What the history store is asked to record: a generation's columns and its images (written by `HistoryStore.add`,
read back from an export by `archive.ArchiveReader`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image as PILImage


@dataclass
class NewImage:
    image: PILImage.Image
    seed: int | None
    png: bytes | None = None  # the file as it is (an imported PNG keeps its own metadata); None: encode `image`


@dataclass
class NewGeneration:
    """What `add` records: the Generation columns (see models.Generation) and the images."""

    fields: dict[str, Any]
    images: list[NewImage] = field(default_factory=list)
    png_parameters: dict[str, Any] = field(default_factory=dict)  # written into each PNG (seed set per image)
    # LoRAs, each {"name", "hash", "weight", "checkpoint"} (models.GenerationLora); None: `finish` keeps the row's own
    loras: list[dict[str, Any]] | None = None
