"""The transformers backend's forward pass over a batch: left-padded prefill, then one token
per row per step, with one KV cache whose rows are copied for prompts sampled several times.
"""

from __future__ import annotations

from typing import Any


class TransformersEngine:
    """:class:`~expertgraph.agents._generation.Engine` over a transformers causal LM."""

    def __init__(self, model: Any, device: str, pad_id: int) -> None:
        self._model = model
        self._device = device
        self._pad_id = pad_id
        self._cache: Any = None
        self._mask: Any = None
        self._next_pos: Any = None

    def start(self, prompts: list[tuple[int, ...]], rows: list[int]) -> Any:
        import torch
        from transformers import DynamicCache

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, prompt in enumerate(prompts):  # left padding: every row ends at the same place
            ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[i, width - len(prompt) :] = 1
        ids, mask = ids.to(self._device), mask.to(self._device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        self._cache = DynamicCache(config=self._model.config)
        out = self._model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=self._cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1, :].float()
        self._mask = mask
        self._next_pos = positions[:, -1] + 1
        if rows != list(range(len(prompts))):  # a prompt sampled several times: copy its rows
            self._select(rows)
            logits = logits[torch.tensor(rows, device=logits.device)]
        return logits

    def step(self, tokens: list[int]) -> Any:
        import torch

        ids = torch.tensor(tokens, dtype=torch.long, device=self._device)[:, None]
        ones = torch.ones((len(tokens), 1), dtype=self._mask.dtype, device=self._device)
        self._mask = torch.cat([self._mask, ones], dim=1)
        out = self._model(
            input_ids=ids,
            attention_mask=self._mask,
            position_ids=self._next_pos[:, None],
            cache=self._cache,
            use_cache=True,
        )
        self._next_pos = self._next_pos + 1
        return out.logits[:, -1, :].float()

    def keep(self, rows: list[int]) -> None:
        self._select(rows)

    def _select(self, rows: list[int]) -> None:
        import torch

        index = torch.tensor(rows, dtype=torch.long, device=self._device)
        self._cache.reorder_cache(index)
        self._mask = self._mask[index]
        self._next_pos = self._next_pos[index]
