"""Exports of a pruned checkpoint for other runtimes: `python -m prunekit.export gguf <run>/model` (llama.cpp,
ollama; see docs/export.md)."""
