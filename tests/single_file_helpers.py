"""Single files in the layouts people download, written from a diffusers-format transformer (the demo's): Krea's own
(krea-ai/krea-2's `SingleStreamDiT` names, read from its model code, independently of diffusers' converter), ComfyUI's
(the same names under `model.diffusion_model.`, next to text-encoder and VAE tensors in a whole checkpoint), and
ComfyUI's fp8 "scaled" formats (old: `scale_weight` + a `scaled_fp8` marker; new: `weight_scale` + `comfy_quant`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

# diffusers name -> Krea's name, first match wins (krea-ai/krea-2 src/krea2/models/transformer.py)
TOP_LEVEL = (
    ("img_in.", "first."),
    ("time_embed.linear_1.", "tmlp.0."),
    ("time_embed.linear_2.", "tmlp.2."),
    ("time_mod_proj.", "tproj.1."),
    ("txt_in.norm.weight", "txtmlp.0.scale"),
    ("txt_in.linear_1.", "txtmlp.1."),
    ("txt_in.linear_2.", "txtmlp.3."),
    ("text_fusion.", "txtfusion."),
    ("transformer_blocks.", "blocks."),
    ("final_layer.linear.", "last.linear."),
    ("final_layer.norm.weight", "last.norm.scale"),
    ("final_layer.scale_shift_table", "last.modulation.lin"),
)
INSIDE_BLOCKS = (
    (".attn.to_q.", ".attn.wq."),
    (".attn.to_k.", ".attn.wk."),
    (".attn.to_v.", ".attn.wv."),
    (".attn.to_out.0.", ".attn.wo."),
    (".attn.to_gate.", ".attn.gate."),
    (".attn.norm_q.weight", ".attn.qknorm.qnorm.scale"),
    (".attn.norm_k.weight", ".attn.qknorm.knorm.scale"),
    (".ff.", ".mlp."),
    (".norm1.weight", ".prenorm.scale"),
    (".norm2.weight", ".postnorm.scale"),
    (".scale_shift_table", ".mod.lin"),
)


def krea_name(name: str) -> str:
    for old, new in TOP_LEVEL:
        if name.startswith(old):
            name = new + name[len(old) :]
            break
    for old, new in INSIDE_BLOCKS:
        name = name.replace(old, new)
    return name


def krea_state(diffusers_state: dict[str, torch.Tensor], dtype: torch.dtype = torch.bfloat16) -> dict:
    """A diffusers-format transformer's weights as Krea's native checkpoint holds them (a block's 6-row modulation
    table flattened)."""
    state = {}
    for name, tensor in diffusers_state.items():
        native = krea_name(name)
        tensor = tensor.detach().to(dtype)
        if native.startswith("blocks.") and native.endswith(".mod.lin"):
            tensor = tensor.reshape(-1)
        state[native] = tensor.contiguous()
    return state


def is_quantised_linear(name: str, tensor: torch.Tensor) -> bool:
    """What ComfyUI's fp8 scaled files quantise: 2D weights of linear layers (not the norms, tables or the 1-row
    projector)."""
    return name.endswith(".weight") and tensor.dim() == 2 and min(tensor.shape) > 1


def fp8_scaled(state: dict[str, torch.Tensor], style: str = "old") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """ComfyUI's scaled fp8: every linear weight as fp8 e4m3 with one fp32 scale per tensor (amax / 448)."""
    out: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {}
    for name, tensor in state.items():
        if not is_quantised_linear(name, tensor):
            out[name] = tensor
            continue
        layer = name.removesuffix(".weight")
        scale = tensor.float().abs().max().clamp_min(1e-12) / 448.0
        out[name] = (tensor.float() / scale).clamp(-448, 448).to(torch.float8_e4m3fn)
        if style == "old":
            out[f"{layer}.scale_weight"] = scale.reshape(1)
        else:
            out[f"{layer}.weight_scale"] = scale.reshape(())
            out[f"{layer}.comfy_quant"] = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode()),
                                                       dtype=torch.uint8)  # fmt: skip
    if style == "old":
        out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return out, metadata


def dequantised(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a scaled-fp8 state means: each fp8 weight times its scale, in fp32."""
    out = {}
    for name, tensor in state.items():
        if tensor.dtype == torch.float8_e4m3fn and name.endswith(".weight"):
            layer = name.removesuffix(".weight")
            scale = state.get(f"{layer}.scale_weight", state.get(f"{layer}.weight_scale"))
            out[name] = tensor.float() * scale.float()
        elif not name.endswith((".scale_weight", ".weight_scale", ".comfy_quant")) and name != "scaled_fp8":
            out[name] = tensor.float()
    return out


def with_prefix(state: dict[str, torch.Tensor], prefix: str, *, whole_checkpoint: bool = False) -> dict:
    out = {prefix + name: tensor for name, tensor in state.items()}
    if whole_checkpoint:  # a ComfyUI all-in-one file also carries the text encoder and the VAE
        out["text_encoders.qwen3vl.transformer.model.embed_tokens.weight"] = torch.zeros(4, 8, dtype=torch.bfloat16)
        out["vae.decoder.conv_in.weight"] = torch.zeros(8, 4, 3, 3, dtype=torch.bfloat16)
    return out


def write(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    save_file({name: tensor.contiguous() for name, tensor in state.items()}, str(path), metadata=metadata or None)
    return path
