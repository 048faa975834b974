"""Recent uploads kept model-ready: several styles asked for one artwork, or a retry, skip the work.

An upload is known by what the request carried (its bytes, or its base64 text as sent, so a repeat
skips the base64 decode too), with the preprocessing options. An entry keeps the cache keys, and
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

# uploads up to this size (as sent: base64 text counts) are hashed on the event loop for the memo
# (BLAKE3: about 0.6 ms per 4 MB)
MEMO_MAX_BYTES = 6 * 1024 * 1024

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
            self._full = self._memo._kept(self._key, await self._staged.finish())
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
        # the keys alone (None for the rest), or the prepared image itself (it is an ImageKeys) and its data URL
        self._memo: OrderedDict[bytes, tuple[ImageKeys, str | None]] = OrderedDict()

    async def stage(self, source: bytes | str, options: ImageOptions, early: EarlyKeys | None = None) -> StagedUpload:
        """The upload's cache keys, from the memo or from a worker that holds on to the pixels until
        the answer's ``finish()`` or ``drop()``; ``source`` is bytes, or base64 / a data URL.
        ``early``: as ``ImageWorker.stage``'s, called only when a worker makes the keys."""
        key = self._key(source, options)
        seen = self._recall(key)
        if seen is not None:
            image, url = seen
            full = (image, url) if isinstance(image, PreparedImage) and url is not None else None
            return StagedUpload(self, key, source, options, image, full=full)
        staged = await self.worker.stage(_raw(source), options, early)
        if key is not None and key not in self._memo:  # a request alongside may have kept it already
            self._keep(key, (staged.keys, None))
        return StagedUpload(self, key, source, options, staged.keys, staged=staged)

    async def prepare(self, source: bytes | str, options: ImageOptions) -> Full:
        """The model-ready image and its data URL; ``source`` is bytes, or base64 / a data URL."""
        key = self._key(source, options)
        seen = self._recall(key)
        if seen is not None:
            image, url = seen
            if isinstance(image, PreparedImage) and url is not None:
                return image, url
        return await self._fresh(key, source, options)

    async def _fresh(self, key: bytes | None, source: bytes | str, options: ImageOptions) -> Full:
        """The upload prepared in full by a worker, and kept."""
        return self._kept(key, await self.worker.prepare(_raw(source), options))

    def _kept(self, key: bytes | None, image: PreparedImage) -> Full:
        full = (image, image.data_url())
        if key is not None:
            self._keep(key, full)
        return full

    def _recall(self, key: bytes | None) -> tuple[ImageKeys, str | None] | None:
        """The entry for ``key``, now the most recent; None if there is none (or no key)."""
        if key is None:
            return None
        seen = self._memo.get(key)
        if seen is not None:
            self._memo.move_to_end(key)
        return seen

    def _key(self, source: bytes | str, options: ImageOptions) -> bytes | None:
        """The upload's memo key; None when it is kept out of the memo (too large, or no memo)."""
        if self.entries <= 0:
            return None
        seen = source.encode("utf-8", "surrogatepass") if isinstance(source, str) else source
        if len(seen) > MEMO_MAX_BYTES:
            return None
        h = blake3(repr(options).encode())
        h.update(b"b64:" if isinstance(source, str) else b"raw:")
        h.update(seen)
        return h.digest(16)

    def _keep(self, key: bytes, entry: tuple[ImageKeys, str | None]) -> None:
        self._memo[key] = entry
        self._memo.move_to_end(key)
        while len(self._memo) > self.entries:
            self._memo.popitem(last=False)


def _raw(source: bytes | str) -> bytes:
    return decode_image_payload(source) if isinstance(source, str) else source
