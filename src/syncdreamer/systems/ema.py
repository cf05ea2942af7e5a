"""Exponential moving average of a set of named parameters (optional; the official recipe has no EMA)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable

import torch
from torch import nn


class ParameterEMA:
    """``shadow = decay * shadow + (1 - decay) * param`` after every optimiser step, for the given parameters.

    ``warmup``: the effective decay is ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (so early
    averages are not dominated by the random initialisation). ``swapped()`` temporarily loads the averages
    into the live parameters (validation, export). ``state_dict`` is keyed by parameter name.
    """

    def __init__(self, named_params: Iterable[tuple[str, nn.Parameter]], decay: float = 0.9999, warmup: bool = True):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.params = dict(named_params)
        self.decay, self.warmup = float(decay), bool(warmup)
        self.shadow = {k: p.detach().clone().float() for k, p in self.params.items()}
        self.num_updates = 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    @torch.no_grad()
    def update(self) -> None:
        d = self.current_decay()
        for k, p in self.params.items():
            s = self.shadow[k]
            if s.device != p.device:
                s = self.shadow[k] = s.to(p.device)
            s.mul_(d).add_(p.detach().float(), alpha=1.0 - d)
        self.num_updates += 1

    @contextmanager
    def swapped(self):
        """Inside the block the parameters hold the EMA values; restored afterwards."""
        backup = {k: p.detach().clone() for k, p in self.params.items()}
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(self.shadow[k].to(p))
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(backup[k])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates,
                "shadow": {k: v.detach().cpu() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.params) - set(state["shadow"])
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} parameters, e.g. {sorted(missing)[:3]}")
        self.num_updates = int(state["num_updates"])
        for k, p in self.params.items():
            self.shadow[k] = state["shadow"][k].to(p.device).float()
