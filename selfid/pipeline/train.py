"""`selfid train` as a pipeline: what comes before training (the self-distilled identity replay set, sampled from
the base model and judged by the audit's scorers), the training itself (selfid.train.sft), and what comes after
it (the adapter-scale search, judged by the audit). selfid.train never imports the audit; this module joins them.
"""

from __future__ import annotations

from selfid.pipeline import adapter_scale, replay


def run(config, resume: bool = False, console=None, log=print, **train_options):
    """Train `config` with what it asks for around training; returns selfid.train.sft's TrainResult.
    `train_options` go to selfid.train.sft.train as they are (e.g. system_prompt_by_design)."""
    from selfid.train.sft import train  # torch

    replay.ensure(config, log=log)
    result = train(config, resume=resume, console=console, **train_options)
    if not result.stopped:
        adapter_scale.run(config, result, log=log)
    return result
