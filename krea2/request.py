"""GenerationRequest: every input of a generation, parsed and validated in one place.

Values may arrive from a browser (strings, floats from sliders), the CLI or the API, so construction coerces what is
unambiguous (``"8"`` or ``8.0`` for an integer) and rejects everything else with a message naming the field.
"""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .checkpoints import CHECKPOINTS, DEFAULT_CHECKPOINT, get_spec
from .errors import InvalidRequest

if TYPE_CHECKING:
    from PIL import Image

MAX_PROMPT_CHARS = 2000
MIN_SIDE, MAX_SIDE, SIDE_MULTIPLE = 256, 2048, 16
MAX_SEED = 2**32 - 1
MAX_IMAGES = 4
# The text encoder's tokenizer turns these (<|im_start|>, <|im_end|>, <|endoftext|>, <|vision_start|>, ...: every
# special token of the Qwen tokenizers is spelled <|name|>) into real control tokens even inside the chat template,
# so typed into a prompt they would end the user turn or the text early. They are refused, not escaped: encoding
# them as literal text would need the prompt tokenised apart from the template, which changes how ordinary prompts
# encode at the boundary, and the stock pipeline's encoding of every ordinary prompt must stay exactly as it is.
CONTROL_TOKEN = re.compile(r"<\|[^<>|\s]{1,64}\|>")


def random_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise InvalidRequest(name, value, "must be a whole number")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise InvalidRequest(name, value, "must be a whole number")
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                return _as_int(name, float(text))
            except (ValueError, InvalidRequest):
                raise InvalidRequest(name, value, "must be a whole number") from None
    raise InvalidRequest(name, value, "must be a whole number")


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidRequest(name, value, "must be a number")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise InvalidRequest(name, value, "must be a number") from None
    if not math.isfinite(number):
        raise InvalidRequest(name, value, "must be a finite number")
    return number


# Characters that show nothing (Unicode's Default_Ignorable_Code_Point: zero-width spaces and joiners, soft hyphens,
# variation selectors, fillers, tags...). Taken out of prompts (`visible_text`): the model reads the text the block
# list checked, and a prompt of them alone is empty.
INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164"
    "\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)


EMOJI_JOINERS = "\u200d\ufe0e\ufe0f"  # the zero-width joiner and the text/emoji variation selectors


def visible_text(text: str) -> str:
    """`text` without its invisible characters, save those that join or style an emoji (after a character that is
    not a letter, digit or space: "❄️" and "👨‍👩‍👧" stay whole, "for\u200dbidden" becomes "forbidden")."""
    if not INVISIBLE.search(text):
        return text
    kept: list[str] = []
    for char in text:
        if INVISIBLE.match(char) and not (
            char in EMOJI_JOINERS and kept and not kept[-1].isalnum() and not kept[-1].isspace()
        ):
            continue
        kept.append(char)
    return "".join(kept)


def _check_text(name: str, value: Any, *, required: bool) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise InvalidRequest(name, value, "must be text")
    if len(value) > MAX_PROMPT_CHARS:
        raise InvalidRequest(name, f"{len(value)} characters", f"must be at most {MAX_PROMPT_CHARS} characters")
    if "\x00" in value:
        raise InvalidRequest(name, value, "must not contain NUL bytes")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, e.g. "\ud800" sent as a JSON escape: unstorable, unencodable
        raise InvalidRequest(name, value, "must be valid Unicode text (it contains an unpaired surrogate)") from None
    if token := CONTROL_TOKEN.search(value):
        raise InvalidRequest(name, token.group(), "must not contain chat-template control tokens such as <|im_end|>")
    text = visible_text(value).strip()
    if required and not text:
        raise InvalidRequest(name, value, "must not be empty")
    return text


def _in_range(name: str, value: int | float, lo: int | float, hi: int | float) -> None:
    if not lo <= value <= hi:
        raise InvalidRequest(name, value, f"must be between {lo} and {hi}")


IMAGE_MODES = ("img2img", "inpaint", "outpaint", "hires")  # hires: img2img of an upscaled result


@dataclass(frozen=True)
class ImageInput:
    """What a generation starts from instead of pure noise (img2img, inpaint, outpaint): a prepared RGB picture of the
    request's size (`krea2.image_input.prepare_image`), how much of the schedule redraws it (`strength`: 1 starts from
    noise, as text-to-image does; 0.3 keeps most of the picture), and optionally a grey mask of the same size (white:
    repaint, black: keep, grey: blend). The sha256s are the uploaded files' content addresses (history, PNG)."""

    image: Image.Image
    strength: float = 0.6
    mask: Image.Image | None = None
    image_sha256: str = ""
    mask_sha256: str | None = None
    mode: str = ""  # what made it (IMAGE_MODES); "" names it from the mask: inpaint or img2img

    def __post_init__(self) -> None:
        if not self.mode:
            object.__setattr__(self, "mode", "inpaint" if self.mask is not None else "img2img")
        if self.mode not in IMAGE_MODES:
            raise InvalidRequest("mode", self.mode, f"must be one of: {', '.join(IMAGE_MODES)}")
        strength = _as_float("strength", self.strength)
        if not 0 < strength <= 1:
            raise InvalidRequest("strength", self.strength, "must be above 0 and at most 1")
        object.__setattr__(self, "strength", strength)
        if getattr(self.image, "mode", None) != "RGB":
            raise InvalidRequest("image", getattr(self.image, "mode", self.image), "must be an RGB picture")
        if self.mask is not None:
            if getattr(self.mask, "mode", None) != "L":
                raise InvalidRequest("mask", getattr(self.mask, "mode", self.mask), "must be a grey (L) picture")
            if self.mask.size != self.image.size:
                raise InvalidRequest("mask", self.mask.size, f"must be the image's size {self.image.size}")


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request. ``steps``/``guidance`` left as None take the checkpoint's defaults; ``seed`` left as None
    stays None here and is drawn at generation time (the result reports the seed actually used)."""

    prompt: str
    checkpoint: str = DEFAULT_CHECKPOINT
    negative_prompt: str = ""
    steps: int | None = None
    guidance: float | None = None
    width: int = 1024
    height: int = 1024
    seed: int | None = None
    num_images: int = 1
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # LoRAs from the LoRA library (`LoraChoice`, or "name:weight" text, or {"name", "weight", "target"}); each applies
    # to the checkpoints its target names, so one list serves a Raw/Turbo comparison.
    loras: tuple[LoraChoice, ...] = ()
    source: ImageInput | None = field(default=None, repr=False)  # None: text-to-image

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen dataclass: normalise fields once, here
        if not isinstance(self.checkpoint, str) or self.checkpoint not in CHECKPOINTS:
            raise InvalidRequest("checkpoint", self.checkpoint, f"must be one of: {', '.join(CHECKPOINTS)}")
        spec = get_spec(self.checkpoint)
        prompt, tagged = split_prompt_loras(_check_text("prompt", self.prompt, required=True))
        set_(self, "prompt", _check_text("prompt", prompt, required=True))  # a prompt of tags alone is empty
        set_(self, "negative_prompt", _check_text("negative_prompt", self.negative_prompt, required=False))
        if tag := PROMPT_LORA_TAG.search(self.negative_prompt):
            raise InvalidRequest("negative_prompt", tag.group(), "must not hold LoRA tags: put them in the prompt")

        steps = spec.default_steps if self.steps is None else _as_int("steps", self.steps)
        _in_range("steps", steps, *spec.steps_range)
        set_(self, "steps", steps)

        guidance = spec.default_guidance if self.guidance is None else _as_float("guidance", self.guidance)
        _in_range("guidance", guidance, *spec.guidance_range)
        set_(self, "guidance", guidance)

        for name in ("width", "height"):
            side = _as_int(name, getattr(self, name))
            _in_range(name, side, MIN_SIDE, MAX_SIDE)
            if side % SIDE_MULTIPLE:
                raise InvalidRequest(name, side, f"must be a multiple of {SIDE_MULTIPLE}")
            set_(self, name, side)

        if self.seed is not None and not (isinstance(self.seed, str) and not self.seed.strip()):
            seed = _as_int("seed", self.seed)
            _in_range("seed", seed, 0, MAX_SEED)
            set_(self, "seed", seed)
        else:
            set_(self, "seed", None)

        num_images = _as_int("num_images", self.num_images)
        _in_range("num_images", num_images, 1, MAX_IMAGES)
        set_(self, "num_images", num_images)

        set_(self, "loras", with_prompt_loras(_check_loras(self.loras), tagged))
        if self.source is not None:
            if not isinstance(self.source, ImageInput):
                raise InvalidRequest("source", type(self.source).__name__, "must be an ImageInput")
            if self.source.image.size != (self.width, self.height):
                w, h = self.source.image.size
                raise InvalidRequest("width", self.width, f"and height must be the init image's size {w}×{h}")

    @property
    def spec(self):
        return get_spec(self.checkpoint)

    @property
    def effective_negative_prompt(self) -> str | None:
        """The negative prompt the model actually sees: none when guidance is off."""
        assert self.guidance is not None
        return self.negative_prompt if self.spec.uses_negative_prompt(self.guidance) else None

    @property
    def mode(self) -> str:
        return "txt2img" if self.source is None else self.source.mode

    @property
    def denoise_steps(self) -> int:
        """The steps actually run: all of them from noise; the last `strength` share of the schedule from an image."""
        assert self.steps is not None
        if self.source is None:
            return self.steps
        return max(1, round(self.steps * self.source.strength))

    def with_seed(self, seed: int) -> GenerationRequest:
        return replace(self, seed=seed)

    def seeded(self) -> GenerationRequest:
        """This request, with a random seed drawn if it has none: the one place seeds are drawn (a comparison draws
        once for Raw, then gives Turbo the same seed)."""
        return self if self.seed is not None else self.with_seed(random_seed())

    @property
    def image_seeds(self) -> list[int]:
        """Image k of a batch uses seed + k, so each image can be reproduced alone."""
        if self.seed is None:
            raise ValueError("the request has no seed yet (GenerationRequest.seeded)")
        return [(self.seed + k) % (MAX_SEED + 1) for k in range(self.num_images)]

    def with_checkpoint(self, checkpoint: str, *, keep_settings: bool = False, **overrides: Any) -> GenerationRequest:
        """The same prompt, size and seed on another checkpoint; steps/guidance reset to its defaults unless kept.
        `overrides` set fields of the new request (validated like any other)."""
        data: dict[str, Any] = {"checkpoint": checkpoint}
        if not keep_settings:
            data["steps"] = data["guidance"] = None
        return replace(self, **{**data, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain values; an init image appears as its strength and content addresses."""
        data = asdict(replace(self, source=None))
        data.pop("extra")
        data["loras"] = [asdict(choice) for choice in self.loras]
        data.pop("source")
        if self.source is not None:
            data["mode"] = self.source.mode
            data["strength"] = self.source.strength
            data["source_sha256"] = self.source.image_sha256
            if self.source.mask_sha256 is not None:
                data["mask_sha256"] = self.source.mask_sha256
        return data

    @property
    def active_loras(self) -> tuple[LoraChoice, ...]:
        """The LoRAs this request's checkpoint runs with (a LoRA may target the other checkpoint only)."""
        return tuple(choice for choice in self.loras if choice.applies_to(self.checkpoint))

    def without_loras(self) -> GenerationRequest:
        return replace(self, loras=())


# ------------------------------------------------------------------------------------------------ LoRAs
MAX_LORAS = 4
LORA_WEIGHT_RANGE = (-2.0, 2.0)
LORA_BOTH = "both"
LORA_TARGETS = (LORA_BOTH, *CHECKPOINTS)
MAX_LORA_NAME_CHARS = 200
# A LoRA name is its path in the LoRA folder without `.safetensors` ("styles/ink"). These characters cannot be part of
# one: `:` `,` `<` `>` `"` delimit names in `name:weight`, A1111's `<lora:name:weight>` and `Lora hashes: "name: hash"`;
# a backslash or a `..` part would leave the folder.
LORA_NAME_FORBIDDEN = re.compile(r'[:,<>"\\\x00-\x1f\x7f]')


def check_lora_name(value: Any) -> str:
    """A LoRA name as the library spells it (no `.safetensors`, `/` between folders), or InvalidRequest."""
    if not isinstance(value, str):
        raise InvalidRequest("lora_name", value, "must be text")
    name = value.strip().removesuffix(".safetensors").strip("/")
    if not name:
        raise InvalidRequest("lora_name", value, "must not be empty")
    if len(name) > MAX_LORA_NAME_CHARS:
        raise InvalidRequest("lora_name", value, f"must be at most {MAX_LORA_NAME_CHARS} characters")
    if LORA_NAME_FORBIDDEN.search(name) or any(part in ("", ".", "..") for part in name.split("/")):
        raise InvalidRequest("lora_name", value, 'must be a LoRA name from the LoRA list (no : , < > " \\ or ..)')
    return name


@dataclass(frozen=True)
class LoraChoice:
    """One LoRA of a request: its name in the LoRA library, its weight (-2..2; 0 leaves the model as it is) and the
    checkpoints it applies to ("both", "raw" or "turbo")."""

    name: str
    weight: float = 1.0
    target: str = LORA_BOTH

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "name", check_lora_name(self.name))
        weight = _as_float("lora_weight", self.weight)
        _in_range("lora_weight", weight, *LORA_WEIGHT_RANGE)
        set_(self, "weight", weight)
        target = LORA_BOTH if self.target in (None, "") else self.target
        if not isinstance(target, str) or target not in LORA_TARGETS:
            raise InvalidRequest("lora_target", target, f"must be one of: {', '.join(LORA_TARGETS)}")
        set_(self, "target", target)

    def applies_to(self, checkpoint: str) -> bool:
        return self.target in (LORA_BOTH, checkpoint)

    @classmethod
    def parse(cls, value: Any) -> LoraChoice:
        """A choice from `LoraChoice`, `"name"`, `"name:weight"` (the API's and the CLI's form) or a dict."""
        if isinstance(value, LoraChoice):
            return value
        if isinstance(value, str):
            name, sep, weight = value.rpartition(":")
            return cls(name, weight) if sep else cls(value)
        if isinstance(value, dict):
            unknown = set(value) - {"name", "weight", "target"}
            if unknown:
                raise InvalidRequest("loras", sorted(unknown), "entries take only name, weight and target")
            return cls(value.get("name"), value.get("weight", 1.0), value.get("target", LORA_BOTH))
        raise InvalidRequest("loras", value, 'entries must be "name:weight" text')


def _check_loras(value: Any) -> tuple[LoraChoice, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):  # "ink:0.8, paper:-0.5": names hold no commas
        value = [part for part in value.split(",") if part.strip()]
    if isinstance(value, (dict, LoraChoice)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise InvalidRequest("loras", value, 'must be a list of "name:weight"')
    if len(value) > MAX_LORAS:
        raise InvalidRequest("loras", f"{len(value)} LoRAs", f"must be at most {MAX_LORAS}")
    choices = tuple(LoraChoice.parse(item) for item in value)
    for i, first in enumerate(choices):
        for second in choices[i + 1 :]:
            if first.name == second.name and any(first.applies_to(k) and second.applies_to(k) for k in CHECKPOINTS):
                raise InvalidRequest("loras", first.name, "must name each LoRA once per checkpoint")
    return choices


# A1111/Forge name LoRAs inside the prompt: `<lora:name:weight>` (`<lyco:…>` too; the weight left out is 1). A request
# takes them out of its prompt (the text encoder never sees them) and runs them on both checkpoints, after the LoRAs
# it names itself (the UI's picker, the API's and the CLI's `loras`); a LoRA named in both places is refused, whatever
# the weights: one rule, and no weight chosen silently. History and the PNG keep the prompt without its tags, so the
# PNG writer's own `<lora:…>` tags (storage/pnginfo.py) are the only ones there, each LoRA once.
PROMPT_LORA_TAG = re.compile(r"<(?:lora|lyco):([^<>]*)>", re.IGNORECASE)


def split_prompt_loras(prompt: str) -> tuple[str, tuple[LoraChoice, ...]]:
    """A prompt's LoRA tags as choices (for both checkpoints), and the prompt without them (the commas and spaces
    around a tag taken out); a prompt without tags comes back as it is."""
    choices = []
    for tag in PROMPT_LORA_TAG.finditer(prompt):
        name, has_weight, weight = tag.group(1).partition(":")
        if ":" in weight:
            raise InvalidRequest("prompt", tag.group(), "has a LoRA tag with more than a name and a weight")
        choices.append(LoraChoice(name, weight if has_weight else 1.0))
    if not choices:
        return prompt, ()
    text = re.sub(r"[ \t]*,(?:[ \t]*,)+", ",", PROMPT_LORA_TAG.sub(" ", prompt))
    text = "\n".join(re.sub(r"[ \t]{2,}", " ", line).strip(" \t,") for line in text.split("\n"))
    return text.strip(), tuple(choices)


def with_prompt_loras(listed: tuple[LoraChoice, ...], tagged: tuple[LoraChoice, ...]) -> tuple[LoraChoice, ...]:
    """The request's own LoRAs, then those its prompt's tags name (see PROMPT_LORA_TAG for the rule)."""
    for index, choice in enumerate(tagged):
        if any(other.name == choice.name for other in listed):
            where = "in the LoRA list and as a <lora:…> tag in the prompt"
        elif any(other.name == choice.name for other in tagged[:index]):
            where = "in two <lora:…> tags of the prompt"
        else:
            continue
        raise InvalidRequest("loras", choice.name, f"must name each LoRA once, and {choice.name} is named {where}")
    merged = (*listed, *tagged)
    if len(merged) > MAX_LORAS:
        raise InvalidRequest(
            "loras", f"{len(merged)} LoRAs", f"must be at most {MAX_LORAS}, tags in the prompt included"
        )
    return merged


HISTORY_CHECKPOINTS = ("all", *CHECKPOINTS)
MAX_SEARCH_CHARS = 200
MAX_HISTORY_LIMIT = 100


def _as_bool(name: str, value: Any) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(name, value, "must be true or false")
    return value


@dataclass(frozen=True)
class HistoryQuery:
    """A validated history query from the API: search text, filters, keyset cursor (an id) and page size."""

    search: str = ""
    checkpoint: str = "all"
    favorites_only: bool = False
    comparisons_only: bool = False
    cursor: int | None = None
    limit: int = 24
    lora: str = ""  # only generations that ran with the LoRA of this name

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        search = "" if self.search is None else self.search
        if not isinstance(search, str):
            raise InvalidRequest("search", search, "must be text")
        if "\x00" in search:
            raise InvalidRequest("search", search, "must not contain NUL bytes")
        set_(self, "search", search[:MAX_SEARCH_CHARS])
        checkpoint = self.checkpoint if self.checkpoint not in (None, "") else "all"
        if not isinstance(checkpoint, str) or checkpoint not in HISTORY_CHECKPOINTS:
            raise InvalidRequest("checkpoint", checkpoint, f"must be one of: {', '.join(HISTORY_CHECKPOINTS)}")
        set_(self, "checkpoint", checkpoint)
        set_(self, "favorites_only", _as_bool("favorites_only", self.favorites_only))
        set_(self, "comparisons_only", _as_bool("comparisons_only", self.comparisons_only))
        if self.cursor is None or (isinstance(self.cursor, str) and not self.cursor.strip()):
            set_(self, "cursor", None)
        else:
            cursor = _as_int("cursor", self.cursor)
            _in_range("cursor", cursor, 1, 2**63 - 1)  # an id: beyond a BIGINT it would fail in the database
            set_(self, "cursor", cursor)
        limit = 24 if self.limit is None else _as_int("limit", self.limit)
        _in_range("limit", limit, 1, MAX_HISTORY_LIMIT)
        set_(self, "limit", limit)
        lora = "" if self.lora is None else self.lora
        if not isinstance(lora, str) or "\x00" in lora or len(lora) > MAX_LORA_NAME_CHARS:
            raise InvalidRequest("lora", lora, "must be a LoRA name (text)")
        set_(self, "lora", lora.strip())
