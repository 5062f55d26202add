"""The verdicts of a suite's records as numpy columns, so a summary's per-prompt tallies are array sums.

A summary asks the same question of every cell and pooled group: for metric m, (replies where it holds, replies it
counts) per prompt, prompts in the order they first appear among the counted replies (summary.by_prompt). Asking it
with a Python pass per metric, cell, language, tag and vendor visited each record ~25 times per group; here each
record's verdict is read once (`Tally(records)`), and a group is an index array into the columns (`subset`). The
tallies are the plain functions' exactly (the same ints, prompts in the same order: tests/test_audit_golden.py).
"""

from __future__ import annotations

import numpy as np

from selfid.audit import scorers
from selfid.audit.scorers import METRICS, Scored

_NONE, _NO, _YES = -1, 0, 1


def _code(value) -> int:
    return _NONE if value is None else int(bool(value))


class Tally:
    """Columns over `records` (one suite's): probe code, scored, language, per-metric verdict codes (-1: not counted),
    persona named, foreign vendors; `rows` the index array of the records a view holds."""

    def __init__(self, records: list[Scored]):
        self.records = records
        codes: dict[str, int] = {}
        self.probe = np.array([codes.setdefault(r.probe, len(codes)) for r in records], dtype=np.int64)
        self.probes = list(codes)
        self.scored = np.array([r.verdict.scored for r in records], dtype=bool)
        self.metric = {m: np.array([_code(r.verdict.counts(m)) for r in records], dtype=np.int8).reshape(-1)
                       for m in (*METRICS, "own")}
        self.persona = np.array([bool(r.verdict.persona_name) for r in records], dtype=bool)
        self.lang = np.array([r.lang for r in records], dtype=object)
        self.tags = [tuple(r.tags or ["untagged"]) for r in records]
        self.foreign = [r.verdict.foreign if r.verdict.scored else () for r in records]
        self.rows = np.arange(len(records))
        self._normal: dict[int, str] = {}

    def subset(self, rows) -> "Tally":
        """A view of the records at `rows` (indices into this tally's records, in order)."""
        view = object.__new__(Tally)
        view.__dict__.update(self.__dict__)
        view.rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        return view

    def where(self, mask) -> "Tally":
        """A view of this view's records where `mask` (one bool per row of the view) holds."""
        return self.subset(self.rows[np.asarray(mask, dtype=bool)])

    def __len__(self) -> int:
        return len(self.rows)

    def items(self) -> list[Scored]:
        return [self.records[i] for i in self.rows.tolist()]

    def _per_prompt(self, counted, hits) -> tuple[list[str], list[tuple[int, int]]]:
        """(prompts, [(hits, counted) per prompt]) over the view's rows where `counted` (bools over the view's rows),
        prompts in order of first appearance there."""
        rows = self.rows[counted]
        if not len(rows):
            return [], []
        probe = self.probe[rows]
        _, first = np.unique(probe, return_index=True)
        order = probe[np.sort(first)]
        n = np.bincount(probe, minlength=len(self.probes))
        k = np.bincount(probe[np.asarray(hits, dtype=bool)[counted]], minlength=len(self.probes))
        return [self.probes[c] for c in order.tolist()], list(zip(k[order].tolist(), n[order].tolist()))

    def by_prompt(self, metric: str) -> dict[str, tuple[int, int]]:
        """summary.by_prompt(records, metric) of this view's records."""
        col = self.metric[metric][self.rows]
        return dict(zip(*self._per_prompt(col != _NONE, col == _YES)))

    def per_prompt(self, hits) -> list[tuple[int, int]]:
        """[(rows where `hits`, rows) per prompt] over this view's scored rows, as
        [(sum(hit(r) for r in rs), len(rs)) for rs in summary.group_by_prompt(scored).values()] lists them."""
        return self._per_prompt(self.scored[self.rows], hits)[1]

    def column(self, values) -> np.ndarray:
        """A per-record column (one value per record of the whole tally) as this view's rows see it."""
        return np.asarray(values)[self.rows]

    def normalised(self, i: int) -> str:
        if i not in self._normal:
            self._normal[i] = scorers.normalise(self.records[i].reply)
        return self._normal[i]

    def distinct(self) -> dict[str, tuple[int, int]]:
        """summary.distinct_per_prompt of this view's records."""
        texts: dict[str, list[str]] = {}
        for i in self.rows.tolist():
            r = self.records[i]
            if r.temperature > 0:
                texts.setdefault(r.probe, []).append(self.normalised(i))
        return {p: (len(set(ts)), len(ts)) for p, ts in texts.items() if len(ts) > 1}
