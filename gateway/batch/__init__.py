"""``huayu batch``: describe a whole collection, resumably. See :mod:`gateway.batch.runner`."""

from gateway.batch.cli import batch_main
from gateway.batch.client import direct_messages
from gateway.batch.model import Artwork, BatchConfig, BatchSummary, Failure, Item
from gateway.batch.outputs import write_outputs
from gateway.batch.runner import run_batch
from gateway.batch.sources import read_inputs

__all__ = [
    "Artwork",
    "BatchConfig",
    "BatchSummary",
    "Failure",
    "Item",
    "batch_main",
    "direct_messages",
    "read_inputs",
    "run_batch",
    "write_outputs",
]
