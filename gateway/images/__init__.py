"""Any upload (phone JPEG, 50-megapixel TIFF master, PNG with alpha) to the image the model wants.

Limits are checked from the header before anything is decoded; JPEGs are decoded straight at a
reduced DCT scale so a 12-megapixel photo never exists at full size. The result is an sRGB JPEG
whose sides are multiples of 32 (one visual token is 32x32 pixels, so the model server does not
resize again), plus the fingerprints the description cache keys on.

    source.py       the header read and checked, the pixels decoded
    geometry.py     target size, resize, EXIF orientation
    colour.py       ICC profiles to sRGB, the optional lighting correction
    passthrough.py  an upload that already is the model's JPEG, sent on without re-encoding
    prepare.py      prepare_image(): the steps in order, in two stages (the cache keys, then the JPEG)
    worker.py       the process pool that runs it, the event loop talking to each worker itself;
                    stage(): the keys first, the JPEG only if the cache has no description
    worker_process.py  the worker's side: its loop, the frames on its pipes
    payload.py      base64 and data URLs to bytes
    memo.py         recent uploads kept model-ready
"""

from gateway.images.colour import correct_glare
from gateway.images.geometry import target_size
from gateway.images.payload import decode_image_payload
from gateway.images.prepare import (
    THUMBNAIL_EDGE,
    ImageKeys,
    ImageOptions,
    PreparedImage,
    StagedImage,
    pixel_digest,
    prepare_image,
    stage_image,
    view_digest,
)
from gateway.images.source import ACCEPTED_FORMATS, ACCEPTED_TEXT
from gateway.images.worker import ImageWorker, Staged

__all__ = [
    "ACCEPTED_FORMATS",
    "ACCEPTED_TEXT",
    "THUMBNAIL_EDGE",
    "ImageKeys",
    "ImageOptions",
    "ImageWorker",
    "PreparedImage",
    "Staged",
    "StagedImage",
    "correct_glare",
    "decode_image_payload",
    "pixel_digest",
    "prepare_image",
    "stage_image",
    "target_size",
    "view_digest",
]
