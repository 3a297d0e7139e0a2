"""The LoRA picker's layout and wiring: up to four rows (LoRA, weight, checkpoints it applies to), the folder's list
refreshed, an upload and a Hub download. Components and events only; the work is in ui/loras.py."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from krea2.request import LORA_BOTH, LORA_WEIGHT_RANGE, MAX_LORAS

from .loras import DEFAULT_WEIGHT, NO_LORA, TARGET_CHOICES, WEIGHT_STEP, LoraHandlers


@dataclass
class LoraPicker:
    names: list[gr.Dropdown]
    weights: list[gr.Slider]
    targets: list[gr.Dropdown]
    refresh: gr.Button
    upload: gr.UploadButton
    hub: gr.Textbox
    hub_add: gr.Button
    note: gr.Markdown
    accordion: gr.Accordion  # closed until settings with LoRAs (or a note on them) fill it

    @property
    def values(self) -> list[gr.components.Component]:
        """The rows' components, row after row (name, weight, target): what a generation reads."""
        return [c for row in zip(self.names, self.weights, self.targets, strict=True) for c in row]


def lora_picker(prefix: str, choices: list[tuple[str, str]]) -> LoraPicker:
    """The picker, laid out where it is called (inside a Blocks context); `prefix` names its elements."""
    names, weights, targets = [], [], []
    with gr.Accordion("LoRAs", open=False, elem_id=f"{prefix}-loras") as accordion:
        for row in range(MAX_LORAS):
            number = row + 1
            with gr.Row(equal_height=True):
                # One line per LoRA where the column allows (min widths), wrapping on a phone. At 110 px the
                # weight slider lost its "2" end and the dropdown's arrow sat on "Raw + Turbo" (a newcomer's view).
                names.append(gr.Dropdown(choices or [NO_LORA], value="", label=f"LoRA {number}", scale=3,
                                         min_width=140, elem_id=f"{prefix}-lora-{number}"))  # fmt: skip
                weights.append(gr.Slider(*LORA_WEIGHT_RANGE, value=DEFAULT_WEIGHT, step=WEIGHT_STEP, label="Weight",
                                         scale=2, min_width=150, elem_id=f"{prefix}-lora-{number}-weight"))  # fmt: skip
                targets.append(gr.Dropdown(TARGET_CHOICES, value=LORA_BOTH, label="Applies to", scale=2,
                                           min_width=150, elem_id=f"{prefix}-lora-{number}-target"))  # fmt: skip
        with gr.Row():
            refresh = gr.Button("↻ Refresh list", size="sm", elem_id=f"{prefix}-lora-refresh")
            upload = gr.UploadButton("Upload a LoRA (.safetensors)", file_types=[".safetensors"], type="filepath",
                                     size="sm", elem_id=f"{prefix}-lora-upload")  # fmt: skip
        with gr.Row(equal_height=True):
            hub = gr.Textbox(label="LoRA from the Hub", placeholder="owner/repo or owner/repo/file.safetensors",
                             scale=3, elem_id=f"{prefix}-lora-hub")  # fmt: skip
            hub_add = gr.Button("Add from Hub", size="sm", scale=1, elem_id=f"{prefix}-lora-hub-add")
        note = gr.Markdown(elem_id=f"{prefix}-lora-note")
    return LoraPicker(names, weights, targets, refresh, upload, hub, hub_add, note, accordion)


def wire_lora_pickers(pickers: list[LoraPicker], handlers: LoraHandlers, private: dict) -> None:
    """Refresh, upload and Hub events of each picker; a LoRA added in one picker shows in the other's lists too."""
    for picker in pickers:
        others = [other for other in pickers if other is not picker]
        lists = picker.names + [name for other in others for name in other.names]
        picker.refresh.click(handlers.refresh, picker.names, [picker.note, *picker.names], queue=False, **private)
        picker.upload.upload(handlers.upload, [picker.upload, *lists], [picker.note, *lists], **private)
        downloading = gr.State(False)
        for trigger in (picker.hub_add.click, picker.hub.submit):  # a download can take a while: one at a time
            trigger(handlers.hub_started, downloading, [downloading, picker.hub_add, picker.note], queue=False,
                    **private).success(
                handlers.add_from_hub, [picker.hub, *lists], [picker.note, *lists], **private
            ).then(handlers.hub_done, None, [downloading, picker.hub_add], queue=False, **private)  # fmt: skip
