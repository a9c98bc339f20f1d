"""optiserve tune strategies compared: grid, random and bayes with the same trial budget on one
live server. Which finds the best throughput under the p99 SLO, and in how many trials?

It starts one real ``optiserve serve`` (the tiny tensor classifier of the tests unless
``--repository``/``--model`` say otherwise), then runs each strategy as ``optiserve tune`` does
(same space, same SLO, same load plan: closed loop, doubling concurrency, at most 4 steps of
1 s per trial), each with its own study, the server's configuration restored between
strategies. Grid measures the whole space; its best is the reference. For every strategy it
prints the best throughput under the SLO, the trial that found it, and how many trials it needed
to come within 5 % of the grid's best. Bounded: every trial has at most ``--max-steps`` steps
and each strategy at most ``--budget-s`` seconds.

    python -m benchmarks.tune_strategies [--repository R --model M] [--slo-p99-ms 50]
        [--trials 24] [--seeds 0] [--budget-s 200]

Measured twice (2-core VM, no GPU; tiny classifier; SLO p99 <= 50 ms; space max_batch_size
[1, 8, 32] x max_delay_ms [0, 2] x replicas [1, 2] x gateway_replicas [1, 2] = 24
configurations; 24 trials each; seed 0):

    quiet machine (nothing else running):
    strategy   best req/s  found at trial  trials to 95 % of grid's best  seconds
    grid           1313.0              18                             18      128
    random         1727.0              15                             10      164
    bayes          1651.0               8                              8      167

    shared machine (load average ~2.5 from other jobs):
    grid           1726.0               6                              6      122
    random         1659.0              15                             15      164
    bayes           791.0              20                          never      186

On the quiet machine bayes came within 5 % of the grid's best in 8 trials where the grid needed
18 (and all 24 to know it had its best). The best points are batch 32 on one replica with one
gateway replica in every run. Between runs the same configuration measured 1313-1727 req/s: with
1 s steps the noise of one measurement is as large as the differences between the better
configurations, so a study's best is a good region, not an exact ranking (longer
``--step-duration`` narrows it). On the shared machine every bayes trial served 2-5x less than
the same configurations had under grid: the other load, not the sampler, decided that run. On
the deterministic queueing model of the unit tests (96 configurations) bayes reaches 95 % of the
grid's best in 3-20 trials over seeds 0-4, random in 8 to never.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


from optiserve.bench import fetch_metadata, load_inputs
from serving.config import build_serve_config
from tests.support.harness import ServeProcess
from serving.repository import ModelRepository
from optiserve.sizing import machine_cpus
from optiserve.tune.runner import (
    Events, LoadPlan, Measurer, Target, TuneOptions, Tuner, reservation,
)
from optiserve.tune.scoring import best_trial, trials_to_reach
from optiserve.tune.space import defaults_from, limits, parse_space
from optiserve.tune.strategies import make_strategy
from optiserve.tune.study import StudyFile

ROOT = Path(__file__).resolve().parent.parent

SPACE = {"max_batch_size": [1, 8, 32], "max_delay_ms": [0, 2], "replicas": [1, 2],
         "threads": [1], "gateway_replicas": [1, 2]}


def tiny_repository(work: Path) -> Path:
    repo = work / "repo"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "optiserve.cli.main", "optimize",
                    "tests.fixtures.tiny_models:classifier", "--input", "x:FP32:-1,16",
                    "--task", "classification", "--name", "tiny", "--variants", "onnx-fp32",
                    "--min-time", "0.1", "--batch-sizes", "1,8", "--repository", str(repo),
                    "-q"], check=True, env=env, cwd=ROOT, timeout=600)
    return repo


class Lines(Events):
    def __init__(self, name: str):
        self.name = name

    def trial_done(self, t):
        value = f"{t.value:8.1f}" if t.value is not None else "       -"
        print(f"  {self.name:<6} trial {t.number:>2} {t.state:<10} {value} req/s  "
              f"{t.config}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repository")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--slo-p99-ms", type=float, default=50.0)
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--seeds", default="0", help="Seeds of random and bayes, comma-separated.")
    ap.add_argument("--step-s", type=float, default=1.0)
    ap.add_argument("--max-steps", type=int, default=4)
    ap.add_argument("--budget-s", type=float, default=200.0, help="Per strategy and seed.")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tune-bench-"))
    repo_dir = Path(args.repository) if args.repository else tiny_repository(work)
    repo = ModelRepository(repo_dir)
    version = repo.latest(args.model)
    manifest = repo.manifest(args.model, version)
    space = parse_space(SPACE)
    cpus = machine_cpus()
    from optiserve.sizing import plan

    defaults = defaults_from(manifest, plan(cpus, 0, versions=1))
    lim = limits(space, defaults)
    doc = build_serve_config(str(repo.root.resolve()), [(args.model, version)],
                             gateway_cpus=0.25 if cpus < 4 else 1.0)
    per = reservation(doc, args.model, version, lim, float(os.cpu_count() or 1))
    doc = build_serve_config(str(repo.root.resolve()), [(args.model, version)],
                             version_cpus=per, gateway_cpus=0.25 if cpus < 4 else 1.0)
    server = ServeProcess(doc, work).start()
    results = {}
    try:
        target = Target(server.url, server.serve_api, args.model, version, lim,
                        alive=lambda: server.proc.poll() is None)
        inputs = load_inputs(None, fetch_metadata(server.url, args.model, str(version)))
        lplan = LoadPlan(mode="concurrency", step_s=args.step_s, warmup_s=0.3,
                         max_steps=args.max_steps)
        measurer = Measurer(server.url, args.model, version, inputs, lplan)
        runs = [("grid", 0)] + [(s, int(seed)) for seed in args.seeds.split(",")
                                for s in ("random", "bayes")]
        for name, seed in runs:
            study = StudyFile(work / f"{name}-{seed}.jsonl")
            history = study.open({"model": args.model, "version": version,
                                  "slo_p99_ms": args.slo_p99_ms, "strategy": name,
                                  "load": "concurrency", "space": SPACE, "seed": seed})
            strat = make_strategy(name, space, defaults, cpus, args.slo_p99_ms, seed=seed,
                                  history=history)
            t0 = time.monotonic()
            trials = Tuner(strat, target.apply, measurer.step, study,
                           TuneOptions(slo_ms=args.slo_p99_ms, trials=args.trials,
                                       budget_s=args.budget_s),
                           lplan, events=Lines(name)).run()
            results[(name, seed)] = (trials, time.monotonic() - t0)
            target.restore()
    finally:
        server.stop()

    grid_trials, _ = results[("grid", 0)]
    grid_best = best_trial(grid_trials)
    ref = grid_best.value if grid_best else None
    print(f"\nSLO p99 <= {args.slo_p99_ms:g} ms, {args.trials} trials per strategy, space of "
          f"{len(grid_trials)} configurations measured whole by grid")
    print(f"{'strategy':<10} {'seed':>4} {'trials':>6} {'best req/s':>11} {'found at':>9} "
          f"{'to 95% of grid':>15} {'seconds':>8}")
    for (name, seed), (trials, secs) in results.items():
        b = best_trial(trials)
        need = trials_to_reach(trials, 0.95 * ref) if ref else None
        print(f"{name:<10} {seed:>4} {len(trials):>6} "
              f"{(f'{b.value:.1f}' if b else '-'):>11} {(b.number + 1 if b else '-'):>9} "
              f"{(need if need else 'never'):>15} {secs:>8.0f}")
        if b:
            print(f"{'':<10} best: {b.config}")


if __name__ == "__main__":
    main()
