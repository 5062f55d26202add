"""Identity losses beside the task's: DPO on pairs of the base model's own replies, and KL to the base model.

preference (DPO, Rafailov et al. 2023; TRL's DPOTrainer computes the same loss): for a question and a
serving system prompt, the chosen reply is one of the base model's own-identity answers and the rejected
one a foreign claim the base model itself produced there ("Yes, I am ChatGPT"). The loss
-log σ(β[(log π(c) − log π_ref(c)) − (log π(r) − log π_ref(r))]) pushes the foreign mode down relative
to the base model without teaching one fixed answer. π_ref is the base model (the adapter off); its
log-probabilities are computed once, before training.

distill: the base model, under its template's own system prompt (which names it), is the teacher; the
adapter, under each serving system prompt, the student; both read the same self-distilled identity
reply, and the loss is the KL from the teacher's next-token distribution to the student's on the reply's
tokens — so the tuned model answers under "You are a helpful assistant." the way the base model answers
under its own prompt.

Written here rather than with TRL's trainers because it must run inside selfid's packed training step,
on its packed batches and attention kernel, beside the task's loss.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from selfid.train.collate import Encoded, collate, encode_many
from selfid.train.packed import label_logits


def _conv(system: str | None, messages: list[dict], reply: str | None = None) -> list[dict]:
    head = [] if system is None else [{"role": "system", "content": system}]
    tail = [] if reply is None else [{"role": "assistant", "content": reply}]
    return head + [dict(m) for m in messages] + tail


class IdentityAux:
    """The weighted preference and distillation losses of one optimizer step."""

    def __init__(self, model, loaded, attention: str, pairs: list[dict], replies: list[dict], systems: list,
                 preference: float, beta: float, distill: float, batch: int, seed: int, device, autocast):
        self.model, self.attention, self.device, self.autocast = model, attention, device, autocast
        self.preference, self.beta, self.distill, self.batch, self.seed = preference, beta, distill, batch, seed
        self.pad = loaded.tokenizer.pad_token_id
        tok, eos = loaded.tokenizer, loaded.eos_token_ids
        self.chosen: list[Encoded] = []
        self.rejected: list[Encoded] = []
        if preference and pairs:
            self.chosen = encode_many(tok, [_conv(p["system"], p["messages"], p["chosen"]) for p in pairs], eos)
            self.rejected = encode_many(tok, [_conv(p["system"], p["messages"], p["rejected"]) for p in pairs], eos)
        self.student: list[Encoded] = []
        self.teacher: list[Encoded] = []
        if distill and replies:
            students, teachers = [], []
            for r in replies:
                if "persona" in r:  # the teacher answers under its own prompt, not as this persona
                    continue
                prompt, reply = r["messages"][:-1], r["messages"][-1]["content"]
                for s in dict.fromkeys(systems):
                    students.append(_conv(s, prompt, reply))
                    teachers.append(_conv(None, prompt, reply))  # the template's own system prompt
            st, te = encode_many(tok, students, eos), encode_many(tok, teachers, eos)
            keep = [i for i in range(len(st)) if len(st[i].label_pos) == len(te[i].label_pos) > 0
                    and (st[i].ids[st[i].label_pos] == te[i].ids[te[i].label_pos]).all()]
            self.student, self.teacher = [st[i] for i in keep], [te[i] for i in keep]
        self.reference = self._reference() if self.chosen else None

    def __bool__(self) -> bool:
        return bool(self.chosen or self.student)

    def describe(self) -> str:
        parts = []
        if self.chosen:
            parts.append(f"preference (DPO, β={self.beta}, weight {self.preference}) on {len(self.chosen)} pairs")
        if self.student:
            parts.append(f"distillation (KL to the base model, weight {self.distill}) on {len(self.student)} replies")
        return "; ".join(parts)

    def _batch(self, encoded: list[Encoded], idx: list[int]):
        length = max(len(encoded[i]) for i in idx)
        length = -(-length // 64) * 64
        return collate(encoded, [[i] for i in idx], length, self.pad, pin=self.device.type == "cuda").to(self.device)

    def _seq_logprobs(self, encoded: list[Encoded], idx: list[int]) -> torch.Tensor:
        """Summed log-probability of each sample's trained tokens, [len(idx)]."""
        batch = self._batch(encoded, idx)
        logits = label_logits(self.model, batch, self.attention).float()
        lp = torch.log_softmax(logits, -1).gather(1, batch.targets[:, None]).squeeze(1)
        counts = torch.tensor([len(encoded[i].label_pos) for i in idx], device=lp.device)
        segment = torch.repeat_interleave(torch.arange(len(idx), device=lp.device), counts)
        return torch.zeros(len(idx), device=lp.device, dtype=lp.dtype).index_add_(0, segment, lp)

    @torch.no_grad()
    def _reference(self) -> torch.Tensor:
        """log π_ref(chosen) − log π_ref(rejected) for every pair, with the adapter off."""
        out = []
        with self.model.disable_adapter(), self.autocast():
            for start in range(0, len(self.chosen), 64):
                idx = list(range(start, min(start + 64, len(self.chosen))))
                out.append(self._seq_logprobs(self.chosen, idx) - self._seq_logprobs(self.rejected, idx))
        return torch.cat(out)

    def _pick(self, n: int, step: int, salt: int) -> list[int]:
        rng = random.Random(self.seed * 1_000_003 + step * 7 + salt)  # the same draw when a run resumes
        return rng.sample(range(n), min(self.batch, n))

    def loss(self, step: int) -> torch.Tensor:
        """The weighted identity losses for optimizer step `step` (call under the step's autocast)."""
        total = torch.zeros((), device=self.device)
        if self.chosen:
            idx = self._pick(len(self.chosen), step, 1)
            margin = self._seq_logprobs(self.chosen, idx) - self._seq_logprobs(self.rejected, idx)
            ref = self.reference[torch.tensor(idx, device=self.reference.device)]
            total = total + self.preference * -F.logsigmoid(self.beta * (margin - ref)).mean()
        if self.student:
            idx = self._pick(len(self.student), step, 2)
            with torch.no_grad(), self.model.disable_adapter():
                teacher = torch.log_softmax(label_logits(self.model, self._batch(self.teacher, idx), self.attention)
                                            .float(), -1)
            student = torch.log_softmax(label_logits(self.model, self._batch(self.student, idx), self.attention)
                                        .float(), -1)
            kl = F.kl_div(student, teacher, log_target=True, reduction="batchmean")  # KL(teacher || student) per token
            total = total + self.distill * kl
        return total
