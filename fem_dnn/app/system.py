"""What the machine gives a run: this process's resident memory, the memory it can still
allocate (``MemAvailable`` and its cgroup limits), PETSc's largest index.

Linux probes (``/proc/self/status``, ``/proc/meminfo``, ``/proc/self/cgroup`` and the
cgroup v1/v2 files), with portable fall-backs; the memory model of a run
(:mod:`fem_dnn.app.memory`) compares its estimate with them.
"""

import os

import numpy as np

__all__ = ["available_memory", "petsc_int_max", "resident_memory"]


def resident_memory(peak: bool = False) -> int:
    """This process's resident set size in bytes (``VmRSS``), or its peak (``VmHWM``)."""
    key = "VmHWM:" if peak else "VmRSS:"
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB


def _read_int(path):
    try:
        with open(path) as fh:
            text = fh.read().strip()
    except OSError:
        return None
    return None if text in ("", "max") else int(text)


def _stat(path, key):
    try:
        with open(path) as fh:
            for line in fh:
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_available() -> int | None:
    """Memory left under this process's cgroup limits (v2 ``memory.max - memory.current``,
    v1 ``memory.limit_in_bytes - memory.usage_in_bytes``, the reclaimable inactive file
    cache not counted as used), the smallest over the cgroup and its parents; None
    without a limit."""
    try:
        with open("/proc/self/cgroup") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    best = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hier, controllers, path = parts
        if hier == "0" and controllers == "":
            root, limit, usage, inactive = "/sys/fs/cgroup", "memory.max", "memory.current", "inactive_file"
        elif "memory" in controllers.split(","):
            root, limit, usage, inactive = "/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"
        else:
            continue
        rel = path.strip("/")
        while True:  # the cgroup and its parents (inside a container the path may not exist)
            folder = os.path.join(root, rel)
            lim = _read_int(os.path.join(folder, limit))
            if lim is not None and lim < 2**60:
                used = (_read_int(os.path.join(folder, usage)) or 0) - _stat(os.path.join(folder, "memory.stat"), inactive)
                left = max(lim - max(used, 0), 0)
                best = left if best is None else min(best, left)
            if not rel:
                break
            rel = os.path.dirname(rel)
    return best


def available_memory() -> int:
    """Bytes of memory this process can still allocate: the smaller of ``MemAvailable``
    (/proc/meminfo) and what its cgroup limits leave (cgroup v2 ``memory.max`` minus
    ``memory.current``, or v1 ``memory.limit_in_bytes`` minus ``memory.usage_in_bytes``)."""
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    if avail is None:  # pragma: no cover - not Linux
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    cg = _cgroup_available()
    return avail if cg is None else min(avail, cg)


def petsc_int_max() -> int:
    """The largest index of PETSc's integer type (``PetscInt``: 2^31 - 1 for 32-bit)."""
    from petsc4py import PETSc

    return int(np.iinfo(np.dtype(PETSc.IntType)).max)
