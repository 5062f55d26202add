"""Progress off a terminal: one plain line per task every 30 s (done/total, rate, time left), and one at its end."""

import io

from rich.console import Console

from selfid.progress import Progress


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def plain_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, width=200), out


def test_off_a_terminal_a_task_prints_a_line_every_30_s_and_at_its_end():
    console, out = plain_console()
    clock = Clock()
    with Progress(console=console, clock=clock, label="audit", unit="generations") as bar:
        task = bar.add_task("", total=120)
        for _ in range(40):  # 40 in the first 20 s: not 30 s yet, so nothing
            clock.now += 0.5
            bar.advance(task)
        assert out.getvalue() == ""
        for _ in range(20):  # 30 s after the start: the first line
            clock.now += 0.5
            bar.advance(task)
        lines = out.getvalue().splitlines()
        assert lines == ["audit: 60/120 generations (50%), 2 generations/s, 30s left"]
        for _ in range(60):
            clock.now += 1
            bar.advance(task)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[1].startswith("audit: 90/120 generations (75%), ")
    assert lines[2] == "audit: 120/120 generations (100%), 1.33 generations/s, took 1m30s"


def test_a_task_stopped_early_says_where_it_stopped_and_fields_are_shown():
    console, out = plain_console()
    clock = Clock()
    with Progress(console=console, clock=clock, label="train", unit="steps") as bar:
        task = bar.add_task("", total=48, completed=12, loss="-", rate="-")  # resumed at step 12
        clock.now += 40
        bar.update(task, advance=8, loss="1.2345", rate="30 tok/s")
    first, last = out.getvalue().splitlines()
    assert first == "train: 20/48 steps (42%), 0.2 steps/s, 2m20s left, loss 1.2345, rate 30 tok/s"
    assert last.startswith("train: 20/48 steps (42%), 0.2 steps/s, took 40s")


def test_on_a_terminal_it_is_rich_s_bar_and_no_plain_lines():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    clock = Clock()
    with Progress(console=console, clock=clock, label="audit") as bar:
        task = bar.add_task("x", total=10)
        clock.now += 100
        bar.advance(task, 10)
    assert not bar.plain and "audit:" not in out.getvalue()


def test_disabled_progress_prints_nothing_anywhere():
    console, out = plain_console()
    clock = Clock()
    with Progress(console=console, clock=clock, disable=True) as bar:
        task = bar.add_task("x", total=10)
        clock.now += 100
        bar.advance(task, 10)
    assert out.getvalue() == ""


def test_training_off_a_terminal_prints_lines_and_its_rate_is_the_summary_s(tiny_model_dir, tmp_path, monkeypatch):
    """The bar's tokens/s is the run's rate so far, so it ends where the summary's is (it once showed the last
    step's, 12 tok/s beside a summary of 30)."""
    import re

    from selfid import progress
    from selfid.train.sft import train
    from tests.train_helpers import tiny_config, write_data

    monkeypatch.setattr(progress, "EVERY_S", 0.0)  # a line at every change
    monkeypatch.setenv("SELFID_HOME", str(tmp_path / "home"))
    console, out = plain_console()
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", write_data(tmp_path), "train.max_steps=6", "train.log_every=1")
    result = train(cfg, console=console)
    lines = [x for x in out.getvalue().splitlines() if x.startswith("train: ")]
    assert len(lines) >= 6 and lines[-1].startswith("train: 6/6 steps (100%), ")
    shown = float(re.search(r"rate ([\d,.]+) tok/s", lines[-1]).group(1).replace(",", ""))
    assert shown == __import__("pytest").approx(result.metrics["tokens_per_s"], rel=0.25)
