"""Pool-scoring throughput of the active-learning loop with 1 and 2 processes (``accelerate launch``).

Setting: MiniLM (``minilm``, LoRA r=8 on the top 2 blocks as ``loracle al run``'s default), a seeded pool of
``--pool`` rotten_tomatoes training items, S=8 MC-dropout samples, the loop's own chunked scoring
(:meth:`loracle.active.loop.ActiveLearningLoop._measure`: chunks of ``--chunk`` items dealt round-robin over the
ranks, gathered and stored by rank 0). Two passes are timed: the first also fills the cross-round prefix cache
(what round 0 costs), the second finds it filled (every later round). Each process count runs in its own
launch; the JSON names the device, the precision, the CPU count and the load average at the start, because on a
shared 2-core box other jobs take part of the cores.

``--device cuda --precision bf16`` records the same on a GPU (items/s and peak GPU memory per rank); each process
takes one GPU (``--processes 1,2,4`` as the GPUs allow).

Usage: python benchmarks/bench_distributed.py [--processes 1,2] [--pool 1024] [--chunk 128] [--device cpu]
       [--precision auto] [--output benchmarks/results/distributed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "rotten_tomatoes"
RESULTS = REPO / "benchmarks" / "results" / "distributed.json"
SAMPLES = 8


def worker(args: argparse.Namespace) -> None:
    """One rank of a launched job (or the single process): create a run, time two scoring passes."""
    import torch

    from loracle.active import ALConfig
    from loracle.active.loop import ActiveLearningLoop, create_run
    from loracle.active.state import RunState
    from loracle.distributed import Ranks

    ranks = Ranks.current()
    run_dir = Path(args.run_dir)
    config = ALConfig(model="minilm", data=str(DATA), pool_size=args.pool, test_size=64, initial_size=16,
                      query_size=16, rounds=1, mc_samples=SAMPLES, score_chunk=args.chunk, precision=args.precision,
                      progress=False, seed=0)
    made = ranks.writer(lambda: create_run(config, run_dir))
    state = made[0] if made is not None else RunState.open(run_dir)
    loop = ActiveLearningLoop(state, ranks=ranks)
    built = loop._fresh(0)
    device = ranks.device or torch.device(args.device)
    built.model.to(device)
    candidates = list(range(state.pool_size()))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timings = []
    for t in (0, 1):  # pass 0 fills the prefix cache, pass 1 reads it
        ranks.barrier()
        start = time.perf_counter()
        with loop._cached(built):
            probs = loop._measure(t, built, candidates, frozenset({"probs"}))["probs"]
        ranks.barrier()
        timings.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    rss = ranks.gather(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    peaks = ranks.gather(peak)
    if ranks.is_writer:
        result = {"processes": ranks.world, "device": str(device), "precision": loop.precision,
                  "items": len(candidates), "samples": SAMPLES, "chunk": args.chunk,
                  "probs_shape": list(probs.shape),
                  "first_pass_seconds": round(timings[0], 2), "later_pass_seconds": round(timings[1], 2),
                  "first_pass_items_per_s": round(len(candidates) / timings[0], 1),
                  "later_pass_items_per_s": round(len(candidates) / timings[1], 1),
                  "peak_rss_mib_per_rank": [round(r, 0) for r in rss],
                  "peak_gpu_mib_per_rank": [round(p, 0) for p in peaks] if device.type == "cuda" else None}
        Path(args.result).write_text(json.dumps(result))
    state.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(processes: int, args: argparse.Namespace, folder: Path) -> dict:
    result = folder / f"p{processes}.json"
    own = [str(Path(__file__).resolve()), "--worker", "--run-dir", str(folder / f"run{processes}"), "--result",
           str(result), "--pool", str(args.pool), "--chunk", str(args.chunk), "--device", args.device,
           "--precision", args.precision]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "TOKENIZERS_PARALLELISM": "false"}
    if processes == 1:
        command = [sys.executable, *own]
    else:
        launcher = shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")
        command = [launcher, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
                   "--main_process_port", str(_free_port()), *own]
        if args.device == "cpu":
            env["ACCELERATE_USE_CPU"] = "true"
            # the cores are shared: each rank takes its part instead of all of them
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{processes} process(es) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    out = json.loads(result.read_text())
    out["wall_seconds_with_start_up"] = round(time.perf_counter() - start, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts")
    parser.add_argument("--pool", type=int, default=1024, help="pool items scored per pass")
    parser.add_argument("--chunk", type=int, default=128, help="items per persisted scoring chunk")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the ranks score")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"), help="scoring autocast")
    parser.add_argument("--output", default=str(RESULTS), help="the JSON written")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    import torch

    load = os.getloadavg()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for p in (int(x) for x in args.processes.split(",")):
            runs.append(_launch(p, args, Path(tmp)))
            print(json.dumps(runs[-1]), flush=True)
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or "cpu"
    record = {"device": args.device, "device_name": device_name, "cpu_count": os.cpu_count(),
              "load_average_at_start": [round(x, 2) for x in load], "torch": torch.__version__,
              "model": "minilm", "data": "rotten_tomatoes (train split, seeded pool)", "runs": runs}
    if len(runs) > 1:
        base = runs[0]
        record["speedup_later_pass"] = {str(r["processes"]): round(r["later_pass_items_per_s"]
                                                                   / base["later_pass_items_per_s"], 2)
                                        for r in runs}
    output = Path(args.output)
    existing = json.loads(output.read_text()) if output.exists() else {}
    existing[f"{args.device}-{record['runs'][0]['precision']}"] = record
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(existing, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
