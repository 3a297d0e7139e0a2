"""Kohya-style Krea 2 LoRA files as the diffusers (PEFT) state dict that `Krea2Pipeline.load_lora_weights` takes.

diffusers 0.42.1 converts two non-diffusers layouts itself (`_convert_non_diffusers_krea2_lora_to_diffusers`): Krea's
reference trainer and ComfyUI (`diffusion_model.` prefix) and ai-toolkit (`base_model.model.`), both with
`lora_A`/`lora_B`. Kohya-style files (musubi-tuner, sd-scripts and the trainers that copy them) are refused or, worse,
load as nothing: they flatten the module path with underscores under `lora_unet_` (`lora_unet_blocks_3_attn_wq`), store
`lora_down`/`lora_up` instead of A/B, and carry an `alpha` per module that scales the product by `alpha / rank`.

`convert_kohya` maps such a file onto the transformer's own Linear modules. Module paths may be flattened from either
naming, Krea's native one (`blocks.3.attn.wq`, `txtfusion.refiner_blocks.0.mlp.up`, `first`) or diffusers'
(`transformer_blocks.3.attn.to_q`); the names are matched against the transformer itself, so an underscore inside a
name (`refiner_blocks`) is never guessed at. A module the transformer does not have is an error naming it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

KOHYA_PREFIXES = ("lora_unet_", "lora_transformer_")
DOWN, UP, ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"
_SUFFIXES = (DOWN, UP, ALPHA)

# diffusers' module names -> Krea's native ones (the inverse of diffusers' own converter's tables).
_ATTENTION = {"to_q": "wq", "to_k": "wk", "to_v": "wv", "to_out.0": "wo", "to_gate": "gate"}
_STANDALONE = {
    "img_in": "first",
    "final_layer.linear": "last.linear",
    "time_embed.linear_1": "tmlp.0",
    "time_embed.linear_2": "tmlp.2",
    "time_mod_proj": "tproj.1",
    "txt_in.linear_1": "txtmlp.1",
    "txt_in.linear_2": "txtmlp.3",
    "text_fusion.projector": "txtfusion.projector",
}


class LoraFormatError(ValueError):
    """A LoRA file this module cannot map onto the transformer; the message says what was expected."""


def is_kohya(state_dict: dict[str, torch.Tensor]) -> bool:
    return any(key.endswith((DOWN, UP)) for key in state_dict)


def native_name(module: str) -> str | None:
    """Krea's native name for a diffusers module name of `Krea2Transformer2DModel`, or None if it has none."""
    if module in _STANDALONE:
        return _STANDALONE[module]
    match = re.fullmatch(
        r"(transformer_blocks|text_fusion\.(?:layerwise_blocks|refiner_blocks))\.(\d+)\.(attn|ff)\.(.+)", module
    )
    if match is None:
        return None
    blocks, index, part, leaf = match.groups()
    blocks = "blocks" if blocks == "transformer_blocks" else blocks.replace("text_fusion.", "txtfusion.")
    if part == "attn":
        return f"{blocks}.{index}.attn.{_ATTENTION[leaf]}" if leaf in _ATTENTION else None
    return f"{blocks}.{index}.mlp.{leaf}"


def flattened_names(transformer: nn.Module | Iterable[str]) -> dict[str, str]:
    """Every Linear module of the transformer (or every module name given: a fused transformer's LoRA targets, see
    krea2/lora_fold.py) under its kohya (underscore-flattened) names, native and diffusers."""
    if isinstance(transformer, nn.Module):
        transformer = [name for name, layer in transformer.named_modules() if isinstance(layer, nn.Linear)]
    names: dict[str, str] = {}
    for module in transformer:
        names[module.replace(".", "_")] = module
        native = native_name(module)
        if native is not None:
            names[native.replace(".", "_")] = module
    return names


def _module_key(name: str) -> str:
    for prefix in KOHYA_PREFIXES:
        name = name.removeprefix(prefix)
    return name


def convert_kohya(
    state_dict: dict[str, torch.Tensor], transformer: nn.Module | Iterable[str]
) -> dict[str, torch.Tensor]:
    """A kohya-style state dict as diffusers LoRA keys (`transformer.<module>.lora_A.weight`/`lora_B.weight`), with
    each module's `alpha / rank` folded into its `lora_B` (PEFT then scales by its own default of 1). `transformer`
    may be the names of its modules instead (see `flattened_names`)."""
    modules = flattened_names(transformer)
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        suffix = next((s for s in _SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            raise LoraFormatError(
                f"'{key}' is not a kohya LoRA key (expected ...lora_down.weight, lora_up.weight, alpha)"
            )
        grouped.setdefault(key[: -len(suffix)], {})[suffix] = value
    unknown = sorted(name for name in grouped if _module_key(name) not in modules)
    if unknown:
        raise LoraFormatError(
            f"{len(unknown)} module(s) of this LoRA are not in the Krea 2 transformer, e.g. '{unknown[0]}' "
            "(expected names like 'lora_unet_blocks_0_attn_wq' or 'lora_unet_transformer_blocks_0_attn_to_q')"
        )
    converted: dict[str, torch.Tensor] = {}
    for name, parts in grouped.items():
        down, up = parts.get(DOWN), parts.get(UP)
        if down is None or up is None:
            raise LoraFormatError(f"LoRA module '{name}' has only one of lora_down/lora_up")
        rank = down.shape[0]
        if ALPHA in parts and parts[ALPHA].numel() != 1:  # float() of two values raised a bare ValueError
            raise LoraFormatError(f"LoRA module '{name}' has an alpha of {parts[ALPHA].numel()} values, not one")
        alpha = float(parts[ALPHA]) if ALPHA in parts else float(rank)
        target = f"transformer.{modules[_module_key(name)]}"
        converted[f"{target}.lora_A.weight"] = down
        converted[f"{target}.lora_B.weight"] = (up.float() * (alpha / rank)).to(up.dtype)
    return converted
