"""Progress without a terminal: plain lines a log file can show, one per tenth of the steps."""

from __future__ import annotations

import io
import re

from rich.console import Console
from typer.testing import CliRunner

from dpmammo.progress import StepProgress

LINE = re.compile(r"^(?P<desc>.*) \[(?P<done>\d+)/(?P<total>\d+) (?P<unit>\w+), \d+:\d\d:\d\d\]$")


def run_epochs(progress: StepProgress, epochs: int, steps: int) -> None:
    """The way the training loops drive it: advance per step, describe per epoch."""
    with progress:
        task = progress.add_task("train", total=epochs * steps)
        for epoch in range(epochs):
            for _ in range(steps):
                progress.advance(task)
            progress.update(task, description=f"epoch {epoch + 1}/{epochs} loss=0.5")


def plain(**kwargs) -> tuple[StepProgress, io.StringIO]:
    out = io.StringIO()
    return StepProgress(console=Console(file=out, force_terminal=False), **kwargs), out


def test_without_a_terminal_a_line_per_tenth_with_the_epochs_results():
    progress, out = plain()
    run_epochs(progress, epochs=30, steps=9)
    lines = out.getvalue().splitlines()
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert lines[0] == "train [0/270 steps, 0:00:00]"
    assert 10 <= len(lines) <= 13  # start, ~one per 10%, the end
    # after the first, every line carries an epoch's results, and the last is the last epoch's
    assert all(m["desc"].startswith("epoch ") for m in parsed[1:])
    assert parsed[-1]["desc"] == "epoch 30/30 loss=0.5" and parsed[-1]["done"] == "270"
    done = [int(m["done"]) for m in parsed]
    assert done == sorted(done)


def test_long_epochs_still_print_lines_inside_them():
    progress, out = plain()
    run_epochs(progress, epochs=2, steps=100)
    done = [int(LINE.match(line)["done"]) for line in out.getvalue().splitlines()]
    assert len([d for d in done if d < 100]) >= 4  # the first epoch is not silent


def test_every_zero_prints_each_description_change_for_study_runs():
    progress, out = plain(every=0, unit="runs")
    with progress:
        task = progress.add_task("study s", total=2)
        progress.update(task, description="running a")
        progress.update(task, advance=1, description="a: done | running b")
        progress.update(task, advance=1, description="b: done")
    assert [line.split(" [")[0] for line in out.getvalue().splitlines()] == [
        "study s", "running a", "a: done | running b", "b: done"]
    assert out.getvalue().splitlines()[-1].startswith("b: done [2/2 runs, ")


def test_disabled_prints_nothing_and_a_terminal_gets_the_bar_not_lines():
    progress, out = plain(enabled=False)
    run_epochs(progress, epochs=3, steps=4)
    assert out.getvalue() == ""
    out = io.StringIO()
    progress = StepProgress(console=Console(file=out, force_terminal=True, width=100))
    assert progress.live
    run_epochs(progress, epochs=3, steps=4)
    assert "epoch 3/3" in out.getvalue() and not any(LINE.match(line) for line in out.getvalue().splitlines())


def test_cli_train_into_a_log_file_shows_epochs(phantom_root, tmp_path):
    from dpmammo.cli import app

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{root: {phantom_root}, train: [phantom/train], val: phantom/val}}\n"
                   "model: {name: cnn-small, input_size: 32, width: 4}\n"
                   "train: {epochs: 3, batch_size: 64, device: cpu}\n")
    result = CliRunner().invoke(app, ["train", str(cfg), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if LINE.match(line)]
    assert lines[0] == "train [0/21 steps, 0:00:00]"
    assert lines[-1].startswith("epoch 3/3 val AUROC=") and "[21/21 steps, " in lines[-1]
