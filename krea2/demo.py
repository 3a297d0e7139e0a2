"""Demo checkpoints: a miniature Krea 2 built from the real classes, for machines with no GPU or no weights.

They are written once into a cache folder in the same layout as the real Hub repos (Turbo: a whole diffusers
pipeline; Raw: ``transformer/`` only) and then loaded by the same code as real checkpoints, so the demo exercises
the real loading path. Weights are random but seeded, so every machine builds the same demo models.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

DEMO_VERSION = "2"  # bump when the tiny configs change, so stale caches are rebuilt
_MARKER = "KREA2_DEMO_VERSION"
TEXT_LAYERS = (1, 2, 3, 4)

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    base = os.environ.get("KREA2_DEMO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "krea2-studio", "demo"
    )
    return Path(base)


def _build_tokenizer():
    """A byte-level BPE tokenizer with the chat special tokens the Krea 2 prompt template uses (built offline)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for token in specials:
        vocab[token] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def _build_text_encoder(vocab_size: int):
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLModel

    torch.manual_seed(0)
    config = Qwen3VLConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "vocab_size": vocab_size,
            "rope_scaling": {"rope_type": "default", "mrope_section": [2, 1, 1], "mrope_interleaved": True},
        },
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 32},
        vocab_size=vocab_size,
    )
    return Qwen3VLModel(config).eval()


def build_transformer(seed: int):
    """A tiny Krea2Transformer2DModel; Raw and Turbo use different seeds so their images differ."""
    import torch
    from diffusers import Krea2Transformer2DModel

    torch.manual_seed(seed)
    return Krea2Transformer2DModel(
        in_channels=64,  # 16 latent channels x 2x2 patches, as in the real model
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        timestep_embed_dim=32,
        text_hidden_dim=32,
        num_text_layers=len(TEXT_LAYERS),
        text_num_attention_heads=2,
        text_num_key_value_heads=1,
        text_intermediate_size=64,
        num_layerwise_text_blocks=1,
        num_refiner_text_blocks=1,
        axes_dims_rope=(4, 6, 6),
    )


def _build_vae():
    import torch
    from diffusers import AutoencoderKLQwenImage

    torch.manual_seed(3)
    # 16 latent channels and 8x downsampling like the real Qwen-Image VAE, so previews and shapes match.
    return AutoencoderKLQwenImage(
        base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, temperal_downsample=[False, True, True]
    )


def build_demo_pipeline(transformer_seed: int = 1):
    from diffusers import FlowMatchEulerDiscreteScheduler, Krea2Pipeline

    tokenizer = _build_tokenizer()
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=6400
    )
    return Krea2Pipeline(
        scheduler=scheduler,
        vae=_build_vae(),
        text_encoder=_build_text_encoder(len(tokenizer)),
        tokenizer=tokenizer,
        transformer=build_transformer(transformer_seed),
        text_encoder_select_layers=TEXT_LAYERS,
        is_distilled=True,
    )


def _is_built(folder: Path) -> bool:
    marker = folder / _MARKER
    return marker.is_file() and marker.read_text().strip() == DEMO_VERSION


def _write_atomically(target: Path, write) -> None:
    """Build into a temp folder beside `target`, then rename: a crash never leaves a half-written checkpoint."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(tmp)
        (tmp / _MARKER).write_text(DEMO_VERSION)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_demo_checkpoints(cache_dir: Path | None = None) -> dict[str, str]:
    """Write the demo checkpoints if missing; return {"turbo": folder, "raw": folder} for the normal loader."""
    cache_dir = Path(cache_dir or default_cache_dir())
    turbo_dir, raw_dir = cache_dir / "Krea-2-Turbo-demo", cache_dir / "Krea-2-Raw-demo"
    if not _is_built(turbo_dir):
        log.info("Building demo Turbo checkpoint in %s (first start only)", turbo_dir)
        _write_atomically(turbo_dir, lambda d: build_demo_pipeline(transformer_seed=1).save_pretrained(d))
    if not _is_built(raw_dir):
        log.info("Building demo Raw checkpoint in %s (first start only)", raw_dir)
        # Like the real Raw repo: only transformer/, everything else comes from Turbo.
        _write_atomically(raw_dir, lambda d: build_transformer(seed=2).save_pretrained(d / "transformer"))
    return {"turbo": str(turbo_dir), "raw": str(raw_dir)}
