"""PyTorch reference for bench/time_to_accuracy.py: Adam on the identical network.

    x^{k+1} = x^k + tau tanh(a^k - (1/n) b^k x^k),  O = (1/n) W x^N + mu,
    J = mean cross-entropy(O, labels) + lambda/2 sum_p w_p p^2

(the weights w_p are fem_dnn's L2 norm of the controls, so both minimise the same J).
Reads the problem from an .npz written by time_to_accuracy.py and, for every learning
rate and batch size given, trains from the same initial controls until the test
accuracy reaches the target (checked after every epoch, outside the timed part) or the
epoch limit. Prints one JSON line per run. Also prints J at the problem's check point,
for the cross-check against fem_dnn.

    python bench/torch_digits.py problem.npz THREADS
"""

import json
import sys
import time

import numpy as np
import torch


def main():
    src, threads = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(threads)
    d = np.load(src)
    n, tau, lam, target = d["a0"].shape[1], float(d["tau"]), float(d["lam"]), float(d["target"])
    Xtr, ytr = torch.tensor(d["Xtrain"]), torch.tensor(d["ytrain"])  # (S, n), samples as rows
    Xte, yte = torch.tensor(d["Xtest"]), torch.tensor(d["ytest"])
    keys = ("a", "b", "W", "mu")
    weights = {k: torch.tensor(d["w" + k]) for k in keys}

    def objective(p, X, y):
        x = X
        for k in range(p["a"].shape[0]):
            x = x + tau * torch.tanh(p["a"][k] - x @ p["b"][k].T / n)
        O = x @ p["W"].T / n + p["mu"]
        reg = sum((weights[k] * p[k] ** 2).sum() for k in keys)
        return torch.nn.functional.cross_entropy(O, y) + 0.5 * lam * reg, O

    with torch.no_grad():
        check = {k: torch.tensor(d["check_" + k]) for k in keys}
        print(json.dumps({"check_J": objective(check, Xtr, ytr)[0].item(), "torch": torch.__version__,
                          "threads": torch.get_num_threads()}), flush=True)

    S = Xtr.shape[0]
    for lr in d["lrs"]:
        for bs in d["batch_sizes"]:
            bs = int(bs) if bs > 0 else S
            params = {k: torch.tensor(d[k + "0"], requires_grad=True) for k in keys}
            opt = torch.optim.Adam(params.values(), lr=float(lr))
            gen = torch.Generator().manual_seed(0)
            elapsed, steps, reached, acc = 0.0, 0, None, 0.0
            for epoch in range(1, int(d["max_epochs"]) + 1):
                t0 = time.perf_counter()
                perm = torch.randperm(S, generator=gen) if bs < S else torch.arange(S)
                for i in range(0, S, bs):
                    idx = perm[i : i + bs]
                    opt.zero_grad()
                    J, _ = objective(params, Xtr[idx], ytr[idx])
                    J.backward()
                    opt.step()
                    steps += 1
                elapsed += time.perf_counter() - t0
                with torch.no_grad():
                    acc = (objective(params, Xte, yte)[1].argmax(1) == yte).double().mean().item()
                if acc >= target:
                    reached = {"epochs": epoch, "steps": steps, "seconds": elapsed}
                    break
            print(json.dumps({"lr": float(lr), "batch_size": bs, "reached": reached, "accuracy": acc,
                              "epochs": epoch, "steps": steps, "seconds": elapsed}), flush=True)


if __name__ == "__main__":
    main()
