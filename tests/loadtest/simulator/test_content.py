"""Counting and wording of the simulator: real images made with Pillow, no network."""

from __future__ import annotations

import base64
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from loadtest.simulator.content import (
    IMAGE_TOKENS_UNKNOWN,
    ContentError,
    generate,
    image_size,
    image_tokens,
    prompt_tokens,
    smart_resize_tokens,
    split_tokens,
)


def _b64(image: Image.Image, fmt: str, **kwargs: object) -> str:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return base64.b64encode(buf.getvalue()).decode()


def _exif(size: int) -> bytes:
    exif = Image.Exif()
    exif[0x010E] = "x" * size  # ImageDescription
    return exif.tobytes()


@given(st.text())
def test_split_tokens_gives_the_text_back(text: str) -> None:
    assert "".join(split_tokens(text)) == text


def test_split_tokens_cuts_cjk_by_character_and_latin_by_word() -> None:
    assert split_tokens("Safety: Unsafe\n画作") == ["Safety:", " Unsafe", "\n", "画", "作"]


@pytest.mark.parametrize(
    ("fmt", "kwargs"),
    [
        ("PNG", {}),
        ("GIF", {}),
        ("JPEG", {"quality": 80}),
        # EXIF blocks before the frame header make the parser walk segments, past its first windows
        ("JPEG", {"exif": _exif(1_000)}),
        ("JPEG", {"exif": _exif(60_000)}),
        ("WEBP", {"lossless": True}),
        ("WEBP", {"quality": 70}),
    ],
)
def test_image_size_reads_the_header(fmt: str, kwargs: dict[str, object]) -> None:
    image = Image.new("RGB", (1000, 750), (120, 80, 40))
    assert image_size(_b64(image, fmt, **kwargs)) == (1000, 750)


def test_image_size_is_none_for_other_bytes() -> None:
    assert image_size(base64.b64encode(b"not an image at all, just text").decode()) is None
    assert image_size("@@@not base64@@@") is None


def test_visual_tokens_follow_qwen3_vl_resize() -> None:
    assert smart_resize_tokens(1024, 768) == 32 * 24 + 2
    assert smart_resize_tokens(1024, 1024) == 1026
    assert smart_resize_tokens(100, 100) == 8 * 8 + 2  # lifted to min_pixels 65,536
    assert smart_resize_tokens(8000, 8000) <= 16_384 + 2  # capped by max_pixels


def test_image_tokens_from_data_url_and_remote_url() -> None:
    url = "data:image/png;base64," + _b64(Image.new("RGB", (512, 512)), "PNG")
    assert image_tokens(url) == 16 * 16 + 2
    assert image_tokens("https://example.invalid/a.jpg") == IMAGE_TOKENS_UNKNOWN
    # unreadable data falls back on an estimate from its length, never below the processor's minimum
    assert image_tokens("data:image/jpeg;base64," + "QUJD" * 10) == 64 + 2
    with pytest.raises(ContentError, match="base64"):
        image_tokens("data:image/png,rawbytes")


def test_prompt_tokens_counts_text_images_and_language() -> None:
    image = "data:image/png;base64," + _b64(Image.new("RGB", (1024, 768)), "PNG")
    zh = prompt_tokens(
        [
            {"role": "system", "content": "你是博物馆讲解员。"},
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": "描述这幅画"}],
            },
        ]
    )
    assert zh.chinese
    assert zh.tokens == 3 + 4 + 9 + 4 + 770 + 5
    en = prompt_tokens([{"role": "user", "content": "Describe this painting, please."}])
    assert not en.chinese
    assert en.tokens == 3 + 4 + 8
    assert (
        prompt_tokens([{"role": "user", "content": "a"}]).seed != prompt_tokens([{"role": "user", "content": "b"}]).seed
    )


@pytest.mark.parametrize(
    ("messages", "words"),
    [
        (None, "non-empty list"),
        ([], "non-empty list"),
        (["hi"], r"messages\[0\] must be an object"),
        ([{"content": "hi"}], "role"),
        ([{"role": "user", "content": 5}], "string or a list"),
        ([{"role": "user", "content": [{"type": "audio"}]}], "accepted: 'text', 'image_url'"),
        ([{"role": "user", "content": [{"type": "text"}]}], "string 'text'"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "'url'"),
    ],
)
def test_prompt_tokens_rejects_malformed_messages(messages: object, words: str) -> None:
    with pytest.raises(ContentError, match=words):
        prompt_tokens(messages)


def test_generate_is_deterministic_and_sized() -> None:
    assert generate(7, 50, True) == generate(7, 50, True)
    assert generate(7, 50, True) != generate(8, 50, True)
    long = generate(123, 10_000, False)  # longer than the drawn sequence: it wraps
    assert len(long) == 10_000
    assert long[0][0].isupper() and long[-1] == "."
    zh = generate(5, 20, True)
    assert zh[-1] == "。" and zh[0] not in ("，", ",")
    assert generate(5, 0, True) == []
