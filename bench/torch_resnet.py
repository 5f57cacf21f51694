"""PyTorch reference for bench/vs_pytorch.py: the identical discrete ResNet.

    x^{k+1} = x^k + tau tanh(a^k - (1/n) b^k x^k),  O = (1/n) W x^N + mu,
    J = mean cross-entropy(O, labels)

with autograd, in float64 or float32 (as a PyTorch user trains). Reads the problem from
an .npz written by vs_pytorch.py,
prints a JSON line with the best forward and gradient times and the results (J and the
gradient) written to an .npz for the cross-check. Runs in its own interpreter (PyTorch's
CPU wheel may need another Python than fem_dnn's).

    python bench/torch_resnet.py problem.npz result.npz THREADS REPEAT [float64|float32]
"""

import sys

import numpy as np
import torch

from _timing import torch_report  # bench/ (this script's folder)


def main():
    src, dst, threads, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    dtype = getattr(torch, sys.argv[5] if len(sys.argv) > 5 else "float64")
    torch.set_num_threads(threads)
    d = np.load(src)
    n, tau = d["a"].shape[1], float(d["tau"])
    X = torch.tensor(d["X"].T.copy(), dtype=dtype)  # (n, S): samples as columns, like fem_dnn
    y = torch.tensor(d["y"])
    params = {k: torch.tensor(d[k], dtype=dtype, requires_grad=True) for k in ("a", "b", "W", "mu")}

    def loss(p):
        x = X
        for k in range(p["a"].shape[0]):
            x = x + tau * torch.tanh(p["a"][k][:, None] - (p["b"][k] @ x) / n)
        O = (p["W"] @ x) / n + p["mu"][:, None]
        return torch.nn.functional.cross_entropy(O.T, y)

    torch_report(torch, loss, params, repeat, dst)


if __name__ == "__main__":
    main()
