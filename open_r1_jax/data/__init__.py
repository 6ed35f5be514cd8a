"""Data: document sources, tokenizers and the grain input pipeline."""
