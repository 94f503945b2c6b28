"""Offline demo assets: a tiny Qwen3 with a character tokenizer, and 2-digit addition data."""
