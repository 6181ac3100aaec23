"""The names of loracle's registries and closed option sets, importable without torch.

The command line builds its ``choices=`` from these when it builds its parser, so ``loracle --help`` and a typo in
``--strategy`` both answer at once instead of after torch has loaded. Each tuple mirrors a registry (or a config
constant) that needs torch, or a torch-importing package, to read; ``tests/cli/test_help_and_logs.py`` checks that
they agree, so a new strategy or adapter is its registration plus its name here.
"""

from __future__ import annotations

#: ``loracle.active.strategies.STRATEGIES``
STRATEGY_NAMES: tuple[str, ...] = ("random", "entropy", "least_confidence", "margin", "bald", "power_entropy",
                                   "power_bald", "star", "star_published", "kcenter", "kmeans", "badge", "diverse_margin",
                                   "density_margin", "cal", "class_balance", "auto",
                                   "typiclust",
                                   "sequence_nll", "token_entropy", "nll_variance", "star_generation")

#: ``loracle.adapters.ADAPTERS`` (``loracle train`` also accepts ``full``: every weight trained, no adapter)
ADAPTER_NAMES: tuple[str, ...] = ("lora", "lora_sp", "monteclora")

#: ``loracle.uncertainty.scores.SCORES``: the uncertainty measures a strategy can rank by
SCORE_NAMES: tuple[str, ...] = ("entropy", "bald", "least_confidence", "margin")
#: ``loracle.uncertainty.scores.ANSWER_SCORES``: the measures of a generated answer (generation strategies)
ANSWER_SCORE_NAMES: tuple[str, ...] = ("sequence_nll", "token_entropy", "nll_variance")

#: ``loracle.training.config.SCHEDULERS``
SCHEDULER_NAMES: tuple[str, ...] = ("linear", "cosine", "constant", "constant_with_warmup", "polynomial",
                                    "cosine_with_restarts")

#: ``loracle.active.config.ORACLES`` and ``INITIAL_MODES``
ORACLE_NAMES: tuple[str, ...] = ("simulated", "human")
INITIAL_MODES: tuple[str, ...] = ("random", "stratified")
#: ``loracle.active.strategies.cold_start_strategies()`` other than random: cold starts for the initial set
COLD_START_NAMES: tuple[str, ...] = ("kmeans", "typiclust")

#: ``loracle.models.TASK_KINDS``; active learning takes all three (generation scores the model's own answer)
TASK_KINDS: tuple[str, ...] = ("classification", "multiple_choice", "generation")
AL_TASK_KINDS: tuple[str, ...] = TASK_KINDS
