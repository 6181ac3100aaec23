"""A round's model as a Hugging Face PEFT LoRA folder, with a calibration folded into its classification head
(``loracle al export``).

A run's calibrated output (:mod:`loracle.active.predict`) averages the round model with its cross-fitted fold
models, which one PEFT adapter cannot hold. What a single model can carry is a map of its logits: a temperature
``T`` and a class-prior offset ``b`` give ``softmax(z / T + b)``, and on the head's output layer ``W h + c`` that is
the layer ``(W / T) h + (c / T + b)`` (:func:`loracle.adapters.export_peft`). So the exported folder loads with ``peft.PeftModel.from_pretrained`` as any
PEFT adapter, and its probabilities are already calibrated; no loracle code is needed to use it.

``calibration`` chooses ``T``:

- ``matched`` (the default): the temperature at which the round model's mean top-class probability on the run's
  unlabelled stop-set items (in the pool's class prior where the round moved its predictions there) equals the
  round's recorded accuracy estimate, the one ``al run --calibration matched`` sets its ensemble's confidence to
  (:func:`~loracle.evaluation.calibration.matched_accuracy`: the fold models' agreement and out-of-fold accuracy).
  Every cross-fitted round records it (``temperature_export``, with the test metrics ``*_export``); for a run made
  before that, the export fits it the same way on one pass of the round model over those items.
- ``temperature``: the round's cross-fitted temperature (``--calibration temperature`` of ``al predict``).
- ``none``: the round model as trained.

The class-prior move (``train_prior`` → ``pool_prior`` of the round's checkpoint, where the queried labels' class
shares departed from the round-0 sample's) is folded in with either temperature. Where the run kept a test set, the
recorded test predictions of the round model give the exported model's test metrics without another pass
(``test`` in the result; a bf16 pass with the prefix cache, within a few thousandths of an fp32 one).
Measured on stored runs (README, "Command line"): the exported model's test ECE against the raw round model's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from loracle.errors import LoracleError

EXPORT_CALIBRATIONS = ("matched", "temperature", "none")
EXPORT_INFO_FILE = "loracle_export.json"


def export_round(run_dir: str | Path, output: str | Path, round_index: int | None = None, *,
                 calibration: str = "matched", model_factory: Any = None, batch_size: int | None = None,
                 progress: bool = False) -> dict[str, Any]:
    """Write round ``round_index`` (default: the last completed) of the run in ``run_dir`` to ``output`` as a PEFT
    LoRA folder, its ``calibration`` (module docstring) folded into the head, plus ``loracle_export.json``.

    Args:
        run_dir: the run folder.
        output: the folder to write (created; files of an earlier export are replaced).
        round_index: the round; None for the last completed one.
        calibration: ``matched``, ``temperature`` or ``none``.
        model_factory: ``(name, task_kind, num_labels) -> (model, tokenizer)``; default the run's model.
        batch_size: of the stop-set pass (default the run's ``eval_batch_size``).
        progress: a progress bar for that pass.

    Returns:
        What ``loracle_export.json`` holds: ``round``, ``n_labels``, ``calibration``, ``temperature``,
        ``prior_offset`` (per class, or None), ``accuracy_estimate``, ``label_names``, ``base_model``, ``output``
        and, where the run has a test set, ``test``: the round model's and the exported model's ``accuracy``,
        ``macro_f1``, ``ece``, ``nll`` and ``brier``.

    Raises:
        LoracleError: an unknown calibration, a folder that is not a run or lacks the round or its checkpoint, a
            calibration the round did not record, or a head a calibration cannot be folded into.
    """
    from loracle.active.config import ALConfig
    from loracle.active.loop import stop_set_indices
    from loracle.active.predict import RoundCalibration, round_checkpoint
    from loracle.active.state import RunState
    from loracle.adapters import export_peft
    from loracle.evaluation.calibration import match_confidence
    from loracle.evaluation.metrics import classification_metrics
    from loracle.modeling.build import ModelBuilder

    if calibration not in EXPORT_CALIBRATIONS:
        raise LoracleError(f"calibration must be one of {', '.join(EXPORT_CALIBRATIONS)}, got {calibration!r}")
    if Path(output).exists() and not Path(output).is_dir():
        raise LoracleError(f"--output {output} is an existing file; give a folder (new, or one to write into)")
    state = RunState.open(run_dir)
    try:
        config, label_names = ALConfig.from_dict(state.config), state.label_names
        round_index, row, folder = round_checkpoint(run_dir, {r["round"]: r for r in state.rounds()}, round_index)
        metrics = row["metrics"] or {}
        classification = config.task_kind == "classification" and bool(label_names)
        stop_items = []
        if classification and calibration == "matched" and metrics.get("temperature_export") is None:
            # a run made before rounds recorded the temperature: the stop set's items still unlabelled after it
            labelled = set(state.labels(max_round=round_index))
            indices = stop_set_indices(config, state.pool_size())
            stop_items = [e for i, e in zip(indices, state.pool_examples(indices)) if i not in labelled]
        test_probs = state.get_signal(f"test_probs/{round_index}") if classification else None
        test_labels = state.get_signal("test_labels") if test_probs is not None else None
    finally:
        state.close()
    if calibration != "none" and not classification:
        raise LoracleError(f"{run_dir} is a {config.task_kind} run: a calibration can be folded only into a "
                           "classification head; export with --calibration none")

    temperature: float | None = None
    offset = None
    estimate = metrics.get("accuracy_estimate")
    if calibration != "none":
        recorded = RoundCalibration.read(folder)
        if recorded.pool_prior is not None:
            offset = (torch.tensor(recorded.pool_prior, dtype=torch.float64)
                      / torch.tensor(recorded.train_prior, dtype=torch.float64)).log()
        if calibration == "temperature":
            temperature = metrics.get(f"temperature_{config.calibration_items}", metrics.get("temperature"))
            if temperature is None:
                raise LoracleError(f"round {round_index} of {run_dir} fitted no temperature (calibration 'none', or "
                                   "too few labels to cross-fit); use --calibration none")
        elif metrics.get("temperature_export") is None and (estimate is None or not stop_items):
            raise LoracleError(f"round {round_index} of {run_dir} recorded no accuracy estimate to match (it did "
                               "not cross-fit: calibration 'none' or 'temperature', or too few labels) or has no "
                               "unlabelled stop-set items; use --calibration temperature or none")

    builder = ModelBuilder(config.model, config.task_kind, label_names=label_names, max_length=config.max_length,
                           adapter=config.adapter, model_factory=model_factory)
    built = builder.load(folder)
    if calibration == "matched" and metrics.get("temperature_export") is not None:  # the run fitted it
        temperature = float(metrics["temperature_export"])
    elif calibration == "matched":  # a run made before rounds recorded it: the same fit, on an fp32 pass
        from loracle.progress import log
        from loracle.uncertainty.sampling import mc_probs

        log(f"export: the round model on {len(stop_items)} unlabelled stop-set items, to match its confidence "
            f"to the accuracy estimate {estimate:.3f}")
        with torch.no_grad():
            stop_probs = mc_probs(built.model, built.task, stop_items, samples=0,
                                  batch_size=batch_size or config.eval_batch_size, progress=progress)[:, 0]
        temperature = match_confidence(stop_probs.double().clamp_min(1e-12).log(), float(estimate), offset)
    try:
        export_peft(built.model, output, temperature=temperature, prior_offset=offset)
    except ValueError as err:  # a head the calibration cannot be folded into
        raise LoracleError(f"{err}; export with --calibration none") from err

    info: dict[str, Any] = {
        "round": round_index, "n_labels": row["n_labels"], "calibration": calibration,
        "temperature": None if temperature is None else float(temperature),
        "prior_offset": None if offset is None else [round(float(v), 6) for v in offset],
        "accuracy_estimate": None if calibration != "matched" else float(estimate),
        "label_names": list(label_names) if label_names else None, "base_model": config.model,
        "output": str(output),
    }
    if test_probs is not None and test_labels is not None:
        raw = test_probs.double()
        z = raw.clamp_min(1e-12).log() / (temperature or 1.0)
        exported = torch.softmax(z if offset is None else z + offset, -1)
        keys = ("accuracy", "macro_f1", "ece", "nll", "brier")
        info["test"] = {name: {k: round(float(v), 4) for k, v in classification_metrics(p, test_labels).items()
                               if k in keys} for name, p in (("model", raw), ("exported", exported))}
    (Path(output) / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2))
    return info
