"""Prompt styles: the registry and the shipped style files."""

from gateway.styles.registry import LANGUAGES, METADATA_FIELDS, Sampling, Style, StyleRegistry, parse_style

__all__ = ["LANGUAGES", "METADATA_FIELDS", "Sampling", "Style", "StyleRegistry", "parse_style"]
