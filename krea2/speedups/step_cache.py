"""An optional step cache for Raw: first-block cache (the ParaAttention / diffusers `FirstBlockCacheConfig` method).

Each transformer call runs block 0 first. When block 0's residual (output minus input) barely changed since the last
call that ran every block, the other 27 blocks are skipped and their residual from that call is added instead.
Raw's 52 guided steps change slowly in the middle of the schedule, so many calls qualify; Turbo's 8 distilled steps
do not, so only Raw gets it. It changes the image (an approximation); `threshold` trades speed for error, and 0 turns
it into a no-op that runs every block.

Why not diffusers' own hooks: they need the block class in diffusers' block registry and a cache context per
guidance branch, which `Krea2Transformer2DModel` (no `CacheMixin`) and `Krea2Pipeline` do not provide, so the
conditional and unconditional calls would share one cache. Here each branch keys its own state by its text
embeddings tensor (the pipeline passes the same prompt/negative tensors at every step). The blocks themselves are
untouched, so regional compilation of `Krea2TransformerBlock` still applies; the skip decision runs between them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class _BranchState:
    head_residual: torch.Tensor | None = None  # block 0's residual at the last full call
    tail_residual: torch.Tensor | None = None  # (last block's output - block 0's output) at the last full call


@dataclass
class FirstBlockCache:
    threshold: float
    branches: dict[tuple, _BranchState] = field(default_factory=dict)
    branch: tuple | None = None  # set for the duration of one transformer call
    computed: int = 0
    skipped: int = 0

    def reset(self) -> None:
        """Forget everything: call at the start of each generation."""
        self.branches.clear()
        self.computed = self.skipped = 0

    def _state(self) -> _BranchState:
        return self.branches.setdefault(self.branch, _BranchState())

    def should_skip(self, head_residual: torch.Tensor) -> bool:
        state = self._state()
        if state.head_residual is None or state.tail_residual is None or self.threshold <= 0:
            return False
        previous = state.head_residual
        change = (head_residual - previous).abs().mean() / previous.abs().mean().clamp_min(1e-12)
        return bool(change < self.threshold)  # one host sync per call, between blocks


class CachedBlocks(nn.ModuleList):
    """Drop-in for `transformer.transformer_blocks`. Outside a transformer call (cache branch unset) it iterates like
    the plain list, so fusion, quantisation and compilation see the real blocks."""

    def __init__(self, blocks: nn.ModuleList, cache: FirstBlockCache) -> None:
        super().__init__(blocks)
        self.step_cache = cache

    def __iter__(self) -> Iterator:
        blocks = list(super().__iter__())
        cache = self.step_cache
        if cache.branch is None or len(blocks) < 2:
            yield from blocks
            return
        decision: dict[str, torch.Tensor | bool] = {}

        def head(hidden_states: torch.Tensor, *args) -> torch.Tensor:
            out = blocks[0](hidden_states, *args)
            residual = out - hidden_states
            decision["skip"] = cache.should_skip(residual)
            decision["head_out"], decision["head_residual"] = out, residual
            if decision["skip"]:
                cache.skipped += 1
                return out + cache._state().tail_residual
            return out

        def tail(hidden_states: torch.Tensor, *args) -> torch.Tensor:
            out = blocks[-1](hidden_states, *args)
            state = cache._state()
            state.head_residual = decision["head_residual"]
            state.tail_residual = out - decision["head_out"]
            cache.computed += 1
            return out

        yield head
        if decision.get("skip"):
            return
        yield from blocks[1:-1]
        yield tail


def _set_branch(transformer: nn.Module, _args: tuple, kwargs: dict) -> None:
    text = kwargs.get("encoder_hidden_states")
    cache: FirstBlockCache = transformer.transformer_blocks.step_cache
    cache.branch = None if text is None else (text.data_ptr(), tuple(text.shape))


def _clear_branch(transformer: nn.Module, _args: tuple, _kwargs: dict, _output) -> None:
    transformer.transformer_blocks.step_cache.branch = None


def install_step_cache(transformer: nn.Module, threshold: float) -> FirstBlockCache:
    """Put a first-block cache on `transformer` (idempotent: a second call only changes the threshold)."""
    blocks = transformer.transformer_blocks
    if isinstance(blocks, CachedBlocks):
        blocks.step_cache.threshold = threshold
        return blocks.step_cache
    cache = FirstBlockCache(threshold)
    transformer.transformer_blocks = CachedBlocks(blocks, cache)
    transformer.register_forward_pre_hook(_set_branch, with_kwargs=True)
    transformer.register_forward_hook(_clear_branch, with_kwargs=True)
    return cache


def step_cache_of(transformer: nn.Module) -> FirstBlockCache | None:
    blocks = transformer.transformer_blocks
    return blocks.step_cache if isinstance(blocks, CachedBlocks) else None
