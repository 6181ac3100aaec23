"""Pool-based active learning with adapters (STAR): strategies, resumable SQLite state, oracles, the loop."""

from loracle.active.config import ALConfig
from loracle.active.lock import RunInUseError, RunLock
from loracle.active.oracle import parse_label
from loracle.active.state import RunState
from loracle.active.strategies import STRATEGIES, Signals, Strategy, build_strategy

__all__ = ["ALConfig", "STRATEGIES", "Signals", "Strategy", "build_strategy", "run_active_learning", "resume",
           "RunState", "RunLock", "RunInUseError", "parse_label", "predict_with_run", "round_probs"]


def __getattr__(name: str):
    # The loop pulls in training/evaluation; import it only when asked for.
    if name in ("run_active_learning", "resume", "create_run", "ActiveLearningLoop"):
        from loracle.active import loop

        return getattr(loop, name)
    if name in ("predict_with_run", "round_probs", "RoundCalibration"):
        from loracle.active import predict

        return getattr(predict, name)
    raise AttributeError(f"module 'loracle.active' has no attribute {name!r}")
