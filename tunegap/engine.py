"""The training engine: one epoch of SGD and an evaluation, with per-epoch metrics.

No CLI, no Ray and no MLflow in here (`tunegap train` runs one configuration on its own).

A step reads top to bottom: set the scheduled learning rate, forward, loss, backward, clip,
optimizer step (SGD unless the config names another, `tunegap.optim`). Metrics are summed on the device and read once per epoch, so a GPU never waits for
the host inside an epoch. A non-finite loss ends the run as `diverged` instead of crashing.

Data comes one of two ways, chosen by the data object (`load_workload_data` picks by
`Workload.streaming`). In-memory `TensorData` sits on the device and `DeviceLoader` slices
batches out of it. A streaming workload (ImageNet) gets `StreamingData`: `StreamingLoader`s
whose DataLoader workers decode the training folder (random-resized crop + flip) and the
validation folder (centre crop) from disk. Both loaders shuffle from a seeded generator that
checkpoints save, and both feed the same training step and the same evaluation loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tunegap.config import TrialConfig
from tunegap.cpu_memory import reuse_freed_memory
from tunegap.data import (
    DeviceLoader,
    StreamingData,
    StreamingLoader,
    TensorData,
    get_augment,
)
from tunegap.gbn_convert import convert_to_ghost_bn
from tunegap.models import build_model
from tunegap.models.init import init_bn_weights, zero_init_residual
from tunegap.optim import build_optimizer, set_weight_decay
from tunegap.plain_state import plain_state
from tunegap.probes import (
    NoiseScaleEstimator,
    grad_norm_sq,
    noise_scale_from_step,
    small_batch_size,
    top_hessian_eigenvalue,
)
from tunegap.regime import ResolvedRegime
from tunegap.training_protocol import training_protocol
from tunegap.trial_data import (
    data_pipeline,
    default_workers,
    load_workload_data,
    pick_device,
    training_subset,
    validation_split,
)

# Training samples the sharpness probe uses: a fixed subset, so epochs are comparable.
SHARPNESS_SAMPLES = 1024
class Engine:
    """Trains one `TrialConfig` epoch by epoch.

    Accuracies are in percent. `train_loss`/`train_acc` are averaged over the epoch's batches
    in training mode (as the authors' code reports them), so they cost no extra pass.

    `data` (default: `load_workload_data(config)`) is `TensorData`, moved to the device, or
    `StreamingData`, read by `num_workers` DataLoader processes (default: the workload's
    `cpus_per_trial`; 0 decodes in this process). The streaming path gives the same
    metrics, schedule, Ghost BatchNorm, clipping, precision and checkpoint contents.
    """

    def __init__(
        self,
        config: TrialConfig,
        *,
        data: TensorData | StreamingData | None = None,
        device: torch.device | str | None = None,
        num_workers: int | None = None,
    ) -> None:
        self.config = config
        self.workload = config.get_workload()
        self.protocol = training_protocol(config)
        self.device = pick_device(config.device) if device is None else torch.device(device)
        self._take_data(data if data is not None else load_workload_data(config))
        self._place_model(self._build_model())
        self.optimizer = build_optimizer(
            self.model,
            config.optimizer,
            lr=self.resolved.lr,
            momentum=self.regime.momentum,
            weight_decay=self.resolved.weight_decay_at(0),
            no_decay_bn_bias=config.no_decay_bn_bias,
        )
        self._build_loaders(num_workers)
        self.initial_params = [p.detach().clone() for p in self.model.parameters()]
        self.noise = NoiseScaleEstimator()
        self.epoch = 0
        self.updates = 0
        self.diverged = False

    def _take_data(self, data: TensorData | StreamingData) -> None:
        """The trial's data on its device: the subset and validation split it asks for, and
        the regime resolved for the training set actually read."""
        config = self.config
        if config.train_size is not None:
            if isinstance(data, StreamingData):
                raise ValueError(f"train_size is not allowed for {config.workload}: it streams "
                                 "its data from disk; give a subset folder as --data-dir")
            data = training_subset(data, config.train_size)
        self.validation: tuple[torch.Tensor, torch.Tensor] | None = None
        if config.validation_fraction:
            if isinstance(data, StreamingData):
                raise ValueError(f"validation_fraction is not allowed for {config.workload}: "
                                 "it streams its data from disk")
            data, self.validation = validation_split(data, config.validation_fraction)
        from tunegap.workloads import check_batch_sizes

        # The study checked the workload's declared size; this is the data actually read.
        check_batch_sizes(config.workload, data.train_size, [config.batch_size])
        self.streaming = isinstance(data, StreamingData)
        self.data: Any = data if self.streaming else data.to(self.device)
        if self.validation is not None:
            self.validation = (self.validation[0].to(self.device),
                               self.validation[1].to(self.device))
        self.regime = config.regime()
        self.resolved: ResolvedRegime = self.regime.resolve(
            config.batch_size, train_size=self.data.train_size
        )

    def _build_model(self) -> nn.Module:
        """The workload's model, its initial weights from the seed alone, BatchNorm weights
        initialized as asked, and Ghost BatchNorm in place of BatchNorm where asked."""
        config = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = build_model(
                self.workload.model, num_classes=self.data.num_classes, **self.workload.model_kwargs
            )
        if config.resolved_bn_weight_init() != "one":
            init_bn_weights(model, config.resolved_bn_weight_init(), seed=config.seed)
        if config.zero_init_residual:
            zero_init_residual(model)
        if config.ghost_batch_size is not None:
            model = convert_to_ghost_bn(model, config.ghost_batch_size,
                                        split=self.protocol.ghost_split)
        # Dropout and augmentation draw from the global generator: seed it per trial, so a
        # reused Ray actor trains the next trial exactly as a fresh process would.
        torch.manual_seed(config.seed)
        return model

    def _place_model(self, model: nn.Module) -> None:
        """`model` on the device, with the precision and memory layout that pay off there."""
        config = self.config
        cuda = self.device.type == "cuda"
        if cuda:
            # Batches keep one shape all epoch (but the last): let cuDNN time its algorithms
            # once per shape and keep the fastest, as epoch_time.py measures it.
            torch.backends.cudnn.benchmark = True
        else:
            # Large batches on the CPU would otherwise fault their activations in every step.
            reuse_freed_memory()
        # bf16 autocast and channels_last pay off on tensor-core GPUs; on a CPU bf16 is slower,
        # and channels_last only pays for the workloads that say so.
        self.use_bf16 = config.precision == "bf16" or (config.precision == "auto" and cuda)
        # Streamed data is always NCHW images; each batch is laid out as it arrives.
        self.channels_last = ((cuda or self.workload.cpu_channels_last)
                              and (self.streaming or self.data.x_train.dim() == 4))
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
            if not self.streaming:
                self.data = self.data.to_memory_format(torch.channels_last)
        self.model = model.to(self.device)
        self.forward = torch.compile(self.model) if config.compile else self.model

    def _build_loaders(self, num_workers: int | None) -> None:
        """The training loader (and, for streamed data, the test loader)."""
        config = self.config
        self.loader: DeviceLoader | StreamingLoader
        self.test_loader: StreamingLoader | None = None
        self._sharpness_batch: tuple[torch.Tensor, torch.Tensor] | None = None
        if self.streaming:
            workers = default_workers(self.workload.cpus_per_trial)
            workers = workers if num_workers is None else num_workers
            self.loader = StreamingLoader(
                self.data.train,
                batch_size=config.batch_size,
                shuffle=True,
                seed=config.seed,
                num_workers=workers,
                device=self.device,
            )
            self.test_loader = StreamingLoader(
                self.data.test,
                batch_size=self.workload.eval_batch_size,
                shuffle=False,
                num_workers=workers,
                device=self.device,
            )
        else:
            self.loader = DeviceLoader(
                self.data.x_train,
                self.data.y_train,
                batch_size=config.batch_size,
                shuffle=True,
                seed=config.seed,
                augment=get_augment(data_pipeline(config)[1]),
            )

    @property
    def done(self) -> bool:
        return self.diverged or self.epoch >= self.resolved.epochs or self._budget_spent()

    def _budget_spent(self) -> bool:
        budget = self.resolved.max_updates
        return budget is not None and self.updates >= budget

    def resolved_params(self) -> dict[str, Any]:
        """The resolved regime and knobs, as `resolved_*` entries of results and params."""
        knobs = {f"resolved_{k}": v for k, v in self.config.resolved_knobs().items()}
        return {**self.resolved.as_dict(), **knobs, "resolved_train_size": self.data.train_size}

    def weight_distance(self) -> float:
        """||w_t - w_0|| over all trainable parameters (the paper's Figure 2 quantity); under
        the authors' protocol over the first parameter only, as their code logs it."""
        total = torch.zeros((), device=self.device)
        pairs = list(zip(self.model.parameters(), self.initial_params, strict=True))
        for p, p0 in self.protocol.distance_pairs(pairs):
            total += (p.detach() - p0).pow(2).sum()
        return float(total.sqrt())

    def train_epoch(self) -> dict[str, Any]:
        """Train one epoch, evaluate, and return the epoch's metrics."""
        if self.done:
            raise RuntimeError("the regime is finished: no epochs left to train")
        started = time.perf_counter()
        self.model.train()
        steps = len(self.loader)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        lr = self.resolved.lr
        set_weight_decay(self.optimizer, self.resolved.weight_decay_at(self.epoch))
        self.protocol.start_epoch(self.optimizer)
        for i, (x, y) in enumerate(self.loader):
            if self._budget_spent():
                break  # a budget of updates ends where it ends, mid-epoch
            lr = self.resolved.lr_at(self.epoch + i / steps)
            loss, logits = self.train_step(x, y, lr=lr, step=i)
            n = y.shape[0]
            loss_sum += loss * n
            correct += (logits.argmax(1) == y).sum()
            seen += n
        self.epoch += 1
        train_loss = float(loss_sum) / seen
        train_acc = 100.0 * float(correct) / seen
        sharpness = val_loss = val_acc = math.nan
        if not math.isfinite(train_loss):
            self.diverged = True
            test_loss, test_acc, distance = math.nan, math.nan, math.nan
        else:
            test_loss, test_acc = self.evaluate()
            if self.validation is not None:
                val_loss, val_acc = self._accuracy_on(self._batches_of(*self.validation))
            distance = self.weight_distance()
            if not (math.isfinite(test_loss) and math.isfinite(distance)):
                self.diverged = True
            elif self._sharpness_due():
                sharpness = self.sharpness()
        noise_scale = self.noise.value()
        self.noise.reset()
        return {
            "epoch": self.epoch,
            "updates": self.updates,
            "lr": lr,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "train_test_gap": train_acc - test_acc,
            "weight_distance": distance,
            "seconds": time.perf_counter() - started,
            "noise_scale": noise_scale,
            "sharpness": sharpness,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "diverged": self.diverged,
        }

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, *, lr: float, step: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer update on batch (x, y) at learning rate `lr`, for either kind of data;
        `step` is the batch's index in the epoch. Returns the (detached) loss and logits."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.channels_last:
            # Indexing a batch out of the dataset gives a default-layout tensor.
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            logits = self.forward(x)
            loss = self._loss(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        g_sq = None
        if self.resolved.clip_norm is not None:
            # clip_grad_norm_ returns the norm before clipping: the noise probe needs that.
            g_sq = nn.utils.clip_grad_norm_(self.model.parameters(), self.resolved.clip_norm) ** 2
        if self.config.noise_scale_every and step % self.config.noise_scale_every == 0:
            self._measure_noise(x, y, g_sq)
        self.optimizer.step()
        self.updates += 1
        return loss.detach(), logits.detach()

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss, as the trial's protocol computes it (`tunegap.training_protocol`)."""
        return self.protocol.loss(logits, y, ghost=self.config.ghost_batch_size,
                                  label_smoothing=self.config.label_smoothing)

    def _measure_noise(self, x: torch.Tensor, y: torch.Tensor, g_sq: torch.Tensor | None) -> None:
        """Add one gradient-noise measurement (McCandlish et al. 2018) from this step."""
        ghost = self.config.ghost_batch_size
        if small_batch_size(y.shape[0], multiple_of=ghost) is None:
            return  # e.g. a last batch too small to split
        if g_sq is None:
            g_sq = grad_norm_sq(self.model)
        self.noise.add(
            *noise_scale_from_step(
                self.model, F.cross_entropy, x, y, g_big_sq=g_sq, multiple_of=ghost
            )
        )

    def _sharpness_due(self) -> bool:
        every = self.config.sharpness_every
        return bool(every) and (self.epoch % every == 0 or self.epoch >= self.resolved.epochs)

    def sharpness(self) -> float:
        """Top Hessian eigenvalue of the training loss on a fixed training subset (Keskar et
        al. 2017), in eval mode so BatchNorm uses its running statistics.

        Streamed data: `SHARPNESS_SAMPLES` training images spread over the split, with the
        evaluation transform, decoded once and kept on the device."""
        x, y = self.sharpness_samples()
        return top_hessian_eigenvalue(self.model, F.cross_entropy, x, y, seed=self.config.seed)

    def sharpness_samples(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed training samples the sharpness probe measures on (streamed data: read
        and decoded once, then kept on the device)."""
        if not self.streaming:
            return self.data.x_train[:SHARPNESS_SAMPLES], self.data.y_train[:SHARPNESS_SAMPLES]
        if self._sharpness_batch is None:
            x, y = self.data.train_subset(SHARPNESS_SAMPLES)
            x = x.to(self.device)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            self._sharpness_batch = (x, y.to(self.device))
        return self._sharpness_batch

    def _batches_of(self, x_all: torch.Tensor, y_all: torch.Tensor
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """In-memory samples in batches of the workload's `eval_batch_size`."""
        size = self.workload.eval_batch_size
        for start in range(0, x_all.shape[0], size):
            yield x_all[start : start + size], y_all[start : start + size]

    def _test_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The test split in batches of the workload's `eval_batch_size`, on the device."""
        if self.test_loader is None:
            yield from self._batches_of(self.data.x_test, self.data.y_test)
            return
        for x, y in self.test_loader:
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y

    def evaluate(self) -> tuple[float, float]:
        """Test loss and accuracy (percent) with running BatchNorm statistics."""
        return self._accuracy_on(self._test_batches())

    @torch.no_grad()
    def _accuracy_on(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
                     ) -> tuple[float, float]:
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        n = 0
        for x, y in batches:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
                logits = self.forward(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            n += y.shape[0]
        return float(loss_sum) / n, 100.0 * float(correct) / n

    def run(self, *, on_epoch: Any = None) -> list[dict[str, Any]]:
        """Train to the end of the regime (or divergence); returns every epoch's metrics."""
        history = []
        while not self.done:
            metrics = self.train_epoch()
            history.append(metrics)
            if on_epoch is not None:
                on_epoch(metrics)
        return history

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where training stopped.

        Only tensors and plain Python values (int, float, str, bool, None, lists, tuples,
        dicts), so `torch.load(..., weights_only=True)` reads it: a checkpoint on shared
        storage must never be able to run code on the node that loads it.
        """
        return plain_state(
            {
                "config": self.config.to_dict(),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "loader": self.loader.state_dict(),
                "initial_params": [p.cpu() for p in self.initial_params],
                "epoch": self.epoch,
                "updates": self.updates,
                "diverged": self.diverged,
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": (
                    torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
                ),
            }
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` (a `state_dict()`, possibly read back with weights_only).

        A checkpoint of another trial config raises ValueError before anything changes."""
        if state["config"] != plain_state(self.config.to_dict()):
            raise ValueError("checkpoint belongs to a different trial config")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.loader.load_state_dict(state["loader"])
        self.initial_params = [p.to(self.device) for p in state["initial_params"]]
        self.epoch = int(state["epoch"])
        self.updates = int(state["updates"])
        self.diverged = bool(state["diverged"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
