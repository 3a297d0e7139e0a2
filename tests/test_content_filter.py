"""The engine's content checks (krea2/content_filter.py): the image classifier (a tiny one built in the real layout,
whose decision the test controls: it flags the demo model's red), its GPU-style preprocessing against the processor's
own, the prompt block list, fail-closed, and the manager applying all of it to a real demo generation, previews
included."""

from __future__ import annotations

import contextlib
import time

import numpy as np
import pytest
import torch
from filter_helpers import build_random_vit, build_red_flagging_classifier

from demo.scenes import COLOURS
from krea2.content_filter import (
    BlocklistError,
    ContentPolicy,
    ImageClassifierFilter,
    PromptBlocklist,
)
from krea2.errors import ContentBlocked, FilterUnavailable
from krea2.preview import FILTERED_PREVIEW_CELLS
from krea2.request import GenerationRequest


@pytest.fixture(scope="session")
def red_classifier(tmp_path_factory) -> str:
    return str(build_red_flagging_classifier(tmp_path_factory.mktemp("red-classifier")))


def solid(colour: tuple[int, int, int], side: int = 96) -> torch.Tensor:
    return (torch.tensor(colour, dtype=torch.float32) / 255).view(3, 1, 1).expand(3, side, side).clone()


def loaded(source: str, labels=("nsfw",), threshold: float = 0.5) -> ImageClassifierFilter:
    image_filter = ImageClassifierFilter(source, labels, threshold)
    image_filter.load("cpu")
    return image_filter


def test_the_classifier_flags_the_demo_red_and_no_other_demo_colour(red_classifier):
    image_filter = loaded(red_classifier)
    assert image_filter.preprocessing is not None  # a ViTImageProcessor: repeated with torch, where the batch is
    torch.manual_seed(0)
    batch = torch.stack([solid(c) for c in COLOURS.values()])
    batch = (batch + 0.03 * torch.randn_like(batch)).clamp(0, 1)  # not quite flat, as generated pictures are
    verdicts = image_filter.check(batch)  # one batch, one verdict per image
    assert {name: v.blocked for name, v in zip(COLOURS, verdicts, strict=True)} == {n: n == "red" for n in COLOURS}
    assert all(v.label == "nsfw" for v in verdicts) and verdicts[0].score > 0.99
    # Mostly red with a white shape: flagged; white with a small red shape: not.
    red_with_white = solid(COLOURS["red"])
    red_with_white[:, 32:64, 32:64] = 245 / 255
    white_with_red = solid(COLOURS["white"])
    white_with_red[:, 40:56, 40:56] = solid(COLOURS["red"], 16)
    assert [v.blocked for v in image_filter.check(torch.stack([red_with_white, white_with_red]))] == [True, False]
    # The threshold is the operator's: a third red scores between 0.5 and 0.99 (the score rises with the red area).
    third = solid(COLOURS["white"])
    third[:, :, :32] = solid(COLOURS["red"])[:, :, :32]
    [verdict] = image_filter.check(third[None])
    assert 0.5 < verdict.score < 0.99 and verdict.blocked
    assert not loaded(red_classifier, threshold=0.99).check(third[None])[0].blocked


def test_tensor_preprocessing_is_the_processors_own(tmp_path):
    """The torch steps (resize with antialiasing, rescale, normalise) give the processor's pixel_values to within one
    8-bit level, for a Falconsai-shaped ViT classifier loaded through the Auto classes."""
    image_filter = loaded(str(build_random_vit(tmp_path / "vit")))
    assert type(image_filter.model).__name__ == "ViTForImageClassification"
    torch.manual_seed(1)
    for shape in ((2, 3, 96, 80), (1, 3, 512, 512)):
        images = torch.rand(shape)
        ours = image_filter.pixel_values(images)
        arrays = list((images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
        theirs = image_filter.processor(images=arrays, return_tensors="pt")["pixel_values"]
        assert ours.shape == theirs.shape
        assert float((ours - theirs).abs().max()) <= 2 / 255 * 1.01  # one level of 0..255 is 2/255 after (x-.5)/.5


def test_a_processor_the_tensor_path_cannot_repeat_runs_itself(tmp_path, red_classifier):
    """A processor with steps the torch path does not repeat (ConvNeXt's crop_pct resize and centre crop) is run as
    is, on the 8-bit pixels: same decisions."""
    import shutil

    from transformers import ConvNextImageProcessor

    folder = tmp_path / "convnext-processor"
    shutil.copytree(red_classifier, folder)
    (folder / "preprocessor_config.json").unlink()
    convnext = ConvNextImageProcessor(size={"shortest_edge": 64}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    convnext.save_pretrained(folder)
    image_filter = loaded(str(folder))
    assert image_filter.preprocessing is None
    batch = torch.stack([solid(COLOURS["red"]), solid(COLOURS["blue"])])
    assert [v.blocked for v in image_filter.check(batch)] == [True, False]


def test_load_failures_are_sentences_and_never_raise(tmp_path, red_classifier):
    broken = tmp_path / "broken-classifier"
    broken.mkdir()
    (broken / "notes.txt").write_text("the classifier was meant to be copied here")
    untyped = tmp_path / "untyped-classifier"  # transformers' error for it names the folder's whole path (review)
    untyped.mkdir()
    (untyped / "config.json").write_text("{}")
    (untyped / "preprocessor_config.json").write_text('{"image_processor_type": "ViTImageProcessor"}')
    for source, labels, expected in (
        (red_classifier, ("porn",), "has the labels normal, nsfw"),
        (str(tmp_path / "missing"), ("nsfw",), "does not exist"),
        (str(untyped), ("nsfw",), "the classifier folder …/untyped-classifier holds no image classifier"),
        (str(broken), ("nsfw",), "the classifier folder …/broken-classifier holds no image classifier"),  # not "no
        # folder here": it is one, with the wrong things in it
        ("someone/not-a-cached-repo", ("nsfw",), "the Hub cannot be reached (offline)"),  # HF_HUB_OFFLINE (conftest)
    ):
        policy = ContentPolicy(ImageClassifierFilter(source, labels, 0.5), required=True, how_to_fix="Fix it.")
        assert policy.state == "loading"
        policy.load("cpu")
        assert policy.state == "failed" and expected in policy.reason and "\n" not in policy.reason
        assert "could not be loaded (" not in policy.reason  # one sentence, not one wrapped in another
        assert str(tmp_path) not in policy.reason
        with pytest.raises(FilterUnavailable) as caught:
            policy.admit(GenerationRequest(prompt="a fox"))
        assert "required content filter is unavailable" in str(caught.value) and str(caught.value).endswith("Fix it.")
        assert "FAILED, generation refused" in policy.status()


def test_fail_closed_only_where_required(red_classifier):
    request = GenerationRequest(prompt="a fox")
    loading = ContentPolicy(ImageClassifierFilter(red_classifier, ("nsfw",), 0.5), required=True)
    with pytest.raises(FilterUnavailable, match="still loading"):
        loading.admit(request)
    optional = ContentPolicy(ImageClassifierFilter("/nowhere", ("nsfw",), 0.5), required=False)
    optional.load("cpu")
    assert optional.admit(request) is None  # not required (loopback): generation goes on, unfiltered...
    assert "unavailable, images are not filtered" in optional.status()  # ...and the status line says so
    off = ContentPolicy(off_reason="turned off for local use")
    assert off.admit(request) is None and off.status() == "content filter: off (turned off for local use)"


def test_the_block_list(tmp_path):
    listing = tmp_path / "blocked.txt"
    listing.write_text("# comments and blank lines are skipped\n\nforbidden\nvery bad phrase\nre:\\bsp[a@]+m\\b\n")
    blocklist = PromptBlocklist.from_file(listing)
    assert len(blocklist) == 3
    cases = {
        "a FORBIDDEN fox": 3,  # case-insensitive
        "ｆｏｒｂｉｄｄｅｎ": 3,  # full-width letters fold to the same word
        "a very   bad\nphrase": 4,  # any whitespace between the words of a phrase
        "for\u200bbid\u00adden": 3,  # invisible characters inside a word (a zero-width space, a soft hyphen)
        "a very\u200bbad\u2060phrase": 4,  # and between the words of a phrase (a zero-width space, a word joiner)
        "forbid\u034fden": 3,  # a combining grapheme joiner (not a format character: the review found it passing)
        "a very\u3164bad phrase": 4,  # a Hangul filler, drawn as nothing
        "spaaam and eggs": 5,  # a regular expression
        "f\u03bfrbidden": 3,  # a Greek omicron for the o (a hostile pass found it passing)
        "\u0455\u0440\u0430\u0430\u0430m and eggs": 5,  # Cyrillic look-alikes and a Latin m, for a regular expression
        "the forbiddenness of it": None,  # whole words only
        "a very bad fox": None,
        "a red fox": None,
    }
    assert {prompt: blocklist.match(prompt) for prompt in cases} == cases
    # Look-alike capitals count (read before case-folding: a review found a Cyrillic capital K passing), a word all in
    # look-alikes reads as its Latin twin, and a `re:` entry matches inside a word with other letters too.
    lookalikes = PromptBlocklist.from_text(
        "cop\nkot\nkill\nre:sp[a@]+m\nsik\nfail\nchild abuse\ngore\nre:rape\nre:k[i1]ll"
    )
    admitted = {
        "a \u0421\u041e\u0420 car": 1,  # COP in Cyrillic capitals
        "\u041aILL them": 3,  # a Cyrillic capital ka
        "\u039a\u0399LL": 3,  # Greek capitals kappa and iota (the data reads this iota as an l)
        "ki\u04cf\u04cf": 3,  # Cyrillic palochkas for the two l's (the data reads them as i's)
        "k\u0456\u04cf\u04cf": 3,  # a Ukrainian i and two palochkas: one bar-like letter as an i, two as l's
        "\u041aILL\u00d7": 3,  # a multiplication sign after the word is not read as an x that lengthens it
        "\u0441h\u0456\u04cfd abuse": 7,  # a phrase
        "\u0261ore": 8,  # a Latin script g
        "\u0455\u0440\u0430\u0430\u0430m\u0436": 4,  # the regular expression, with a Cyrillic zhe after it
        "\u043a\u043e\u0442": None,  # lower-case Cyrillic k and t look like no Latin letter: not "kot"
        "s\u0131k s\u0131k gelir": None,  # Turkish dotless i is a Latin letter of its own, not a disguised i
        "fall": None,  # an i or l matches a bar-like look-alike, not the other ASCII letter
        "\ue000kill": 3,  # the private-use mark bar-like letters are read as, typed, is a separator
        "overk\u0456\u04c0\u04c0": 10,  # a Ukrainian i and capital palochkas, for a `re:` line (as the data reads them)
        "fa\u13de\u13de": None,  # Cherokee L-shaped letters are l's, not i's
        "#\u0441\u0438\u0433\u0430\u0440\u0435\u0442\u044b_vape": None,  # _ does not join a Russian word to ASCII
        # Russian "cigarettes" and "Margaret" hold "rape" in look-alike letters among others: left as typed.
        "\u0441\u0438\u0433\u0430\u0440\u0435\u0442\u044b \u041c\u0430\u0440\u0433\u0430\u0440\u0435\u0442": None,
    }
    assert {prompt: lookalikes.match(prompt) for prompt in admitted} == admitted
    policy = ContentPolicy(blocklist=blocklist)
    with pytest.raises(ContentBlocked, match="entry 3 of the server's block list"):
        policy.admit(GenerationRequest(prompt="forbidden things"))
    # Invisible characters are taken out of a request's prompt, so one used as nothing and another as a space (which
    # no single reading of the raw text catches) leave the words the model reads, and the block list checks them.
    mixed = GenerationRequest(prompt="a very\u200bbad phr\u200base")
    assert mixed.prompt == "a verybad phrase" and blocklist.match("a very\u200bbad phr\u200base") is None
    sneaky = GenerationRequest(prompt="for\u200dbid\ufe0fden")  # emoji joiners, between letters
    assert sneaky.prompt == "forbidden"
    assert GenerationRequest(prompt="a 👨\u200d👩\u200d👧 in ❄\ufe0f").prompt == "a 👨\u200d👩\u200d👧 in ❄\ufe0f"
    with pytest.raises(ContentBlocked):
        policy.admit(sneaky)
    assert policy.admit(GenerationRequest(prompt="a fox", negative_prompt="forbidden", guidance=1.0)) is None
    listing.write_text("fine\nre:(unclosed\n")
    with pytest.raises(BlocklistError, match="Line 2 of the prompt block list"):
        PromptBlocklist.from_file(listing)
    with pytest.raises(BlocklistError, match="cannot be read"):
        PromptBlocklist.from_file(tmp_path / "missing.txt")
    for everything in ("re:", "re: .*", "re:(x)?"):  # a hostile pass: `re:` alone was taken, and refused every prompt
        with pytest.raises(BlocklistError, match=r"^Line 2 of the prompt block list matches an empty prompt"):
            PromptBlocklist.from_text(f"fine\n{everything}\n")
    assert len(PromptBlocklist.from_text("re:^$\n")) == 1  # matches only the empty prompt: refuses no real one


# ------------------------------------------------------------------------------------------------ in the manager
@contextlib.contextmanager
def policy_on(manager, policy: ContentPolicy):
    """The session's demo manager with `policy` for the duration (the manager is shared by other tests)."""
    policy.load(manager.device)
    previous, manager.content_policy = manager.content_policy, policy
    try:
        yield policy
    finally:
        manager.content_policy = previous


def is_mosaic(preview, cells: int = FILTERED_PREVIEW_CELLS) -> bool:
    pixels = np.asarray(preview)
    h, w, _ = pixels.shape
    blocks = pixels.reshape(cells, h // cells, cells, w // cells, 3)
    return bool((blocks == blocks[:, :1, :, :1]).all())


def test_the_manager_blocks_a_flagged_generation_before_any_image_exists(manager, red_classifier):
    policy = ContentPolicy(ImageClassifierFilter(red_classifier, ("nsfw",), 0.5), required=True)
    previews = []
    with policy_on(manager, policy):
        assert "content filter: on (" in manager.status().summary()
        red = GenerationRequest(prompt="a white circle on a red background", width=256, height=256, seed=3)
        with pytest.raises(ContentBlocked) as caught:
            manager.generate(red, on_step=lambda i, n, image: previews.append(image))
        assert caught.value.request.seed == 3 and "flagged this image as nsfw" in str(caught.value)
        # Every preview of the run was a coarse mosaic, the last steps' included.
        assert len(previews) == red.steps and all(is_mosaic(p) for p in previews)
        blue = GenerationRequest(
            prompt="a red circle on a blue background", width=256, height=256, seed=3, num_images=2
        )
        result = manager.generate(blue)
        assert len(result.images) == 2
        batch = GenerationRequest(prompt="a yellow star on a red background", width=256, height=256, seed=5,
                                  num_images=2)  # fmt: skip
        with pytest.raises(ContentBlocked, match="of these 2 images"):  # one flagged image blocks the whole batch
            manager.generate(batch)
    unfiltered = []
    manager.generate(red, on_step=lambda i, n, image: unfiltered.append(image))
    assert not all(is_mosaic(p) for p in unfiltered)  # without the filter, previews keep their detail


def test_fail_closed_refuses_before_any_gpu_work(manager, tmp_path):
    policy = ContentPolicy(ImageClassifierFilter(str(tmp_path / "missing"), ("nsfw",), 0.5), required=True,
                           how_to_fix="Set KREA2_FILTER_MODEL to a classifier that loads.")  # fmt: skip
    steps = []
    with policy_on(manager, policy):
        with pytest.raises(FilterUnavailable) as caught:
            manager.generate(GenerationRequest(prompt="a red circle on a blue background", width=256, height=256),
                             on_step=lambda *a: steps.append(a))  # fmt: skip
    assert steps == [] and str(caught.value).endswith("Set KREA2_FILTER_MODEL to a classifier that loads.")


def test_a_blocked_prompt_never_reaches_the_model(manager, tmp_path):
    policy = ContentPolicy(blocklist=PromptBlocklist.from_text("circle"))
    steps = []
    with policy_on(manager, policy), pytest.raises(ContentBlocked, match="block list"):
        manager.generate(GenerationRequest(prompt="a red circle", width=256, height=256),
                         on_step=lambda *a: steps.append(a))  # fmt: skip
    assert steps == []


@pytest.fixture
def online_without_proxy(monkeypatch):
    """HF_HUB_OFFLINE unset (the tests set it) and no proxy to leave the decision to: `hub_reachable` probes."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_an_uncached_classifier_offline_fails_at_once_without_a_download(monkeypatch, online_without_proxy):
    """Offline without HF_HUB_OFFLINE set (a newcomer's first `make run` with no network), the download of a classifier
    that is not cached would retry each file for ~20 s; the cache is tried first and the Hub only when it answers."""
    import socket

    probes = []

    def unreachable(address, timeout=None):
        probes.append(address)
        raise OSError("Name or service not known")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    policy = ContentPolicy(ImageClassifierFilter("someone/not-a-cached-repo", ("nsfw",), 0.5), required=False)
    started = time.perf_counter()
    policy.load("cpu")
    assert time.perf_counter() - started < 5
    assert policy.state == "failed" and "the Hub cannot be reached (offline)" in policy.reason
    assert "ValueError" not in policy.reason
    assert len(probes) == 1 and probes[0][0] == "huggingface.co"


def test_behind_a_proxy_the_hub_is_left_to_the_proxy(monkeypatch, online_without_proxy):
    """A direct TCP probe says nothing where only a proxy gets out: with one configured, the download is tried."""
    import socket

    from krea2.hub_errors import hub_reachable

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(OSError("no route")))
    assert not hub_reachable()
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert hub_reachable()
