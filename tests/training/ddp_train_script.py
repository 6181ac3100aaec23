"""Run by tests/training/test_distributed.py: train a tiny LoRA BERT and save its trainable tensors.

Usage: ``python ddp_train_script.py OUT.safetensors`` (1 process) or, for 2 CPU processes over gloo,
``ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 ddp_train_script.py OUT.safetensors``
(``accelerate launch --cpu --num_processes 2`` starts a single process unless run under mpirun; the torchrun
launcher behind ``--multi_gpu`` plus ``ACCELERATE_USE_CPU`` gives ``DistributedType.MULTI_CPU``). Both see the same
global batch of 8 per step (``split_batches``: 4 per process with 2 processes).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for tiny_models

from tiny_models import tiny_bert, tiny_tokenizer  # noqa: E402

from loracle import LoRAConfig, apply_adapter  # noqa: E402
from loracle.data import Example  # noqa: E402
from loracle.tasks import build_task  # noqa: E402
from loracle.training import TrainConfig, train  # noqa: E402


def main(out: str) -> None:
    model = tiny_bert(seed=0)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0  # dropout masks would differ between 1 and 2 processes
    apply_adapter(model, LoRAConfig(rank=4, alpha=8, modules_to_save=["classifier"]))
    words = ["good fun great movie", "bad dull awful film", "i love this plot", "boring and very dull"]
    examples = [Example(str(i), words[i % 4], label=int(i % 4 in (0, 2))) for i in range(32)]
    task = build_task("classification", tiny_tokenizer(), label_names=["neg", "pos"])
    config = TrainConfig(epochs=2, batch_size=8, lr=1e-2, b_weight_decay=0.5, progress=False, seed=7)
    result = train(model, task, examples, config)
    from accelerate import PartialState

    state = PartialState()
    print(f"process {state.process_index} of {state.num_processes} ({state.distributed_type})", flush=True)
    if state.is_main_process:
        from safetensors.torch import save_file

        tensors = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        tensors["steps"] = torch.tensor(result.steps)
        save_file(tensors, out)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1])
