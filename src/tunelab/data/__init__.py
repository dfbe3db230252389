"""Data: sources (files, Hub) -> formats (detect, normalise) -> templates -> token ids with a loss mask."""
