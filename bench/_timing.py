"""Timing helpers shared by the benchmarks and their PyTorch references (numpy only at
import, so the PyTorch scripts, run in their own interpreter, import it too)."""

import json
import time

import numpy as np


def best(fn, repeat):
    """The best of ``repeat`` timed calls of ``fn`` after a first (warm-up) one."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def torch_report(torch, loss, params, repeat, dst):
    """Time PyTorch's forward (no autograd) and gradient (autograd) of ``loss(params)``,
    write J and the gradients (float64) to ``dst`` and print the JSON line the fem_dnn
    side reads."""

    def forward():
        with torch.no_grad():
            return loss(params)

    def gradient():
        for v in params.values():
            v.grad = None
        J = loss(params)
        J.backward()
        return J

    tf, tg = best(forward, repeat), best(gradient, repeat)
    J = gradient()
    np.savez(dst, J=J.item(), **{f"d{k}": v.grad.numpy().astype(np.float64) for k, v in params.items()})
    print(json.dumps({"forward": tf, "gradient": tg, "torch": torch.__version__, "threads": torch.get_num_threads()}))
