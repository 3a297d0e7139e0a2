"""Demo checkpoints: a miniature Krea 2, trained by the project, for machines with no GPU or no weights.

The architecture is the real one (`Krea2Transformer2DModel`, `AutoencoderKLQwenImage`, a Qwen3-VL text encoder and a
byte-level BPE tokenizer), only small. `demo/train.py` trains it on captioned pictures of flat shapes and saves it
into `demo/checkpoints/` in the real Hub repos' layouts (Turbo: a whole diffusers pipeline; Raw: `transformer/`
only), where the app loads it through the same `from_pretrained` code as the real weights.

The builders here define the miniature architecture once: training starts from them, and tests that need a model of
the right shape but not its weights (speed-up parity checks) build a randomly initialised one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .errors import LoadError
from .request import GenerationRequest

TEXT_LAYERS = (1, 2, 3, 4)  # the text encoder's tapped hidden states (0 is the embedding output)
TEXT_HIDDEN = 64
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TURBO_FOLDER, RAW_FOLDER = "Krea-2-Turbo-demo", "Krea-2-Raw-demo"
CHECKPOINTS_ENV = "KREA2_DEMO_CHECKPOINTS"
# The square sides demo/train.py trains at, best first: the app opens at the first in demo mode. 256² first: the
# committed model follows the prompt more often there (`python -m demo.size_effect`: Turbo, 48 held-out single-shape
# prompts, 2026-12-06: 48 fully right at 256², 33 at 512², where a quarter have the wrong number of shapes), and it
# is 4x less CPU work; 1024² is outside what the demo model learned.
DEMO_SIDES = (256, 512)


def default_size(demo: bool) -> tuple[int, int]:
    """Text-to-image's size when none is asked for, for the page, the API and the CLI alike: the demo model's best
    side with the demo checkpoints (it learned nothing at 1024², and 1024² takes minutes on a CPU), else the
    request's own default."""
    if demo:
        return DEMO_SIDES[0], DEMO_SIDES[0]
    return GenerationRequest.width, GenerationRequest.height


def default_checkpoints_dir() -> Path:
    """The trained demo checkpoints committed with the project (or the folder KREA2_DEMO_CHECKPOINTS names)."""
    configured = os.environ.get(CHECKPOINTS_ENV)
    return Path(configured) if configured else Path(__file__).resolve().parent.parent / "demo" / "checkpoints"


def demo_checkpoints(folder: Path | None = None) -> dict[str, str]:
    """{"turbo": folder, "raw": folder} of the trained demo checkpoints, for the normal loader."""
    folder = Path(folder or default_checkpoints_dir())
    turbo, raw = folder / TURBO_FOLDER, folder / RAW_FOLDER
    for path in (turbo / "model_index.json", raw / "transformer" / "config.json"):
        if not path.is_file():
            raise LoadError(
                f"The demo checkpoints are missing ({path} not found). They ship with the project in demo/checkpoints;"
                f" restore them with `git checkout -- demo/checkpoints` or rebuild them with `python -m demo.train`."
            )
    return {"turbo": str(turbo), "raw": str(raw)}


def build_tokenizer(words: Iterable[str] = ()):
    """A byte-level BPE tokenizer with the chat special tokens of the Krea 2 prompt template, built offline.

    With `words`, BPE merges are learnt so that each of them is one token (the demo's vocabulary); any other text
    still encodes, byte by byte. Lower-casing first: "A Red Circle" means what "a red circle" means."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    words = sorted(set(words))
    trainer = trainers.BpeTrainer(
        vocab_size=len(alphabet) + len(SPECIAL_TOKENS) + 8 * max(len(words), 1),
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    # Each word preceded by a space, the way it appears inside a caption (the byte-level pre-tokenizer keeps it).
    tokenizer.train_from_iterator([" " + " ".join(words)] * 2 + [w for w in words], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def build_text_encoder(vocab_size: int, seed: int = 0, width: int = TEXT_HIDDEN):
    """The miniature Qwen3-VL text encoder: `width` wide (heads of 16, half as many KV heads), one layer per tapped
    hidden state."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLModel

    torch.manual_seed(seed)
    config = Qwen3VLConfig(
        text_config={
            "hidden_size": width,
            "intermediate_size": 2 * width,
            "num_hidden_layers": len(TEXT_LAYERS),
            "num_attention_heads": width // 16,
            "num_key_value_heads": width // 32,
            "head_dim": 16,
            "vocab_size": vocab_size,
            "rope_scaling": {"rope_type": "default", "mrope_section": [4, 2, 2], "mrope_interleaved": True},
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_heads": 2,
            "out_hidden_size": width,
        },
        vocab_size=vocab_size,
    )
    return Qwen3VLModel(config).eval()


HEAD_DIM = 32  # the miniature's attention heads; the width sets how many


def build_transformer(seed: int = 0, width: int = 256, layers: int = 6, text_width: int = TEXT_HIDDEN):
    """The miniature Krea2Transformer2DModel: by default 6 blocks of width 256 (8 heads of 32, 4 KV heads), 5.5M
    parameters, the committed demo checkpoints' shape. `width` (a multiple of 64) and `layers` size another one,
    heads and MLP in proportion; `text_width` is the text encoder's width it reads (its text fusion runs at that
    width, with 4 heads and 2 KV heads whatever the width, so a wider one has wider heads)."""
    import torch
    from diffusers import Krea2Transformer2DModel

    if width % (2 * HEAD_DIM) or width <= 0 or layers <= 0 or text_width % 32 or text_width <= 0:
        raise ValueError(
            f"a demo transformer needs a width that is a positive multiple of {2 * HEAD_DIM}, at least one block and a "
            f"text width that is a positive multiple of 32: width {width}, {layers} blocks, text width {text_width}"
        )
    torch.manual_seed(seed)
    return Krea2Transformer2DModel(
        in_channels=64,  # 16 latent channels x 2x2 patches, as in the real model
        num_layers=layers,
        attention_head_dim=HEAD_DIM,
        num_attention_heads=width // HEAD_DIM,
        num_key_value_heads=width // (2 * HEAD_DIM),
        intermediate_size=64 * round(width * 8 / 3 / 64),  # 704 at 256, the proportion of the real model's MLP
        timestep_embed_dim=64,
        text_hidden_dim=text_width,
        num_text_layers=len(TEXT_LAYERS),
        text_num_attention_heads=4,
        text_num_key_value_heads=2,
        text_intermediate_size=2 * text_width,
        num_layerwise_text_blocks=1,
        num_refiner_text_blocks=2,
        axes_dims_rope=(8, 12, 12),
    )


def build_vae(seed: int = 0):
    """The Qwen-Image VAE's architecture with 16 latent channels and 8x downsampling, like the real one, but narrow."""
    import torch
    from diffusers import AutoencoderKLQwenImage

    torch.manual_seed(seed)
    return AutoencoderKLQwenImage(
        base_dim=16, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, temperal_downsample=[False, True, True]
    )


def build_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=6400
    )


def build_demo_pipeline(transformer_seed: int = 1, *, is_distilled: bool = True, words: Iterable[str] = ()):
    """A randomly initialised miniature pipeline (the starting point of training, and a stand-in in speed tests)."""
    from diffusers import Krea2Pipeline

    tokenizer = build_tokenizer(words)
    return Krea2Pipeline(
        scheduler=build_scheduler(),
        vae=build_vae(),
        text_encoder=build_text_encoder(len(tokenizer)),
        tokenizer=tokenizer,
        transformer=build_transformer(transformer_seed),
        text_encoder_select_layers=TEXT_LAYERS,
        is_distilled=is_distilled,
    )
