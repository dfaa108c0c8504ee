"""Interop with the rest of the ecosystem: Hugging Face GPT-2 (hf), nanoGPT's checkpoints and data (nanogpt)
and nanoGPT's Python configs, parsed without running them (nanogpt_config)."""
