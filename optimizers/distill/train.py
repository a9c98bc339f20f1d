"""Distillation: the student learns to give the teacher's served output on unlabeled text.

The teacher runs once over the corpus (its served output, after pooling and normalisation, and
its last encoder layer's token states); the student is then trained with AdamW on the distance
of its output to the teacher's — ``1 - cosine`` for embeddings; for classifiers' probabilities
the KL divergence from the teacher's (binary cross-entropy per class for multi-label ones,
per real token for token classifiers) — plus a token-state term (mean squared error of the
last encoder layer's states, scaled by their variance), for at most ``steps`` steps or
``time_limit_s`` seconds. Runs are deterministic for a seed and thread count: fixed data order,
torch's deterministic algorithms, a fixed number of threads, no dropout.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from ..progress import Silent
from .student import find_encoder


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 600
    time_limit_s: float = 300.0
    lr: float = 1e-4
    batch_size: int = 32
    seed: int = 0
    threads: int = 2
    #: Weight of the token-state term (0: the served output alone).
    token_weight: float = 1.0
    warmup: float = 0.06
    #: The output's distance: "cosine" (embeddings), "kl" (softmax probabilities, per row or
    #: per token), "bce" (independent sigmoid probabilities)
    loss: str = "cosine"


@dataclass
class TrainResult:
    steps: int
    seconds: float
    sentences: int
    stopped_by: str  # "steps" | "time"
    losses: list[float] = field(default_factory=list)

    @property
    def first_loss(self) -> float:
        return float(np.mean(self.losses[: max(1, len(self.losses) // 20)]))

    @property
    def last_loss(self) -> float:
        return float(np.mean(self.losses[-max(1, len(self.losses) // 20):]))


class _Hidden:
    """Captures the last encoder layer's token states of a module's encoder."""

    def __init__(self, module):
        self.value = None
        self._handle = find_encoder(module).register_forward_hook(self._hook)

    def _hook(self, _module, _inputs, output):
        self.value = output[0] if isinstance(output, (tuple, list)) else output.last_hidden_state

    def close(self):
        self._handle.remove()


@contextmanager
def deterministic(seed: int, threads: int):
    """Seeded, single-algorithm torch on a fixed number of threads; restored afterwards."""
    import torch

    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(max(1, threads))
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev_det)
        torch.set_num_threads(prev_threads)


def _feeds(pad, rows, names):
    import torch

    batch = pad(rows)
    return [torch.from_numpy(batch[n]) for n in names], torch.from_numpy(
        batch[names[1]] if len(names) > 1 else np.ones_like(batch[names[0]]))


def teacher_targets(teacher, rows: Sequence[np.ndarray], pad: Callable, names: list[str],
                    batch_size: int = 64, status: Callable[[str], None] = lambda _t: None):
    """Per row: the teacher's output vector and its last-layer token states (unpadded)."""
    import torch

    hidden = _Hidden(teacher)
    outputs: list = [None] * len(rows)
    states: list = [None] * len(rows)
    order = np.argsort([len(r) for r in rows], kind="stable")
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                args, _ = _feeds(pad, [rows[i] for i in idx], names)
                out = teacher(*args)
                out = out[0] if isinstance(out, (tuple, list)) else out
                for j, i in enumerate(idx):  # per-token outputs kept without their padding
                    outputs[i] = (out[j, : len(rows[i])] if out.dim() == 3 else out[j]).clone()
                    states[i] = hidden.value[j, : len(rows[i])].clone()
                status(f"teacher outputs: {min(start + batch_size, len(order))}/{len(order)}")
    finally:
        hidden.close()
    return outputs, states


def compute_targets(teacher, rows: Sequence[np.ndarray], pad: Callable, names: list[str],
                    progress):
    progress.phase(f"teacher outputs on {len(rows)} sentences")
    return teacher_targets(teacher, rows, pad, names, status=progress.status)


def output_loss(kind: str, out, targets, mask):
    """Distance of the student's outputs to the teacher's (``targets``: one per row, per-token
    ones without padding)."""
    import torch

    if out.dim() == 3:  # per token: the teacher's rows padded to the batch, real tokens only
        target = torch.zeros_like(out)
        for j, t in enumerate(targets):
            target[j, : len(t)] = t
        real = mask.to(out.dtype)
    else:
        target, real = torch.stack(targets), None
    if kind == "cosine":
        per = 1.0 - torch.nn.functional.cosine_similarity(out, target, dim=-1)
    else:
        eps = 1e-7
        s, t = out.clamp(eps, 1 - eps), target.clamp(eps, 1 - eps)
        if kind == "bce":
            per = -(t * s.log() + (1 - t) * (1 - s).log()).mean(-1)
        else:  # KL(teacher || student)
            per = (t * (t.log() - s.log())).sum(-1)
    if real is None:
        return per.mean()
    return (per * real).sum() / real.sum().clamp(min=1.0)


def distill(student, teacher, rows: Sequence[np.ndarray], pad: Callable, names: list[str],
            cfg: TrainConfig, progress=None, label: str = "student", targets=None
            ) -> TrainResult:
    """Train ``student`` in place to match ``teacher`` on token ``rows``; ``targets``: the
    teacher's ``teacher_targets`` on those rows when already computed (several students)."""
    import torch

    progress = progress or Silent()
    with deterministic(cfg.seed, cfg.threads):
        if targets is None:
            targets = compute_targets(teacher, rows, pad, names, progress)
        t_out, t_states = targets
        scale = float(torch.cat(t_states).var()) or 1.0
        rng = np.random.default_rng(cfg.seed)
        hidden = _Hidden(student)
        student.eval()  # no dropout: the student is trained to be exactly what is served
        params = [p for p in student.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
        warm = max(1, int(cfg.warmup * cfg.steps))

        def lr_at(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, cfg.steps - warm)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
        progress.phase(f"{label}: distilling", total=cfg.steps)
        start = time.monotonic()
        losses: list[float] = []
        order = np.empty(0, dtype=np.int64)
        stopped = "steps"
        try:
            for step in range(cfg.steps):
                if time.monotonic() - start > cfg.time_limit_s:
                    stopped = "time"
                    break
                if len(order) < cfg.batch_size:
                    order = np.concatenate([order, rng.permutation(len(rows))])
                idx, order = order[: cfg.batch_size], order[cfg.batch_size:]
                args, mask = _feeds(pad, [rows[i] for i in idx], names)
                out = student(*args)
                out = out[0] if isinstance(out, (tuple, list)) else out
                loss = output_loss(cfg.loss, out, [t_out[i] for i in idx], mask)
                if cfg.token_weight:
                    width = mask.shape[1]
                    t_tok = torch.zeros(len(idx), width, t_states[idx[0]].shape[-1])
                    for j, i in enumerate(idx):
                        t_tok[j, : len(t_states[i])] = t_states[i]
                    m = mask.unsqueeze(-1).to(t_tok.dtype)
                    err = ((hidden.value - t_tok) ** 2 * m).sum() / (m.sum() * t_tok.shape[-1])
                    loss = loss + cfg.token_weight * err / scale
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
                progress.advance()
                if step % 20 == 0 or step == cfg.steps - 1:
                    progress.status(f"{label}: step {step + 1}/{cfg.steps}, loss "
                                    f"{np.mean(losses[-20:]):.4f}")
        finally:
            hidden.close()
        student.eval()
        for p in student.parameters():
            p.requires_grad_(False)
        return TrainResult(steps=len(losses), seconds=time.monotonic() - start,
                           sentences=len(rows), stopped_by=stopped, losses=losses)
