"""PyTorch reference for bench/conv_vs_pytorch.py: the identical convolutional ResNet.

    x^{k+1} = x^k + tau tanh(a^k - conv2d(x^k, w^k)),  O = <W_r, x^N> + mu,
    J = mean cross-entropy(O, labels)

with x an (S, C, H, W) batch, a^k a (C, H, W) bias field, w^k the (C, C, 2R+1, 2R+1)
convolution weights (zero padding R) and the readout weights W_r (K, C, H, W) (fem_dnn's
``W M_w``: the cell weight folded in), with autograd in float64 or float32. Reads the
problem from an .npz written by conv_vs_pytorch.py, prints a JSON line with the best
forward and gradient times and writes J and the gradient to an .npz. Runs in its own
interpreter (PyTorch's CPU wheel may need another Python than fem_dnn's).

    python bench/torch_conv.py problem.npz result.npz THREADS REPEAT [float64|float32]
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
    tau, R = float(d["tau"]), int(d["R"])
    X = torch.tensor(d["X"], dtype=dtype)
    y = torch.tensor(d["y"])
    params = {k: torch.tensor(d[k], dtype=dtype, requires_grad=True) for k in ("a", "w", "Wr", "mu")}

    def loss(p):
        x = X
        for k in range(p["a"].shape[0]):
            x = x + tau * torch.tanh(p["a"][k] - torch.nn.functional.conv2d(x, p["w"][k], padding=R))
        O = x.flatten(1) @ p["Wr"].flatten(1).T + p["mu"]
        return torch.nn.functional.cross_entropy(O, y)

    torch_report(torch, loss, params, repeat, dst)


if __name__ == "__main__":
    main()
