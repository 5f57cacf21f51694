"""PyTorch reference for bench/mnist_vs_pytorch.py: the same MNIST-5k split, float32.

Two networks trained with Adam (learning rate 1e-3, mini-batches of 64), the test
accuracy checked after every epoch outside the timed part:

- cnn: Conv(1->16, 5x5, pad 2) ReLU MaxPool(2) Conv(16->32, 5x5, pad 2) ReLU MaxPool(2)
  Linear(32*7*7 -> 10), 28,938 parameters: the "small CNN" a PyTorch user would write;
- resnet: the exact ResNet of fem_dnn's dense kernel on the 784 pixels,
  ``x <- x + tau tanh(a_k - (1/n) b_k x)`` for N = 4 layers, ``O = (1/n) W x + mu``.

Prints one JSON line per network: best test accuracy, its epoch, seconds of training
until then, and the seconds until the test accuracy first reached the target (null if
never).

    python bench/torch_mnist.py problem.npz THREADS EPOCHS
"""

import json
import sys
import time

import numpy as np
import torch


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


def run(name, model, Xtr, ytr, Xte, yte, epochs, target, seed=0):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    trained, best, first = 0.0, (0.0, 0, 0.0), None
    for epoch in range(1, epochs + 1):
        t = time.perf_counter()
        model.train()
        for idx in torch.randperm(Xtr.shape[0], generator=gen).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(Xtr[idx]), ytr[idx]).backward()
            opt.step()
        trained += time.perf_counter() - t
        model.eval()
        with torch.no_grad():
            acc = float((model(Xte).argmax(1) == yte).float().mean())
        if acc > best[0]:
            best = (acc, epoch, trained)
        if first is None and acc >= target:
            first = trained
    return {"network": name, "parameters": sum(p.numel() for p in model.parameters()), "best_test_accuracy": best[0],
            "best_epoch": best[1], "seconds_to_best": best[2], "seconds_to_target": first, "epochs": epochs,
            "seconds": trained}


def main():
    src, threads, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    d = np.load(src)
    Xtr, ytr = torch.tensor(d["Xtrain"], dtype=torch.float32), torch.tensor(d["ytrain"])
    Xte, yte = torch.tensor(d["Xtest"], dtype=torch.float32), torch.tensor(d["ytest"])
    target = float(d["target"])
    for name, model in (("cnn", CNN()), ("resnet", ResNet())):
        print(json.dumps(run(name, model, Xtr, ytr, Xte, yte, epochs, target)), flush=True)


if __name__ == "__main__":
    main()
