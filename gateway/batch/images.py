"""Reading an artwork's image: local files off the event loop, URLs with a timeout and a byte cap.

The batch tool sends the encoded file as it is (the gateway decodes and resizes); it only checks
the magic number, so that a file that is no image fails here with a clear reason instead of
costing a request.
"""

from __future__ import annotations

import asyncio
import base64
import os

import httpx

from gateway.batch.model import Artwork
from gateway.batch.retry import Transient, parse_retry_after, retryable_status
from gateway.errors import HuayuError, NotFound, PayloadTooLarge, Unprocessable, UnsupportedMedia

# what the gateway's image stage accepts
ACCEPTED_TEXT = "JPEG, PNG, WebP, TIFF"


def sniff(data: bytes) -> str | None:
    """The media type of an image the gateway accepts, from its first bytes; None if not one."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    return None


class LoadedImage:
    __slots__ = ("b64", "mime", "size")

    def __init__(self, b64: str, mime: str, size: int) -> None:
        self.b64 = b64
        self.mime = mime
        self.size = size

    @property
    def data_url(self) -> str:
        return f"data:{self.mime};base64,{self.b64}"


def _check(data: bytes, name: str) -> LoadedImage:
    mime = sniff(data)
    if mime is None:
        what = "empty" if not data else f"not an image it can read (starts {data[:8]!r})"
        raise UnsupportedMedia(f"{name} is {what}; accepted: {ACCEPTED_TEXT}.")
    return LoadedImage(base64.b64encode(data).decode("ascii"), mime, len(data))


def _read_file(path: str, max_bytes: int, name: str) -> LoadedImage:
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise PayloadTooLarge(f"{name} is {size / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.0f} MiB.")
            data = f.read(max_bytes + 1)
    except FileNotFoundError as e:
        raise NotFound(f"{name} does not exist ({path}).") from e
    except IsADirectoryError as e:
        raise Unprocessable(f"{name} is a folder, not an image file.") from e
    except OSError as e:
        raise Unprocessable(f"{name} cannot be read: {e.strerror or e}.") from e
    return _check(data, name)


async def load_image(art: Artwork, client: httpx.AsyncClient, max_bytes: int) -> LoadedImage:
    """Raises a HuayuError naming the artwork and what was wrong."""
    if not art.remote:
        return await asyncio.to_thread(_read_file, art.location, max_bytes, art.source)
    data = await _fetch(art.location, client, max_bytes)
    # base64 of a few MiB takes milliseconds: off the loop, where 32 workers would otherwise queue on it
    return await asyncio.to_thread(_check, data, art.location)


async def _fetch(url: str, client: httpx.AsyncClient, max_bytes: int) -> bytes:
    try:
        async with client.stream("GET", url) as response:
            status = response.status_code
            if status >= 400:
                kind: type[HuayuError] = NotFound if status in (404, 410) else Unprocessable
                err = kind(f"The image URL {url} answered HTTP {status}.")
                if retryable_status(status):
                    raise Transient(err, parse_retry_after(response.headers.get("retry-after")))
                raise err
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                mib = int(declared) / 2**20
                raise PayloadTooLarge(f"The image at {url} is {mib:.1f} MiB; the limit is {max_bytes / 2**20:.0f} MiB.")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(f"The image at {url} is larger than {max_bytes / 2**20:.0f} MiB.")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.TimeoutException as e:
        raise Transient(Unprocessable(f"The image URL {url} did not answer in time ({type(e).__name__}).")) from e
    except (httpx.TransportError, httpx.DecodingError) as e:
        raise Transient(Unprocessable(f"The image URL {url} cannot be fetched ({type(e).__name__}: {e}).")) from e
    except (httpx.HTTPError, httpx.InvalidURL) as e:  # too many redirects, a malformed URL: trying again won't help
        raise Unprocessable(f"The image URL {url} cannot be fetched ({type(e).__name__}: {e}).") from e
