"""The release check: `selfid gate` judges a candidate model's identity against a reference, sized by power analysis.

    thresholds.py  what is checked and how strictly (YAML, stated defaults)
    tallies.py     the per-prompt numbers of a side: from an audit run folder, or a baseline file
    power.py       the standard error of a prompt-paired difference, power, minimum detectable effects
    plan.py        `--plan`: the grid each threshold needs, before anything is generated
    verdict.py     one-sided paired tests, Holm, pass / regression / inconclusive per metric x system prompt
    task.py        a number from the user's own evaluation command
    report.py      gate.json, junit.xml, summary.md
    run.py         the verb: audit what needs it, judge, write
"""

from selfid.gate.report import EXIT_CODES
from selfid.gate.run import Side, gate, plan_gate, write_baseline
from selfid.gate.thresholds import Thresholds, load_thresholds

USER_ERROR = 3  # bad input: a missing path, a bad thresholds file, a baseline made with other probes, a bad flag
CRASHED = 4  # selfid itself failed (a bug): not to be read as a verdict

__all__ = ["CRASHED", "EXIT_CODES", "USER_ERROR", "Side", "Thresholds", "gate", "load_thresholds", "plan_gate", "write_baseline"]
