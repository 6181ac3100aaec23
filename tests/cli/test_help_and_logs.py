"""The command line as a new user meets it: help without torch, every flag with its help and default, typos
caught at parse time with the valid names, and logs that read as logs (no bars, one line per phase and round)."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from loracle import names
from loracle.cli import build_parser, main
from loracle.cli.al import _default
from loracle.progress import PhaseLine, log, progress
from active.al_helpers import write_toy_data
from tiny_models import tiny_bert, tiny_tokenizer

REPO = Path(__file__).resolve().parents[2]
#: what a terminal bar writes and a log must not hold: carriage returns and ANSI escape sequences
BAR_CODES = re.compile(r"\r|\x1b\[")
ROUND_LINE = re.compile(r"^round \d+ \(\d+ labels\): accuracy (\d\.\d{3}|n/a), macro-F1 (\d\.\d{3}|n/a), "
                        r"ECE (\d\.\d{3}|n/a)( \((\d\.\d{3} (after temperature scaling|for the ensemble of \d+"
                        r"( at the matched temperature \d+\.\d{2})?); )?"
                        r"(\d\.\d{3} for the plain ensemble; )?"
                        r"(\d\.\d{3} for the ensemble, passed over as the temperature \d+\.\d{2} is below 1; )?"
                        r"(\d\.\d{3} with the cross-fitted temperature \d+\.\d{2}; )?"
                        r"(\d\.\d{3} for the ensemble at the matched temperature \d+\.\d{2}; )?"
                        r"(\d\.\d{3} for the round model at its matched temperature \d+\.\d{2} \(`al export`\); )?"
                        r"(calibrated output \((argmax|balanced decision)\): accuracy \d\.\d{3}, "
                        r"macro-F1 \d\.\d{3}; )?"
                        r"noise floor \d\.\d{3}\))?; "
                        r"train .+, evaluate .+, score .+$")
HEAVY = ("torch", "transformers", "accelerate", "numpy", "matplotlib")


def python(code: str, timeout: int = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def loracle(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``loracle ARGS`` in a child process whose stderr is a pipe, as in ``loracle ... 2> log``.

    The output is decoded by hand: ``text=True`` would turn the carriage returns this module looks for into newlines.
    """
    proc = subprocess.run([sys.executable, "-m", "loracle", *args], capture_output=True, cwd=REPO, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    proc.stdout, proc.stderr = proc.stdout.decode(), proc.stderr.decode()
    return proc


# -- help without torch ----------------------------------------------------------------------------------------
HELP_PROBE = """
import sys, time
start = time.perf_counter()
import loracle
from loracle.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
print("IMPORTED", sorted(m for m in {heavy!r} if m in sys.modules), "SECONDS %.2f" % (time.perf_counter() - start))
"""


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["train", "--help"], ["evaluate", "--help"],
                                  ["al", "--help"], ["al", "status", "--help"], ["al", "compare", "--help"],
                                  ["al", "run", "-o", "x", "--strategy", "stra"]])
def test_help_and_parse_errors_import_no_torch(argv):
    proc = python(HELP_PROBE.format(argv=argv, heavy=HEAVY))
    assert "IMPORTED []" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    print(argv, proc.stdout.split("IMPORTED")[-1].strip())  # the time, for the record (pytest -s)


def test_import_loracle_is_lazy():
    proc = python("import sys, loracle\n"
                  "assert 'torch' not in sys.modules\n"
                  "assert 'LoRAConfig' in dir(loracle) and 'LoRAConfig' in loracle.__all__\n"
                  "from loracle import LoRAConfig, apply_adapter\n"
                  "print(LoRAConfig.method, apply_adapter.__module__, 'torch' in sys.modules)")
    assert proc.stdout.split() == ["lora", "loracle.adapters.inject", "True"], proc.stderr[-2000:]
    with pytest.raises(AttributeError, match="no attribute 'LoraConfig'"):
        import loracle

        loracle.LoraConfig


@pytest.mark.xfail(reason="reading ALConfig's defaults imports torch: loracle.active.config imports "
                   "loracle.active.strategies, loracle.adapters.base and loracle.training.config (whose packages "
                   "import torch), and loracle/active/__init__.py imports strategies", strict=False)
def test_al_run_help_imports_no_torch():
    proc = python(HELP_PROBE.format(argv=["al", "run", "--help"], heavy=HEAVY))
    assert "IMPORTED []" in proc.stdout, proc.stdout + proc.stderr[-2000:]


# -- every flag explained, with its default --------------------------------------------------------------------
def subparser(*path: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def option_help(parser: argparse.ArgumentParser) -> dict[str, str]:
    """``{first option string: its help, joined into one line}`` from the rendered help."""
    text = parser.format_help()
    blocks: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if re.match(r"^  -", line):
            current = line.split()[0].rstrip(",")
            blocks[current] = line
        elif current is not None and line.startswith("    "):
            blocks[current] += " " + line
        else:
            current = None
    return {flag: " ".join(block.split()) for flag, block in blocks.items()}


@pytest.mark.parametrize("path", [("al", "run"), ("al", "status"), ("al", "resume"), ("al", "label"),
                                  ("al", "compare"), ("train",), ("evaluate",)])
def test_every_flag_has_help_and_its_default(path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    parser = subparser(*path)
    blocks = option_help(parser)
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        block = blocks[action.option_strings[0]]
        assert action.help and " ".join(action.help.split()[:3]) in block, block
        assert re.search(r"\((default: .+|required)\)$", block), f"{path}: no default shown: {block}"


def test_al_run_defaults_are_alconfig_defaults(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    blocks = option_help(subparser("al", "run"))
    for flag, field in (("--epochs", "train.epochs"), ("--lr", "train.lr"), ("--batch-size", "train.batch_size"),
                        ("--rank", "adapter.rank"), ("--alpha", "adapter.alpha"), ("--seed", "seed"),
                        ("--oracle", "oracle"), ("--task-kind", "task_kind"), ("--adapter", "adapter.method")):
        assert f"(default: {_default(field)}" in blocks[flag], blocks[flag]
    assert _default("mc_samples") is None and "(default: the strategy's choice" in blocks["--mc-samples"]
    from loracle.active.config import default_strategy  # None: resolved per task kind

    assert _default("strategy") is None and blocks["--strategy"].endswith(
        f"(default: {default_strategy('classification')} for classification, {default_strategy('multiple_choice')} "
        f"for multiple choice, {default_strategy('generation')} for generation)")
    assert blocks["--no-progress"].endswith("(default: off)")
    assert blocks["--score-subset"].endswith(
        f"(default: {_default('score_subset') or 'all of the unlabelled pool'})")
    assert blocks["--text-field"].endswith("(default: the loader's guess: text, question, ...)")


def test_train_flag_defaults_are_trainconfig_defaults():
    from loracle.training.config import TrainConfig

    args = build_parser().parse_args(["train", "--data", "d", "--model", "m", "--task", "classification",
                                      "--output", "o"])
    config = TrainConfig()
    for name in ("epochs", "lr", "batch_size", "grad_accum", "weight_decay", "b_weight_decay", "warmup_ratio",
                 "scheduler", "max_grad_norm", "mixed_precision", "seed"):
        assert getattr(args, name) == getattr(config, name), name
    assert args.batch_size_eval == config.eval_batch_size


def test_descriptions_are_plain_text(capsys):
    for argv in (["--help"], ["al", "--help"], ["al", "run", "--help"], ["train", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert "``" not in out and ":class:" not in out and ":func:" not in out, argv


# -- closed sets are choices -----------------------------------------------------------------------------------
TRAIN = ["train", "--data", "d", "--model", "m", "--task", "classification", "--output", "o"]


@pytest.mark.parametrize("argv, valid", [
    (["al", "run", "-o", "x", "--strategy", "stra"], names.STRATEGY_NAMES),
    (["al", "run", "-o", "x", "--adapter", "lorra"], names.ADAPTER_NAMES),
    (["al", "run", "-o", "x", "--score", "entropi"], names.SCORE_NAMES + names.ANSWER_SCORE_NAMES),
    (["al", "run", "-o", "x", "--oracle", "humans"], names.ORACLE_NAMES),
    ([*TRAIN, "--adapter", "lorra"], (*names.ADAPTER_NAMES, "full")),
    ([*TRAIN, "--scheduler", "cosin"], names.SCHEDULER_NAMES),
])
def test_a_typo_fails_at_parse_time_listing_the_valid_names(argv, valid, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and all(name in err for name in valid), err


def test_names_match_the_registries():
    from loracle.active.config import INITIAL_MODES, ORACLES
    from loracle.active.strategies import cold_start_strategies
    from loracle.active.strategies import STRATEGIES
    from loracle.adapters import ADAPTERS
    from loracle.models import TASK_KINDS
    from loracle.training.config import SCHEDULERS
    from loracle.uncertainty.scores import ANSWER_SCORES, SCORES

    for listed, registry, where in ((names.STRATEGY_NAMES, STRATEGIES, "loracle.active.strategies.STRATEGIES"),
                                    (names.ADAPTER_NAMES, ADAPTERS, "loracle.adapters.ADAPTERS"),
                                    (names.SCORE_NAMES, SCORES, "loracle.uncertainty.scores.SCORES"),
                                    (names.ANSWER_SCORE_NAMES, ANSWER_SCORES,
                                     "loracle.uncertainty.scores.ANSWER_SCORES"),
                                    (names.SCHEDULER_NAMES, SCHEDULERS, "loracle.training.config.SCHEDULERS"),
                                    (names.ORACLE_NAMES, ORACLES, "loracle.active.config.ORACLES"),
                                    (names.INITIAL_MODES, INITIAL_MODES, "loracle.active.config.INITIAL_MODES"),
                                    (names.COLD_START_NAMES, [n for n in cold_start_strategies() if n != "random"],
                                     "loracle.active.strategies.cold_start_strategies()"),
                                    (names.TASK_KINDS, TASK_KINDS, "loracle.models.TASK_KINDS")):
        assert sorted(listed) == sorted(registry), f"src/loracle/names.py must list the names of {where}"


# -- progress: a bar on a terminal, one line per phase in a log ------------------------------------------------
class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_in_a_log_writes_one_line_per_phase():
    stream = io.StringIO()
    bar = progress(10, "train", "step", stream=stream)
    for _ in range(10):
        bar.update(1)
        bar.set_postfix(loss="0.5000")
    bar.close()
    bar.close()  # closing twice writes once
    assert [item for item in progress(range(3), "score", "batch", stream=stream)] == [0, 1, 2]
    with progress(10, "train", "step", stream=stream) as early:
        early.update(4)
    progress(5, "hidden", "step", silent=True, stream=stream).close()
    log("round 0 (6 labels): ...", stream=stream)
    text = stream.getvalue()
    assert not BAR_CODES.search(text)
    lines = text.splitlines()
    assert len(lines) == 4, lines
    assert re.fullmatch(r"train: 10 steps in \d+\.\d s \(\d+(\.\d)? step/s\), loss=0\.5000", lines[0]), lines[0]
    assert re.fullmatch(r"score: 3 batches in \d+\.\d s \(\d+(\.\d)? batch/s\)", lines[1]), lines[1]
    assert lines[2].startswith("train: 4/10 steps in ")  # stopped early
    assert lines[3] == "round 0 (6 labels): ..."


def test_progress_on_a_terminal_is_a_tqdm_bar_with_rate_and_eta():
    from tqdm import tqdm

    terminal = Terminal()
    bar = progress(4, "train", "step", stream=terminal)
    assert isinstance(bar, tqdm)
    bar.update(2)
    bar.close()
    assert "step/s" in terminal.getvalue() and "<" in terminal.getvalue()  # rate and time left
    assert isinstance(progress(4, "train", "step", enabled=False, stream=Terminal()), PhaseLine)  # --no-progress
    assert isinstance(progress(4, "train", "step", silent=True, stream=Terminal()), PhaseLine)


def test_library_bars_off_silences_transformers():
    proc = python("import os\n"
                  "os.environ.pop('HF_HUB_DISABLE_PROGRESS_BARS', None)\n"
                  "from transformers.utils import logging\n"
                  "from loracle.progress import library_bars_off\n"
                  "assert logging.is_progress_bar_enabled()\n"
                  "library_bars_off()\n"
                  "print(logging.is_progress_bar_enabled(), os.environ['HF_HUB_DISABLE_PROGRESS_BARS'])")
    assert proc.stdout.split() == ["False", "1"], proc.stderr[-2000:]


# -- logs of real commands -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("logs")
    model_dir = root / "model"
    tiny_bert().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    return root, write_toy_data(root / "data"), model_dir


def test_train_log_has_no_bars(tiny, tmp_path):
    root, data, model_dir = tiny
    proc = loracle("train", "--model", str(model_dir), "--data", str(data), "--task", "classification",
                   "--epochs", "2", "--batch-size", "8", "--max-length", "16", "--output", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not BAR_CODES.search(proc.stderr), proc.stderr[-3000:]
    assert "Loading weights" not in proc.stderr
    assert len(re.findall(r"^train: 16 steps in .* step/s\), loss=", proc.stderr, re.M)) == 1, proc.stderr
    assert re.search(r"test accuracy \d\.\d{3}, ", proc.stdout), proc.stdout


@pytest.mark.parametrize("strategy", ["entropy", "star"])  # star also scores the base model once
def test_al_run_log_has_no_bars_and_one_metrics_line_per_round(tiny, tmp_path, strategy):
    root, data, model_dir = tiny
    out = tmp_path / "run"
    proc = loracle("al", "run", "--model", str(model_dir), "--data", str(data), "--output", str(out),
                   "--initial-size", "6", "--query-size", "4", "--rounds", "2", "--pool-size", "0", "--test-size", "0",
                   "--mc-samples", "2", "--epochs", "1",
                   "--batch-size", "8", "--max-length", "16", "--strategy", strategy)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not BAR_CODES.search(proc.stderr), proc.stderr[-3000:]
    assert "Loading weights" not in proc.stderr
    rounds = [line for line in proc.stderr.splitlines() if line.startswith("round ")]
    assert len(rounds) == 3 and all(ROUND_LINE.match(line) for line in rounds), proc.stderr
    report = json.loads((out / "report.json").read_text())
    for line, r in zip(rounds, report["rounds"]):
        assert line.startswith(f"round {r['round']} ({r['n_labels']} labels): accuracy "
                               f"{r['metrics']['accuracy']:.3f}, macro-F1 {r['metrics']['macro_f1']:.3f}")
    if strategy == "entropy":  # al status: the calibrated ECE (the default: the matched ensemble) and, beside it,
        # the plain ensemble's, the cross-fitted temperature's and the exported model's (`al export`)
        status = loracle("al", "status", str(out))
        assert status.returncode == 0, status.stderr[-3000:]
        table = status.stdout.splitlines()
        header = next(line.split("  ") for line in table if line.lstrip().startswith("round "))
        header = [h.strip() for h in header if h.strip()]
        assert header[-8:] == ["F1 cal.", "ECE cal.", "ECE ens.", "ECE T", "ECE exp.", "ECE floor", "train s",
                               "score s"], header
        rows = [line.split() for line in table if line.split() and line.split()[0].isdigit()]
        assert len(rows) == len(report["rounds"]) == 3
        for row, r in zip(rows, report["rounds"]):
            m = r["metrics"]
            assert "temperature_matched" in m and "ece_matched" not in m
            assert row[-8:-3] == [f"{m[k]:.3f}" for k in ("macro_f1_calibrated", "ece_calibrated", "ece_ensemble",
                                                          "ece_calibrated_initial", "ece_export")]
            # and the round's log line names the same output
            assert f"calibrated output (argmax): accuracy {m['accuracy_calibrated']:.3f}, macro-F1 " \
                   f"{m['macro_f1_calibrated']:.3f}" in rounds[r["round"]]


def test_class_weight_and_label_smoothing_flags_reach_the_config():
    from loracle.cli.al import config_from_args

    parser = subparser("al", "run")
    args = parser.parse_args(["--model", "m", "--data", "d", "--output", "o", "--class-weight", "balanced",
                              "--label-smoothing", "0.2"])
    config = config_from_args(args)
    assert config.train.class_weight == "balanced" and config.train.label_smoothing == 0.2
    none = config_from_args(parser.parse_args(["--model", "m", "--data", "d", "--output", "o", "--class-weight",
                                               "none"]))
    assert none.train.class_weight is None
    assert config.train.lr == 1e-3  # the rest of the recipe stays the default
    defaults = config_from_args(parser.parse_args(["--model", "m", "--data", "d", "--output", "o"]))
    assert (defaults.train.class_weight, defaults.train.label_smoothing) == (None, 0.1)


def test_head_lr_and_validation_fraction_flags_reach_the_config(capsys):
    from loracle.cli.al import config_from_args

    parser = subparser("al", "run")
    args = parser.parse_args(["--model", "m", "--data", "d", "--output", "o", "--head-lr", "3e-5",
                              "--validation-fraction", "0.2", "--calibration-items", "labelled",
                              "--calibration-fold-steps", "epochs", "--logit-adjustment", "1", "--head-init", "probe"])
    config = config_from_args(args)
    assert (config.train.head_lr, config.train.validation_fraction) == (3e-5, 0.2)
    assert config.calibration_items == "labelled" and config.train.logit_adjustment == 1.0
    assert config.train.head_init == "probe" and config.calibration_fold_steps == "epochs"
    assert (config.train.lr, config.train.label_smoothing) == (1e-3, 0.1)
    defaults = config_from_args(parser.parse_args(["--model", "m", "--data", "d", "--output", "o"]))
    assert (defaults.train.head_lr, defaults.train.validation_fraction) == (1e-4, 0.0)
    assert defaults.calibration_items == "initial" and defaults.train.head_init == "auto"
    assert defaults.calibration_fold_steps == "round"
    parser.print_help()
    text = " ".join(capsys.readouterr().out.split())
    assert "--head-lr" in text and "(default: 0.0001)" in text


def test_prior_correction_flag_reaches_badge_and_is_refused_elsewhere():
    from loracle.active.strategies import build_strategy
    from loracle.cli.al import config_from_args

    parser = subparser("al", "run")
    badge = ["--model", "m", "--data", "d", "--output", "o", "--strategy", "badge"]
    config = config_from_args(parser.parse_args([*badge, "--prior-correction"]))
    assert config.strategy == "badge" and config.strategy_options == {"prior_correction": True}
    assert build_strategy(config.strategy, **config.strategy_options).prior_correction is True
    plain = config_from_args(parser.parse_args(badge))
    assert "prior_correction" not in plain.strategy_options
    assert build_strategy(plain.strategy, **plain.strategy_options).prior_correction == "auto"  # badge's default
    default = config_from_args(parser.parse_args(["--model", "m", "--data", "d", "--output", "o"]))
    assert default.strategy == "auto" and default.strategy_options == {}
    with pytest.raises(ValueError, match="--prior-correction is an option of the badge and density_margin "
                                         "strategies, not of 'auto'"):
        config_from_args(parser.parse_args(["--model", "m", "--data", "d", "--output", "o", "--prior-correction"]))
    for value, option in (("auto", "auto"), ("on", True), ("off", False)):
        chosen = config_from_args(parser.parse_args([*badge, "--prior-correction", value]))
        assert chosen.strategy_options == {"prior_correction": option}
    with pytest.raises(SystemExit):  # argparse: invalid choice
        parser.parse_args(["--model", "m", "--data", "d", "--output", "o", "--prior-correction", "yes"])
    density = config_from_args(parser.parse_args(["--model", "m", "--data", "d", "--output", "o", "--strategy",
                                                  "density_margin", "--prior-correction", "off"]))
    assert density.strategy_options == {"prior_correction": False}
    with pytest.raises(ValueError, match="--prior-correction is an option of the badge and density_margin strategies"):
        config_from_args(parser.parse_args(["--model", "m", "--data", "d", "--output", "o", "--strategy",
                                            "entropy", "--prior-correction"]))
