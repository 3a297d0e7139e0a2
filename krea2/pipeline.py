"""The stock diffusers Krea2Pipeline with one exact speed-up: prompt padding dropped instead of masked.

The stock pipeline pads every prompt to 512 tokens and masks the padding out of attention, in the text encoder and in
the transformer. Padding never acts as an attention key, its own outputs are discarded, and text positions count only
real tokens, so leaving the padding out computes the same image: the encoder reads ~30-150 tokens instead of ~550, and
with no mask left the transformer's attention runs on the fused (flash) kernels.
"""

from __future__ import annotations

import copy

import torch
from diffusers import Krea2Pipeline

from .loading import derive_prompt_template_lengths
from .speedups.text_graphs import TextEncoderGraphs, text_features


def _match_text_positions(_module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """With padding dropped, the prompt and the negative prompt have different lengths, but the pipeline builds one
    `position_ids` for both. Text rows of `position_ids` are all zeros (see `Krea2Pipeline.prepare_position_ids`),
    so rebuilding them for this call's text length is exact."""
    if not {"position_ids", "encoder_hidden_states", "hidden_states"} <= kwargs.keys():
        return args, kwargs  # called positionally (not by the pipeline): nothing to adjust
    position_ids = kwargs["position_ids"]
    text_len, image_len = kwargs["encoder_hidden_states"].shape[1], kwargs["hidden_states"].shape[1]
    if position_ids.shape[0] != text_len + image_len:
        image_ids = position_ids[-image_len:]
        kwargs["position_ids"] = torch.cat([image_ids.new_zeros(text_len, 3), image_ids])
    return args, kwargs


class Krea2StudioPipeline(Krea2Pipeline):
    """Krea2Pipeline that encodes a prompt without its padding and hands the transformer no mask. Build it with
    `from_pipeline`."""

    text_graphs: TextEncoderGraphs | None = None  # set by `speedups.apply` where the encoder stays on the GPU

    @classmethod
    def from_pipeline(cls, pipe: Krea2Pipeline, **replaced) -> Krea2StudioPipeline:
        """The studio pipeline over `pipe`'s very component objects (nothing is copied but the `replaced` components),
        ready to run: the template lengths of its tokenizer, no progress bar, and the transformer rebuilding text
        positions per call."""
        studio = cls(
            **{**pipe.components, **replaced},
            text_encoder_select_layers=pipe.text_encoder_select_layers,
            is_distilled=pipe.config.is_distilled,
        )
        derive_prompt_template_lengths(studio)
        studio.set_progress_bar_config(disable=True)
        # Installed here, once per transformer (DiffusionPipeline introspects __init__, so not in a constructor).
        if not getattr(studio.transformer, "_krea2_positions_hook", False):
            studio.transformer.register_forward_pre_hook(_match_text_positions, with_kwargs=True)
            studio.transformer._krea2_positions_hook = True
        return studio

    def thread_copy(self) -> Krea2StudioPipeline:
        """A pipeline for another thread over the same models: its own scheduler (whose timesteps a call sets), its
        own tokenizer (a fast tokenizer used by two threads at once can raise "Already borrowed"), its own per-call
        state, and no text-encoder graphs (it encodes eagerly, capturing nothing). The manager's background compile
        runs on one beside users' requests."""
        return type(self).from_pipeline(
            self, scheduler=copy.deepcopy(self.scheduler), tokenizer=copy.deepcopy(self.tokenizer)
        )

    def get_text_hidden_states(
        self, prompt: str | list[str], max_sequence_length: int = 512, device: torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One prompt: its real tokens only, and an all-true mask. A batch of prompts (different lengths) keeps the
        stock padded layout."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if len(prompts) != 1:
            return super().get_text_hidden_states(prompt, max_sequence_length, device)
        device = device or self._execution_device
        prefix_idx = self.prompt_template_encode_start_idx
        # The same tokens as the stock template, truncated at the same length, only without the PAD block.
        text_ids = self.tokenizer(
            self.prompt_template_encode_prefix + prompts[0],
            truncation=True,
            max_length=max_sequence_length + prefix_idx - self.prompt_template_encode_num_suffix_tokens,
            return_tensors="pt",
        ).input_ids
        suffix_ids = self.tokenizer(self.prompt_template_encode_suffix, return_tensors="pt").input_ids
        input_ids = torch.cat([text_ids, suffix_ids], dim=1).to(device)
        if self.text_graphs is not None:  # the same features, replayed from a CUDA graph (speedups/text_graphs.py)
            hidden_states = self.text_graphs(input_ids)
        else:
            hidden_states = text_features(self.text_encoder, input_ids, self.text_encoder_select_layers)
        hidden_states = hidden_states[:, prefix_idx:]
        mask = torch.ones(hidden_states.shape[:2], dtype=torch.bool, device=device)
        return hidden_states, mask

    def encode_prompt(self, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:  # type: ignore[override]
        """Stock, except that an all-true mask becomes None: the transformer then builds no attention mask at all,
        and its attention runs on the fused kernels."""
        embeds, mask = super().encode_prompt(*args, **kwargs)
        return embeds, None if bool(mask.all()) else mask
