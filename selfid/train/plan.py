"""The data order of a whole run, fixed up front from the seed: which rows each step, micro-batch and rank gets.

Epoch e packs the samples with `Random(f"{seed}-{e}")`, so the order never depends on how a run
was interrupted: resuming at step k replays exactly the rows an uninterrupted run would see.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from selfid.train.collate import pack


@dataclass(frozen=True)
class Step:
    epoch: int
    micro: tuple[tuple[tuple[int, ...], ...], ...]  # [rank][micro-batch] -> rows; a row is sample indices
    tokens: int  # real tokens in the whole step (all ranks)
    label_tokens: int  # trained tokens in the whole step: the loss is their mean


class Plan:
    def __init__(self, lengths, label_counts, pack_length: int, rows_per_batch: int, grad_accum: int,
                 world: int, seed: int, epochs: float, max_steps: int | None = None):
        self.lengths, self.label_counts = list(lengths), list(label_counts)
        self.pack_length, self.rows_per_batch, self.grad_accum = pack_length, rows_per_batch, grad_accum
        self.world, self.seed = world, seed
        self.rows_per_step = rows_per_batch * grad_accum * world
        self.steps: list[Step] = []
        epoch = 0
        target_epochs = math.ceil(epochs)
        while True:
            epoch_steps = self._epoch(epoch)
            if max_steps is None and epoch == target_epochs - 1 and epochs != target_epochs:
                epoch_steps = epoch_steps[:max(1, round(len(epoch_steps) * (epochs - epoch)))]
            self.steps += epoch_steps
            epoch += 1
            if max_steps is not None:
                if len(self.steps) >= max_steps:
                    self.steps = self.steps[:max_steps]
                    break
            elif epoch >= target_epochs:
                break

    def _epoch(self, epoch: int) -> list[Step]:
        rows = pack(self.lengths, self.pack_length, random.Random(f"{self.seed}-{epoch}"))
        steps = []
        slots = self.grad_accum * self.world
        for start in range(0, len(rows), self.rows_per_step):
            chunk = rows[start:start + self.rows_per_step]
            # round-robin over (micro-batch, rank) slots so a short last step is shared out evenly
            per_slot: list[list[tuple[int, ...]]] = [[] for _ in range(slots)]
            for j, row in enumerate(chunk):
                per_slot[j % slots].append(tuple(row))
            micro = tuple(tuple(tuple(per_slot[m * self.world + r]) for m in range(self.grad_accum))
                          for r in range(self.world))
            flat = [i for row in chunk for i in row]
            steps.append(Step(epoch, micro, sum(self.lengths[i] for i in flat),
                              sum(self.label_counts[i] for i in flat)))
        return steps

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def epochs(self) -> int:
        return self.steps[-1].epoch + 1 if self.steps else 0

    def fill(self) -> float:
        """Share of row slots holding real tokens (1.0 = no padding at all)."""
        rows = sum(len(m) for s in self.steps for rank in s.micro for m in rank)
        return sum(s.tokens for s in self.steps) / max(1, rows * self.pack_length)
