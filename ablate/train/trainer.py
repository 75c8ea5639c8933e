"""The one trainer every variant shares. It knows nothing of studies or MLflow:
it reports metrics through a callback."""

import math
import random
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR

from ablate.core import processes
from ablate.core.config import TrainConfig
from ablate.core.errors import Terminated, first_line
from ablate.core.schema import Metric
from ablate.data import DataSource
from ablate.nn.devices import autocast, device_named
from ablate.train import checkpoint, diagnostics, sharded
from ablate.train.distributed import ALONE, STOP, Group, LossOf
from ablate.train.evaluation import prefix_losses, val_metrics
from ablate.train.optimizers import lr_factor, optimizers

# callback(step, metrics, kind): kind is "log" every log_every steps, "eval" after each eval, and
# "start" for the val metrics of the untrained model (step 0, before a fresh run's first step).
Callback = Callable[[int, dict[str, float], str], None]


def seed_everything(seed: int) -> None:
    """One seed fixes the initialisation (and, through Batches, the data order)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Diverged(Exception):
    """The loss became NaN or inf, or rose above train.max_loss: the trial failed, the study goes on."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"{reason} at step {step}")
        self.step, self.reason = step, reason


class Trainer:
    """Trains one model. With `prefix_eval` (for models that leak) the final evaluation also
    predicts a fixed set of val positions each from a forward pass over its own prefix alone."""

    def __init__(
        self,
        model: torch.nn.Module,
        corpus: DataSource,
        cfg: TrainConfig,
        seed: int,
        prefix_eval: bool = False,
        group: Group = ALONE,
    ):
        self.cfg, self.device, self.prefix_eval, self.group = cfg, device_named(cfg.device), prefix_eval, group
        if self.device.type == "cpu":
            processes.keep_freed_memory()
        self.model = model.to(self.device)
        self.context = model.cfg.context
        on_gpu = self.device.type == "cuda"  # the token array fits any GPU: gather batches there
        self.batches = corpus.batches(self.context, cfg.batch_size, seed, self.device if on_gpu else None)
        self.val = [
            (x.to(self.device), y.to(self.device))
            for x, y in corpus.val_batches(self.context, cfg.batch_size, cfg.eval_batches)
        ]
        self._optimize()
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        self._model_loss = None  # built at the first step: wrapping it for a group is a collective
        self.sharded = None  # the model as sharded over the group (train.shard), from the first step
        self.autocast = autocast(self.device)
        # where training stands: saved in checkpoints, so that a resumed trial takes the same steps
        self.step, self.n_since, self.metrics, self.train_time_s = 0, 0, {}, 0.0
        self.loss_sum = torch.zeros((), device=self.device)
        self.aux_loss_sum = torch.zeros((), device=self.device)  # for mixers with an auxiliary loss (moa)
        self.with_aux = False  # set at the first step that had one
        self.clipped = torch.zeros((), device=self.device)  # steps whose gradient norm was clipped, since the last read
        self.grad_norm = torch.zeros((), device=self.device)
        self.block_grad_norms = torch.zeros(len(model.blocks), device=self.device)
        self._started = time.perf_counter()

    def _optimize(self) -> None:
        """The optimizers over the model's parameters as they are now, and their schedules."""
        self.optimizers = optimizers(self.model, self.cfg, fused=self.device.type == "cuda")
        cfg = self.cfg  # the schedule is the one the trainer was built with
        self.schedulers = [LambdaLR(o, lambda s: lr_factor(s, cfg)) for o in self.optimizers]

    def _built(self):
        """(the model's loss as training calls it, its DistributedDataParallel module or None),
        built once: compiled where asked; sharded, or under DistributedDataParallel, in a group."""
        if self._model_loss is None:
            shard = self.cfg.shard and self.group.size > 1
            if shard:
                self._shard()
            self._ddp = self.group.wrap(LossOf(self.model)) if self.group.size > 1 and not shard else None
            loss = self.model.loss if self._ddp is None else self._ddp
            self._model_loss = torch.compile(loss) if self.cfg.compile else loss
        return self._model_loss, self._ddp

    def _shard(self) -> None:
        """Shard the model over the group, and move the optimizers and their schedules onto its
        sharded parameters, with the state a checkpoint gave them."""
        states = [(o.state_dict(), s.state_dict()) for o, s in zip(self.optimizers, self.schedulers)]
        sharded.shard(self.model)
        self.sharded = self.model
        self._optimize()
        for optimizer, scheduler, (state, schedule) in zip(self.optimizers, self.schedulers, states, strict=True):
            if state["state"]:  # a resumed trainer's
                sharded.load_optimizer_state(self.model, optimizer, state)
            scheduler.load_state_dict(schedule)

    def _syncing(self, last: bool):
        """Where a group trains the trial, its gradients are averaged once a step, after the last
        of the micro-steps: the others run without DistributedDataParallel's sync (or, sharded,
        without FSDP's reduction)."""
        ddp = self._built()[1]
        if self.sharded is not None:
            self.sharded.set_requires_gradient_sync(last)
        return nullcontext() if last or ddp is None else ddp.no_sync()

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        with self.autocast:
            return self._built()[0](x, y)

    def evaluate(self) -> dict[str, float]:
        """val_loss and val_accuracy over the val batches (`evaluation.val_metrics`), each rank of a
        group scoring its rows."""
        return val_metrics(self.model, self.val, self.forward, self.group)

    def state_dict(self) -> dict:
        """Everything a resumed trial needs to take the same steps an uninterrupted one would; of
        a sharded model, gathered whole (every rank of its group calls this at the same point)."""
        shards = self.sharded
        return {
            "step": self.step,
            "model": self.model.state_dict() if shards is None else sharded.model_state(shards),
            "optimizers": [
                o.state_dict() if shards is None else sharded.optimizer_state(shards, o) for o in self.optimizers
            ],
            "schedulers": [s.state_dict() for s in self.schedulers],
            "rng": checkpoint.rng_state(self.batches.rng),
            "loss_sum": self.loss_sum.item(),
            "aux_loss_sum": self.aux_loss_sum.item(),
            "clipped": self.clipped.item(),
            "n_since": self.n_since,
            "metrics": dict(self.metrics),
            "train_time_s": self.train_time_s + time.perf_counter() - self._started,
        }

    def load_state_dict(self, state: dict) -> None:
        """Before training starts: a sharded trainer shards what it loaded at its first step."""
        self.model.load_state_dict(state["model"])
        for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        for scheduler, saved in zip(self.schedulers, state["schedulers"], strict=True):
            scheduler.load_state_dict(saved)
        checkpoint.restore_rng(state["rng"], self.batches.rng)
        self.step, self.n_since, self.metrics = state["step"], state["n_since"], dict(state["metrics"])
        self.loss_sum.fill_(state["loss_sum"])
        self.aux_loss_sum.fill_(state.get("aux_loss_sum", 0.0))
        self.clipped.fill_(state.get("clipped", 0.0))
        self.train_time_s = state["train_time_s"]

    def save(self, path: Path | Callable[[], Path], state: dict | None = None) -> None:
        """Write the state (taken now, or as `state_dict` gave it earlier) to path (or where a
        callable says, asked only now), atomically."""
        checkpoint.write(self.state_dict() if state is None else state, path() if callable(path) else path)

    def _taken(self, path: Path | Callable[[], Path] | None) -> dict | None:
        """The state to checkpoint where fit keeps one: the leader's, which holds the path. Where
        the model is sharded, every rank takes part in gathering it, so the leader's callback,
        which may raise on the leader alone, sees the step only after this."""
        return self.state_dict() if path is not None or self.sharded is not None else None

    def load(self, path: Path) -> None:
        """Resume from a checkpoint; DamagedCheckpoint when it does not fit this trainer (another
        model's weights, a missing entry). The trainer may then be half-loaded: build a new one."""
        state = checkpoint.read(path, self.device)
        try:
            self.load_state_dict(state)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            raise checkpoint.DamagedCheckpoint(f"it does not fit this trial: {first_line(e)}") from e

    def _check(self, step: int, loss: float) -> None:
        if not math.isfinite(loss):
            raise Diverged(step, f"train loss is {loss}")
        if self.cfg.max_loss is not None and loss > self.cfg.max_loss:
            raise Diverged(step, f"train loss {loss:.4g} is above train.max_loss {self.cfg.max_loss:g}")

    def train_step(self, measure: bool = False) -> None:
        """One optimizer step on the next batch. The loss and the count of clipped steps are
        added up on the device, not read back: fit reads them every log_every steps, so steps
        do not wait on the host. With `measure`, the gradient norms (before clipping) are kept
        for fit to read."""
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        x, y = (self.group.shard(t) for t in next(self.batches))
        parts, step_loss, step_aux = self.cfg.micro_steps, 0.0, None
        for i, (xi, yi) in enumerate(zip(x.chunk(parts), y.chunk(parts), strict=True)):
            with self._syncing(last=i == parts - 1):
                loss = self.loss(xi, yi)
                aux = self.model.take_aux_loss()
                ((loss if aux is None else loss + aux) / parts).backward()
            step_loss = step_loss + loss.detach() / parts
            if aux is not None:
                step_aux = (0.0 if step_aux is None else step_aux) + aux.detach() / parts
        if measure:
            self.block_grad_norms = diagnostics.grad_norms(self.model, self.group if self.sharded is not None else None)
        if self.cfg.grad_clip:
            norm = self._whole(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip))
            self.clipped += norm > self.cfg.grad_clip
        elif measure:  # without clipping the total norm is needed only where it is logged
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            norm = self._whole(torch.nn.utils.get_total_norm(grads))
        if measure:
            self.grad_norm = norm
        for optimizer, scheduler in zip(self.optimizers, self.schedulers):
            optimizer.step()
            scheduler.step()
        self.loss_sum += step_loss
        if step_aux is not None:
            self.aux_loss_sum += step_aux
            self.with_aux = True
        self.n_since += 1
        self.step += 1

    def _whole(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.sharded is None else sharded.whole(t)

    def read_train_metrics(self) -> dict[str, float]:
        """The train loss (and auxiliary loss, where the mixers add one) and clipped fraction since
        the last read, and the last measured gradient norms (one host sync for all of them)."""
        self._pool_losses()
        sums = torch.stack([self.loss_sum, self.aux_loss_sum, self.clipped, self.grad_norm])
        loss_sum, aux_loss_sum, clipped, grad_norm, *blocks = torch.cat([sums, self.block_grad_norms]).tolist()
        out = {
            Metric.TRAIN_LOSS: loss_sum / self.n_since,
            Metric.CLIPPED_FRACTION: clipped / self.n_since,
            Metric.GRAD_NORM: grad_norm,
        }
        if self.with_aux:
            out[Metric.TRAIN_AUX_LOSS] = aux_loss_sum / self.n_since
        return out | {f"{Metric.BLOCK_GRAD_NORM}{i}": v for i, v in enumerate(blocks)}

    def fit(
        self, callback: Callback | None = None, checkpoint: Path | Callable[[], Path] | None = None
    ) -> dict[str, float]:
        """Train up to cfg.steps from the current step (0, or a loaded checkpoint's); return the
        final train and val loss and the throughput. With `checkpoint`, the state is saved there
        every cfg.checkpoint_evals evals, after the callback has seen (and flushed) that eval (a
        callable gives the path when it is first needed). In a group the leader alone gives one;
        where the model is sharded, every other rank joins in gathering what it writes."""
        cfg, emit = self.cfg, callback or (lambda *_: None)
        tokens_per_step = cfg.batch_size * self.context
        first = self.step + 1
        if first == 1:  # where the curves start: the untrained model's val loss (ln vocab or above)
            evaluated = self.evaluate()
            with self._led():
                emit(0, evaluated, "start")
            if self.group.agree(False):  # the leader's callback stopped it before the first step
                raise Terminated
        self._started = last = time.perf_counter()
        self.model.train()
        for step in range(first, cfg.steps + 1):
            with processes.sigterm_deferred() as stop, self._led():
                last = self._iteration(step, emit, checkpoint, last, tokens_per_step)
            if agreed := self.group.agree(stop.requested):
                state = self._taken(checkpoint) if agreed == STOP else None  # SIGTERM: the step is whole; keep it
                if state is not None and checkpoint is not None:
                    self.save(checkpoint, state)
                raise Terminated
        elapsed = self.train_time_s + time.perf_counter() - self._started
        final = {
            **{k: v for k, v in self.metrics.items() if k not in (Metric.LR, Metric.TOKENS_PER_S)},
            Metric.TRAIN_TIME_S: elapsed,
            Metric.MEAN_TOKENS_PER_S: (cfg.steps - first + 1) * tokens_per_step / (time.perf_counter() - self._started),
        }
        if self.sharded is not None:  # whole on every rank, for what follows on the leader alone (sampling, decoding)
            self.model = self.forward = sharded.whole_model(self.sharded, self.device)
        return final

    @contextmanager
    def _led(self):
        """Where what it runs raises on one rank only (the leader's callback: pruned, lost), the
        other ranks stop at their next agreement instead of waiting in a collective."""
        try:
            yield
        except BaseException:
            self.group.abandon()
            raise

    def _pool_losses(self) -> None:
        """Every rank of a group holds the group's mean train loss so far (each summed its own
        rows), for a read, or for a checkpoint the leader writes; means being linear, pooling early
        changes no later read."""
        if self.group.size > 1:
            pooled = self.group.sum(torch.stack([self.loss_sum, self.aux_loss_sum])) / self.group.size
            self.loss_sum.copy_(pooled[0])
            self.aux_loss_sum.copy_(pooled[1])

    def _iteration(self, step: int, emit: Callback, checkpoint, last: float, tokens_per_step: int) -> float:
        """One step with its log, eval and checkpoint where they fall; the time the next log's
        throughput counts from. The callback sees the step after everything a group of ranks
        computes together, so that one raising in it leaves no rank inside a collective."""
        cfg = self.cfg
        log = step % cfg.log_every == 0 or step == cfg.steps
        self.train_step(measure=log)
        logged = evaluated = None
        if log:
            now = time.perf_counter()
            logged = self.read_train_metrics()
            self._check(step, logged[Metric.TRAIN_LOSS])
            logged[Metric.LR] = self.optimizers[0].param_groups[0]["lr"]
            logged[Metric.TOKENS_PER_S] = self.n_since * tokens_per_step / (now - last)
            self.metrics |= logged
            self.loss_sum.zero_()
            self.aux_loss_sum.zero_()
            self.clipped.zero_()
            self.n_since, last = 0, now
        if step % cfg.eval_every == 0 or step == cfg.steps:
            eval_start = time.perf_counter()
            evaluated = self.evaluate()
            if not math.isfinite(evaluated[Metric.VAL_LOSS]):
                raise Diverged(step, f"val loss is {evaluated[Metric.VAL_LOSS]}")
            with nullcontext() if self.sharded is None else sharded.blocks_kept_whole(self.sharded):
                evaluated |= diagnostics.per_block(self.model, self.val[0][0])
            if self.prefix_eval and step == cfg.steps:
                evaluated |= prefix_losses(self.model, self.val[0])
            self.metrics |= evaluated
            self._pool_losses()
            last += time.perf_counter() - eval_start  # keep eval (and checkpoint) time out of tokens/s
        keep = evaluated is not None and cfg.checkpoint_evals and (step // cfg.eval_every) % cfg.checkpoint_evals == 0
        saving = time.perf_counter()
        state = self._taken(checkpoint) if keep else None
        last += time.perf_counter() - saving
        if logged is not None:
            emit(step, logged, "log")
        if evaluated is not None:
            emit(step, evaluated, "eval")
        if keep and checkpoint is not None:
            saving = time.perf_counter()
            self.save(checkpoint, state)
            last += time.perf_counter() - saving
        return last
