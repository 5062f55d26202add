"""`selfid train` as a pipeline: what comes before training (the self-distilled identity replay set, sampled from
the base model and judged by the audit's scorers), the training itself (selfid.train.sft), and what comes after
it (the adapter-scale search, judged by the audit). selfid.train never imports the audit; this module joins them.
"""

from __future__ import annotations

from pathlib import Path

from selfid.errors import SelfidError
from selfid.io import check_can_create
from selfid.pipeline import adapter_scale, replay


def run(config, resume: bool = False, console=None, log=print, **train_options):
    """Train `config` with what it asks for around training; returns selfid.train.sft's TrainResult.
    `train_options` go to selfid.train.sft.train as they are (e.g. system_prompt_by_design)."""
    from selfid.train.sft import train  # torch

    check_output(config.output_dir, resume)
    replay.ensure(config, log=log)
    result = train(config, resume=resume, console=console, **train_options)
    if not result.stopped:
        adapter_scale.run(config, result, log=log)
    return result


# what a training run writes in its output folder (selfid.train.sft, selfid.data.replay_set, adapter_scale)
RUN_FILES = frozenset({"config.yaml", "train_data.jsonl", "metrics.csv", "adapter", "checkpoints", "tensorboard",
                       "identity_replay", "adapter-scale-audits", "adapter-scaled"})


def check_output(output: Path, resume: bool) -> None:
    """Refuse an output that is a file, or a folder holding anything a run does not write (a user's config.yaml is
    the run's own name, so `selfid train` checks that one against the config it reads): a run writes config.yaml and
    metrics.csv over whatever has those names."""
    if output.exists() and not output.is_dir():
        raise SelfidError(f"the output {output} is a file: choose a folder (--set output=DIR)")
    check_can_create(output, "output")
    if resume or not output.is_dir():
        return
    others = sorted(p.name for p in output.iterdir() if p.name not in RUN_FILES)
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise SelfidError(f"the output folder {output} holds files a training run did not write ({shown}); a run "
                          "writes config.yaml, metrics.csv and adapter/ there: choose a new or empty folder "
                          "(--set output=DIR)")
