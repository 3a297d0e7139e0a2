"""Blocks whose input errors reach every caller as one sentence naming the field.

Before a handler runs, Gradio checks the number of values and runs each input component's data model and
`preprocess`. A failure there (a missing argument, text where a slider wants a number, a value outside a radio's
choices, a malformed file reference) is not a `gr.Error`, so with `show_error=False` the caller got `{"error": null}`
or Gradio's generic sentence. This is the one place that turns them into a sentence naming the field. The handlers
themselves validate through krea2.request.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from gradio.block_function import BlockFunction
from gradio.exceptions import InvalidPathError

from krea2 import InvalidRequest

from .text import as_text
from .uploads import uploaded_path

# Marks an API input added after the endpoint was published (`added_later`): callers written before it may leave it
# out, and it then takes the component's value. Inputs without the mark stay required.
ADDED_LATER = "_krea2_added_later"


def added_later(component: gr.components.Component) -> gr.components.Component:
    setattr(component, ADDED_LATER, True)
    return component


def with_later_defaults(block_fn: BlockFunction, inputs: Any) -> Any:
    """`inputs` with the values of trailing inputs marked `added_later` that a caller left out."""
    if not isinstance(inputs, list) or len(inputs) >= len(block_fn.inputs):
        return inputs
    missing = block_fn.inputs[len(inputs) :]
    if not all(getattr(block, ADDED_LATER, False) for block in missing):
        return inputs
    return [*inputs, *(block.value for block in missing)]


def field_name(block_fn: BlockFunction, index: int) -> str:
    """The name a caller knows the input by: the API parameter name for public endpoints, the label on the page
    otherwise."""
    names = block_fn.input_parameter_names
    if block_fn.api_visibility == "public" and index < len(names) and names[index]:
        return str(names[index])
    block = block_fn.inputs[index]
    return str(getattr(block, "label", None) or block.elem_id or f"value {index + 1}")


def not_uploaded(block_fn: BlockFunction, inputs: list[Any], error: Exception) -> str | None:
    """Gradio's refusal of a file field naming a path it did not receive as an upload, as the field's sentence (it
    read "One of the values sent is not valid (InvalidPathError)", naming no field)."""
    if not isinstance(error, InvalidPathError):
        return None
    for index, value in enumerate(inputs):  # the field whose path is not an upload, not merely the first file field
        if isinstance(value, dict) and isinstance(value.get("path"), str):
            try:
                uploaded_path(value, field_name(block_fn, index))
            except InvalidRequest as refused:
                return f"{refused}."
    return None


def _value_problem(block: Any, value: Any, preprocess: bool = True) -> str | None:
    """Why `block` refuses `value`, or None when it accepts it. `preprocess` False: an endpoint that takes its values
    unprocessed (`preprocess=False`), where only the data model applies (a file reference must still be one)."""
    model = getattr(block, "data_model", None)
    try:
        if model is not None and value is not None:
            try:
                value = model.model_validate(value, context={"validate_meta": True})
            except Exception:
                if "path" in getattr(model, "model_fields", {}):
                    return "must be an uploaded file (gradio_client's handle_file)"
                raise
        if preprocess:
            block.preprocess(value)
    except Exception:  # noqa: BLE001 - any refusal is the answer we are looking for
        choices = getattr(block, "choices", None)
        if choices:
            return "must be one of: " + ", ".join(str(choice[1]) for choice in choices)
        low, high = getattr(block, "minimum", None), getattr(block, "maximum", None)
        if low is not None and high is not None:
            return f"must be a number between {low:g} and {high:g}"
        return "is not a valid value here"
    return None


class StudioBlocks(gr.Blocks):
    async def process_api(self, block_fn: BlockFunction | int, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """A select event's data comes from the client; Gradio builds `gr.SelectData` from it by indexing
        `data["index"]`, which fails with a bare TypeError on anything but an object with those keys."""
        fn = self.fns[block_fn] if isinstance(block_fn, int) else block_fn
        event_data = kwargs.get("event_data")
        if fn.collects_event_data and event_data is not None:
            data = getattr(event_data, "_data", None)
            if not isinstance(data, dict) or not {"index", "value"} <= data.keys():
                raise gr.Error("The selection sent is not valid; select an image again.", print_exception=False)
        return await super().process_api(block_fn, *args, **kwargs)

    async def preprocess_data(
        self, block_fn: BlockFunction, inputs: list[Any], state: Any, explicit_call: bool = False
    ) -> list[Any]:
        public = block_fn.api_visibility == "public"
        inputs = with_later_defaults(block_fn, inputs)
        message = self._input_problem(block_fn, inputs, state)
        if message is None:
            try:
                return await super().preprocess_data(block_fn, inputs, state, explicit_call)
            except Exception as error:  # noqa: BLE001 - a refusal Gradio could not name: name it here
                message = (
                    self._input_problem(block_fn, inputs, state, strict=True)
                    or not_uploaded(block_fn, inputs, error)
                    or f"One of the values sent is not valid ({type(error).__name__})."
                )
        raise gr.Error(message if public else as_text(message), print_exception=False)

    @staticmethod
    def _input_problem(block_fn: BlockFunction, inputs: Any, state: Any, strict: bool = False) -> str | None:
        count = len(block_fn.inputs)
        if not isinstance(inputs, list) or len(inputs) < count:
            given = len(inputs) if isinstance(inputs, list) else 0
            names = ", ".join(field_name(block_fn, i) for i in range(count))
            return f"{field_name(block_fn, given)}: missing; this call takes {count} values ({names})."
        if not strict:
            return None
        for index, block in enumerate(block_fn.inputs):
            if getattr(block, "stateful", False):
                continue
            if state is not None and block._id in state:
                block = state[block._id]  # the session's copy: its choices may have been updated
            if problem := _value_problem(block, inputs[index], block_fn.preprocess):
                return f"{field_name(block_fn, index)}: {problem}."
        return None
