"""Recent uploads kept model-ready: several styles asked for one artwork, or a retry, skip the work.

An upload is known by what the request carried (its bytes, or its base64 text as sent, so a repeat
skips the base64 decode too), with the preprocessing options. A small upload (up to 256 KB, the
common 1024-pixel JPEG) is kept in its entry and compared whole on a repeat, under a key made from
its length and a few of its characters: a comparison costs a few microseconds where hashing 100 KB with BLAKE3
cost ~20 on every request. A larger one is known by its BLAKE3 hash. An entry keeps the cache keys, and
once a request needed them, the prepared image and its data URL (base64 of ~100 KB is worth keeping
too). An upload that was a cache hit is kept as its keys alone: the JPEG was never made.

``stage()`` is the cache's way in (the keys first, the JPEG on ``finish()``); ``prepare()`` the way of
a request that does not look in the cache.
"""

from __future__ import annotations

from collections import OrderedDict

from blake3 import blake3

from gateway.images.payload import decode_image_payload
from gateway.images.prepare import EarlyKeys, ImageKeys, ImageOptions, PreparedImage
from gateway.images.worker import ImageWorker, Staged

# uploads up to this size (as sent: base64 text counts) are memoized; those above MEMO_KEEP_BYTES are
# known by a BLAKE3 hash made on the event loop (about 0.6 ms per 4 MB)
MEMO_MAX_BYTES = 6 * 1024 * 1024
# uploads up to this size are kept in their entry and compared instead (at most 64 MB for 256 entries)
MEMO_KEEP_BYTES = 256 * 1024
_PICKS = 16  # characters picked along a kept upload for its key, and those of its end
_TAIL = 32

Upload = bytes | str
# the cache keys, or the prepared image itself (it is an ImageKeys) and its data URL (None until then);
# last, the upload itself where it is compared rather than hashed
Entry = tuple[ImageKeys, str | None, Upload | None]

# the prepared image and its data URL
Full = tuple[PreparedImage, str]


class StagedUpload:
    """An upload's cache keys (``keys``); ``finish()`` gives the model-ready image and its data URL,
    ``drop()`` says it is not needed. One of the two must follow, as with ``Staged``; both may be
    called again. From a memo entry with the image, ``finish()`` costs nothing; from one with the keys
    alone, the upload is prepared again (its cache entry is gone, or it is asked in a new scope)."""

    def __init__(
        self,
        memo: ImageMemo,
        key: bytes | None,
        source: bytes | str,
        options: ImageOptions,
        keys: ImageKeys,
        full: Full | None = None,
        staged: Staged | None = None,
    ) -> None:
        self.keys = keys
        self._memo = memo
        self._key = key
        self._source = source
        self._options = options
        self._full = full
        self._staged = staged

    async def finish(self) -> Full:
        if self._full is not None:
            return self._full
        if self._staged is not None:
            self._full = self._memo._kept(self._key, self._source, await self._staged.finish())
        else:
            self._full = await self._memo._fresh(self._key, self._source, self._options)
        return self._full

    def drop(self) -> None:
        if self._staged is not None:
            self._staged.drop()  # a no-op once finished


class ImageMemo:
    def __init__(self, worker: ImageWorker, entries: int) -> None:
        self.worker = worker
        self.entries = entries
        self._memo: OrderedDict[bytes, Entry] = OrderedDict()
        self._prefixes: dict[ImageOptions, bytes] = {}  # each options' part of a key

    async def stage(self, source: bytes | str, options: ImageOptions, early: EarlyKeys | None = None) -> StagedUpload:
        """The upload's cache keys, from the memo or from a worker that holds on to the pixels until
        the answer's ``finish()`` or ``drop()``; ``source`` is bytes, or base64 / a data URL.
        ``early``: as ``ImageWorker.stage``'s, called only when a worker makes the keys."""
        key = self._key(source, options)
        seen = self._recall(key, source)
        if seen is not None:
            image, url = seen
            full = (image, url) if isinstance(image, PreparedImage) and url is not None else None
            return StagedUpload(self, key, source, options, image, full=full)
        staged = await self.worker.stage(_raw(source), options, early)
        if key is not None and key not in self._memo:  # a request alongside may have kept it already
            self._keep(key, source, staged.keys, None)
        return StagedUpload(self, key, source, options, staged.keys, staged=staged)

    async def prepare(self, source: bytes | str, options: ImageOptions) -> Full:
        """The model-ready image and its data URL; ``source`` is bytes, or base64 / a data URL."""
        key = self._key(source, options)
        seen = self._recall(key, source)
        if seen is not None:
            image, url = seen
            if isinstance(image, PreparedImage) and url is not None:
                return image, url
        return await self._fresh(key, source, options)

    async def _fresh(self, key: bytes | None, source: bytes | str, options: ImageOptions) -> Full:
        """The upload prepared in full by a worker, and kept."""
        return self._kept(key, source, await self.worker.prepare(_raw(source), options))

    def _kept(self, key: bytes | None, source: Upload, image: PreparedImage) -> Full:
        full = (image, image.data_url())
        if key is not None:
            self._keep(key, source, *full)
        return full

    def _recall(self, key: bytes | None, source: Upload) -> tuple[ImageKeys, str | None] | None:
        """The entry of ``source`` under ``key``, now the most recent; None if there is none (or no key).
        A kept upload must equal ``source`` (another with the same length and picks is not it)."""
        if key is None:
            return None
        seen = self._memo.get(key)
        if seen is None:
            return None
        keys, url, kept = seen
        if kept is not None and kept != source:
            return None
        self._memo.move_to_end(key)
        return keys, url

    def _key(self, source: Upload, options: ImageOptions) -> bytes | None:
        """The upload's memo key; None when it is kept out of the memo (too large, or no memo)."""
        if self.entries <= 0:
            return None
        n = len(source)  # characters of base64 text are its bytes, whatever their kind
        if n > MEMO_MAX_BYTES:
            return None
        prefix = self._prefixes.get(options)
        if prefix is None:
            if len(self._prefixes) >= 64:
                self._prefixes.clear()
            prefix = self._prefixes[options] = repr(options).encode()
        h = blake3(prefix)
        h.update(b"b64:" if isinstance(source, str) else b"raw:")
        if n <= MEMO_KEEP_BYTES:  # kept and compared: the key need only spread them
            h.update(b"kept:%d:" % n)
            h.update(_sample(source))
            return h.digest(16)
        h.update(_bytes(source))
        return h.digest(16)

    def _keep(self, key: bytes, source: Upload, keys: ImageKeys, url: str | None) -> None:
        kept = source if len(source) <= MEMO_KEEP_BYTES else None  # as _key decided: compared, or hashed
        self._memo[key] = (keys, url, kept)
        self._memo.move_to_end(key)
        while len(self._memo) > self.entries:
            self._memo.popitem(last=False)


def _sample(source: Upload) -> bytes:
    """A few characters spread over ``source``, and its end; all of it when it is short."""
    if len(source) <= _PICKS * _TAIL:
        return _bytes(source)
    step = len(source) // _PICKS
    if isinstance(source, str):
        return _bytes(source[::step][:_PICKS] + source[-_TAIL:])
    return source[::step][:_PICKS] + source[-_TAIL:]


def _bytes(source: Upload) -> bytes:
    return source.encode("utf-8", "surrogatepass") if isinstance(source, str) else source


def _raw(source: bytes | str) -> bytes:
    return decode_image_payload(source) if isinstance(source, str) else source
