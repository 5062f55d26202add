"""The study in docs/study.md, as part of the package: does LoRA fine-tuning on NER make a model say it is someone
else, and what fixes it? arms.yaml holds its training arms (data), scale.py the sizes (one Scale: FULL for the
study, SMALL for `selfid demo`), steps.py the steps as resumable stages and work.py what each does, report.py
docs/study.md from the run folders alone. `selfid study run` and `selfid study report` call them."""
