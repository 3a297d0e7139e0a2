"""Loading Krea 2 checkpoints from the Hub, local folders or single files, with one clear line for each way it fails.

Turbo loads whole. Raw is Raw's ``transformer/`` plus Turbo's text encoder, tokenizer and VAE (the very same objects,
one copy in memory) and its own scheduler instance, with ``is_distilled=False``. Either transformer may instead come
from a single `.safetensors` file (`single_file.py`); the text encoder, tokenizer, VAE and scheduler then come from
the components source: Turbo's repo or folder (`shared`, by default Turbo's Hub repo when Turbo is a file).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .checkpoints import CHECKPOINTS, CheckpointSpec
from .errors import LoadError
from .hub_errors import GATED, NO_FILE, NO_MEMORY, NO_REVISION, NOT_FOUND, OFFLINE, hub_problem
from .safetensors_file import names_a_file

if TYPE_CHECKING:
    import torch
    from diffusers import Krea2Pipeline, Krea2Transformer2DModel

    from .preview import LatentRGB

log = logging.getLogger(__name__)


def looks_like_path(source: str) -> bool:
    """A Hub id is `owner/name`; anything else that names the filesystem is treated as a local folder or file."""
    return names_a_file(source) or (
        source.startswith(("/", ".", "~"))
        or os.sep + os.sep in source
        or source.count("/") > 1
        or (Path(source).exists())
    )


def check_local_layout(source: str, spec: CheckpointSpec) -> None:
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise LoadError(f"{spec.display_name}: folder {folder} does not exist.")
    needed = "model_index.json" if spec.ships_full_pipeline else "transformer/config.json"
    if not (folder / needed).is_file():
        kind = "a diffusers pipeline folder" if spec.ships_full_pipeline else "a folder with transformer/"
        raise LoadError(f"{spec.display_name}: {folder} is not {kind} (missing {needed}).")


def explain_load_error(error: BaseException, source: str, spec: CheckpointSpec) -> LoadError:
    """Turn whatever from_pretrained raised into one actionable sentence."""
    problem = hub_problem(error)
    name = spec.display_name
    not_found = f"{name}: repo {source} was not found on the Hub (check {spec.source_env_var})."
    sentences = {
        GATED: f"{name}: no access to the gated repo {source}. Accept the Krea 2 license on its Hub page "
        f"(https://huggingface.co/{source}), then set HF_TOKEN or run `hf auth login`.",
        OFFLINE: f"{name}: {source} is not in the local Hub cache and the Hub cannot be reached. Connect once to "
        f"download it, or point {spec.source_env_var} at a local folder (or use --demo).",
        NO_REVISION: not_found,
        NO_FILE: not_found,
        NOT_FOUND: not_found,
        NO_MEMORY: f"{name}: not enough memory to load {source}; try --placement offload.",
    }
    return LoadError(sentences.get(problem.kind, f"{name}: could not load {source}: {problem.first_line}"))


def _module_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


class PipelineLoader:
    """Loads Turbo (whole) and Raw (transformer only, sharing Turbo's other components) via ``from_pretrained``, or a
    transformer from a single file (`single_file.py`).

    `shared`: where the text encoder, tokenizer, VAE and scheduler come from when Turbo is a single file (default:
    Turbo's Hub repo). `fp8_weights`: keep a pre-quantised fp8 file's weights in fp8 (the fast path's fp8 is on)."""

    def __init__(
        self,
        sources: dict[str, str],
        dtype: torch.dtype,
        token: str | None = None,
        *,
        shared: str | None = None,
        fp8_weights: bool = False,
    ) -> None:
        self.sources = sources
        self.dtype = dtype
        self.token = token  # None: huggingface_hub's own HF_TOKEN variable, else the saved login
        self.shared = shared
        self.fp8_weights = fp8_weights

    def components_source(self) -> str:
        """Where the text encoder, tokenizer, VAE and scheduler come from: the checkpoint that ships a whole pipeline,
        unless it is a single file (then `shared`, else that checkpoint's Hub repo)."""
        spec = next(spec for spec in CHECKPOINTS.values() if spec.ships_full_pipeline)
        source = self.sources[spec.key]
        return (self.shared or spec.default_source) if names_a_file(source) else source

    def _prepare(self, spec: CheckpointSpec, source: str) -> str:
        if names_a_file(source):
            return str(Path(source).expanduser())
        if looks_like_path(source):
            check_local_layout(source, spec)
            return str(Path(source).expanduser())
        return source

    def _load(
        self,
        spec: CheckpointSpec,
        what: str,
        load: Callable[[str], object],
        parts: dict[str, object],
        source: str | None = None,
    ):
        """Resolve the source (the checkpoint's own unless given), load it, translate any failure into one LoadError
        line, log sizes and time."""
        source = self._prepare(spec, source or self.sources[spec.key])
        log.info("Loading %s%s from %s ...", spec.display_name, what, source)
        start = time.perf_counter()
        try:
            loaded = load(source)
        except LoadError:
            raise
        except Exception as error:
            raise explain_load_error(error, source, spec) from error
        seconds = time.perf_counter() - start
        for label, attribute in parts.items():
            module = loaded if attribute is None else getattr(loaded, attribute)
            log.info("  %s: %.2f GB", label, _module_bytes(module) / 1e9)
        log.info("%s%s loaded in %.1f s", spec.display_name, what, seconds)
        return loaded

    def load_full(self, spec: CheckpointSpec) -> Krea2Pipeline:
        """The whole pipeline; with a single-file transformer, the other components from `components_source`."""
        from diffusers import Krea2Pipeline

        given = {}
        if names_a_file(self.sources[spec.key]):
            given["transformer"] = self.load_transformer(spec)

        def load(source: str) -> Krea2Pipeline:
            return Krea2Pipeline.from_pretrained(
                source, dtype=self.dtype, token=self.token, is_distilled=spec.is_distilled, **given
            )

        parts = {name: name for name in ("transformer", "text_encoder", "vae") if name not in given}
        what = " text encoder and VAE" if given else ""
        return self._load(spec, what, load, parts, source=self.components_source())

    def latent_rgb(self, spec: CheckpointSpec) -> LatentRGB:
        """The live preview's latent->RGB map: the one saved beside a local checkpoint's VAE (the demo's is fitted to
        its own latent space), else the Qwen-Image VAE's, which the real checkpoints use."""
        from .preview import LatentRGB

        source = self.components_source() if spec.ships_full_pipeline else self.sources[spec.key]
        return LatentRGB.for_vae_folder(Path(source).expanduser() / "vae" if looks_like_path(source) else None)

    def load_transformer(self, spec: CheckpointSpec) -> Krea2Transformer2DModel:
        from diffusers import Krea2Transformer2DModel

        if names_a_file(self.sources[spec.key]):
            return self._load(spec, " transformer", self._load_file(spec), {"transformer": None})

        def load(source: str) -> Krea2Transformer2DModel:
            return Krea2Transformer2DModel.from_pretrained(
                source, subfolder="transformer", dtype=self.dtype, token=self.token
            )

        return self._load(spec, " transformer", load, {"transformer": None})

    def _load_file(self, spec: CheckpointSpec) -> Callable[[str], Krea2Transformer2DModel]:
        """How to load `spec`'s single file: checked (one sentence for a file of another model, or truncated), then
        converted; its base config comes from the components source."""
        from .single_file import inspect_checkpoint, load_transformer_file

        def load(path: str) -> Krea2Transformer2DModel:
            checkpoint = inspect_checkpoint(path, spec.display_name)
            return load_transformer_file(
                checkpoint,
                self.dtype,
                fp8_weights=self.fp8_weights,
                config_source=self._prepare_components(),
                token=self.token,
            )

        return load

    def _prepare_components(self) -> str:
        spec = next(spec for spec in CHECKPOINTS.values() if spec.ships_full_pipeline)
        return self._prepare(spec, self.components_source())


def derive_prompt_template_lengths(pipe: Krea2Pipeline) -> None:
    """The pipeline hard-codes the Qwen tokenizer's template lengths (34 prefix, 5 suffix tokens); recompute them
    from whichever tokenizer is loaded. from_pretrained resets them, so call this after every load."""
    tokenizer = pipe.tokenizer
    pipe.prompt_template_encode_start_idx = len(tokenizer(pipe.prompt_template_encode_prefix).input_ids)
    pipe.prompt_template_encode_num_suffix_tokens = len(tokenizer(pipe.prompt_template_encode_suffix).input_ids)


def build_pipeline_sharing(base: Krea2Pipeline, transformer: Krea2Transformer2DModel, spec: CheckpointSpec):
    """A pipeline for `spec` that reuses base's text encoder, tokenizer and VAE objects (no copies)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Krea2Pipeline

    pipe = Krea2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(base.scheduler.config),  # own instance: it is stateful
        vae=base.vae,
        text_encoder=base.text_encoder,
        tokenizer=base.tokenizer,
        transformer=transformer,
        text_encoder_select_layers=base.text_encoder_select_layers,
        is_distilled=spec.is_distilled,
    )
    derive_prompt_template_lengths(pipe)
    return pipe
