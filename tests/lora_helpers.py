"""Real tiny LoRAs for the demo transformer, written in each format Krea 2 LoRAs come in (no mocks: the files are what
those programs write, read back through the app's own code)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import Krea2Pipeline
from safetensors.torch import save_file

from krea2.lora_formats import native_name

RANK, ALPHA = 4, 8.0  # scale alpha / rank = 2: a power of two, so folding it into lora_B changes no rounding
# Modules of every kind a Krea 2 LoRA trains: a block's attention and MLP, the text fusion, a standalone layer.
MODULES = (
    "transformer_blocks.0.attn.to_q",
    "transformer_blocks.0.attn.to_k",
    "transformer_blocks.1.attn.to_gate",
    "transformer_blocks.2.attn.to_out.0",
    "transformer_blocks.3.ff.gate",
    "transformer_blocks.3.ff.up",
    "transformer_blocks.4.ff.down",
    "text_fusion.refiner_blocks.0.attn.to_v",
    "img_in",
)
FORMATS = ("diffusers", "krea", "ai-toolkit", "kohya")
Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]  # module -> (down, up)


def random_factors(transformer, modules=MODULES, *, rank: int = RANK, seed: int = 0, size: float = 0.3) -> Factors:
    """Random rank-`rank` factors, large enough to change a picture visibly."""
    generator = torch.Generator().manual_seed(seed)
    layers = dict(transformer.named_modules())
    return {
        module: (
            torch.randn(rank, layers[module].in_features, generator=generator) * size,
            torch.randn(layers[module].out_features, rank, generator=generator) * size,
        )
        for module in modules
    }


def write_lora(path: Path, factors: Factors, fmt: str, alpha: float = ALPHA) -> Path:
    """Save `factors` (scaled by alpha / rank when applied) the way `fmt`'s program writes a LoRA."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rank = next(iter(factors.values()))[0].shape[0]
    tensors = {}
    if fmt == "diffusers":  # diffusers' own writer, with the PEFT config it saves beside the weights
        layers = {f"{m}.lora_{ab}.weight": t for m, (down, up) in factors.items() for ab, t in (("A", down), ("B", up))}
        Krea2Pipeline.save_lora_weights(
            path.parent, transformer_lora_layers=layers, weight_name=path.name,
            transformer_lora_adapter_metadata={"r": rank, "lora_alpha": alpha, "target_modules": list(factors)},
        )  # fmt: skip
        return path
    for module, (down, up) in factors.items():
        native, kept_alpha = native_name(module), torch.tensor(alpha)
        if fmt == "krea":  # Krea's trainer / ComfyUI: native names, an alpha per module
            base = f"diffusion_model.{native}"
            tensors |= {f"{base}.lora_A.weight": down, f"{base}.lora_B.weight": up, f"{base}.alpha": kept_alpha}
        elif fmt == "ai-toolkit":  # PEFT's names under base_model.model., alpha / rank already in lora_B
            base = f"base_model.model.{native}"
            tensors |= {f"{base}.lora_A.weight": down, f"{base}.lora_B.weight": up * (alpha / rank)}
        elif fmt == "kohya":  # musubi-tuner / sd-scripts: flattened native names, down/up, alpha
            base = "lora_unet_" + native.replace(".", "_")
            tensors |= {f"{base}.lora_down.weight": down, f"{base}.lora_up.weight": up, f"{base}.alpha": kept_alpha}
        else:
            raise ValueError(fmt)
    save_file({key: value.contiguous() for key, value in tensors.items()}, path)
    return path


def transformer_inputs(text_tokens: int = 5, grid: int = 4) -> dict:
    """One transformer call's inputs at the demo model's sizes."""
    from krea2.demo import TEXT_HIDDEN, TEXT_LAYERS

    generator = torch.Generator().manual_seed(0)
    return {
        "hidden_states": torch.randn(1, grid * grid, 64, generator=generator),
        "encoder_hidden_states": torch.randn(1, text_tokens, len(TEXT_LAYERS), TEXT_HIDDEN, generator=generator),
        "timestep": torch.tensor([0.6]),
        "position_ids": Krea2Pipeline.prepare_position_ids(text_tokens, grid, grid, "cpu"),
    }
