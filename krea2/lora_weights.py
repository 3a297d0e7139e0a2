"""A LoRA file's tensors as one low-rank update per transformer module, whichever program wrote it, checked before use.

The formats Krea 2 LoRAs come in (`detect_format`):

- diffusers / PEFT: `transformer.<module>.lora_A.weight` and `.lora_B.weight` (the `transformer.` prefix may be
  missing), with alpha in the PEFT metadata diffusers writes (`lora_adapter_metadata`) or, without it, a scale of 1,
  as diffusers loads them;
- Krea's reference trainer and ComfyUI (`diffusion_model.` and Krea's native names: `blocks.0.attn.wq`) and ai-toolkit
  (`base_model.model.`): converted by diffusers itself, through its public `Krea2Pipeline.lora_state_dict`;
- kohya / musubi-tuner (`lora_unet_blocks_0_attn_wq.lora_down.weight`, `lora_up`, `alpha`): converted by
  krea2.lora_formats, which diffusers 0.42.1 cannot do.

Every file is then held to what the transformer has (`shapes`: module name -> (out, in) features): each module must
exist, fit its layer, hold finite numbers, and the whole LoRA must change something. A file that fails is refused with
one sentence saying what was expected, before anything is folded.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .errors import LoraError
from .lora_files import LoraContents
from .lora_formats import LoraFormatError, convert_kohya, is_kohya

DIFFUSERS, KREA, AI_TOOLKIT, KOHYA = "diffusers", "Krea/ComfyUI", "ai-toolkit", "kohya"
PREFIX = "transformer."
METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY
EXAMPLE_KEYS = (
    "'transformer.transformer_blocks.0.attn.to_q.lora_A.weight', 'diffusion_model.blocks.0.attn.wq.lora_A.weight' "
    "or 'lora_unet_blocks_0_attn_wq.lora_down.weight'"
)
_FACTOR = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?:\.default)?\.weight$")
# What LoRA-like files hold that plain LoRAs do not (a key pattern), and what to call it in a refusal.
_UNSUPPORTED = {
    r"dora_scale|lora_magnitude_vector": "DoRA",
    r"\.hada_w": "LoHa (LyCORIS)",
    r"\.lokr_w": "LoKr (LyCORIS)",
    r"\.lora_mid\.": "LoCon (LyCORIS)",
    r"\.oft_": "OFT",
    r"\.lora_(B|up)\.bias$|\.diff_b$": "biases",
    r"\.diff$": "full weight differences",
}


@dataclass(frozen=True)
class LoraFactors:
    """One module's update, `scale * up @ down`."""

    down: torch.Tensor  # (rank, in_features): lora_A, lora_down
    up: torch.Tensor  # (out_features, rank): lora_B, lora_up
    scale: float  # alpha / rank; 1 where the file gives no alpha


@dataclass(frozen=True)
class LoraWeights:
    """A LoRA ready to fold: its name in the library, its AutoV3 hash, the format it came in, and its updates by the
    transformer module they change (diffusers' names)."""

    name: str
    hash: str
    format: str
    modules: dict[str, LoraFactors]

    @property
    def rank(self) -> int:
        return max(factors.down.shape[0] for factors in self.modules.values())

    @property
    def nbytes(self) -> int:
        return sum(f.down.nbytes + f.up.nbytes for f in self.modules.values())


def detect_format(tensors: Mapping[str, torch.Tensor]) -> str | None:
    keys = list(tensors)
    if is_kohya(tensors):
        return KOHYA
    if any(key.startswith("diffusion_model.") for key in keys):
        return KREA
    if any(key.startswith("base_model.model.") for key in keys):
        return AI_TOOLKIT
    if any(_FACTOR.match(key) for key in keys):
        return DIFFUSERS
    return None


def check_is_lora(contents: LoraContents, name: str) -> None:
    """What can be checked without the transformer: the file holds LoRA weights in a format this module reads."""
    if detect_format(contents.tensors) is None:
        raise LoraError(
            f"The LoRA {name} is not a LoRA: none of its {len(contents.tensors)} tensors is a LoRA weight (expected "
            f"keys like {EXAMPLE_KEYS})."
        )


def lora_weights(contents: LoraContents, name: str, autov3: str, shapes: Mapping[str, tuple[int, int]]) -> LoraWeights:
    """The file's updates, checked against `shapes` (every module a LoRA may change: (out, in) features)."""
    tensors = dict(contents.tensors)
    for pattern, what in _UNSUPPORTED.items():
        key = next((key for key in tensors if re.search(pattern, key)), None)
        if key is not None:
            raise LoraError(
                f"The LoRA {name} uses {what} ('{key}'), which Krea 2 Studio does not apply; only plain LoRAs "
                "(lora_A/lora_B or lora_down/lora_up pairs) are supported."
            )
    kind = detect_format(tensors)
    if kind is None:
        example = next(iter(tensors))
        raise LoraError(
            f"The LoRA {name} is not a LoRA: none of its {len(tensors)} tensors is a LoRA weight (it has "
            f"'{example}'; expected keys like {EXAMPLE_KEYS})."
        )
    if kind == KOHYA:
        factors, alphas = _from_kohya(tensors, name, shapes)
    elif kind in (KREA, AI_TOOLKIT):
        factors, alphas = _from_native(tensors, name)
    else:
        factors, alphas = _from_diffusers(tensors, name)
    config = _peft_config(contents.metadata) if kind == DIFFUSERS else {}
    modules = {}
    for module, (down, up) in _pairs(factors, name).items():
        _check_fits(name, module, down, up, shapes)
        rank = down.shape[0]
        alpha = alphas.get(module, _pattern(config.get("alpha_pattern"), module, config.get("lora_alpha")))
        if alpha is None:
            scale = 1.0
        else:
            scale = float(alpha) / (math.sqrt(rank) if config.get("use_rslora") else rank)
        if not math.isfinite(scale):  # the weights are checked in _check_fits; a NaN alpha would poison them all
            raise LoraError(
                f"The LoRA {name} has a NaN or infinite alpha (for '{module}'): the file or its metadata is damaged."
            )
        modules[module] = LoraFactors(down.contiguous(), up.contiguous(), scale)
    if not any(f.scale != 0 and bool(f.up.any()) and bool(f.down.any()) for f in modules.values()):
        raise LoraError(
            f"The LoRA {name} would change nothing: every module's update is zero (all of its lora_B/lora_up weights "
            "are zeros, as in a LoRA that was never trained, or its alphas are 0)."
        )
    return LoraWeights(name, autov3, kind, modules)


# ------------------------------------------------------------------------------------------------ formats
def _from_kohya(tensors: dict, name: str, shapes: Mapping) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    try:
        converted = convert_kohya(tensors, list(shapes))  # alpha / rank folded into lora_B
    except LoraFormatError as error:
        raise LoraError(f"The LoRA {name} cannot be applied to Krea 2: {error}.") from error
    return {key.removeprefix(PREFIX): value for key, value in converted.items()}, {}


def _from_native(tensors: dict, name: str) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Krea's native names under `diffusion_model.` or `base_model.model.`, through diffusers' own converter. It does
    not take `alpha` entries, so they are converted on their own, each standing in for its module's lora_A: the
    converter only renames keys."""
    from diffusers import Krea2Pipeline

    alpha_keys = [key for key in tensors if key.endswith(".alpha")]
    alpha_stand_ins = {key.removesuffix(".alpha") + ".lora_A.weight": tensors.pop(key) for key in alpha_keys}
    try:
        converted = Krea2Pipeline.lora_state_dict(tensors)
        converted_alphas = Krea2Pipeline.lora_state_dict(alpha_stand_ins) if alpha_stand_ins else {}
    except ValueError as error:  # the keys it could not map (it names them in a dict_keys repr)
        found = re.search(r"'([^']+)'", str(error))
        example = f" (e.g. '{found.group(1)}')" if found else ""
        raise LoraError(
            f"The LoRA {name} has modules diffusers cannot map onto Krea 2{example}: expected Krea's names such as "
            "'diffusion_model.blocks.0.attn.wq.lora_A.weight' (a LoRA for another model?)."
        ) from error
    factors = {key.removeprefix(PREFIX): value for key, value in converted.items()}
    alphas = {}
    for key, value in converted_alphas.items():
        match = _FACTOR.match(key.removeprefix(PREFIX))
        if match and value.numel() == 1:
            alphas[match.group("module")] = float(value)
    return factors, alphas


def _from_diffusers(tensors: dict, name: str) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    prefixed = any(key.startswith(PREFIX) for key in tensors)
    factors, alphas = {}, {}
    for key, value in tensors.items():
        if prefixed and not key.startswith(PREFIX):
            raise LoraError(
                f"The LoRA {name} also changes '{key.split('.')[0]}', which Krea 2 LoRAs cannot: only the transformer "
                "takes LoRAs (a LoRA for another model?)."
            )
        key = key.removeprefix(PREFIX)
        if key.endswith(".alpha") and value.numel() == 1:
            alphas[key.removesuffix(".alpha")] = float(value)
        else:
            factors[key] = value
    return factors, alphas


def _peft_config(metadata: Mapping[str, str]) -> dict:
    """The transformer's LoRA config diffusers saved in the file (keys `transformer.r`, `transformer.lora_alpha`...)."""
    raw = metadata.get(METADATA_KEY)
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(config, dict):
        return {}
    return {key.removeprefix(PREFIX): value for key, value in config.items()}


def _pattern(patterns: object, module: str, default: object) -> object:
    """PEFT's per-module override (`alpha_pattern`): a key matches a module name ending with it."""
    if isinstance(patterns, dict):
        for key, value in patterns.items():
            if re.fullmatch(rf"(.*\.)?{re.escape(key)}", module):
                return value
    return default


# ------------------------------------------------------------------------------------------------ checks
def _pairs(factors: dict[str, torch.Tensor], name: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in factors.items():
        match = _FACTOR.match(key)
        if match is None:
            raise LoraError(
                f"The LoRA {name} has a tensor '{key}' that is not a LoRA weight (expected {EXAMPLE_KEYS})."
            )
        grouped.setdefault(match.group("module"), {})[match.group("which")] = value
    pairs = {}
    for module, parts in grouped.items():
        if set(parts) != {"A", "B"}:
            has, lacks = ("lora_A", "lora_B") if "A" in parts else ("lora_B", "lora_A")
            raise LoraError(f"The LoRA {name} is incomplete: '{module}' has {has} but no {lacks}.")
        pairs[module] = (parts["A"], parts["B"])
    return pairs


def _check_fits(name: str, module: str, down: torch.Tensor, up: torch.Tensor, shapes: Mapping) -> None:
    if module not in shapes:
        raise LoraError(
            f"The LoRA {name} was made for another model: the Krea 2 transformer has no module '{module}' (expected "
            "names like 'transformer_blocks.0.attn.to_q')."
        )
    if not (down.is_floating_point() and up.is_floating_point()) or down.ndim != 2 or up.ndim != 2:
        raise LoraError(f"The LoRA {name} is malformed: '{module}' must hold two matrices of floating-point numbers.")
    out_features, in_features = shapes[module]
    if down.shape[1] != in_features or up.shape[0] != out_features:
        raise LoraError(
            f"The LoRA {name} does not fit this Krea 2 transformer: '{module}' maps {in_features} features to "
            f"{out_features}, but the LoRA's maps {down.shape[1]} to {up.shape[0]} (a LoRA for another model size?)."
        )
    if down.shape[0] != up.shape[1]:  # sizes that fit: read as a size mismatch, it contradicted itself
        raise LoraError(f"The LoRA {name} is malformed: for '{module}' its two matrices have different ranks "
                        f"({down.shape[0]} and {up.shape[1]}).")  # fmt: skip
    if not (bool(torch.isfinite(down).all()) and bool(torch.isfinite(up).all())):
        raise LoraError(
            f"The LoRA {name} holds NaN or infinite weights (in '{module}'): the file is damaged or its training "
            "diverged."
        )
