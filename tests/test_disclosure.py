"""AI disclosure in every file the history writes: the XMP packet (IPTC DigitalSourceType = trainedAlgorithmicMedia)
beside the `parameters` chunk, read back by real parsers (defusedxml on the iTXt chunk, Pillow's getxmp, exiftool where
installed), and the optional signed C2PA manifest, made and verified offline with a self-made certificate."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from provenance_helpers import make_c2pa_credentials
from storage_helpers import new_generation

from storage import HistoryStore, StorageError
from storage.c2pa_manifest import C2paSetupError, C2paSigner, read_c2pa
from storage.pnginfo import read_parameters, read_text_chunks
from storage.provenance import read_provenance
from storage.xmp import PNG_XMP_KEY, TRAINED_ALGORITHMIC_MEDIA, XmpError, parse_xmp

IPTC_EXT = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"


def written_files(store: HistoryStore) -> tuple[Path, Path]:
    generation = store.add(new_generation())
    image = generation.images[0]
    return store.absolute(image.path), store.absolute(image.thumb_path)


def test_every_png_carries_the_xmp_disclosure_beside_its_parameters(store):
    png, _thumb = written_files(store)
    chunks = read_text_chunks(png)
    assert {"parameters", "krea2", PNG_XMP_KEY} <= set(chunks)  # the existing chunks are still there
    assert read_parameters(png)["parsed"]["prompt"] == "a red fox in the snow"
    assert parse_xmp(chunks[PNG_XMP_KEY])["DigitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    with Image.open(png) as image:  # Pillow's own XMP reader (defusedxml underneath)
        xmp = image.getxmp()
    description = xmp["xmpmeta"]["RDF"]["Description"]
    assert description["DigitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    assert description["CreatorTool"].startswith("Krea 2 Studio")


def test_thumbnails_carry_it_too(store):
    _png, thumb = written_files(store)
    with Image.open(thumb) as image:
        assert image.format == "WEBP"
        assert image.getxmp()["xmpmeta"]["RDF"]["Description"]["DigitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool not installed (Debian: libimage-exiftool-perl)")
def test_exiftool_reads_the_digital_source_type(tmp_path):
    store = HistoryStore(tmp_path / "data", f"sqlite:///{tmp_path / 'h.sqlite3'}").open()
    png, _ = written_files(store)
    done = subprocess.run(["exiftool", "-json", "-XMP-iptcExt:DigitalSourceType", "-PNG:Parameters", str(png)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    [tags] = json.loads(done.stdout)
    assert tags["DigitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA, tags
    assert tags["Parameters"].startswith("a red fox in the snow")


def test_the_xmp_reader_refuses_entities_and_garbage():
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">&b;</x:xmpmeta>'
    )
    for packet in (bomb, "not xml at all", "<a><b></a>"):
        with pytest.raises(XmpError):
            parse_xmp(packet)
    attribute_form = (
        f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description xmlns:Iptc4xmpExt="{IPTC_EXT}" Iptc4xmpExt:DigitalSourceType="{TRAINED_ALGORITHMIC_MEDIA}"/>'
        f"</rdf:RDF></x:xmpmeta>"
    )
    assert parse_xmp(attribute_form) == {"DigitalSourceType": TRAINED_ALGORITHMIC_MEDIA}  # the other valid spelling


def test_provenance_of_a_foreign_png_says_nothing_and_a_bad_packet_is_reported(tmp_path):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    assert read_provenance(plain) == {"ai_generated": False, "xmp": None, "c2pa": None}
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt(PNG_XMP_KEY, "<broken")
    Image.new("RGB", (8, 8)).save(tmp_path / "bad.png", pnginfo=info)
    found = read_provenance(tmp_path / "bad.png")
    assert found["ai_generated"] is False and "not readable" in found["xmp"]["error"]


@pytest.fixture(scope="module")
def signer(tmp_path_factory) -> C2paSigner:
    chain, key = make_c2pa_credentials(tmp_path_factory.mktemp("c2pa"))
    return C2paSigner.from_files(chain, key, "Krea 2 Studio", "test")


def test_a_signed_store_writes_a_valid_c2pa_manifest_and_keeps_the_other_chunks(tmp_path, signer):
    store = HistoryStore(tmp_path / "data", f"sqlite:///{tmp_path / 'h.sqlite3'}", sign_png=signer.sign_png).open()
    png, _ = written_files(store)
    manifest = read_c2pa(png)
    assert manifest["validation_state"] == "Valid"  # intact and signed (Trusted would need a CA on C2PA's list)
    assert manifest["digital_source_type"] == TRAINED_ALGORITHMIC_MEDIA and manifest["actions"] == ["c2pa.created"]
    assert manifest["claim_generator"] == "Krea 2 Studio test" and "Test signer" in manifest["signed_by"]
    assert read_parameters(png)["parsed"]["prompt"] == "a red fox in the snow"
    provenance = read_provenance(png)
    assert provenance["ai_generated"] and provenance["xmp"]["DigitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    stored = store.get(store.page().items[0].id).images[0]
    assert stored.bytes == png.stat().st_size  # the row describes the signed file


def test_a_tampered_signed_png_fails_validation(tmp_path, signer):
    source = tmp_path / "a.png"
    Image.new("RGB", (32, 32), (10, 200, 30)).save(source)
    signed = bytearray(signer.sign_png(source.read_bytes()))
    idat = signed.index(b"IDAT")
    signed[idat + 10] ^= 0xFF  # one pixel byte changed after signing
    manifest = read_c2pa(bytes(signed))
    assert manifest is not None and manifest.get("validation_state") != "Valid"


def test_bad_credentials_are_one_sentence_at_start_up(tmp_path, signer):
    chain, key = make_c2pa_credentials(tmp_path / "one")
    _other_chain, other_key = make_c2pa_credentials(tmp_path / "two")
    (tmp_path / "junk.key").write_text("not a key")
    for cert_path, key_path in ((chain, tmp_path / "junk.key"), (chain, other_key), (tmp_path / "missing.pem", key)):
        with pytest.raises(C2paSetupError) as caught:
            C2paSigner.from_files(cert_path, key_path, "Krea 2 Studio", "test")
        assert "\n" not in str(caught.value) and str(caught.value).endswith((".", ").")), caught.value


def test_a_failed_signature_saves_nothing(tmp_path):
    def refuse(_png: bytes) -> bytes:
        raise StorageError("The C2PA manifest could not be signed (test); nothing was saved.")

    store = HistoryStore(tmp_path / "data", f"sqlite:///{tmp_path / 'h.sqlite3'}", sign_png=refuse).open()
    with pytest.raises(StorageError):
        store.add(new_generation())
    assert store.count() == 0
    assert not [p for top in ("images", "thumbs") for p in (tmp_path / "data" / top).rglob("*") if p.is_file()]


def test_the_signer_comes_from_the_settings_or_stops_the_start(tmp_path):
    from studio.settings import SettingError, load_settings
    from studio.signing import png_signer

    chain, key = make_c2pa_credentials(tmp_path / "c2pa")
    assert png_signer(load_settings({})) is None
    sign = png_signer(load_settings({"KREA2_C2PA_CERT": str(chain), "KREA2_C2PA_KEY": str(key)}))
    source = tmp_path / "a.png"
    Image.new("RGB", (16, 16)).save(source)
    assert read_c2pa(sign(source.read_bytes()))["claim_generator"].startswith("Krea 2 Studio")
    with pytest.raises(SettingError, match="must be set together"):
        png_signer(load_settings({"KREA2_C2PA_CERT": str(chain)}))
    with pytest.raises(SettingError, match="cannot sign"):
        png_signer(load_settings({"KREA2_C2PA_CERT": str(key), "KREA2_C2PA_KEY": str(key)}))


def test_png_info_shows_the_disclosure_and_the_manifest(manager, tmp_path, signer):
    from studio.service import StudioService
    from ui.handlers import Handlers

    store = HistoryStore(tmp_path / "data", f"sqlite:///{tmp_path / 'h.sqlite3'}", sign_png=signer.sign_png).open()
    png, _ = written_files(store)
    shown = Handlers(StudioService(manager, store)).png_provenance(str(png))
    assert shown["ai_generated"] and shown["xmp"]["DigitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    assert shown["c2pa"]["validation_state"] == "Valid"
    (tmp_path / "junk.png").write_bytes(b"not a png")
    assert Handlers(StudioService(manager, store)).png_provenance(str(tmp_path / "junk.png")) is None
