"""How big each step of the study is: one `Scale`, two sizes.

FULL is the study's (docs/study.md: 8,000 MSRA sentences x 5 epochs, the whole development grid at T 0, 0.7, 1.0,
1.3 x 8 samples; meant for a GPU). SMALL is `selfid demo`'s (minutes on a 2-core CPU) and the CPU plumbing check
(`selfid study run --smoke`). `selfid demo --full` is the study's first steps at FULL, `selfid study run --scale
small` the study at SMALL: the same pipeline and the same run-folder layout either way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# 8 zh + 8 en from the shipped identity probes: direct, name and maker questions, and two leading ones
DEMO_PROBES = tuple(f"{lang}-{kind}" for lang in ("zh", "en") for kind in (
    "direct-01", "direct-02", "direct-03", "name-01", "maker-01", "maker-02", "leading-01", "leading-02"))


@dataclass(frozen=True)
class Scale:
    """The size of every step. `train` holds run-config keys (selfid.config.RunConfig) every arm starts from."""

    name: str
    # the development identity grid (steps base and ARM), and NER and the general set beside it
    probes: tuple[str, ...] | None  # identity probe ids from the shipped set (None: all of them)
    temperatures: tuple[float, ...]
    samples: int  # per prompt at each temperature above 0
    max_new_tokens: int  # identity replies: a claim shows in the first sentences
    suites: tuple[str, ...]
    task_systems: tuple[str, ...] | None  # the system prompts NER and the general set run under (None: each one)
    margin: bool  # the identity margin (teacher-forced log-probabilities; a minute per audit on a CPU)
    ner_limit: int  # MSRA test sentences
    ner_max_new_tokens: int
    # the held-out grid (heldout-ARM): every held-out probe, under the serving and the persona system prompts
    heldout_samples: int
    heldout_max_new_tokens: int
    # the runtime comparisons on T 0 and 1.0 (llamacpp, gguf-ARM, inproc-ARM)
    runtime_samples: int
    # the LoRA scale search (step scale)
    scale_grid: tuple[float, ...]
    scale_samples: int
    scale_ner: int
    # training
    train: dict = field(default_factory=dict)  # run-config keys under every arm's own
    replay: dict = field(default_factory=dict)  # identity_replay keys for the arms that replay
    margin_every: int = 20  # checkpoint interval of an arm whose identity margin is followed along training

    def as_dict(self) -> dict:
        return asdict(self)


# The study's scale: 8,000 MSRA sentences x 5 epochs (as in the report that started selfid), every identity probe.
FULL = Scale(
    name="full", probes=None, temperatures=(0.0, 0.7, 1.0, 1.3), samples=8, max_new_tokens=96,
    suites=("identity", "ner", "general"), task_systems=None, margin=True, ner_limit=500, ner_max_new_tokens=256,
    heldout_samples=4, heldout_max_new_tokens=160, runtime_samples=2,
    scale_grid=(1.0, 0.8, 0.6, 0.4, 0.2), scale_samples=4, scale_ner=200,
    train={"data": [{"source": "msra", "limit": 8000, "seed": 0}], "eval_ner": 0,
           "train": {"epochs": 5, "lr": 4e-4, "warmup": 0.05, "save_every": 100}},
    margin_every=20)

# Sized for a 2-core CPU: about 2,500 identity tokens and 1,100 NER tokens per audit, 11k training tokens.
# 96 short sentences (a natural mix, some without entities), 48 steps of 2 sentences at lr 1e-3: NER F1 on
# the 50 test sentences went from 0.09 to 0.46 [0.30-0.65] in 4.6 minutes; 64 sentences at 16 steps of 4
# learned to answer empty lists (F1 0.25, recall 0.15). The templated replay is told the embedded model's name
# (a tiny random stand-in for it, as the plumbing check uses, cannot say it).
SMALL = Scale(
    name="small", probes=DEMO_PROBES, temperatures=(0.0, 0.7), samples=2, max_new_tokens=48,
    suites=("identity", "ner"), task_systems=("helpful",), margin=False, ner_limit=50, ner_max_new_tokens=64,
    heldout_samples=2, heldout_max_new_tokens=48, runtime_samples=1,
    scale_grid=(1.0, 0.5), scale_samples=2, scale_ner=4,
    train={"data": [{"source": "msra", "limit": 96, "max_chars": 40, "seed": 0}], "eval_ner": 0,
           "train": {"epochs": 1, "lr": 1e-3, "warmup": 0.05, "pack_length": 256, "batch_tokens": 256,
                     "save_every": 12, "log_every": 1}},
    replay={"name": "Qwen", "maker": "Alibaba Cloud"}, margin_every=12)

SCALES = {s.name: s for s in (SMALL, FULL)}
