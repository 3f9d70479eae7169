"""A real model folder for local-expert tests: a tiny random Llama with a given tokenizer.

Not a test module: import it as ``from tiny_llama import save_tiny_llama`` (pytest puts
``tests/`` on ``sys.path``). The weights are random; tests check loading and rendering.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_tiny_llama(folder: Path, tokenizer: Any, *, max_positions: int) -> Path:
    """Write config.json, safetensors weights and ``tokenizer`` into ``folder``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
