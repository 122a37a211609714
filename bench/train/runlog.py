"""What a run measures while it trains (`RunLog`, a fastai callback): per epoch its losses, metrics, seconds and
trainable parameters, validation points within epochs, the LRs each parameter group trained at, and where a run
stops early (`cfg.stop_at`), the stop. Nothing reads a value back from the device during an epoch: losses are summed
where they are computed and read once per epoch.
"""
import math
import time

import torch
from fastai.basics import Callback, Recorder
from fastai.torch_core import find_bs

from bench.declare.config import steps_at
from bench.train.fold import folded
from bench.train.learner import autocast, eval_mode, sync

MIN_POINTS = 4  # validation points per run at least: with few epochs, more than one per epoch


class NonFiniteLoss(RuntimeError):
    pass


class StopRun(Exception):
    """Raised by RunLog where a run stops early (`cfg.stop_at`): out of every phase the strategy still has."""


def evaluate(model, dl, cfg):
    """(loss, accuracy, mean per-class accuracy) of `model` on every batch of `dl`, in eval mode (its BatchNorms
    folded into their convs, on a copy: bench/train/fold.py), every module's train/eval mode put back afterwards.
    Counts stay on the device and are read once, at the end. The caller chooses
    no_grad (mid-run) or inference mode (a finished run)."""
    loss, preds, ys, net = 0., [], [], None
    with eval_mode(model):
        for xb, yb in dl:
            if net is None:
                net = folded(model, lambda: xb, cfg)
            with autocast(cfg):
                out = net(xb).float()
            loss = loss + torch.nn.functional.cross_entropy(out, yb, reduction='sum')
            preds.append(out.argmax(-1))
            ys.append(yb)
            n_classes = out.shape[-1]
    pred, y = torch.cat(preds), torch.cat(ys)
    total = torch.bincount(y, minlength=n_classes)
    hits = torch.bincount(y[pred == y], minlength=n_classes)
    present = total > 0
    return float(loss) / len(y), float((pred == y).float().mean()), float((hits[present] / total[present]).mean())


# ---- timing -----------------------------------------------------------------------------------------------

class RunLog(Callback):
    """Per epoch: training loss (mean over the epoch), validation loss and accuracy, seconds spent training and
    validating (GPU synchronized), trainable parameters and the peak LR of each parameter group that trained.
    Validation points: at least MIN_POINTS per run (`cfg.epochs` of them, or more evenly spaced within each epoch
    where epochs are few), so that a run still improving at its end shows it; a point within an epoch is evaluated
    here, off the training clock. Raises on a non-finite training loss. Where `cfg.stop_at` < 1, stops the run
    (StopRun, whatever phase it is in) after that share of its steps, with a validation point there: the steps
    before it are the whole run's."""
    order = Recorder.order + 1

    def __init__(self, device, cfg=None):
        self.device, self.cfg, self.epochs, self.curve, self.trainable_max, self.train_images = device, cfg, [], [], 0, 0
        self.per_epoch = math.ceil(MIN_POINTS / cfg.epochs) if cfg is not None and cfg.epochs else 1
        self.lr_max = {}  # parameter group -> the highest LR it trained at
        self.batchnorm = None  # (most layers updating their running statistics in an epoch, BatchNorm layers)
        self.accumulate, self.steps, self.stop, self.stopping = 1, 0, None, False  # loader batches per step

    def before_batch(self):
        if self.training and self.iter == 0:  # the first batch of each epoch: phases can freeze and unfreeze
            layers = [m for m in self.learn.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
            updating = sum(m.training and m.track_running_stats for m in layers)
            self.batchnorm = (max(updating, self.batchnorm[0] if self.batchnorm else 0), len(layers))
            self.trains = [any(p.requires_grad for p in g) for g in self.learn.opt.param_lists]

    def before_epoch(self):
        sync(self.device)
        self.t0, self.loss_sum, self.seen, self.trained, self.mid_seconds = time.perf_counter(), 0., 0, False, 0.
        self.trainable = sum(p.numel() for p in self.learn.model.parameters() if p.requires_grad)

    def before_train(self):
        n = len(self.learn.dls.train)
        if self.stop is None and self.cfg is not None and self.cfg.stop_at < 1:  # counted over every phase
            self.stop = steps_at(self.cfg.stop_at, self.cfg.epochs, n // self.accumulate) * self.accumulate
        self.marks = {round(n * k / self.per_epoch) - 1 for k in range(1, self.per_epoch)} - {-1, n - 1}

    def after_batch(self):
        if self.training:
            bs = find_bs(self.yb)
            self.loss_sum = self.loss_sum + self.learn.loss.detach().float() * bs  # stays on the device: no sync
            self.seen += bs
            for i, (h, trains) in enumerate(zip(self.learn.opt.hypers, self.trains)):
                if trains:
                    self.lr_max[i] = max(self.lr_max.get(i, 0.), float(h['lr']))
            if self.iter in self.marks:
                self.mid_epoch_point((self.iter + 1) / len(self.learn.dls.train))
            self.steps += 1
            if self.stop is not None and self.steps >= self.stop:
                if self.iter == len(self.learn.dls.train) - 1:
                    self.stopping = True  # the epoch ends here: its own validation, then the stop
                else:
                    self.stop_within_epoch()

    def stop_within_epoch(self):
        """The epoch so far as an epoch of its own, scored at this point on validation; then StopRun."""
        fraction = (self.iter + 1) / len(self.learn.dls.train)
        if not self.curve or self.curve[-1]['epoch'] != len(self.epochs) + fraction:
            self.mid_epoch_point(fraction)
        sync(self.device)
        point = self.curve[-1]
        self.close_epoch(time.perf_counter() - self.t0 - self.mid_seconds, self.mid_seconds,
                         {k: point[k] for k in ('epoch', 'valid_loss', 'valid_acc', 'valid_class_acc')})
        raise StopRun(f'stopped after {self.steps} steps')

    @torch.no_grad()  # not inference mode: the run trains on after it, and a module may cache what it computed
    def mid_epoch_point(self, fraction):
        """Validation loss and metrics now, every module's train/eval mode kept as it was."""
        t = time.perf_counter()
        loss, acc, class_acc = evaluate(self.learn.model, self.learn.dls.valid, self.cfg)
        self.curve.append(dict(epoch=len(self.epochs) + fraction, valid_loss=loss, valid_acc=acc,
                               valid_class_acc=class_acc))
        sync(self.device)
        self.mid_seconds += time.perf_counter() - t

    def after_train(self):
        self.trained = True

    def before_validate(self):
        sync(self.device)
        self.t1 = time.perf_counter()
        self.train_s = self.t1 - self.t0 - self.mid_seconds
        self.training_model = self.learn.model  # fastai's validation runs the folded copy (bench/train/fold.py)
        self.learn.model = folded(self.training_model, lambda: self.learn.dls.valid.head(2), self.cfg)

    def after_validate(self):
        self.learn.model = self.training_model

    def after_fit(self):
        self.learn.model = getattr(self, 'training_model', self.learn.model)

    def after_epoch(self):
        if not self.trained:  # Learner.validate fires fit and epoch events too
            return
        sync(self.device)
        logged = dict(zip(list(self.recorder.metric_names)[1:], list(self.learn.final_record)))
        point = dict(epoch=len(self.epochs) + 1, valid_loss=float(logged['valid_loss']),
                     valid_acc=float(logged['accuracy']), valid_class_acc=float(logged['class_mean_accuracy']))
        self.close_epoch(self.train_s, time.perf_counter() - self.t1 + self.mid_seconds, point)
        self.curve.append(dict(point))
        if self.stopping:
            self.stopping = False
            raise StopRun(f'stopped after {self.steps} steps')

    def close_epoch(self, train_seconds, valid_seconds, point):
        """Append the epoch's entry (`point`: its epoch number and validation scores)."""
        train_loss = float(self.loss_sum / max(self.seen, 1))
        if not math.isfinite(train_loss):
            raise NonFiniteLoss(f'the training loss became {train_loss} in epoch {len(self.epochs) + 1}; '
                                f'lower the LR or use fp32')
        self.train_images += self.seen
        self.trainable_max = max(self.trainable_max, self.trainable)
        self.epochs.append(dict(point, train_loss=train_loss, train_seconds=train_seconds, valid_seconds=valid_seconds,
                                trainable=self.trainable))

    def lrs(self, n_groups):
        """Per parameter group, the highest LR it trained at (None: it never trained)."""
        return [self.lr_max.get(i) for i in range(n_groups)]
