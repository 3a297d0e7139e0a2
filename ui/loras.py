"""The LoRA picker's work: its rows as a request's LoRAs, the folder's names for its lists, uploads and Hub downloads,
and rows filled from what history or a PNG recorded. ui/lora_picker.py lays the picker out and wires it here."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from krea2.errors import LoraError
from krea2.request import LORA_BOTH, LORA_WEIGHT_RANGE, MAX_LORAS
from storage.pnginfo import split_lora_tags
from studio.service import StudioService

from .text import shown

ROW_VALUES = 3  # a row of the picker: LoRA name, weight, target
NO_LORA = ("—", "")
TARGET_CHOICES = [("Raw + Turbo", LORA_BOTH), ("Raw only", "raw"), ("Turbo only", "turbo")]
WEIGHT_STEP = 0.05
DEFAULT_WEIGHT = 1.0
# A Hub address as people paste it: owner/repo, owner/repo/file.safetensors, or the file's page on huggingface.co.
HUB_URL = re.compile(
    r"^(?:https?://(?:www\.)?huggingface\.co/)?(?P<repo>[^/\s]+/[^/\s]+)(?:/(?:(?:blob|resolve)/[^/]+/)?(?P<file>\S+))?$"
)


def lora_choices(values: Sequence[Any]) -> list[dict[str, Any]]:
    """The picker's rows (name, weight, target, ...) as a request's LoRAs; a row without a LoRA is left out. Values
    are passed on as sent: GenerationRequest validates them."""
    choices = []
    for start in range(0, len(values) - ROW_VALUES + 1, ROW_VALUES):
        name, weight, target = values[start : start + ROW_VALUES]
        if name not in (None, ""):
            choices.append({"name": name, "weight": weight, "target": target or LORA_BOTH})
    return choices


def recorded_prompt_and_loras(values: dict[str, Any]) -> tuple[str, list[Any]]:
    """A recorded prompt (a history row's, a PNG's) and its LoRAs, ready for the Generate form: `<lora:…>` tags left in
    the prompt (written before requests took them out, or by another tool) move to the LoRAs, where the picker shows
    them, so the LoRA runs once. A tag naming a LoRA the record lists already is that LoRA (the record's has its
    hash)."""
    prompt = str(values.get("prompt") or "")
    recorded = list(values.get("loras")) if isinstance(values.get("loras"), list) else []
    text, tagged = split_lora_tags(prompt)
    if not tagged:
        return prompt, recorded
    names = {lora.get("name") for lora in recorded if isinstance(lora, dict)}
    return text, [*recorded, *(tag for tag in tagged if tag["name"] not in names)]


def parse_hub_address(text: Any) -> tuple[str, str | None]:
    """(repo id, file or None) from what was pasted."""
    match = HUB_URL.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise LoraError("Type a Hub repo as owner/name, or owner/name/file.safetensors.")
    file = match.group("file")
    if file is not None and ("\\" in file or any(part in ("", ".", "..") for part in file.split("/"))):
        # huggingface_hub's own refusal asked "the repository owner to rename this file": the typing is ours
        raise LoraError("A file in a Hub repo is named by its path inside the repo (no . or .. parts), as in "
                        "owner/name/folder/file.safetensors.")  # fmt: skip
    return match.group("repo"), file


class LoraHandlers:
    def __init__(self, service: StudioService, for_people: Callable[[Exception], str]) -> None:
        self.service = service
        self.for_people = for_people  # ui.handlers' sentence for an error (passed in: handlers builds this class)

    def choices(self) -> list[tuple[str, str]]:
        return [NO_LORA, *((name, name) for name in self.service.lora_names())]

    def _lists(self, current: Sequence[Any], select: str | None = None) -> list[dict]:
        """Updates for a picker's LoRA lists: the folder's names now, each row keeping its LoRA while the folder has
        it, and `select` put into the first empty row."""
        choices = self.choices()
        names = {value for _, value in choices}
        values = [value if isinstance(value, str) and value in names else "" for value in current]
        if select and select not in values and "" in values:
            values[values.index("")] = select
        return [gr.update(choices=choices, value=value) for value in values]

    def refresh(self, *current: Any) -> list:
        """(note, the picker's lists read again): the note names the folder's files left out for their names (a
        file copied in by hand may have one; an upload is renamed), or is empty."""
        unnamable = self.service.lora_unnamable()
        more = [f"{len(unnamable) - 5} more files are not listed either."] if len(unnamable) > 5 else []
        note = "  \n".join("⚠️ " + shown(sentence) for sentence in [*unnamable[:5], *more])
        return [note, *self._lists(current)]

    def upload(self, path: Any, *current: Any) -> list:
        """Keep an uploaded file in the LoRA folder and pick it; (note, the lists of this picker, of the other one)."""
        try:
            if not isinstance(path, str) or not path:
                raise LoraError("Choose a .safetensors LoRA file to upload.")
            added = self.service.add_lora_upload(path, Path(path).name)
        except Exception as error:  # noqa: BLE001 - every failure is the note's one sentence
            return [self._failed(error), *self._lists(current)]
        return [f"Added **{shown(added.name)}** to the LoRA folder.", *self._added(added.name, current)]

    def add_from_hub(self, address: Any, *current: Any) -> list:
        """Download a LoRA from the Hub into the LoRA folder and pick it; as `upload` (its button is held meanwhile:
        ui/lora_picker.py)."""
        try:
            repo, filename = parse_hub_address(address)
            added = self.service.add_lora_from_hub(repo, filename)
        except Exception as error:  # noqa: BLE001
            return [self._failed(error), *self._lists(current)]
        return [f"Added **{shown(added.name)}** from the Hub.", *self._added(added.name, current)]

    @staticmethod
    def hub_started(downloading: bool) -> tuple[Any, ...]:
        """The picker's `downloading` flag set, its Add button held and the note saying so; with a download already in
        flight (Enter in the address box, which the held button does not stop) a silent error starts nothing more."""
        if downloading:
            raise gr.Error("A download is already in flight.", visible=False, print_exception=False)
        return True, gr.update(interactive=False, value="Adding…"), "Downloading from the Hub…"

    @staticmethod
    def hub_done() -> tuple[Any, ...]:
        return False, gr.update(interactive=True, value="Add from Hub")

    def _added(self, name: str, current: Sequence[Any]) -> list[dict]:
        own, other = current[:MAX_LORAS], current[MAX_LORAS:]
        return [*self._lists(own, select=name), *self._lists(other)]

    def _failed(self, error: Exception) -> str:
        return "⚠️ " + shown(self.for_people(error))

    def rows_for(self, recorded: list[dict[str, Any]] | None) -> tuple[list[dict], str]:
        """A picker's rows (name, weight, target updates, row after row) filled with recorded LoRAs as the folder has
        them now, and a note saying what is missing or renamed (no LoRA is dropped silently)."""
        choices, notes = self.service.restore_loras(list(recorded or [])[:MAX_LORAS])
        if len(recorded or []) > MAX_LORAS:
            notes.append(f"Only the first {MAX_LORAS} LoRAs were taken.")
        lists = self.choices()
        updates: list[dict] = []
        for row in range(MAX_LORAS):
            choice = choices[row] if row < len(choices) else None
            weight = min(max(choice.weight, LORA_WEIGHT_RANGE[0]), LORA_WEIGHT_RANGE[1]) if choice else DEFAULT_WEIGHT
            updates += [
                gr.update(choices=lists, value=choice.name if choice else ""),
                gr.update(value=weight),
                gr.update(value=LORA_BOTH),
            ]
        return updates, "  \n".join("⚠️ " + shown(note) for note in notes)

    def history_choices(self) -> dict:
        """The history's LoRA filter: every LoRA some generation ran with."""
        names = self.service.lora_names_in_history()
        return gr.update(choices=[("All LoRAs", ""), *((name, name) for name in names)])
