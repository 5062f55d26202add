"""Stages that put the other layers together, so that nothing under selfid/train imports the audit: stages.py runs
named stages in a run folder with one resume mechanism (selfid.study's steps are such stages, and `selfid demo` runs
the first of them); train.py is training with what comes before it (replay.py: the self-distilled identity replay,
which samples the base model and judges its answers with the audit's scorers) and after it (adapter_scale.py: the
adapter-scale search, judged by the audit)."""
