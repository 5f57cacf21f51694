"""PyTorch reference for bench/mnist_vs_pytorch.py: the same MNIST-5k split, float32.

The networks (``NETWORKS``, comma-separated; default cnn,resnet and, when the problem
holds a slab configuration, slabs) trained with Adam, the test accuracy checked after
every epoch outside the timed part:

- cnn: Conv(1->16, 5x5, pad 2) ReLU MaxPool(2) Conv(16->32, 5x5, pad 2) ReLU MaxPool(2)
  Linear(32*7*7 -> 10), 28,938 parameters: the "small CNN" a PyTorch user would write;
  learning rate 1e-3, mini-batches of 64;
- resnet: the exact ResNet of fem_dnn's dense kernel on the 784 pixels,
  ``x <- x + tau tanh(a_k - (1/n) b_k x)`` for N = 4 layers, ``O = (1/n) W x + mu``;
  learning rate 1e-3, mini-batches of 64;
- slabs: the exact twin of fem_dnn's depth-slab network (:class:`torch_slabs.SlabResNet`,
  verified by bench/slabs_vs_pytorch.py) built from the problem's ``slab_pixels``,
  ``slab_channels``, ``slab_layers``, ``slab_support``, ``slab_T``, ``slab_scheme``,
  ``slab_activation``, ``slab_pooling``, ``slab_readout_pixels``, ``slab_readout_pooling``,
  ``slab_decay``, trained in its conv-weight coordinates from each start of
  ``slab_init`` (torch: PyTorch's default initialisation; fem_dnn: fem_dnn's
  ``training.init_scale = 0.1`` start in distribution) at each learning rate of
  ``slab_lr`` (constant), mini-batches of ``slab_batch``.

Each network starts from ``torch.manual_seed(0)``. Prints one JSON line per network:
best test accuracy, its epoch, seconds of training until then, the seconds until the
test accuracy first reached the target (null if never), the final train accuracy, and
the curve ``[epoch, seconds of training, test accuracy]`` of every epoch.

    python bench/torch_mnist.py problem.npz THREADS EPOCHS [NETWORKS]
"""

import json
import sys
import time

import numpy as np
import torch

from torch_slabs import SlabResNet  # bench/ (this script's folder)


class CNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(1, 16, 5, padding=2)
        self.c2 = torch.nn.Conv2d(16, 32, 5, padding=2)
        self.fc = torch.nn.Linear(32 * 7 * 7, 10)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.c1(x.view(-1, 1, 28, 28))), 2)
        x = torch.max_pool2d(torch.relu(self.c2(x)), 2)
        return self.fc(x.flatten(1))


class ResNet(torch.nn.Module):
    def __init__(self, n=784, N=4, T=1.0):
        super().__init__()
        self.n, self.tau = n, T / N
        self.a = torch.nn.Parameter(torch.zeros(N, n))
        self.b = torch.nn.Parameter(torch.zeros(N, n, n))
        self.W = torch.nn.Parameter(torch.zeros(10, n))
        self.mu = torch.nn.Parameter(torch.zeros(10))

    def forward(self, x):
        for k in range(self.a.shape[0]):
            x = x + self.tau * torch.tanh(self.a[k] - x @ self.b[k].T / self.n)
        return x @ self.W.T / self.n + self.mu


def run(name, model, Xtr, ytr, Xte, yte, epochs, target, seed=0, lr=1e-3, batch=64):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    trained, best, first, curve = 0.0, (0.0, 0, 0.0), None, []
    for epoch in range(1, epochs + 1):
        t = time.perf_counter()
        model.train()
        for idx in torch.randperm(Xtr.shape[0], generator=gen).split(batch):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(Xtr[idx]), ytr[idx]).backward()
            opt.step()
        trained += time.perf_counter() - t
        model.eval()
        with torch.no_grad():
            acc = float((model(Xte).argmax(1) == yte).float().mean())
        curve.append([epoch, trained, acc])
        if acc > best[0]:
            best = (acc, epoch, trained)
        if first is None and acc >= target:
            first = trained
    with torch.no_grad():
        train_acc = float((model(Xtr).argmax(1) == ytr).float().mean())
    return {"network": name, "parameters": sum(p.numel() for p in model.parameters()), "best_test_accuracy": best[0],
            "best_epoch": best[1], "seconds_to_best": best[2], "seconds_to_target": first, "epochs": epochs,
            "seconds": trained, "train_accuracy": train_acc, "lr": lr, "batch_size": batch, "curve": curve}


def main():
    src, threads, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    d = np.load(src)
    Xtr, ytr = torch.tensor(d["Xtrain"], dtype=torch.float32), torch.tensor(d["ytrain"])
    Xte, yte = torch.tensor(d["Xtest"], dtype=torch.float32), torch.tensor(d["ytest"])
    target = float(d["target"])
    slabs = "slab_pixels" in d
    names = sys.argv[4].split(",") if len(sys.argv) > 4 else ["cnn", "resnet"] + (["slabs"] if slabs else [])
    for name in names:
        if name == "slabs":
            cfg = dict(pixels=d["slab_pixels"], channels=d["slab_channels"], layers=d["slab_layers"],
                       support=int(d["slab_support"]), T=float(d["slab_T"]), scheme=str(d["slab_scheme"]),
                       activation=str(d["slab_activation"]),
                       pooling=str(d["slab_pooling"]) if "slab_pooling" in d else "average",
                       readout_pixels=int(d["slab_readout_pixels"]) if "slab_readout_pixels" in d else 0,
                       readout_pooling=str(d["slab_readout_pooling"]) if "slab_readout_pooling" in d else "average",
                       decay=float(d["slab_decay"]) if "slab_decay" in d else 0.0)
            for init in np.atleast_1d(d["slab_init"]):
                for lr in d["slab_lr"]:
                    torch.manual_seed(0)
                    model = SlabResNet(**cfg, init=str(init))
                    print(json.dumps(run(f"slab twin, {init} init, lr {lr:g}", model, Xtr, ytr, Xte, yte, epochs, target,
                                         lr=float(lr), batch=int(d["slab_batch"]))), flush=True)
            continue
        torch.manual_seed(0)
        model = {"cnn": CNN, "resnet": ResNet}[name]()
        print(json.dumps(run(name, model, Xtr, ytr, Xte, yte, epochs, target)), flush=True)


if __name__ == "__main__":
    main()
