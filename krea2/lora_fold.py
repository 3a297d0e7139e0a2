"""LoRAs folded into the transformer's weights, in place: W = W0 + sum(weight * scale * up @ down).

Why folding, and not diffusers' PEFT adapters (`load_lora_weights` / `set_adapters`, hotswap): the fast path
(krea2/speedups) fuses each block's q/k/v/gate projections into one Linear and its SwiGLU's gate/up into another,
quantises them to fp8 (torchao tensors), compiles the blocks and replays whole denoiser calls from CUDA graphs. PEFT
wraps the separate Linear modules, which fusion has removed; its adapters run as extra bf16 GEMMs beside every fp8
GEMM on every step; adding or dropping an adapter changes the module tree the compiled blocks were traced from
(a recompile), and hotswap covers only a swap of one adapter for another of at most the rank given before compiling,
not a set of up to four that grows and shrinks. Folding costs nothing per step and changes no module, shape, dtype or
address: the compiled blocks and the captured graphs read the new values where the old ones were. What it costs is
an original copy (a "master") of every weight a LoRA touches, kept in CPU memory, so that any other set of LoRAs, or
none, is computed from the checkpoint's own values exactly rather than by subtracting (which drifts in bf16):

- bf16/fp32 weights: the master is taken the first time a LoRA touches the layer;
- fp8 weights: quantisation is lossy, so the bf16 masters are taken just before quantising (`keep_masters`, called by
  the fast path), and a LoRA change re-quantises bf16 master + delta into the same fp8 tensors, with the very function
  and settings the fast path used. fp8 + LoRA is therefore the fp8 quantisation of bf16 + LoRA, within fp8's own
  tolerance of it, and no LoRA restores the original fp8 values bit for bit.

Only the layers whose LoRAs changed are recomputed. Under group offloading (weights streamed from CPU memory) the
CPU copy the offloading hook streams from is written too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .errors import LoraError
from .lora_weights import LoraWeights

log = logging.getLogger(__name__)
PATCHER_ATTRIBUTE = "_krea2_lora_patcher"


@dataclass(frozen=True)
class LoraTarget:
    """Where a LoRA module's update goes: a Linear layer of the transformer (`layer`, its path) and the rows of its
    weight that are the module's (all of them, unless the projections were fused)."""

    layer: str
    rows: tuple[int, int]
    in_features: int

    @property
    def out_features(self) -> int:
        return self.rows[1] - self.rows[0]


def lora_targets(transformer: nn.Module) -> dict[str, LoraTarget]:
    """Every module a LoRA may name (diffusers' names, as in the unfused transformer) and where its weight is now."""
    targets: dict[str, LoraTarget] = {}
    for path, module in transformer.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        parts = getattr(module, "fused_parts", None)  # set by speedups.projections when it fused the layer
        if parts:
            parent = path.rpartition(".")[0]
            for name, rows in parts.items():
                targets[f"{parent}.{name}" if parent else name] = LoraTarget(path, rows, module.in_features)
        else:
            targets[path] = LoraTarget(path, (0, module.out_features), module.in_features)
    return targets


def target_shapes(transformer: nn.Module) -> dict[str, tuple[int, int]]:
    """(out, in) features of every module a LoRA may change, whether or not the fast path fused it."""
    return {module: (target.out_features, target.in_features) for module, target in lora_targets(transformer).items()}


def is_float8(weight: torch.Tensor) -> bool:
    return type(weight).__module__.startswith("torchao") and hasattr(weight, "qdata")


def _offload_copy(module: nn.Module, weight: torch.Tensor) -> torch.Tensor | None:
    """The CPU tensor diffusers' group offloading streams `weight` from, if the layer is offloaded: between calls the
    parameter points at it, but before the first call it still points at the tensor the copy was made from."""
    registry = getattr(module, "_diffusers_hook", None)
    hook = registry.get_hook("group_offloading") if registry is not None else None
    copies = getattr(getattr(hook, "group", None), "cpu_param_dict", None) or {}
    return copies.get(weight)


@dataclass
class FoldReport:
    layers_changed: int
    seconds: float


class LoraPatcher:
    """Folds LoRAs into one transformer. One per transformer (`patcher_of`); the manager calls `fold` under its GPU
    lock, between generations."""

    def __init__(self, transformer: nn.Module, *, pin_memory: bool | None = None) -> None:
        self.transformer = transformer
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.masters: dict[str, torch.Tensor] = {}  # layer -> its weight as the checkpoint has it (CPU)
        self.applied: dict[str, tuple] = {}  # layer -> what is folded into it now
        self.active: list[tuple[LoraWeights, float]] = []
        self.last_report = FoldReport(0, 0.0)

    # ------------------------------------------------------------------------------------------------ masters
    def _layers(self) -> dict[str, nn.Module]:
        return {path: module for path, module in self.transformer.named_modules() if isinstance(module, nn.Linear)}

    def _snapshot(self, layer: str, module: nn.Module) -> torch.Tensor:
        weight = module.weight
        if is_float8(weight):
            raise LoraError(
                f"LoRAs cannot change '{layer}': it was quantised to fp8 without a bf16 copy to fold into (LoRAs were "
                "off when the fast path was applied)."
            )
        source = _offload_copy(module, weight)
        original = (source if source is not None else weight).detach()
        # Pinned, so that a LoRA change copies it to the GPU at full speed; only for weights a GPU runs from (on it,
        # or streamed to it): pinning touches CUDA, which a CPU-only start (ZeroGPU's, before the move) must not.
        # Copied straight into pinned memory: a pageable copy pinned afterwards copied every master twice. (The first
        # fold at full size, which takes the masters, took 45 s on an H200, bench/NOTES.md; how much of it the second
        # copy was is not measured.)
        if self.pin_memory and (weight.device.type == "cuda" or source is not None):
            try:
                return torch.empty(original.shape, dtype=original.dtype, pin_memory=True).copy_(original)
            except RuntimeError:  # no CUDA context to pin with: unpinned copies work, only slower
                self.pin_memory = False
        return original.to("cpu", copy=True)

    def keep_masters(self, layers: Iterable[str]) -> None:
        """Take the masters of `layers` now (before their weights are quantised); ones taken already are kept."""
        modules = self._layers()
        for layer in layers:
            if layer not in self.masters:
                self.masters[layer] = self._snapshot(layer, modules[layer])

    def drop_stale_masters(self) -> None:
        """Forget the masters of layers that no longer exist (fused away); call with nothing folded."""
        layers = self._layers()
        self.masters = {layer: master for layer, master in self.masters.items() if layer in layers}

    # ------------------------------------------------------------------------------------------------ folding
    def fold(self, loras: Sequence[tuple[LoraWeights, float]]) -> FoldReport:
        """Make the weights the checkpoint's plus exactly these LoRAs at these weights (an empty list: none). Layers
        whose LoRAs did not change are left alone."""
        start = time.perf_counter()
        targets = lora_targets(self.transformer)
        wanted: dict[str, list[tuple[tuple[int, int], torch.Tensor, torch.Tensor, float]]] = {}
        keys: dict[str, tuple] = {}
        for weights, strength in loras:
            if strength == 0:  # adds exactly nothing: skipped, so weight 0 is the checkpoint bit for bit
                continue
            for module, factors in weights.modules.items():
                target = targets.get(module)
                if target is None:  # validated against these targets: only a changed transformer gets here
                    raise LoraError(f"The LoRA {weights.name} names '{module}', which this transformer does not have.")
                alpha = strength * factors.scale
                wanted.setdefault(target.layer, []).append((target.rows, factors.up, factors.down, alpha))
                keys[target.layer] = (*keys.get(target.layer, ()), (weights.hash, module, strength))
        modules = self._layers()
        changed = [layer for layer in {*wanted, *self.applied} if self.applied.get(layer) != keys.get(layer)]
        with torch.no_grad():
            for layer in sorted(changed):
                module = modules[layer]
                if layer not in self.masters:
                    self.masters[layer] = self._snapshot(layer, module)
                master = self.masters[layer]
                if layer not in wanted:
                    self._write(module, master)
                    del self.applied[layer]
                    continue
                device = self._compute_device(module)
                value = master.to(device, torch.float32, non_blocking=True, copy=True)  # never the master itself
                for (first, last), up, down, alpha in wanted[layer]:
                    rows = value[first:last]
                    rows.addmm_(up.to(device, torch.float32), down.to(device, torch.float32), alpha=alpha)
                self._write(module, value)
                self.applied[layer] = keys[layer]
        self.active = [(weights, strength) for weights, strength in loras if strength != 0]
        if changed and torch.cuda.is_available():
            torch.cuda.synchronize()  # the time the GPU took, not the time to queue it
        self.last_report = FoldReport(len(changed), time.perf_counter() - start)
        if changed:
            log.info("LoRAs folded into %d layers in %.2f s", len(changed), self.last_report.seconds)
        return self.last_report

    def unfold_all(self) -> list[tuple[LoraWeights, float]]:
        """Put every layer back to the checkpoint's weights; returns what was folded in (to `fold` again later)."""
        active = list(self.active)
        self.fold([])
        return active

    @staticmethod
    def _compute_device(module: nn.Module) -> torch.device:
        """Where the weight lives; for a layer offloaded to CPU memory, the GPU it runs on (the sums are GEMMs)."""
        weight = module.weight
        device = (weight.qdata if is_float8(weight) else weight).device
        if device.type == "cpu" and _offload_copy(module, weight) is not None and torch.cuda.is_available():
            return torch.device("cuda")
        return device

    @staticmethod
    def _write(module: nn.Module, value: torch.Tensor) -> None:
        """Store `value` into the layer's weight in place: same tensors, same addresses (compiled code and CUDA graphs
        keep reading them)."""
        weight = module.weight
        if is_float8(weight):
            from torchao.quantization import PerRow
            from torchao.quantization.quantize_.workflows.float8.float8_tensor import Float8Tensor

            # The fast path's own quantisation (speedups/fp8.py: row-wise scales), with the tensor's own settings.
            fresh = Float8Tensor.from_hp(
                value.to(weight.qdata.device, torch.bfloat16),
                float8_dtype=weight.qdata.dtype,
                granularity=PerRow(),
                mm_config=weight.mm_config,
                kernel_preference=weight.kernel_preference,
                act_quant_kwargs=weight.act_quant_kwargs,
            )
            weight.qdata.copy_(fresh.qdata)
            weight.scale.copy_(fresh.scale)
            return
        data = value.to(weight.dtype)
        weight.data.copy_(data.to(weight.device))
        copy = _offload_copy(module, weight)
        if copy is not None and copy.data_ptr() != weight.data.data_ptr():
            copy.copy_(data.to(copy.device))


def patcher_of(transformer: nn.Module, *, create: bool = False) -> LoraPatcher | None:
    patcher = getattr(transformer, PATCHER_ATTRIBUTE, None)
    if patcher is None and create:
        patcher = LoraPatcher(transformer)
        setattr(transformer, PATCHER_ATTRIBUTE, patcher)
    return patcher
