"""The configuration of an active-learning run: the one place its defaults live.

``ALConfig`` nests the typed :class:`~loracle.adapters.AdapterConfig` and :class:`~loracle.training.TrainConfig`,
so every field (a typo inside ``train:`` in a YAML file included) is validated before a run folder is written.

Defaults: the whole training split is the pool and the whole unlabelled pool is scored every round; the adapter
(LoRA r=8 on every linear layer of the top two transformer blocks, dropout 0.1) leaves the blocks below frozen, so
the states entering the first adapted block are computed once per run (:class:`loracle.modeling.PrefixCache`) and
each round trains, evaluates and scores only the top blocks. docs/ARCHITECTURE.md and the README's benchmark
tables give the measured cost of this placement against adapters in every block.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loracle.active.strategies import (ANSWER_SIGNALS, STRATEGIES, build_strategy, cold_start_strategies,
                                       strategy_class)
from loracle.adapters.base import AdapterConfig, config_from_dict
from loracle.modeling.precision import PRECISIONS
from loracle.training.config import TrainConfig

ORACLES = ("simulated", "human")
INITIAL_MODES = ("random", "stratified")


#: The attention query and value projections under the names of common architectures (BERT/RoBERTa ``query``,
#: ``value``; Llama/Mistral/Qwen ``q_proj``, ``v_proj``; DistilBERT ``q_lin``, ``v_lin``; GPT-2 ``c_attn``, which
#: fuses q, k and v), as one regex matched in full against module names.
QUERY_VALUE = r".*\.(query|value|q_proj|v_proj|q_lin|v_lin|c_attn)"


def default_adapter() -> AdapterConfig:
    """LoRA r=8, alpha 16, dropout 0.1 on every linear layer of the top two blocks (the head is trained in full by
    the model builder).

    The top two blocks leave the rest frozen, so the prefix below is computed once per run. Measured on
    rotten_tomatoes, 300 labels, the 2,000 test items, seeds 0/1 (benchmarks/bench_round.py and the README's
    "Adapter placement"): this placement 0.735/0.737 accuracy; the top four blocks (pooler trained) 0.732/0.742;
    every block 0.713/0.754; the PEFT reference (q/k/v/o in every block) 0.748/0.756.
    """
    from loracle.adapters import LoRAConfig

    return LoRAConfig(rank=8, alpha=16.0, dropout=0.1, target_modules=None, layers=[-2, -1])


#: ``ALConfig.calibration``: per round the cross-fitted ensemble or temperature (``auto``), one of them always, the
#: ensemble at the temperature that matches its confidence to an accuracy estimate (``matched``), or nothing.
CALIBRATIONS = ("auto", "ensemble", "matched", "temperature", "none")
#: The calibrations whose rounds keep their fold models in the checkpoint (``folds/<i>``).
KEEPS_FOLDS = ("auto", "ensemble", "matched")
#: Which out-of-fold predictions a cross-fitted temperature is fitted on (``ALConfig.calibration_items``).
CALIBRATION_ITEMS = ("initial", "labelled")
#: How long a cross-fitting fold model trains (``ALConfig.calibration_fold_steps``).
CALIBRATION_FOLD_STEPS = ("round", "epochs")
#: How many optimiser steps a round's model takes (``ALConfig.train_steps``).
TRAIN_STEPS = ("fixed", "folds")
#: Which class prior the calibrated predictions carry (``ALConfig.calibration_prior``).
CALIBRATION_PRIORS = ("pool", "labelled")


def default_strategy(task_kind: str = "classification") -> str:
    """The query strategy a run uses when none is named: ``auto`` for classification (a density-weighted margin on a
    balanced task, class-balanced selection on an imbalanced one; README, "The default is now `auto`"), ``badge``
    for multiple choice (measured there: SmolLM2 on social_iqa, README), ``random`` for generation (no
    answer-uncertainty strategy beat it on gsm_symbolic, README, "Active learning for generation")."""
    return {"multiple_choice": "badge", "generation": "random"}.get(task_kind, "auto")


def default_train(task_kind: str = "classification") -> TrainConfig:
    """AdamW at lr 1e-3, batch 16, at least 3 epochs (8 for classification) and at least 100 optimiser steps
    (small labelled sets get more epochs), weight decay 0.01 on matrices.

    Classification trains at least 8 epochs: with 3, every set above 200 labels stopped at the 100-step floor's
    few epochs and came out under-confident (400 random rotten_tomatoes labels, seeds 0-2: mean confidence 0.67 at
    accuracy 0.745, ECE 0.081-0.086); 8 epochs give accuracy 0.747 at ECE 0.048-0.063 (mean confidence 0.80), and
    change nothing at 100-200 labels, where the step floor already asks for more epochs (README, "Training recipe").
    On a task the model cannot learn they over-fit instead (strategyqa questions, 400 labels: confidence 0.73 at
    accuracy 0.54, ECE 0.200): no recipe is calibrated everywhere, which is why ``ALConfig.calibration`` fits a
    cross-fitted temperature by default (ECE 0.051 there).

    Classification also gets a slow head (``head_lr=1e-4``: the classification head, trained in full, learns at a
    tenth of the adapter's rate), label smoothing 0.1, and ``head_init="auto"``: the head starts as a
    cross-validated linear probe on the labels (LP-FT) when there are more than two classes or a class holds
    under a quarter of them. Measured with MiniLM on random labelled sets (benchmarks/bench_recipe.py, 3-4 seeds,
    1,000 test items; README, "Training recipe"), accuracy / ECE at 100 and 300 labels:

    - rotten_tomatoes (2 classes, 57/43): head at lr 1e-3 0.667 / 0.233 and 0.740 / 0.075; slow head 0.669 / 0.097
      and 0.739 / 0.058; a probe head there is worse (0.637 / 0.188 and 0.717 / 0.089), hence the random start.
    - 10% ``rotten``: without the probe every item gets the majority class (macro-F1 0.473); with it macro-F1
      0.514 / 0.581 at ECE 0.035 / 0.018.
    - 20 classes (Roget's thesaurus phrases): 0.242 / 0.272 with the old recipe, 0.360 / 0.490 with the probe
      head (ECE 0.058 / 0.072).

    Class-balanced loss weights (``class_weight="balanced"``) and the logit-adjusted loss are opt-in: they raise
    minority recall further (macro-F1 0.55-0.63) at ECE 0.15-0.20, and in active-learning runs class weights were
    unstable with random labelled sets (one seed's model came to predict the minority class for nearly every item
    at 400-700 labels).
    """
    if task_kind == "classification":
        return TrainConfig(epochs=8, min_steps=100, batch_size=16, lr=1e-3, head_lr=1e-4, weight_decay=0.01,
                           label_smoothing=0.1, head_init="auto")
    return TrainConfig(epochs=3, min_steps=100, batch_size=16, lr=1e-3, weight_decay=0.01)


@dataclass
class ALConfig:
    """Options of :func:`loracle.active.loop.run_active_learning`.

    Args:
        model: built-in name (``minilm``, ``smollm2``), hub id or local folder for ``loracle.models.load_model``.
        data: dataset for ``loracle.data.load_examples`` (a folder with ``train.jsonl``/``test.jsonl``, a file...).
        task_kind: ``classification``, ``multiple_choice`` or ``generation`` (question → free-text answer with a
            causal LM; the pool is the questions, the oracle gives the answer text, and the strategies rank the
            uncertainty of the model's own greedy answer: ``random``, ``sequence_nll``, ``token_entropy``,
            ``nll_variance``, ``star_generation``).
        test_data: evaluation set (default: ``data`` with ``split="test"``).
        text_field: the input's field (None: the loader's default for the task kind).
        label_field: the label's field (None: the loader's default, ``label``).
        answer_field: generation: the reference answer's field (None: ``answer``).
        max_new_tokens: generation: the longest answer generated (greedy, once per item and round).
        stop_strings: generation: an answer ends at the first of these (besides EOS); the default ends it at the
            end of its line.
        answer_mode: generation: how exact match extracts the answer, ``number`` (the last number, as for
            gsm_symbolic) or ``text`` (the first line, lower-cased).
        answer_pattern: generation: a regular expression whose group 1 (or whole match) is the answer; overrides
            ``answer_mode``.
        prompt_template: generation: ``str.format`` template with ``{question}`` (None: ``"Question:
            {question}\nAnswer:"``).
        strategy: a name in :data:`loracle.active.strategies.STRATEGIES`. None (default): :func:`default_strategy`
            for ``task_kind``; for classification ``auto``
            (:class:`~loracle.active.strategies.switch.ImbalanceSwitchStrategy`): a density-weighted margin on a task
            whose round-0 labels are balanced, class-balanced selection on one whose are not (README, "The default
            is now `auto`"; before 0.3 the default was ``badge``).
        strategy_options: keyword options of the strategy (``{"score": "bald"}``, ``{"schedule": 0.2}``...).
        initial_size: size of the initial labelled set.
        initial_mode: ``random`` or ``stratified`` (proportional to the classes of the hidden gold labels).
        query_size: labels added per round.
        rounds: number of query rounds (None: as many as ``budget`` allows).
        budget: total number of labels, initial set included (None: ``initial_size + rounds · query_size``).
        pool_size: use a seeded random subset of this many training items as the pool (None: all).
        test_size: seeded random subset of the test set (None: all).
        score_subset: each round, score only a seeded random subset of this many unlabelled items (None: all).
            The top-k is taken within the subset (standard pool subsampling).
        mc_samples: stochastic passes for uncertainty (0: one deterministic pass; None: the strategy's own
            choice, 8 for the uncertainty strategies and STAR, 4 for the generation strategies, 0 for BADGE, k-center
            and random).
        base_mc_samples: MC passes for STAR's ``U_base`` through the base model's own dropout (0: one
            deterministic pass over the pool, which keeps this once-per-run cost small).
        mc_dropout: MC dropout through the adapters' dropout.
        mc_posterior: sample MonteCLoRA posteriors (needs a MonteCLoRA adapter).
        stochastic_layers: MC randomness only in the adapters of the last k blocks (None: all adapters).
        adapter: the adapter (:class:`~loracle.adapters.AdapterConfig`, or a dict with ``method``); an empty
            ``modules_to_save`` trains the model's classification head in full.
        fresh_adapter: a fresh adapter (and head) each round, as in STAR; False continues from the last round.
        train: the training recipe (:class:`~loracle.training.TrainConfig`, or a dict of the fields to change
            from :func:`default_train` for this ``task_kind``; None: that default).
        max_length: token limit of the task (longer inputs are truncated; the run says how many were).
        eval_batch_size: batch size for evaluation and scoring.
        prefix_cache: compute the frozen blocks below the first adapted block once per run and reuse them in
            every round (training, evaluation, scoring); only used when the adapter leaves blocks below it.
        cache_dir: where the prefix cache is kept between sessions (None: ``<run_dir>/cache``); runs on the same
            model may share one folder.
        score_chunk: unlabelled items scored per persisted chunk (a killed scoring pass resumes by chunk).
        precision: ``auto`` (bf16 autocast for training, evaluation and scoring where the hardware runs bf16
            fast: AMX/AVX512-BF16 CPUs, bf16 GPUs; fp32 elsewhere), ``bf16`` or ``fp32``.
        calibration: ``temperature``: each round fits a temperature on out-of-fold predictions of the labelled
            set (``calibration_folds`` models, each trained on the other folds with the same recipe; see
            ``calibration_items``), saved with the round's adapter; each round reports test ECE / NLL / Brier
            before and after it (``ece_calibrated``), and the stop set and the labelling app's predictions use
            it. ``ensemble``: the same ``calibration_folds`` fold models, kept: the round's calibrated
            probabilities are the mean of the round model and its fold models (a cross-fitted ensemble, as deep
            ensembles, arXiv 1612.01474), whose adapters are saved in the round's checkpoint under ``folds/<i>``;
            ``ece_calibrated`` is the ensemble's, and the temperatures are still reported
            (``ece_calibrated_initial``, ``ece_calibrated_labelled``); strategies, the stop set and the labelling
            app see the round model. ``matched``: that ensemble at the one temperature that sets its mean
            top-class probability on the stop set (unlabelled pool items) to an estimate of its accuracy, the mean
            of the fold models' agreement there and their out-of-fold accuracy on ``calibration_items``
            (:meth:`ActiveLearningLoop._matched`; :func:`~loracle.evaluation.calibration.matched_accuracy`); the
            temperature is saved with the adapter and applied after averaging, and the stop set and the labelling
            app see the calibrated ensemble. Every round that cross-fits also scores the matched ensemble
            (``ece_matched``, ``temperature_matched``, ``accuracy_estimate``) whatever it reports. ``auto``: per
            round, the ensemble, unless the cross-fitted temperature (fitted on ``calibration_items``) is below 1,
            then the temperature (:func:`~loracle.evaluation.calibration.calibration_choice`; the round's metrics
            say which: ``calibration_temperature`` 1 or 0; the fold models are kept in the checkpoint either way).
            ``none``: no calibration. None (default): ``matched`` for classification, ``none`` for the other task
            kinds. Calibration is on by default because no training recipe is calibrated on every task: the
            default recipe caps the model's confidence at 0.77-0.88 whatever its accuracy, so the ensemble is
            calibrated where the accuracy lies just under that cap (rotten_tomatoes), over-confident where it lies
            far below (a task the model learns little of) and under-confident where it lies above (a task it
            learns well); the cross-fitted temperature fails the other way round. The matched temperature moves
            the ensemble to an accuracy estimate that is within −0.028 to +0.038 of the truth on average per task
            where the ensemble's own confidence is off by −0.097 to +0.118. Over 126 recorded active-learning
            rounds on six task sets, test ECE from 200 labels on (range of the per-budget means; README, "Training
            recipe"): rotten_tomatoes 0.048-0.054 (ensemble 0.034-0.053), a sentence task learnt little
            0.047-0.061 (ensemble 0.099-0.136), a word task learnt well 0.025-0.045 (ensemble 0.046-0.084),
            sentence subjectivity 0.040-0.055 (ensemble 0.080-0.133, ``auto`` 0.061-0.080). Where the model
            cannot learn the task at all (MiniLM on strategyqa questions, accuracy 0.50-0.57) the cross-fitted
            temperature flattens it best; ``temperature`` is the choice there, and where strategies should see
            calibrated scores (``calibrate_scores``). Three extra trainings per round, each on 2/3 of the labels.
        calibration_folds: folds of the cross-fitting (>= 2).
        calibration_items: which out-of-fold predictions the temperature is fitted on: ``initial`` (default): only
            the items of round 0, a sample of the pool like the test set when ``initial_mode`` is ``random`` or
            ``stratified`` (the models are still trained on every label); ``labelled``: every labelled item,
            including the queried ones, which are harder than the test set and pull the temperature up. Each
            round reports ECE / NLL after both (``ece_calibrated`` for this choice, ``ece_calibrated_<other>``).
        calibration_fold_steps: how long each fold model trains: ``round`` (default): as many optimiser steps as
            the round's model (the same learning-rate schedule over 2/3 of the labels); ``epochs``: as many epochs
            as the round's model, so fewer steps (the rule before 0.2: at 200 labels 72 steps against the round
            model's 104, fold models under-trained and under-confident; README, "Active learning").
        train_steps: how long the round's model trains: ``fixed`` (default): the recipe's whole schedule
            (``train.epochs``, at least ``train.min_steps``); ``folds``: the cross-fitting's fold models are copied
            at each of the round model's epoch ends, and the round model and its fold models stop at the latest of
            those steps whose held-out loss (each item scored by the fold model that did not train on it; only the
            round-0 items under ``calibration_items="initial"``, a sample of the pool where queried items are
            picked for being hard) is within one standard error of the lowest
            (:func:`loracle.training.selection.stop_step_by_loss`; the learning-rate schedule stays the whole
            run's). No extra training: the copies are of adapters and heads. Measured (README, "Training recipe"):
            on random labels of tasks the model learns little it cuts the round model's over-confidence (ECE
            0.15-0.22 to 0.02-0.13 at the same accuracy); on rotten_tomatoes' active-learning rounds it stopped
            at 37-62% of the schedule and twice left a model near the class prior, so it is not the default.
            Needs cross-fitting (``calibration`` other than ``none``, ``calibration_fold_steps="round"``); rounds
            with fewer than ``2 * calibration_folds`` labels train the whole schedule.
        calibration_prior: ``pool`` (default): when the labels queried so far differ in class shares from the
            round-0 sample beyond chance (1% level), the calibrated predictions the round reports are moved from
            the class prior the model was trained under (the labelled set's shares; uniform with
            ``class_weight="balanced"``; ``π^(1−τ)`` with ``logit_adjustment=τ``) to the pool's, estimated by that
            sample's shares (:mod:`loracle.evaluation.label_shift`; needs ``initial_mode`` ``random`` or
            ``stratified``; the checkpoint is not shifted: its ``train_prior`` and ``pool_prior`` say from what to what). A strategy that seeks a rare class trains the
            model on far more of it than the pool holds (``class_balance``: about 32% against 10%, round-model
            test ECE 0.07-0.11). The pool's prior is only as good as the round-0 sample: on a balanced task a
            margin strategy's picks moved it in 2 of 50 rounds (seed 9 of the README's 10, at 500-600 labels) and
            made ECE worse there (0.062 → 0.093), that sample putting the majority class at 64% where the pool
            holds 57%. ``labelled``: keep the labelled set's prior (the rule before 0.3).
        calibrate_scores: strategies see temperature-scaled probabilities (with ``calibration`` left to its
            default, it is then ``temperature``).
        stopping: stopping criteria checked every round on a fixed unlabelled stop set
            (``stabilizing_predictions``: Cohen's kappa between rounds near 1; ``agreement_plateau``: that kappa
            no longer rising; ``overall_uncertainty``: mean normalised entropy), reported as "labelling more is
            unlikely to help" with their numbers; ``[]`` for none.
        stop_set_size: items of the seeded stop set drawn from the pool.
        stop_early: end the run at the first round where a stopping criterion says stop.
        oracle: ``simulated`` (labels from the data, hidden from the strategy) or ``human``.
        seed: seeds everything (pool subset, initial set, adapters, training, MC, selection).
        progress: progress bars on a terminal (one line per phase in a log).
    """

    model: str = "minilm"
    data: str = ""
    task_kind: str = "classification"
    test_data: str | None = None
    text_field: str | None = None
    label_field: str | None = None
    answer_field: str | None = None
    max_new_tokens: int = 32
    stop_strings: list[str] = field(default_factory=lambda: ["\n"])
    answer_mode: str = "number"
    answer_pattern: str | None = None
    prompt_template: str | None = None
    strategy: str | None = None
    strategy_options: dict[str, Any] = field(default_factory=dict)
    initial_size: int = 100
    initial_mode: str = "random"
    query_size: int = 100
    rounds: int | None = 4
    budget: int | None = None
    pool_size: int | None = None
    test_size: int | None = None
    score_subset: int | None = None
    mc_samples: int | None = None
    base_mc_samples: int = 0
    mc_dropout: bool = True
    mc_posterior: bool = False
    stochastic_layers: int | None = None
    adapter: AdapterConfig = field(default_factory=default_adapter)
    fresh_adapter: bool = True
    train: TrainConfig | dict | None = None
    max_length: int = 256
    eval_batch_size: int = 64
    prefix_cache: bool = True
    cache_dir: str | None = None
    score_chunk: int = 2048
    precision: str = "auto"
    calibration: str | None = None
    calibration_folds: int = 3
    calibration_items: str = "initial"
    calibration_fold_steps: str = "round"
    train_steps: str = "fixed"
    calibration_prior: str = "pool"
    calibrate_scores: bool = False
    stopping: list[str] = field(default_factory=lambda: ["stabilizing_predictions", "agreement_plateau",
                                                         "overall_uncertainty"])
    stop_set_size: int = 1000
    stop_early: bool = False
    oracle: str = "simulated"
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.adapter, dict):
            # A partial adapter section (YAML, flags) keeps the default placement and sizes it does not name.
            try:
                self.adapter = config_from_dict({**default_adapter().to_dict(), **self.adapter})
            except (ValueError, TypeError, KeyError) as err:
                problems.append(f"adapter: {err}")
        if self.train is None:
            self.train = default_train(self.task_kind)
        if self.strategy is None:
            self.strategy = default_strategy(self.task_kind)
        if self.calibration is None:  # calibrate_scores needs a temperature, so it picks that calibration
            self.calibration = ("none" if self.task_kind != "classification"
                                else "temperature" if self.calibrate_scores else "matched")
        if isinstance(self.train, dict):
            names = {f.name for f in dataclasses.fields(TrainConfig)}
            unknown = sorted(set(self.train) - names)
            if unknown:
                problems.append(f"train: unknown fields {unknown}; valid fields: {sorted(names)}")
            else:
                try:
                    self.train = TrainConfig(**{**default_train(self.task_kind).to_dict(), **self.train})
                except (ValueError, TypeError) as err:
                    problems.append(f"train: {err}")
        if not problems:
            problems = self.validate()
        if problems:
            raise ValueError("invalid active-learning config:\n  - " + "\n  - ".join(problems))

    def validate(self) -> list[str]:
        """Every problem with this config (empty when valid). Pool-size checks happen once the data is loaded."""
        p = []
        if not isinstance(self.adapter, AdapterConfig):
            p.append(f"adapter must be an AdapterConfig or a dict with 'method', got {type(self.adapter).__name__}")
        if not isinstance(self.train, TrainConfig):
            p.append(f"train must be a TrainConfig or a dict of its fields, got {type(self.train).__name__}")
        if not self.data:
            p.append("data is required (a dataset folder or file, e.g. ../shared/data/rotten_tomatoes)")
        if self.task_kind not in ("classification", "multiple_choice", "generation"):
            p.append(f"task_kind must be 'classification', 'multiple_choice' or 'generation', got {self.task_kind!r}")
        if self.strategy not in STRATEGIES:
            p.append(f"unknown strategy {self.strategy!r}; valid strategies: {sorted(STRATEGIES)}")
        else:
            p.extend(self._generation_problems())
        cold = [n for n in cold_start_strategies() if n != "random"]
        if self.initial_mode not in INITIAL_MODES + tuple(cold):
            p.append(f"initial_mode must be one of {list(INITIAL_MODES) + cold}, got {self.initial_mode!r}")
        if self.oracle not in ORACLES:
            p.append(f"oracle must be one of {list(ORACLES)}, got {self.oracle!r}")
        for name in ("initial_size", "query_size", "score_chunk"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                p.append(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("rounds", "pool_size", "test_size", "score_subset", "budget", "stochastic_layers"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < (0 if name == "rounds" else 1)):
                p.append(f"{name} must be a positive integer or None, got {value!r}")
        if self.rounds is None and self.budget is None:
            p.append("give rounds or budget (or both)")
        if (isinstance(self.budget, int) and isinstance(self.initial_size, int) and self.budget < self.initial_size):
            p.append(f"budget ({self.budget}) is smaller than initial_size ({self.initial_size})")
        if self.mc_samples is not None and (not isinstance(self.mc_samples, int) or self.mc_samples < 0):
            p.append(f"mc_samples must be an integer >= 0 or None (the strategy's choice), got {self.mc_samples!r}")
        if not isinstance(self.base_mc_samples, int) or self.base_mc_samples < 0:
            p.append(f"base_mc_samples must be an integer >= 0, got {self.base_mc_samples!r}")
        if (self.mc_samples or 0) > 0 and not (self.mc_dropout or self.mc_posterior):
            p.append("mc_samples > 0 needs mc_dropout or mc_posterior")
        method = getattr(self.adapter, "method", None)
        if self.mc_posterior and method != "monteclora":
            p.append(f"mc_posterior needs adapter method 'monteclora', got {method!r}")
        if (self.mc_dropout and (self.mc_samples or 0) > 0 and not self.mc_posterior
                and not getattr(self.adapter, "dropout", 0)):
            p.append("MC dropout needs adapter dropout > 0 (e.g. adapter={'method': 'lora', 'dropout': 0.1})")
        if self.calibration not in CALIBRATIONS:
            p.append(f"calibration must be one of {list(CALIBRATIONS)}, got {self.calibration!r}")
        if self.calibrate_scores and self.calibration != "temperature":
            p.append("calibrate_scores scales the strategies' probabilities by the round's temperature: it needs "
                     f"calibration='temperature', got {self.calibration!r}")
        if self.calibration_items not in CALIBRATION_ITEMS:
            p.append(f"calibration_items must be one of {list(CALIBRATION_ITEMS)}, got {self.calibration_items!r}")
        if self.calibration_fold_steps not in CALIBRATION_FOLD_STEPS:
            p.append(f"calibration_fold_steps must be one of {list(CALIBRATION_FOLD_STEPS)}, got "
                     f"{self.calibration_fold_steps!r}")
        if self.train_steps not in TRAIN_STEPS:
            p.append(f"train_steps must be one of {list(TRAIN_STEPS)}, got {self.train_steps!r}")
        elif self.train_steps == "folds" and self.calibration_fold_steps != "round":
            p.append("train_steps='folds' stops the round model at a step its fold models chose, so they must "
                     "take its steps: use calibration_fold_steps='round' (or train_steps='fixed')")
        if self.calibration_prior not in CALIBRATION_PRIORS:
            p.append(f"calibration_prior must be one of {list(CALIBRATION_PRIORS)}, got {self.calibration_prior!r}")
        if not isinstance(self.calibration_folds, int) or self.calibration_folds < 2:
            p.append(f"calibration_folds must be an integer >= 2, got {self.calibration_folds!r}")
        from loracle.active.stopping import STOPPING_CRITERIA

        unknown = [n for n in (self.stopping or []) if n not in STOPPING_CRITERIA or n == "max_rounds"]
        if unknown:
            valid = sorted(n for n in STOPPING_CRITERIA if n != "max_rounds")
            p.append(f"unknown stopping criteria {unknown}; valid: {valid}")
        if not isinstance(self.stop_set_size, int) or self.stop_set_size < 1:
            p.append(f"stop_set_size must be an integer >= 1, got {self.stop_set_size!r}")
        if self.precision not in PRECISIONS:
            p.append(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if not isinstance(self.max_length, int) or self.max_length < 2:
            p.append(f"max_length must be an integer >= 2, got {self.max_length!r}")
        return p

    def _generation_problems(self) -> list[str]:
        """Options that a generation run needs, or that only a generation run accepts."""
        generation = self.task_kind == "generation"
        fits = [n for n in sorted(STRATEGIES) if (_requires(n) <= ANSWER_SIGNALS) == generation or not _requires(n)]
        needs = _requires(self.strategy, self.strategy_options)
        p = []
        if needs and (needs <= ANSWER_SIGNALS) != generation:
            p.append(f"strategy {self.strategy!r} does not apply to task_kind {self.task_kind!r} (it reads "
                     f"{sorted(needs)}); valid strategies for it: {fits}")
        if not generation:
            return p
        if self.initial_mode != "random":
            p.append(f"initial_mode {self.initial_mode!r} needs class labels or features; generation takes "
                     "initial_mode='random'")
        if self.calibration != "none":
            p.append(f"calibration={self.calibration!r} calibrates class probabilities; generation reports the "
                     "calibration of answer confidence instead: use calibration='none'")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            p.append(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if self.answer_mode not in ("number", "text"):
            p.append(f"answer_mode must be 'number' or 'text', got {self.answer_mode!r}")
        if self.answer_pattern is not None:
            import re

            try:
                re.compile(self.answer_pattern)
            except re.error as err:
                p.append(f"answer_pattern {self.answer_pattern!r} is not a regular expression ({err})")
        if not isinstance(self.stop_strings, list) or any(not isinstance(x, str) or not x for x in self.stop_strings):
            p.append(f"stop_strings must be a list of non-empty strings, got {self.stop_strings!r}")
        if self.prompt_template is not None and "{question}" not in self.prompt_template:
            p.append(f"prompt_template must contain '{{question}}', got {self.prompt_template!r}")
        return p

    def generation_options(self) -> dict[str, Any]:
        """The :class:`~loracle.tasks.generation.GenerationTask` options of this run (empty for other kinds)."""
        if self.task_kind != "generation":
            return {}
        options: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "stop_strings": list(self.stop_strings),
                                   "answer_mode": self.answer_mode, "answer_pattern": self.answer_pattern}
        if self.prompt_template is not None:
            options["prompt_template"] = self.prompt_template
        return options

    @property
    def n_rounds(self) -> int:
        """Number of query rounds implied by ``rounds`` and ``budget`` (the smaller limit wins)."""
        limits = []
        if self.rounds is not None:
            limits.append(self.rounds)
        if self.budget is not None:
            limits.append((self.budget - self.initial_size) // self.query_size)
        return min(limits)

    @property
    def total_labels(self) -> int:
        return self.initial_size + self.n_rounds * self.query_size

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the nested adapter and training configs as dicts."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["adapter"] = self.adapter.to_dict()
        data["train"] = self.train.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ALConfig":
        """Build from a dict (a YAML file, the saved run config).

        Raises:
            ValueError: for unknown fields (the valid ones are listed) or invalid values, all at once.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown active-learning config fields {unknown}; valid fields: {sorted(names)}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "ALConfig":
        import yaml

        with open(path) as handle:
            data = yaml.safe_load(handle) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of config fields, got {type(data).__name__}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)


def _requires(name: str, options: dict[str, Any] | None = None) -> frozenset[str]:
    """The signals strategy ``name`` reads as built with ``options`` (a strategy that composes others, such as
    ``auto``, sets them per instance); the class's declaration where the options do not build."""
    try:
        return frozenset(build_strategy(name, **dict(options or {})).requires)
    except (ValueError, TypeError):
        return frozenset(strategy_class(name).requires)
