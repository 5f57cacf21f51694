"""PyTorch twin of fem_dnn's depth-slab network (fem_dnn/network/slabs.py, docs/model.md
4.14), and its check against fem_dnn (run by bench/slabs_vs_pytorch.py).

Slab i is an H_i x H_i pixel image x C_i channels with N_i explicit Euler layers, every
layer tau = T / sum(N_i) long (``network.slab_layers``, "every layer T/N long"):

    x <- x + tau (sigma(a^k - conv2d(x, w^k, padding=R)) - gamma x)

with a^k a (C_i, H_i, H_i) bias field (one value a node: fem_dnn's a), w^k the
(C_i, C_i, 2R+1, 2R+1) weights of the local kernel (fem_dnn's ``omega kappa`` at the
pixel offsets, the kernel flipped: bench/conv_vs_pytorch.py's ``Layout``) and zero
padding R (the boundary pixels' missing offsets), sigma tanh (or any of ``ACTIVATIONS``)
and gamma fem_dnn's ``network.decay`` (0 by default). Between slabs the L2 projection of
``SlabProjection``: on nested pixels the average over the H_i/H_{i+1} square under each
coarse pixel (``avg_pool2d``); on the channel axis, the 1-D DG0 mesh of [0, 1] with C
cells, ``(P x)_j = C_{i+1} sum_c |I_j ∩ I_c| x_c`` (I_j the j-th of C_{i+1} intervals):
when C_i divides C_{i+1} each new cell lies in one old one and P copies channel c to its
C_{i+1}/C_i sub-channels (``repeat_interleave``), otherwise the overlap matrix. With
``pooling="max"`` (fem_dnn's ``network.slab_pooling``, ``SlabMaxPooling``) the pixels'
average becomes their largest value (``max_pool2d``); the channel copy is the same. The
readout ``O = <W_r, x> + mu`` (fem_dnn's ``W M_w``, the last slab's cell volumes folded
in; with ``readout_pixels`` the last state pooled first, ``adaptive_avg_pool2d`` or
``adaptive_max_pool2d``: fem_dnn's ``slab_readout_pixels``, ``slab_readout_pooling``),
J the mean cross-entropy. A first slab of C_0 > 1 channels gets the one-channel image
copied to each (fem_dnn's input projection).

:class:`SlabResNet` is the network (bench/torch_mnist.py trains it on MNIST); run as a
script it reads a problem written by slabs_vs_pytorch.py (the configuration, every
control mapped to these weights, the data) and writes J and the gradient, float64:

    python bench/torch_slabs.py problem.npz result.npz
"""

import json
import math
import sys

import numpy as np
import torch

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


def channel_projection(c_from: int, c_to: int) -> np.ndarray:
    """The L2 projection between DG0 meshes of [0, 1] with ``c_from`` and ``c_to`` cells:
    ``P[j, c] = |I_j ∩ I_c| / |I_j|`` (rows sum to one), ``(c_to, c_from)``."""
    j, c = np.arange(c_to)[:, None], np.arange(c_from)[None, :]
    overlap = np.minimum((j + 1) / c_to, (c + 1) / c_from) - np.maximum(j / c_to, c / c_from)
    return np.clip(overlap, 0.0, None) * c_to


class SlabResNet(torch.nn.Module):
    """fem_dnn's slab network (``network.slab_pixels``, ``slab_channels``, ``slab_layers``,
    ``slab_support``, ``T``, ``scheme = "euler"``, ``slab_pooling``, a classes readout of ``K`` classes).

    ``init``: ``"torch"`` PyTorch's defaults (each layer's conv weights as ``nn.Conv2d``'s,
    U(+-1/sqrt(fan-in)), the bias fields zero, the readout as ``nn.Linear``'s); ``"fem_dnn"``
    fem_dnn's ``training.init_scale`` start in distribution (the natural-order controls
    ``init_scale`` times standard normal: a, kappa, W, mu; with the nodal kernel rule the
    conv weights are ``omega kappa``, the readout ``W omega``).
    """

    def __init__(self, pixels, channels, layers, support, T, K=10, scheme="euler", activation="tanh", init="torch",
                 init_scale=0.1, pooling="average", readout_pixels=0, readout_pooling="average", decay=0.0):
        super().__init__()
        if scheme != "euler":
            raise ValueError(f"SlabResNet is the explicit Euler network, not {scheme!r}")
        if pooling not in ("average", "max"):
            raise ValueError(f"pooling {pooling!r}: 'average' or 'max'")
        self.pooling = pooling
        if not len(pixels) == len(channels) == len(layers):
            raise ValueError("pixels, channels and layers need one entry a slab")
        for p, q in zip(pixels, pixels[1:]):
            if p % q:
                raise ValueError(f"pixels {pixels}: {q} does not divide {p} (nested pixels)")
        self.pixels, self.channels, self.layers = [int(p) for p in pixels], [int(c) for c in channels], [int(n) for n in layers]
        self.R, self.tau, self.sigma = int(support), float(T) / sum(self.layers), ACTIVATIONS[activation]
        self.decay = float(decay)  # fem_dnn's network.decay gamma: x <- x + tau (sigma(.) - gamma x)
        s = 2 * self.R + 1
        self.a = torch.nn.ParameterList(torch.nn.Parameter(torch.zeros(N, C, H, H))
                                        for H, C, N in zip(self.pixels, self.channels, self.layers))
        self.w = torch.nn.ParameterList(torch.nn.Parameter(torch.zeros(N, C, C, s, s))
                                        for C, N in zip(self.channels, self.layers))
        C, H = self.channels[-1], self.pixels[-1]
        #: the readout's pooled pixels a side (0: the last slab's state) and the pooling
        self.readout_pixels, self.readout_pooling = int(readout_pixels), readout_pooling
        if self.readout_pixels:
            H = self.readout_pixels
        self.Wr = torch.nn.Parameter(torch.zeros(K, C, H, H))
        self.mu = torch.nn.Parameter(torch.zeros(K))
        #: the channel projections (None: a copy to the sub-channels, or the identity)
        self.Pc = [None if c2 % c1 == 0 else torch.tensor(channel_projection(c1, c2), dtype=torch.float32)
                   for c1, c2 in zip(self.channels, self.channels[1:])]
        with torch.no_grad():
            if init == "torch":
                for w in self.w:
                    bound = 1.0 / math.sqrt(w.shape[2] * s * s)
                    w.uniform_(-bound, bound)
                bound = 1.0 / math.sqrt(self.Wr[0].numel())
                self.Wr.uniform_(-bound, bound)
                self.mu.uniform_(-bound, bound)
            elif init == "fem_dnn":
                for a, w, H, C in zip(self.a, self.w, self.pixels, self.channels):
                    a.normal_(0.0, init_scale)
                    w.normal_(0.0, init_scale / (H * H * C))  # omega kappa, omega = 1/(H^2 C)
                self.Wr.normal_(0.0, init_scale / self.Wr[0].numel())
                self.mu.normal_(0.0, init_scale)
            else:
                raise ValueError(f"init {init!r}: 'torch' or 'fem_dnn'")

    def project(self, x, i):
        """The L2 projection from slab i's image x channels cells to slab i+1's."""
        r = self.pixels[i] // self.pixels[i + 1]
        if r > 1:
            x = (torch.nn.functional.max_pool2d if self.pooling == "max" else torch.nn.functional.avg_pool2d)(x, r)
        c1, c2 = self.channels[i], self.channels[i + 1]
        if self.Pc[i] is None:
            return x.repeat_interleave(c2 // c1, dim=1) if c2 > c1 else x
        return torch.einsum("dc,schw->sdhw", self.Pc[i].to(x.dtype), x)

    def forward(self, x):
        # the one-channel image, copied to the first slab's channels (fem_dnn's input projection)
        x = x.reshape(-1, 1, self.pixels[0], self.pixels[0]).repeat(1, self.channels[0], 1, 1)
        for i, (a, w) in enumerate(zip(self.a, self.w)):
            for k in range(a.shape[0]):
                g = self.sigma(a[k] - torch.nn.functional.conv2d(x, w[k], padding=self.R))
                x = x + self.tau * (g - self.decay * x if self.decay else g)
            if i + 1 < len(self.pixels):
                x = self.project(x, i)
        if self.readout_pixels:  # fem_dnn's slab_readout_pixels / slab_readout_pooling
            pool = (torch.nn.functional.adaptive_max_pool2d if self.readout_pooling == "max"
                    else torch.nn.functional.adaptive_avg_pool2d)
            x = pool(x, self.readout_pixels)
        return x.flatten(1) @ self.Wr.flatten(1).T + self.mu


def main():
    """J and the gradient of the problem in ``sys.argv[1]``, float64, to ``sys.argv[2]``."""
    src, dst = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    d = np.load(src)
    n_slabs = len(d["pixels"])
    opt = {key: (str(d[key]) if d[key].dtype.kind == "U" else d[key].item()) for key in
           ("activation", "pooling", "readout_pixels", "readout_pooling", "decay") if key in d}
    net = SlabResNet(d["pixels"], d["channels"], d["layers"], int(d["support"]), float(d["T"]), K=d["mu"].size,
                     **opt).double()
    with torch.no_grad():
        for i in range(n_slabs):
            net.a[i].copy_(torch.tensor(d[f"a{i}"]))
            net.w[i].copy_(torch.tensor(d[f"w{i}"]))
        net.Wr.copy_(torch.tensor(d["Wr"]))
        net.mu.copy_(torch.tensor(d["mu"]))
    J = torch.nn.functional.cross_entropy(net(torch.tensor(d["X"])), torch.tensor(d["y"]))
    J.backward()
    grads = {f"d{name}{i}": p.grad.numpy() for name, ps in (("a", net.a), ("w", net.w)) for i, p in enumerate(ps)}
    np.savez(dst, J=J.item(), dWr=net.Wr.grad.numpy(), dmu=net.mu.grad.numpy(), **grads)
    print(json.dumps({"J": J.item(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
