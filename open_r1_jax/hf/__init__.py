"""Hugging Face bridge: exports that transformers loads (``files.py``, ``remote/``), imports of
Llama and Mixtral checkpoints (``imports.py``)."""
