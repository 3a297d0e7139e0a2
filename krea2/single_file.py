"""Single-file Krea 2 transformers: the files people already have.

- Krea's own `.safetensors` (what krea-ai/krea-2's scripts load through `OSS_RAW` / `OSS_TURBO`): the native names of
  Krea's `SingleStreamDiT` (`blocks.N.attn.wq.weight`, `txtfusion.projector.weight`, ...), bf16.
- ComfyUI's: the same native names, bare (a `diffusion_models/` file) or under `model.diffusion_model.` (a whole
  checkpoint, whose text encoder and VAE tensors are skipped here), in bf16 or fp8 "scaled": fp8 e4m3 weights with a
  scale per tensor (`scale_weight` with a `scaled_fp8` marker, or `weight_scale` with `comfy_quant` / the
  `_quantization_metadata` header entry), weight = fp8 value x scale.
- A transformer saved by diffusers as one file (diffusers' own names).

Unquantised files load through diffusers' `Krea2Transformer2DModel.from_single_file` (its converter knows Krea's
names). diffusers has nothing for the scaled-fp8 files, so those load here: the model is built empty, each tensor is
read straight into the memory it keeps (`safetensors_file.py`), and with `fp8_weights` the blocks' fp8 weights stay
fp8, fused the way the fast path fuses them and wrapped as the fast path's own torchao tensors: no bf16 copy ever
exists, so the process holds about the file's size. Without `fp8_weights` (CPU, GPUs without fp8) they are
dequantised tensor by tensor. The key names come from diffusers' converter in both cases.

The architecture (widths, heads, depth) is read from the tensors' shapes, so a file needs no config of its own; the
rotary axes follow Krea's rule for the head dim. Anything that is not a Krea 2 transformer, or is cut short, is a
`LoadError` of one sentence.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .errors import LoadError
from .safetensors_file import SafetensorsFile, UnreadableFile

if TYPE_CHECKING:
    from diffusers import Krea2Transformer2DModel

log = logging.getLogger(__name__)

PREFIXES = ("model.diffusion_model.", "diffusion_model.", "")  # ComfyUI whole checkpoint, ComfyUI model file, bare
KREA_KEY = "txtfusion.projector.weight"  # what diffusers' own detection looks for, too
DIFFUSERS_KEY = "text_fusion.projector.weight"
SCALE_SUFFIXES = (".scale_weight", ".weight_scale")  # old and new ComfyUI names of a weight's scale
# Static activation scales (the fast path scales activations dynamically) and the per-layer format (read separately).
IGNORED_SUFFIXES = (".scale_input", ".input_scale", ".comfy_quant")
SCALED_FP8_MARKER = "scaled_fp8"
FP8_FORMATS = ("float8_e4m3fn", "float8_e5m2")
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
DEQUANTISE_CHUNK = 1024**2  # elements per slice when dequantising (4 MB of fp32)
# Tensors of other models, to say what a wrong file is (first match wins).
OTHER_MODELS = (
    ("double_blocks.", "a FLUX transformer"),
    ("input_blocks.", "a Stable Diffusion UNet"),
    ("img_mod.", "a Qwen-Image transformer"),
    ("lora_", "a LoRA (load LoRAs as LoRAs, not as a checkpoint)"),
    ("decoder.", "a VAE"),
    ("embed_tokens", "a text encoder"),
)


@dataclass
class CheckpointFile:
    """One inspected single file: where each diffusers parameter of the transformer comes from."""

    path: Path
    file: SafetensorsFile
    layout: str  # "Krea" | "ComfyUI" | "diffusers"
    prefix: str
    sources: dict[str, str]  # diffusers parameter name -> the file's key
    shapes: dict[str, tuple[int, ...]]  # diffusers parameter name -> its shape in the model
    scales: dict[str, str] = field(default_factory=dict)  # diffusers parameter name -> its scale's key (fp8)
    config: dict = field(default_factory=dict)

    @property
    def fp8(self) -> bool:
        """Whether the file holds fp8 weights (pre-quantised)."""
        return any(self.file.entries[key].dtype in FP8_DTYPES for key in self.sources.values())

    def describe(self) -> str:
        kind = "fp8 scaled" if self.scales else ("fp8" if self.fp8 else str(self.dtype()).removeprefix("torch."))
        return f"{self.path.name} ({self.layout} layout, {kind}, {self.config['num_layers']} blocks)"

    def dtype(self) -> torch.dtype:
        """The dtype of most of the file's weights."""
        sizes: dict[torch.dtype, int] = {}
        for key in self.sources.values():
            entry = self.file.entries[key]
            sizes[entry.dtype] = sizes.get(entry.dtype, 0) + entry.nbytes
        return max(sizes, key=sizes.get)


# ------------------------------------------------------------------------------------------------ inspecting
def inspect_checkpoint(path: str | Path, name: str) -> CheckpointFile:
    """Read and check a single file's header (no tensor data). `name` ("Krea 2 Turbo") starts every error."""
    path = Path(path).expanduser()
    if path.suffix.lower() == ".gguf":
        raise LoadError(f"{name}: {path} is a GGUF file; Krea 2 Studio loads .safetensors files (bf16, or fp8 scaled).")
    if not path.is_file():
        raise LoadError(f"{name}: file {path} does not exist.")
    try:
        file = SafetensorsFile(path)
    except UnreadableFile as error:
        raise LoadError(f"{name}: {error}") from None
    keys = set(file.entries)
    layout, prefix = _layout(keys)
    if layout is None:
        raise LoadError(f"{name}: {path} is not a Krea 2 transformer: {_what_it_is(keys)}.")
    formats = _quantization_formats(file, prefix)
    unsupported = sorted({fmt for fmt in formats.values() if fmt not in FP8_FORMATS})
    if unsupported:
        raise LoadError(
            f"{name}: {path} is quantised as {', '.join(unsupported)}, which Krea 2 Studio cannot load; use a bf16 or "
            "fp8 'scaled' file."
        )
    checkpoint = CheckpointFile(path, file, "", prefix, {}, {})
    if formats or SCALED_FP8_MARKER in {key.removeprefix(prefix) for key in keys}:
        layout = "ComfyUI"
    checkpoint.layout = layout
    _map_names(checkpoint, keys)
    try:
        checkpoint.config = infer_config(checkpoint.shapes)
    except ValueError as error:
        raise LoadError(f"{name}: {path} is not a complete Krea 2 transformer: {error}.") from None
    _check_complete(checkpoint, name)
    log.info("%s: %s", name, checkpoint.describe())
    return checkpoint


def _layout(keys: set[str]) -> tuple[str | None, str]:
    for prefix in PREFIXES:
        if prefix + KREA_KEY in keys:
            return ("Krea" if not prefix else "ComfyUI"), prefix
    if DIFFUSERS_KEY in keys:
        return "diffusers", ""
    return None, ""


def _what_it_is(keys: set[str]) -> str:
    for marker, model in OTHER_MODELS:
        if any(marker in key for key in keys):
            return f"it looks like {model}"
    example = min(keys) if keys else None
    return f"none of its {len(keys)} tensors is Krea 2's `{KREA_KEY}`" + (f" (first: `{example}`)" if example else "")


def _quantization_formats(file: SafetensorsFile, prefix: str) -> dict[str, str]:
    """layer -> quantisation format, from the `_quantization_metadata` header entry and any `comfy_quant` tensors."""
    formats: dict[str, str] = {}
    if "_quantization_metadata" in file.metadata:
        try:
            layers = json.loads(file.metadata["_quantization_metadata"]).get("layers", {})
        except (json.JSONDecodeError, AttributeError):
            layers = {}
        for layer, conf in layers.items():
            formats[layer.removeprefix(prefix)] = conf.get("format", "?") if isinstance(conf, dict) else str(conf)
    for key in file.entries:
        if key.endswith(".comfy_quant") and key.startswith(prefix):
            try:
                conf = json.loads(bytes(file.read(key).tolist()).decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                conf = {}
            formats[key.removeprefix(prefix).removesuffix(".comfy_quant")] = conf.get("format", "?")
    return formats


def _map_names(checkpoint: CheckpointFile, keys: set[str]) -> None:
    """Fill `sources`, `shapes` and `scales`: every transformer tensor of the file under its diffusers name."""
    prefix, file = checkpoint.prefix, checkpoint.file
    native = checkpoint.layout != "diffusers"
    own = {key: key.removeprefix(prefix) for key in keys if key.startswith(prefix)}
    scales: dict[str, str] = {}
    for key, short in own.items():
        if short == SCALED_FP8_MARKER or short.endswith(IGNORED_SUFFIXES):
            continue
        if short.endswith(SCALE_SUFFIXES):
            layer = short.rsplit(".", 1)[0]
            scales[layer + ".weight"] = key
            continue
        entry = file.entries[key]
        new_name, shape = _diffusers_name(short, entry.shape) if native else (short, entry.shape)
        checkpoint.sources[new_name] = key
        checkpoint.shapes[new_name] = shape
    new_names = {own[key]: new for new, key in checkpoint.sources.items()}  # the file's name -> diffusers'
    for weight, scale_key in scales.items():
        if weight in new_names:
            checkpoint.scales[new_names[weight]] = scale_key


def _diffusers_name(native: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
    """diffusers' own converter applied to one (empty) tensor: its diffusers name and shape (the blocks' modulation
    vectors become a 6-row table)."""
    from diffusers.loaders.single_file_utils import convert_krea2_transformer_checkpoint_to_diffusers

    [(name, tensor)] = convert_krea2_transformer_checkpoint_to_diffusers(
        {native: torch.empty(shape, device="meta")}
    ).items()
    return name, tuple(tensor.shape)


def infer_config(shapes: dict[str, tuple[int, ...]]) -> dict:
    """The `Krea2Transformer2DModel` config the tensors' shapes describe (rotary axes by Krea's rule for the head dim;
    theta and eps are the model's defaults)."""

    def count(pattern: str) -> int:
        return len({match.group(1) for name in shapes if (match := re.match(pattern, name))})

    try:
        hidden, in_channels = shapes["img_in.weight"]
        head_dim = shapes["transformer_blocks.0.attn.norm_q.weight"][0]
        text_block = "text_fusion.layerwise_blocks.0."
        text_head_dim = shapes[text_block + "attn.norm_q.weight"][0]
        config = {
            "in_channels": in_channels,
            "num_layers": count(r"transformer_blocks\.(\d+)\."),
            "attention_head_dim": head_dim,
            "num_attention_heads": shapes["transformer_blocks.0.attn.to_q.weight"][0] // head_dim,
            "num_key_value_heads": shapes["transformer_blocks.0.attn.to_k.weight"][0] // head_dim,
            "intermediate_size": shapes["transformer_blocks.0.ff.gate.weight"][0],
            "timestep_embed_dim": shapes["time_embed.linear_1.weight"][1],
            "text_hidden_dim": shapes["txt_in.norm.weight"][0],
            "num_text_layers": shapes["text_fusion.projector.weight"][1],
            "text_num_attention_heads": shapes[text_block + "attn.to_q.weight"][0] // text_head_dim,
            "text_num_key_value_heads": shapes[text_block + "attn.to_k.weight"][0] // text_head_dim,
            "text_intermediate_size": shapes[text_block + "ff.gate.weight"][0],
            "num_layerwise_text_blocks": count(r"text_fusion\.layerwise_blocks\.(\d+)\."),
            "num_refiner_text_blocks": count(r"text_fusion\.refiner_blocks\.(\d+)\."),
            "axes_dims_rope": [head_dim - 12 * (head_dim // 16), 6 * (head_dim // 16), 6 * (head_dim // 16)],
        }
    except (KeyError, ValueError) as error:
        raise ValueError(f"tensor {error} is missing or misshapen") from None
    if hidden != head_dim * config["num_attention_heads"]:
        raise ValueError(f"width {hidden} is not {config['num_attention_heads']} heads of {head_dim}")
    return config


def _check_complete(checkpoint: CheckpointFile, name: str) -> None:
    """Every parameter of the model the config describes is in the file with its shape, and nothing else is."""
    expected = {key: tuple(value.shape) for key, value in _empty_model(checkpoint.config).state_dict().items()}
    missing = sorted(set(expected) - set(checkpoint.shapes))
    extra = sorted(set(checkpoint.shapes) - set(expected))
    wrong = sorted(key for key in set(expected) & set(checkpoint.shapes) if expected[key] != checkpoint.shapes[key])
    if missing or extra or wrong:
        what = (
            f"{len(missing)} tensors are missing (e.g. {missing[0]})"
            if missing
            else f"{len(extra)} tensors are not Krea 2's (e.g. {extra[0]})"
            if extra
            else f"{wrong[0]} has the wrong shape"
        )
        raise LoadError(f"{name}: {checkpoint.path} is not a complete Krea 2 transformer: {what}.")


def _empty_model(config: dict) -> Krea2Transformer2DModel:
    from accelerate import init_empty_weights
    from diffusers import Krea2Transformer2DModel

    with init_empty_weights():
        return Krea2Transformer2DModel.from_config(config)


# ------------------------------------------------------------------------------------------------ loading
def load_transformer_file(
    checkpoint: CheckpointFile,
    dtype: torch.dtype,
    *,
    fp8_weights: bool = False,
    config_source: str | None = None,
    token: str | None = None,
) -> Krea2Transformer2DModel:
    """The transformer of an inspected file, in `dtype` (norm weights in fp32, as `from_pretrained` keeps them).

    An unquantised file goes through diffusers' `from_single_file`, with `config_source` (Turbo's repo or folder,
    `transformer/` inside it) as the base config and the file's own shapes over it. An fp8 file is loaded here: with
    `fp8_weights` its blocks' weights stay fp8 (fused, as the fast path's), otherwise every tensor is dequantised."""
    if checkpoint.fp8:
        model = _load_fp8(checkpoint, dtype, fp8_weights=fp8_weights)
    else:
        model = _load_with_diffusers(checkpoint, dtype, config_source, token)
    keep_norms_in_fp32(model)
    return model.eval().requires_grad_(False)


def _load_with_diffusers(
    checkpoint: CheckpointFile, dtype: torch.dtype, config_source: str | None, token: str | None
) -> Krea2Transformer2DModel:
    from diffusers import Krea2Transformer2DModel

    if config_source is None:
        raise LoadError(f"{checkpoint.path}: no Turbo repo or folder to take the transformer's base config from.")
    # The file's own tensors, under the names the converter expects (the prefix stays: diffusers strips it).
    state = {key: checkpoint.file.read(key) for key in checkpoint.sources.values()}
    if checkpoint.prefix not in ("", "model.diffusion_model."):  # the converter knows only this prefix
        state = {key.removeprefix(checkpoint.prefix): tensor for key, tensor in state.items()}
    return Krea2Transformer2DModel.from_single_file(
        state, config=config_source, subfolder="transformer", dtype=dtype, token=token, **checkpoint.config
    )


def _load_fp8(checkpoint: CheckpointFile, dtype: torch.dtype, *, fp8_weights: bool) -> Krea2Transformer2DModel:
    """Each tensor read once into the memory it keeps. With `fp8_weights`, a fused projection's parts are read
    straight into their rows of the fused weight; otherwise fp8 tensors are dequantised one at a time."""
    model = _empty_model(checkpoint.config)
    keep = set(_fp32_parameters(model))
    fused = _fused_layout(checkpoint, model) if fp8_weights else {}
    buffers: dict[str, tuple[torch.Tensor, torch.Tensor, set[str]]] = {}  # fused name -> (fp8 rows, scales, filled)
    state: dict[str, torch.Tensor] = {}
    for name, key in sorted(checkpoint.sources.items(), key=lambda item: checkpoint.file.entries[item[1]].start):
        if name in fused:  # a block projection, into its rows of the fused fp8 weight
            fused_name, first, total = fused[name]
            rows, width = checkpoint.shapes[name]
            if fused_name not in buffers:
                qdata = torch.empty(total, width, dtype=torch.float8_e4m3fn)
                buffers[fused_name] = (qdata, torch.empty(total, 1), set())
            qdata, scales, filled = buffers[fused_name]
            _read_fp8_rows(checkpoint, name, key, qdata[first : first + rows], scales[first : first + rows])
            filled.add(name)
            if len(filled) == sum(1 for part in fused.values() if part[0] == fused_name):
                state[fused_name] = _float8(qdata, scales, dtype)
                del buffers[fused_name]
            continue
        if fp8_weights and _is_block_linear(name):  # the out and down projections: fp8 as well
            rows, width = checkpoint.shapes[name]
            qdata, scales = torch.empty(rows, width, dtype=torch.float8_e4m3fn), torch.empty(rows, 1)
            _read_fp8_rows(checkpoint, name, key, qdata, scales)
            state[name] = _float8(qdata, scales, dtype)
            continue
        tensor = checkpoint.file.read(key).reshape(checkpoint.shapes[name])
        target = torch.float32 if name in keep else dtype
        if tensor.dtype in FP8_DTYPES:  # anything else is dequantised
            state[name] = _dequantised(tensor, _scale(checkpoint, name), target)
        else:
            state[name] = tensor.to(target)
        del tensor
    model.load_state_dict(state, strict=True, assign=True)
    return model


def _fused_layout(checkpoint: CheckpointFile, model: torch.nn.Module) -> dict[str, tuple[str, int, int]]:
    """Fuse the empty model's projections as the fast path's fp8 does; part -> (fused weight, first row, its rows)."""
    from .speedups.projections import FUSED_PARTS, fuse_projections

    fuse_projections(model)
    layout = {}
    for block in range(checkpoint.config["num_layers"]):
        for fused_name, parts in FUSED_PARTS.items():
            names = [f"transformer_blocks.{block}.{part}.weight" for part in parts]
            total = sum(checkpoint.shapes[part][0] for part in names)
            first = 0
            for part in names:
                layout[part] = (f"transformer_blocks.{block}.{fused_name}.weight", first, total)
                first += checkpoint.shapes[part][0]
    return layout


def _read_fp8_rows(checkpoint: CheckpointFile, name: str, key: str, qdata: torch.Tensor, scales: torch.Tensor) -> None:
    """Fill `qdata` (fp8 e4m3 rows) and `scales` (fp32, one per row) with one weight. fp8 e4m3 data goes from the
    file straight into `qdata`, its per-tensor scale repeated per row (the same values); any other dtype is quantised
    per row as torchao does."""
    scale = _scale(checkpoint, name)
    if checkpoint.file.entries[key].dtype == torch.float8_e4m3fn:
        checkpoint.file.read(key, out=qdata)
        scales.copy_(torch.ones(()) if scale is None else scale.reshape(-1, 1).expand_as(scales))
        return
    from .speedups.fp8 import quantize_rows

    weight = checkpoint.file.read(key).to(torch.float32)
    if scale is not None:
        weight = weight * scale.reshape(-1, 1)
    quantized, row_scale = quantize_rows(weight)
    qdata.copy_(quantized)
    scales.copy_(row_scale)


def _dequantised(qdata: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """fp8 value x scale in `dtype`, computed in fp32 a slice of rows at a time: a whole fp32 copy of Krea 2's largest
    non-block weight (the 6144 x 36864 modulation projection) would be 0.9 GB of transient memory."""
    out = torch.empty(qdata.shape, dtype=dtype)
    scale = torch.ones(()) if scale is None else scale.to(torch.float32)
    per_row = scale.numel() > 1
    step = max(1, DEQUANTISE_CHUNK // max(1, qdata[0].numel() if qdata.dim() else 1))
    if qdata.dim() == 0:
        return (qdata.to(torch.float32) * scale).to(dtype)
    for first in range(0, qdata.shape[0], step):
        rows = slice(first, first + step)
        part_scale = scale.reshape(-1, *[1] * (qdata.dim() - 1))[rows] if per_row else scale
        out[rows] = (qdata[rows].to(torch.float32) * part_scale).to(dtype)
    return out


def _is_block_linear(name: str) -> bool:
    return (
        name.startswith("transformer_blocks.")
        and name.endswith(".weight")
        and "norm" not in name
        and (".attn." in name or ".ff." in name)
    )


def _scale(checkpoint: CheckpointFile, name: str) -> torch.Tensor | None:
    key = checkpoint.scales.get(name)
    return None if key is None else checkpoint.file.read(key).to(torch.float32)


def _float8(qdata: torch.Tensor, row_scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    from .speedups.fp8 import float8_weight

    return float8_weight(qdata, row_scale, dtype)


def _fp32_parameters(model: torch.nn.Module) -> list[str]:
    keep = model._keep_in_fp32_modules or []
    return [
        f"{module_name}.{param_name}"
        for module_name, module in model.named_modules()
        if module_name.split(".")[-1] in keep
        for param_name, _ in module.named_parameters(recurse=False)
    ]


def keep_norms_in_fp32(model: torch.nn.Module) -> None:
    """The norm weights in fp32, as `from_pretrained` keeps them (`_keep_in_fp32_modules`; `from_single_file` keeps
    them only for fp16)."""
    for module_name, module in model.named_modules():
        if module_name.split(".")[-1] in (model._keep_in_fp32_modules or []):
            module.float()
