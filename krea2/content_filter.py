"""The host's content checks, applied by the engine to every generation whatever asked for it (page, API, CLI,
Compare): a prompt block list, checked before any GPU work, and an image classifier on every decoded batch, run where
the batch is (the GPU) before a single pixel is turned into an image, previewed, saved or returned.

- `PromptBlocklist`: words, phrases or regular expressions from a file, one per line.
- `ImageClassifierFilter`: any `transformers` image classifier (`AutoModelForImageClassification` + its image
  processor) from a Hub id or a folder, e.g. Falconsai/nsfw_image_detection; the labels that block and the threshold
  are settings. A generation is blocked whole when any of its images is flagged.
- `ContentPolicy`: what the manager applies, whether the classifier is required (then a classifier that cannot load
  refuses every generation: fail closed), and the status-line text.

A blocked generation raises `ContentBlocked`; the caller records it (status `blocked`) and shows its one sentence.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
import unicodedata
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import ContentBlocked, FilterUnavailable, error_summary
from .hub_errors import hub_reachable
from .request import INVISIBLE, GenerationRequest

log = logging.getLogger(__name__)
REGEX_PREFIX = "re:"  # a block-list line starting with this is a regular expression


# ------------------------------------------------------------------------------------------------ prompt block list
class BlocklistError(ValueError):
    """The block-list file cannot be read or holds an invalid regular expression; one sentence naming the line."""


def normalise(text: str, invisible: str = "") -> str:
    """Text as the block list compares it: NFKC (full-width and other look-alike forms folded), case-folded, runs of
    whitespace as one space, and the characters that show nothing (`INVISIBLE`, and any other format character)
    replaced by `invisible`. A request's prompt has none left (krea2/request.py); an imported one may."""
    folded = INVISIBLE.sub(invisible, unicodedata.normalize("NFKC", text).casefold())
    return " ".join("".join(invisible if unicodedata.category(c) == "Cf" else c for c in folded).split())


LANGUAGE_LETTERS = {"\u0131"}  # Latin-script letters of a language, not disguises: Turkish dotless i
I_OR_L = "\ue000"  # a look-alike of both I and l (a bar): a word entry's i or l matches it in either place


@functools.cache
def confusables() -> dict[str, list[dict[str, str]]]:
    """Unicode's confusables data as the confusable_homoglyphs package ships it: character -> its look-alikes."""
    return json.loads((resources.files("confusable_homoglyphs") / "confusables.json").read_text(encoding="utf-8"))


@functools.cache
def latin_lookalikes(as_listed: bool = False) -> dict[int, str]:
    """Each letter of another script (or a Latin variant such as the script g, U+0261) that Unicode's confusables data
    (UTS #39, as the confusable_homoglyphs package ships it) lists as looking like one ASCII letter, and that letter in
    lower case: a Greek omicron (U+03BF), a Cyrillic o (U+043E) and a Cyrillic capital ka (U+041A) are "o", "o" and
    "k". A capital I and a small l look the same, and the data picks one of them for each bar-like letter (Greek
    capital iota is "l", Cyrillic palochka "i"), so those read as `I_OR_L` (`as_listed`: as the data says, for `re:`
    lines). Symbols (a multiplication sign for an x) are left out: read as letters they lengthened the word beside
    them out of a whole-word match."""
    table = {}
    for character, homoglyphs in confusables().items():
        if len(character) != 1 or character.isascii() or not character.isalpha() or character in LANGUAGE_LETTERS:
            continue
        latin = next((h["c"] for h in homoglyphs if len(h["c"]) == 1 and h["c"].isascii() and h["c"].isalpha()), None)
        if latin:
            table[ord(character)] = I_OR_L if latin in "iIl" and not as_listed else latin.lower()  # L shapes: l
    return table


def latin_reading(text: str, as_listed: bool = False) -> str:
    """The text with each disguised word read in the Latin letters it looks like ("forbidden" with a Greek omicron for
    its o is "forbidden"). Run before case-folding: a capital Cyrillic ka looks like K, its lower case does not look
    like k. A word is read so when it mixes look-alikes with ASCII letters (a disguise) or is all look-alikes; a word
    of one other script with other letters in it is left as typed (a Russian "cigarettes" holds "rape" in look-alikes,
    a `re:rape` entry must not find it). Words are runs of letters: a digit or _ does not join an ASCII word to one in
    another script."""
    table = latin_lookalikes(as_listed)

    def read(match: re.Match[str]) -> str:
        word = match.group()
        foreign = [c for c in word if not c.isascii() and c.isalpha()]
        if not any(ord(c) in table for c in foreign):
            return word
        if any(c.isascii() and c.isalpha() for c in word) or all(ord(c) in table for c in foreign):
            return word.translate(table)
        return word

    return re.sub(r"[^\W\d_]+", read, text)


def word_entry(line: str) -> re.Pattern[str]:
    """A word or phrase entry as whole words, each i or l also matching a bar-like look-alike (`I_OR_L`)."""
    letters = {"i": f"[i{I_OR_L}]", "l": f"[l{I_OR_L}]"}
    words = ["".join(letters.get(c) or re.escape(c) for c in word) for word in normalise(line).split()]
    phrase = r"\s+".join(words)
    return re.compile(rf"(?<![\w{I_OR_L}]){phrase}(?![\w{I_OR_L}])")


@dataclass(frozen=True)
class PromptBlocklist:
    """Entries matched against the normalised prompt: a word or phrase matches as whole words (`cat` does not match
    `category`), a `re:` line is a case-insensitive regular expression searched anywhere."""

    patterns: tuple[re.Pattern[str], ...]
    lines: tuple[int, ...]  # the file line of each pattern, for the row's reason
    source: str = ""

    @classmethod
    def from_text(cls, text: str, source: str = "") -> PromptBlocklist:
        latin_lookalikes()  # read now: a broken install fails at start-up, not at the first prompt
        patterns, lines = [], []
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith(REGEX_PREFIX):
                try:
                    pattern = re.compile(line[len(REGEX_PREFIX) :].strip(), re.IGNORECASE)
                except re.error as error:
                    raise BlocklistError(f"Line {number} of the prompt block list is not a valid regular expression "
                                         f"({error}).") from None  # fmt: skip
                if pattern.search("") and pattern.search("zq"):  # `re:` alone, `re:.*` (not `re:^$`): refuses all
                    raise BlocklistError(f"Line {number} of the prompt block list matches an empty prompt, so it "
                                         "would refuse every prompt.")  # fmt: skip
                patterns.append(pattern)
            else:
                patterns.append(word_entry(line))
            lines.append(number)
        return cls(tuple(patterns), tuple(lines), source)

    @classmethod
    def from_file(cls, path: Path) -> PromptBlocklist:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else "it is not UTF-8 text"
            raise BlocklistError(f"The prompt block list {path} cannot be read ({reason}).") from None
        return cls.from_text(text, str(path))

    def match(self, prompt: str) -> int | None:
        """The file line of the first entry the prompt matches, or None. An invisible character is read both as
        nothing ("re\u200bd" is "red") and as a space ("red\u200bcircle" is "red circle"): it hides nothing. Each
        reading is matched as written and as its Latin look-alikes (`latin_reading`: in words that mix them with
        ASCII letters or are spelt only in them): a Greek omicron for the o of an English word hides nothing either,
        and an entry in another script still matches that script."""
        prompt = prompt.replace(I_OR_L, " ")  # typed, it is no letter: a separator, as any other private-use character
        shown = unicodedata.normalize("NFKC", prompt)
        latin = latin_reading(shown)
        # For `re:` lines, which cannot take the mark: every bar-like letter an i, an l, or as the data reads it.
        readings = {prompt, latin, latin.replace(I_OR_L, "i"), latin.replace(I_OR_L, "l"), latin_reading(shown, True)}
        texts = {normalise(reading, invisible) for reading in readings for invisible in ("", " ")}
        for pattern, line in zip(self.patterns, self.lines, strict=True):
            if any(pattern.search(text) for text in texts):
                return line
        return None

    def __len__(self) -> int:
        return len(self.patterns)


# ------------------------------------------------------------------------------------------------ image classifier
@dataclass(frozen=True)
class Verdict:
    """The classifier's answer for one image: the blocking label with the highest probability, and that probability."""

    label: str
    score: float
    blocked: bool


PIL_MODES = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL's resample numbers -> torch's interpolation modes


class TensorPreprocessing:
    """The image processor's own steps (resize, rescale, normalise) done with torch where the batch is, so a decoded
    GPU batch never leaves the GPU to be classified. Built only for processors whose every step it can repeat
    (`from_processor` returns None otherwise, and the processor itself runs on the 8-bit pixels)."""

    def __init__(self, height: int, width: int, mode: str, scale: float, mean: list[float], std: list[float]) -> None:
        self.height, self.width, self.mode, self.scale = height, width, mode, scale
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    @classmethod
    def from_processor(cls, processor) -> TensorPreprocessing | None:
        get = lambda name, default=None: getattr(processor, name, default)  # noqa: E731
        size = get("size") or {}
        # A plain dict from older processors, a SizeDict (attributes) from transformers 5's.
        height, width = (
            (size.get(k) if isinstance(size, dict) else getattr(size, k, None)) for k in ("height", "width")
        )
        resample = get("resample", 2)
        if not get("do_resize", True) or not height or not width:
            return None
        if get("do_center_crop") or get("do_pad") or int(resample) not in PIL_MODES:
            return None
        scale = float(get("rescale_factor", 1 / 255)) * 255 if get("do_rescale", True) else 255.0
        mean = list(get("image_mean") or (0.0, 0.0, 0.0)) if get("do_normalize", True) else [0.0, 0.0, 0.0]
        std = list(get("image_std") or (1.0, 1.0, 1.0)) if get("do_normalize", True) else [1.0, 1.0, 1.0]
        return cls(int(height), int(width), PIL_MODES[int(resample)], scale, mean, std)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) 8-bit values as floats (0..255) -> the model's pixel_values."""
        smooth = self.mode != "nearest"
        resized = F.interpolate(pixels, size=(self.height, self.width), mode=self.mode, antialias=smooth,
                                align_corners=False if smooth else None)  # fmt: skip
        if self.mode == "bicubic":
            resized = resized.clamp(0, 255)  # PIL clips the overshoot of its cubic filter
        mean, std = self.mean.to(pixels.device), self.std.to(pixels.device)
        return (resized * (self.scale / 255) - mean) / std


class ImageClassifierFilter:
    """A `transformers` image classifier deciding, per image, whether any `blocking_labels` reaches `threshold`."""

    def __init__(self, source: str, blocking_labels: tuple[str, ...], threshold: float) -> None:
        self.source, self.threshold = source, threshold
        self.blocking_labels = tuple(label.strip() for label in blocking_labels if label.strip())
        self.model = None
        self.processor = None
        self.preprocessing: TensorPreprocessing | None = None
        self.device = torch.device("cpu")
        self._blocking_ids: list[int] = []
        self._labels: dict[int, str] = {}

    @property
    def is_folder(self) -> bool:
        """Whether `source` names a folder on this machine (else a Hub repo id)."""
        return self.source.startswith(("/", ".", "~")) or Path(self.source).expanduser().is_dir()

    @property
    def name(self) -> str:
        """`source` as visitors may read it: a Hub repo id whole, a folder by its last part only (the server's paths
        are the host's business; the log names the whole path)."""
        return f"…/{Path(self.source).expanduser().resolve().name}" if self.is_folder else self.source

    def load(self, device: torch.device | str) -> None:
        """Load the model and its processor onto `device`. Raises ValueError (a sentence naming the classifier by
        `name`) when it cannot: no such repo or folder, not an image classifier, or none of the blocking labels is one
        of its labels."""
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        if self.is_folder and not Path(self.source).expanduser().is_dir():
            raise ValueError(f"the classifier folder {self.name} does not exist")

        def from_pretrained(local_files_only: bool):
            return (AutoImageProcessor.from_pretrained(self.source, local_files_only=local_files_only),
                    AutoModelForImageClassification.from_pretrained(self.source, dtype=torch.float32,
                                                                    local_files_only=local_files_only))  # fmt: skip

        offline = False
        try:
            try:  # a folder, or the Hub's cache: no network, no retries
                processor, model = from_pretrained(local_files_only=True)
            except OSError:
                if self.is_folder:  # nothing to download: the folder is what there is
                    raise
                offline = not hub_reachable()  # the download would retry each file for ~20 s, then fail anyway
                if offline:
                    raise
                processor, model = from_pretrained(local_files_only=False)
        except (OSError, ValueError, KeyError) as error:
            if self.is_folder:  # transformers' sentences name the whole path: the log has it, the visitors' do not
                log.warning("Loading the classifier folder %s failed: %s", self.source, error_summary(error))
                raise ValueError(
                    f"the classifier folder {self.name} holds no image classifier that transformers can load (a "
                    "config.json, its weights, a preprocessor_config.json)"
                ) from None
            if isinstance(error, (ValueError, KeyError)):
                raise ValueError(f"the classifier {self.name} could not be loaded ({error_summary(error)})") from None
            if offline:
                raise ValueError(f"the classifier {self.name} is not a folder here or in the local Hub cache, and the "
                                 "Hub cannot be reached (offline)") from None  # fmt: skip
            log.debug("Loading the classifier %s failed", self.source, exc_info=error)
            raise ValueError(f"the classifier {self.name} is not a folder here and could not be downloaded "
                             "(offline, no access, or no such repo)") from None  # fmt: skip
        labels = {int(i): str(name) for i, name in model.config.id2label.items()}
        by_name = {name.casefold(): i for i, name in labels.items()}
        missing = [label for label in self.blocking_labels if label.casefold() not in by_name]
        if missing or not self.blocking_labels:
            raise ValueError(
                f"the classifier {self.name} has the labels {', '.join(labels.values())}; the blocking labels "
                f"({', '.join(self.blocking_labels) or 'none'}) must be among them"
            )
        self._labels = labels
        self._blocking_ids = [by_name[label.casefold()] for label in self.blocking_labels]
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.preprocessing = TensorPreprocessing.from_processor(processor)

    def pixel_values(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [0, 1] -> the model's input, from the 8-bit pixels that would be saved."""
        pixels = (images.float().clamp(0, 1) * 255).round()
        if self.preprocessing is not None:
            return self.preprocessing(pixels.to(self.device))
        arrays = list(pixels.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())  # the processor's own path (CPU)
        return self.processor(images=arrays, return_tensors="pt")["pixel_values"].to(self.device)

    @torch.inference_mode()
    def check(self, images: torch.Tensor) -> list[Verdict]:
        """One verdict per image of a decoded (B, 3, H, W) batch in [0, 1], classified as one batch."""
        if self.model is None:
            raise RuntimeError("the classifier is not loaded")
        logits = self.model(pixel_values=self.pixel_values(images)).logits.float()
        multi_label = getattr(self.model.config, "problem_type", None) == "multi_label_classification"
        probabilities = logits.sigmoid() if multi_label else logits.softmax(dim=-1)
        scores = probabilities[:, self._blocking_ids]
        best, which = scores.max(dim=-1)
        return [
            Verdict(self._labels[self._blocking_ids[int(i)]], float(score), float(score) >= self.threshold)
            for score, i in zip(best.cpu(), which.cpu(), strict=True)
        ]


# ------------------------------------------------------------------------------------------------ the policy
@dataclass
class ContentPolicy:
    """What the manager applies. `classifier` None means the image filter is off (`off_reason` says why); `required`
    means fail closed: while the classifier is not ready, every generation is refused (`how_to_fix` ends the
    sentence). Not required, a classifier that cannot load is reported on the status line and generation goes on."""

    classifier: ImageClassifierFilter | None = None
    blocklist: PromptBlocklist | None = None
    required: bool = False
    off_reason: str = ""
    how_to_fix: str = ""
    state: str = "off"  # off | loading | ready | failed
    reason: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.classifier is not None:
            self.state = "loading"

    def load(self, device: torch.device | str) -> None:
        """Load the classifier (if any). Never raises: a failure becomes state `failed` with its reason."""
        if self.classifier is None:
            return
        try:
            self.classifier.load(device)
        except Exception as error:  # noqa: BLE001 - any failure to load is the same for the host: no filter
            reason = str(error) if isinstance(error, ValueError) else error_summary(error)
            with self._lock:
                self.state, self.reason = "failed", reason
            source = self.classifier.source  # the whole path, for the host (visitors' sentences name only its end)
            if self.required:
                log.error("Content filter %s unavailable, every generation is refused: %s", source, reason)
            else:
                log.warning("Content filter %s unavailable, images are not filtered (not required here): %s", source,
                            reason)  # fmt: skip
            return
        with self._lock:
            self.state = "ready"
        log.info("Content filter ready: %s on %s", self.classifier.source, self.classifier.device)

    @property
    def filters_images(self) -> bool:
        """Whether decoded images are classified (previews are then coarse: see krea2/preview.py)."""
        return self.classifier is not None and self.state == "ready"

    def check_prompt(self, request: GenerationRequest) -> None:
        """Raise ContentBlocked if the prompt matches the block list (the negative prompt says what not to draw, so
        it is not checked)."""
        if self.blocklist is None:
            return
        line = self.blocklist.match(request.prompt)
        if line is not None:
            raise ContentBlocked(
                f"This prompt matches entry {line} of the server's block list, so nothing was generated.", request
            )

    def admit(self, request: GenerationRequest) -> ImageClassifierFilter | None:
        """Before any GPU work: the prompt check, then the classifier to run on the images (None: images are not
        filtered). Raises ContentBlocked, or FilterUnavailable when the filter is required and not ready."""
        self.check_prompt(request)
        return self.ready_classifier()

    def ready_classifier(self, what: str = "generation") -> ImageClassifierFilter | None:
        """The classifier to run on images now (None: images are not filtered). Raises FilterUnavailable when the
        filter is required and not ready, the sentence naming `what` it refuses ("generation", "the import")."""
        if self.classifier is None:
            return None
        with self._lock:
            state, reason = self.state, self.reason
        if state == "ready":
            return self.classifier
        if not self.required:
            return None
        if state == "loading":
            raise FilterUnavailable(f"The content filter is still loading; {what} starts once it is ready. "
                                    "Try again in a moment.")  # fmt: skip
        raise FilterUnavailable(f"{what[0].upper()}{what[1:]} is refused because the required content filter is "
                                f"unavailable: {reason}. {self.how_to_fix}".strip())  # fmt: skip

    def status(self) -> str:
        """The status line's words for the filter and the block list ("" when neither applies)."""
        parts = []
        if self.classifier is None:
            if self.off_reason:
                parts.append(f"content filter: off ({self.off_reason})")
        else:
            with self._lock:
                state, reason = self.state, self.reason
            labels = ", ".join(self.classifier.blocking_labels)
            if state == "ready":
                parts.append(f"content filter: on ({self.classifier.name}, blocks {labels} ≥ "
                             f"{self.classifier.threshold:g})")  # fmt: skip
            elif state == "loading":
                parts.append("content filter: loading" + (" (generation waits for it)" if self.required else ""))
            elif self.required:
                parts.append(f"content filter: FAILED, generation refused ({reason})")
            else:
                parts.append(f"content filter: unavailable, images are not filtered ({reason}; not required here)")
        if self.blocklist is not None:
            parts.append(f"prompt block list: {len(self.blocklist)} entries")
        return " | ".join(parts)


def blocked_images(verdicts: list[Verdict], request: GenerationRequest) -> ContentBlocked | None:
    """The error for a batch with flagged images (the whole generation is blocked), or None when all passed."""
    flagged = [verdict for verdict in verdicts if verdict.blocked]
    if not flagged:
        return None
    worst = max(flagged, key=lambda verdict: verdict.score)
    which = "this image" if len(verdicts) == 1 else f"{len(flagged)} of these {len(verdicts)} images"
    return ContentBlocked(
        f"The content filter flagged {which} as {worst.label} (score {worst.score:.2f}), so nothing was saved or "
        "shown.",
        request,
    )
