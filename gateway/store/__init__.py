"""The results store: every generated description, the curators' feedback, and the exports.

SQLAlchemy 2 (async) over SQLite (the embedded default), PostgreSQL or MySQL/MariaDB; the
schema is kept by the Alembic migrations shipped in ``migrations/`` and run at start-up.
Images live in the database as blobs (a thumbnail for the review page and the model-ready
JPEG for fine-tuning exports), so one URL is the whole store, whatever the server.
"""

from .engine import StoreConfigError, migrate, normalize_url
from .export import FILENAMES, FORMATS, MEDIA_TYPES
from .metrics import StoreMetrics
from .queries import DescriptionFilter
from .record import STATUSES, DescriptionRecord, artwork_id, new_description_id
from .service import ResultStore, open_store

__all__ = [
    "FILENAMES",
    "FORMATS",
    "MEDIA_TYPES",
    "STATUSES",
    "DescriptionFilter",
    "DescriptionRecord",
    "ResultStore",
    "StoreConfigError",
    "StoreMetrics",
    "artwork_id",
    "migrate",
    "new_description_id",
    "normalize_url",
    "open_store",
]
