"""Run by tests/active/test_al_distributed.py under ``accelerate launch`` (2 CPU processes, gloo).

``python al_launch_script.py AUDIT_DIR MC_OUT -- <loracle CLI args>``:

1. runs ``loracle <CLI args>`` (``al run ...``) with every write to the run state recorded per rank in
   ``AUDIT_DIR/rank<r>.log`` (``begin`` for a transaction, ``signal <name>`` for a stored signal, ``checkpoint``);
2. then measures MC-dropout probabilities (3 samples, adapter dropout 0.2) of the whole pool with the run's last
   checkpoint twice: with the loop's chunks dealt over both ranks, and on rank 0 alone as one process would, and
   writes both to ``MC_OUT`` (safetensors) from rank 0.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch


def _audit(folder: Path) -> None:
    from loracle.active.state import RunState

    path = folder / f"rank{os.environ.get('RANK', '0')}.log"
    folder.mkdir(parents=True, exist_ok=True)

    def record(line: str) -> None:
        with path.open("a") as handle:
            handle.write(line + "\n")

    transaction, put_signal = RunState.transaction, RunState.put_signal
    RunState.transaction = lambda self: (record("begin"), transaction(self))[1]
    RunState.put_signal = lambda self, name, tensor: (record(f"signal {name}"), put_signal(self, name, tensor))[1]
    put_signals = RunState.put_signals
    RunState.put_signals = lambda self, tensors: ([record(f"signal {n}") for n in tensors],
                                                  put_signals(self, tensors))[1]
    from loracle import adapters

    save_adapter = adapters.save_adapter
    adapters.save_adapter = lambda *a, **k: (record("checkpoint"), save_adapter(*a, **k))[1]


def _mc_measure(run_dir: Path, out: Path) -> None:
    from safetensors.torch import save_file

    from loracle.active.loop import ActiveLearningLoop
    from loracle.active.state import RunState
    from loracle.distributed import Ranks

    ranks = Ranks.current()
    state = RunState.open(run_dir)

    def measure(loop: ActiveLearningLoop) -> torch.Tensor:
        built = loop._load_round(2)
        for _, layer, _ in built.layout.adapters:
            layer.config = layer.config.replace(dropout=0.2)
        loop.scorer.samples = 3
        return loop._measure(99, built, list(range(state.pool_size())), frozenset({"probs"}))["probs"]

    spread = measure(ActiveLearningLoop(state, ranks=ranks))
    ranks.writer(lambda: state.db.execute("DELETE FROM signals WHERE name LIKE 'round99/%'"))
    if ranks.is_writer:
        alone = measure(ActiveLearningLoop(state, ranks=Ranks()))
        state.db.execute("DELETE FROM signals WHERE name LIKE 'round99/%'")
        save_file({"spread": spread.contiguous(), "alone": alone.contiguous()}, str(out))
    ranks.barrier()
    state.close()


def main() -> int:
    audit, mc_out, sep, *cli = sys.argv[1:]
    assert sep == "--"
    _audit(Path(audit))
    from loracle.cli import main as loracle_main

    code = loracle_main(cli)
    if code == 0:
        _mc_measure(Path(cli[cli.index("--output") + 1]), Path(mc_out))
    return code


if __name__ == "__main__":
    sys.exit(main())
