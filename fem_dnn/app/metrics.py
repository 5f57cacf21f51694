"""The metrics an optimiser adds to each iteration's row of a training run
(:class:`Evaluator`): train, validation and test loss and accuracy, the best iterate
and early stopping.
"""

import time

from fem_dnn.app.run import Run
from fem_dnn.optimize.methods import MINIBATCH

__all__ = ["Evaluator"]


class Evaluator:
    """The metrics of an iteration's row besides the optimiser's own: the train loss
    (unless ``train_loss`` is False: a minibatch run without ``training.epoch_evaluation``
    skips that full pass over the training set), the validation loss and accuracy (every iteration, with ``data.validation_fraction``),
    and every ``every`` iterations (0: never) the test loss and accuracy; its time is kept
    apart from the training time (``seconds``).

    With validation data it keeps the best iterate (the highest validation accuracy for
    classes, ties to the lower validation loss; the lowest validation loss otherwise) in
    ``checkpoint/best.npz`` (``evaluate --best``), and with ``training.patience = p``
    asks the optimiser to stop (a ``"stop"`` entry) when p iterations have passed
    without a better one (``patience``: None takes ``training.patience``; the cycles of
    an adaptive run pass 0: they end as the adaptive loop says)."""

    def __init__(self, run: Run, every: int, best=None, method: str = "", patience: int | None = None,
                 train_loss: bool = True):
        self.run, self.every, self.seconds, self.train_loss = run, int(every), 0.0, bool(train_loss)
        self.best_path, self.method = best, method
        self.patience = int(run.cfg["training"]["patience"] if patience is None else patience)
        self.best = None  # (score, iteration, validation metrics)

    def restore(self):
        """The best so far of a resumed run, from its ``best.npz``."""
        from fem_dnn.app.checkpoint import load_checkpoint

        m, state, _ = load_checkpoint(self.best_path, self.run.J.controls)
        m.destroy()
        self._consider(state["best"], int(state["iteration"]), None)

    def _consider(self, row, iteration, m):
        classes = self.run.data.kind == "classes"
        score = (row["validation_accuracy"], -row["validation_loss"]) if classes else (-row["validation_loss"],)
        if self.best is None or score > self.best[0]:
            keep = {k: row[k] for k in ("validation_loss", "validation_accuracy") if k in row}
            self.best = (score, iteration, keep)
            if m is not None and self.best_path is not None:
                from fem_dnn.app.checkpoint import save_checkpoint

                save_checkpoint(self.best_path, self.run.J.controls, m,
                                {"method": self.method, "iteration": iteration, "history": [], "best": keep})

    def summary(self) -> dict:
        """``best_iteration`` and the best validation metrics (nothing without validation)."""
        if self.best is None:
            return {}
        return {"best_iteration": self.best[1], **{f"best_{k}": v for k, v in self.best[2].items()}}

    def __call__(self, m, iteration: int) -> dict:
        t = time.perf_counter()
        run = self.run
        out = {"train_loss": run.J.loss_value(m)} if self.train_loss else {}
        if run.J_val is not None:
            out["validation_loss"] = run.J_val.loss_value(m)
            if run.data.kind == "classes":
                out["validation_accuracy"] = run.J_val.accuracy(m)
            self._consider(out, iteration, m)
            waited = iteration - self.best[1]
            if self.patience and waited >= self.patience:
                metric = "accuracy" if run.data.kind == "classes" else "loss"
                unit = "epoch" if self.method in MINIBATCH else "iteration"
                out["stop"] = (f"early stopping: the validation {metric} has not improved for {waited} {unit}s "
                               f"(training.patience); the best, {unit} {self.best[1]}, is in checkpoint/best.npz")
        J_test = run.J_test
        if J_test is not None and self.every and iteration % self.every == 0:
            out["test_loss"] = J_test.loss_value(m)
            if run.data.kind == "classes":
                out["test_accuracy"] = J_test.accuracy(m)
        self.seconds += time.perf_counter() - t
        return out
