"""Launches checked before a GPU sees them: device limits, kernel resources, occupancy, costs.

Three things a CPU can predict about the fused path, so CI checks them:

* **Kernel resources.** :data:`RESOURCES` is the committed table (``kernels/resources.json``)
  of what ptxas gives every kernel for sm_80 and sm_90: registers per thread, spill
  stores/loads, stack frame and static shared memory, with the bound each may not grow
  past. :func:`ptxas_resources` recompiles the sources (``nvcc -cubin -Xptxas -v``) and
  tests compare the two (no spill, nothing past a bound).
* **Launch limits.** :data:`GPUS` holds the published limits of the A100, H100 and H200
  (SMs, registers and shared memory per SM and per block, the opt-in above 48 KiB, threads
  and blocks per SM). :func:`occupancy` is the arithmetic of CUDA's occupancy calculator
  (register allocation per warp in units of 256, shared memory in units of 128 bytes plus
  the 1 KiB the driver reserves per block); :func:`persistent_launch` gives the grid, block
  and dynamic shared memory a persistent kernel would be launched with (the same
  :func:`persistent_shape` that :mod:`gpurnn.engine.gpu.persistent` launches with) and whether
  its cooperative grid fits on the device at once, or why not.
* **Costs.** :func:`sweep_costs` estimates one block's forward or backward sweep on each
  path (plain array operations, the per-step fused kernels, the persistent kernels) from
  the device's figures and a few constants (:data:`COSTS`, each documented); the plan
  takes the cheapest (:meth:`gpurnn.engine.plan.Plan.explain` shows the figures). The
  constants are estimates until a GPU calibrates them (``gpurnn selftest`` records the
  measured times beside the estimates).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import pathlib
import re
import shutil
import subprocess
import tempfile

import numpy

__all__ = ["GpuSpec", "GPUS", "gpu_spec", "RESOURCES", "load_resources", "ptxas_resources",
           "check_resources", "resources", "parse_ptxas", "write_resources",
           "Occupancy", "occupancy", "Launch", "persistent_shape", "persistent_launch",
           "step_launches", "scan_launches", "scan_phases", "kernel_chunk_length",
           "elementwise_grid", "COSTS", "sweep_costs",
           "FAMILIES", "PERSISTENT_KERNELS"]

KIB = 1024


@dataclasses.dataclass(frozen=True)
class GpuSpec:
    """A device's launch limits (CUDA programming guide, compute capability tables, and the
    vendor's data sheets) and the throughput figures the cost model uses."""

    name: str
    arch: str                       # "sm_80", "sm_90": which row of the resource table
    sms: int                        # multiprocessors
    shared_per_sm: int              # bytes, the largest carve-out
    shared_per_block_optin: int     # bytes a block may have after opting in
    shared_per_block_default: int = 48 * KIB
    shared_reserved_per_block: int = 1 * KIB    # taken by the driver for every block
    shared_granularity: int = 128
    registers_per_sm: int = 65536
    registers_per_block: int = 65536
    registers_per_thread: int = 255
    register_unit: int = 256        # registers are given to a warp in units of this many
    threads_per_block: int = 1024
    warps_per_sm: int = 64
    blocks_per_sm: int = 32
    memory_bandwidth: float = 0.0   # bytes/s (HBM)
    flops32: float = 0.0            # FP32 FMA pipes (not tensor cores), flop/s
    flops64: float = 0.0
    tensor_flops32: float = 0.0     # TF32 tensor cores (dense), flop/s: cuBLAS's GEMMs
    clock: float = 1.4e9            # Hz (boost)

    @property
    def warp_size(self) -> int:
        return 32


# Published figures: the A100 SXM4 (80 GB), the H100 SXM5 and the H200 (an H100 with more and
# faster memory). Shared memory: 164 KiB per SM / 163 KiB per block on sm_80, 228 / 227 KiB on
# sm_90 (CUDA C++ Programming Guide, "Compute Capabilities", tables 21-22).
GPUS = {
    "a100": GpuSpec("NVIDIA A100-SXM4-80GB", "sm_80", sms=108, shared_per_sm=164 * KIB,
                    shared_per_block_optin=163 * KIB, memory_bandwidth=2.039e12,
                    flops32=19.5e12, flops64=9.7e12, tensor_flops32=156e12, clock=1.41e9),
    "h100": GpuSpec("NVIDIA H100 80GB HBM3", "sm_90", sms=132, shared_per_sm=228 * KIB,
                    shared_per_block_optin=227 * KIB, memory_bandwidth=3.35e12,
                    flops32=66.9e12, flops64=33.5e12, tensor_flops32=494.7e12, clock=1.98e9),
    "h200": GpuSpec("NVIDIA H200", "sm_90", sms=132, shared_per_sm=228 * KIB,
                    shared_per_block_optin=227 * KIB, memory_bandwidth=4.8e12,
                    flops32=66.9e12, flops64=33.5e12, tensor_flops32=494.7e12, clock=1.98e9),
}


def gpu_spec(name) -> GpuSpec:
    """The :class:`GpuSpec` named ``name`` ("a100", "h100", "h200"; a GpuSpec passes)."""
    if isinstance(name, GpuSpec):
        return name
    key = str(name).lower().replace("nvidia", "").replace("-", "").replace(" ", "")
    if key not in GPUS:
        raise ValueError(f"unknown GPU {name!r}; known: {', '.join(GPUS)}")
    return GPUS[key]


def device_spec(attributes: dict, name: str = "cuda") -> GpuSpec:
    """A :class:`GpuSpec` from CUDA device attributes (``cupy.cuda.Device().attributes``);
    the throughput figures are those of the named GPU of the same architecture."""
    major = attributes.get("ComputeCapabilityMajor", 9)
    like = GPUS["a100"] if major < 9 else GPUS["h100"]
    return dataclasses.replace(
        like, name=name, arch=f"sm_{major}{attributes.get('ComputeCapabilityMinor', 0)}",
        sms=attributes.get("MultiProcessorCount", like.sms),
        shared_per_sm=attributes.get("MaxSharedMemoryPerMultiprocessor", like.shared_per_sm),
        shared_per_block_optin=attributes.get("MaxSharedMemoryPerBlockOptin",
                                              like.shared_per_block_optin),
        registers_per_sm=attributes.get("MaxRegistersPerMultiprocessor", like.registers_per_sm),
        registers_per_block=attributes.get("MaxRegistersPerBlock", like.registers_per_block),
        threads_per_block=attributes.get("MaxThreadsPerBlock", like.threads_per_block),
        warps_per_sm=attributes.get("MaxThreadsPerMultiProcessor", 2048) // 32,
        blocks_per_sm=attributes.get("MaxBlocksPerMultiprocessor", like.blocks_per_sm))


def emulated_spec(multiprocessors: int) -> GpuSpec:
    """The host emulation as a device: ``multiprocessors`` SMs with an H100's limits."""
    return dataclasses.replace(GPUS["h100"], name=f"host emulation ({multiprocessors} SMs)",
                               sms=multiprocessors)


# ------------------------------------------------------------------ the resource table
_RESOURCE_FILE = pathlib.Path(__file__).parent / "kernels" / "resources.json"


def load_resources(path=None) -> dict:
    """The committed table: {"toolkit": ..., "kernels": {arch: {function: {registers,
    spill_stores, spill_loads, stack, static_shared}}}, "bounds": {function: {registers,
    stack, static_shared}}} (bounds are per function, over both architectures)."""
    return json.loads(pathlib.Path(path or _RESOURCE_FILE).read_text())


RESOURCES = load_resources() if _RESOURCE_FILE.exists() else {"kernels": {}, "bounds": {}}

_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(sm_\d+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(log: str) -> dict:
    """{function: {registers, spill_stores, spill_loads, stack, static_shared}} from the
    output of ``ptxas -v``."""
    out, current = {}, None
    for line in log.splitlines():
        match = _ENTRY.search(line)
        if match:
            current = out.setdefault(match.group(1), {"registers": 0, "spill_stores": 0,
                                                      "spill_loads": 0, "stack": 0,
                                                      "static_shared": 0})
            continue
        if current is None:
            continue
        frame = _FRAME.search(line)
        if frame:
            current["stack"], current["spill_stores"], current["spill_loads"] = map(
                int, frame.groups())
        used = _USED.search(line)
        if used:
            current["registers"] = int(used.group(1))
            smem = _SMEM.search(line)
            current["static_shared"] = int(smem.group(1)) if smem else 0
    return out


def nvcc() -> str | None:
    """nvcc from PATH or $CUDA_HOME/bin, or None."""
    import os

    found = shutil.which("nvcc")
    if found is None:
        home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
        candidate = pathlib.Path(home) / "bin" / "nvcc"
        found = str(candidate) if candidate.exists() else None
    return found


def ptxas_resources(archs=("sm_80", "sm_90"), directory=None, defines=()) -> dict:
    """{arch: {function: resources}} for every kernel of the sources, compiled with
    ``nvcc -cubin -Xptxas -v`` (the expanded sources, as NVRTC receives them). Raises
    RuntimeError when nvcc is missing or a source does not compile."""
    from . import kernels

    compiler = nvcc()
    if compiler is None:
        raise RuntimeError("nvcc not found (the CUDA toolkit, or the nvidia-cuda-nvcc wheel)")
    with tempfile.TemporaryDirectory() as work:
        jobs = []
        for name in kernels.source_names(directory):
            path = pathlib.Path(work) / name
            path.write_text(kernels.expand(name, directory))
            for arch in archs:
                jobs.append((arch, [compiler, "-cubin", f"-arch={arch}", "-std=c++17",
                                    "-Xptxas", "-v", *(f"-D{d}" for d in defines), str(path),
                                    "-o", str(path.with_suffix(f".{arch}.cubin"))]))
        with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
            runs = list(pool.map(lambda job: subprocess.run(job[1], capture_output=True,
                                                            text=True), jobs))
    table = {arch: {} for arch in archs}
    for (arch, command), run in zip(jobs, runs):
        if run.returncode != 0:
            raise RuntimeError(f"$ {' '.join(command)}\n{run.stdout}{run.stderr}")
        table[arch].update(parse_ptxas(run.stdout + run.stderr))
    return table


def toolkit_version() -> str:
    compiler = nvcc()
    if compiler is None:
        return "unknown"
    text = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"release ([\d.]+), (V[\d.]+)", text)
    return match.group(2) if match else text.strip().splitlines()[-1]


def write_resources(path=None, headroom=1.25) -> dict:
    """Recompile and write the table (bounds: the recorded values × ``headroom``, at least
    +8 registers); run ``python -m gpurnn.engine.gpu.launches --write`` after changing a kernel."""
    kernels_table = ptxas_resources()
    bounds = {}
    for arch_table in kernels_table.values():
        for function, used in arch_table.items():
            bound = bounds.setdefault(function, {"registers": 0, "stack": 0, "static_shared": 0})
            bound["registers"] = max(bound["registers"],
                                     min(255, max(used["registers"] + 8,
                                                  math.ceil(used["registers"] * headroom))))
            bound["stack"] = max(bound["stack"], used["stack"])
            bound["static_shared"] = max(bound["static_shared"], used["static_shared"])
    table = {"toolkit": toolkit_version(), "command": "nvcc -cubin -arch=<arch> -std=c++17 "
             "-Xptxas -v <expanded source>", "kernels": kernels_table,
             "bounds": dict(sorted(bounds.items()))}
    text = json.dumps(table, indent=1, sort_keys=True)
    text = re.sub(r"\{\s+([^{}]*?)\s+\}", lambda m: "{" + " ".join(m.group(1).split()) + "}", text)
    pathlib.Path(path or _RESOURCE_FILE).write_text(text + "\n")  # a row per function
    return table


def check_resources(table: dict, bounds: dict) -> list:
    """What is wrong with ``table`` ({arch: {function: resources}}) against ``bounds``: a
    spill, a stack frame, static shared memory or registers past a function's bound, or a
    function without a bound. An empty list when nothing is."""
    problems = []
    for arch, rows in sorted(table.items()):
        for function, used in sorted(rows.items()):
            where = f"{function} ({arch})"
            if used["spill_stores"] or used["spill_loads"]:
                problems.append(f"{where} spills: {used['spill_stores']} bytes stored, "
                                f"{used['spill_loads']} loaded")
            bound = bounds.get(function)
            if bound is None:
                problems.append(f"{where} has no recorded bound")
                continue
            for key in ("registers", "stack", "static_shared"):
                if used[key] > bound[key]:
                    problems.append(f"{where}: {key} {used[key]} past the bound {bound[key]}")
    return problems


def resources(function: str, arch: str) -> dict:
    """The recorded resources of ``function`` (e.g. ``lstm_persistent_forward_f32``) on
    ``arch``; the other recorded architecture's where this one has no row (sm_86 → sm_80)."""
    kernels_table = RESOURCES["kernels"]
    table = kernels_table.get(arch) or kernels_table.get("sm_90" if arch >= "sm_90" else "sm_80")
    if not table or function not in table:
        raise KeyError(f"{function} has no row for {arch} in kernels/resources.json")
    return table[function]


# ---------------------------------------------------------------------------- occupancy
@dataclasses.dataclass(frozen=True)
class Occupancy:
    """Blocks of one kernel resident per SM, and which limit sets that number."""

    blocks_per_sm: int
    limited_by: str
    per_limit: dict


def occupancy(spec: GpuSpec, threads: int, registers: int, dynamic_shared: int,
              static_shared: int = 0) -> Occupancy:
    """CUDA's occupancy calculator for compute capability 8.x/9.x: resident blocks per SM
    under each limit (blocks, warps, registers, shared memory); 0 when one block alone is
    over a per-block limit (``per_limit`` says which)."""
    warps = -(-threads // spec.warp_size)
    per_warp = -(-registers * spec.warp_size // spec.register_unit) * spec.register_unit
    shared = static_shared + dynamic_shared
    shared_alloc = -(-(shared + spec.shared_reserved_per_block)
                     // spec.shared_granularity) * spec.shared_granularity
    limits = {
        "blocks": spec.blocks_per_sm,
        "warps": spec.warps_per_sm // warps,
        "registers": (spec.registers_per_sm // per_warp) // warps if per_warp else spec.blocks_per_sm,
        "shared memory": spec.shared_per_sm // shared_alloc,
    }
    if threads > spec.threads_per_block:
        limits["threads per block"] = 0
    if registers > spec.registers_per_thread or registers * threads > spec.registers_per_block:
        limits["registers per block"] = 0
    if shared > spec.shared_per_block_optin:
        limits["shared memory per block"] = 0
    # a per-block limit, when one is over, names the cause before the per-SM ones
    limited_by = min(reversed(list(limits)), key=lambda k: limits[k])
    return Occupancy(limits[limited_by], limited_by, limits)


# ------------------------------------------------------------------- persistent launches
FAMILIES = ("elman", "gru", "lstm")
PERSISTENT_KERNELS = {(family, phase): f"{family}_persistent_{phase}"
                      for family in FAMILIES for phase in ("forward", "backward")}


def shared_per_unit(kernel: str, hidden: int, batch: int) -> int:
    """Values of shared memory a persistent kernel keeps per hidden unit it owns: a row of
    W per gate forward (and this step's W_h h of its units, per gate and batch row), the
    columns of all G·H rows backward."""
    gates = {"elman": 1, "gru": 3, "lstm": 4}[kernel.split("_")[0]]
    if kernel.endswith("forward") and gates > 1:
        return gates * (hidden + batch)
    return gates * hidden


def persistent_shape(kernel, itemsize, hidden, batch, multiprocessors, threads, lanes=None):
    """(blocks, threads, lanes, rows, shared bytes) of a persistent launch: one block per
    multiprocessor (fewer when H is smaller), each owning rows = ⌈H / blocks⌉ units and
    their :func:`shared_per_unit` values of shared memory besides one per thread."""
    lanes = lanes or min(32, threads)
    blocks = max(1, min(hidden, multiprocessors))
    rows = -(-hidden // blocks)
    blocks = -(-hidden // rows)
    shared = (rows * shared_per_unit(kernel, hidden, batch) + threads) * itemsize
    return blocks, threads, lanes, rows, shared


@dataclasses.dataclass(frozen=True)
class Launch:
    """One kernel launch as the plan would make it, checked against a device."""

    kernel: str
    grid: int
    block: int
    shared: int                   # dynamic shared memory, bytes
    registers: int
    occupancy: Occupancy
    cooperative: bool
    fits: bool
    reason: str = ""              # why it does not fit ("" when it does)
    rows: int = 0                 # hidden units per block (persistent kernels)

    def describe(self) -> str:
        coop = " cooperative" if self.cooperative else ""
        rows = f", {self.rows} units/block" if self.rows else ""
        return (f"{self.kernel}: grid {self.grid} × block {self.block}{coop}, "
                f"{self.shared} B dynamic shared{rows}, {self.registers} registers/thread, "
                f"{self.occupancy.blocks_per_sm} block(s)/SM ({self.occupancy.limited_by})")


def _function(kernel, dtype):
    from . import kernels

    return kernels.function_name(kernel, dtype)


def _instantiated(kernel, dtype) -> bool:
    from . import kernels

    return kernels.suffix(dtype) in {kernels.suffix(d) for d in kernels.KERNELS[kernel].dtypes}


def persistent_launch(kernel, dtype, hidden, batch, spec, threads=256, lanes=None) -> Launch:
    """The launch of persistent ``kernel`` for (hidden, batch, dtype) on ``spec`` and whether
    it fits: the block's shared memory within the opt-in limit, its registers within the
    block's, and the cooperative grid within the blocks resident at once (occupancy per SM
    × SMs)."""
    spec = gpu_spec(spec)
    blocks, threads, lanes, rows, shared = persistent_shape(
        kernel, numpy.dtype(dtype).itemsize, hidden, batch, spec.sms, threads, lanes)
    if not _instantiated(kernel, dtype):                 # the 16-bit storage types
        none = Occupancy(0, "dtype", {})
        return Launch(kernel, blocks, threads, shared, 0, none, True, False,
                      f"{kernel} is built for float32 and float64 only, not "
                      f"{numpy.dtype(dtype).name}", rows)
    used = resources(_function(kernel, dtype), spec.arch)
    occ = occupancy(spec, threads, used["registers"], shared, used["static_shared"])
    reason = ""
    if shared + used["static_shared"] > spec.shared_per_block_optin:
        reason = (f"{rows} units × {shared_per_unit(kernel, hidden, batch)} values of "
                  f"W need {shared + used['static_shared']} B of shared memory per block, "
                  f"over the {spec.shared_per_block_optin} B a block may have on {spec.name}")
    elif occ.blocks_per_sm * spec.sms < blocks:
        reason = (f"the cooperative grid of {blocks} blocks exceeds the "
                  f"{occ.blocks_per_sm * spec.sms} resident at once on {spec.name} "
                  f"(limited by {occ.limited_by})")
    return Launch(kernel, blocks, threads, shared, used["registers"], occ, True, not reason,
                  reason, rows)


def step_launches(family, phase, dtype, hidden, batch, spec, threads=256) -> list:
    """The per-step fused path's elementwise launch (grid-stride, at most 32 blocks per SM),
    checked the same way."""
    spec = gpu_spec(spec)
    kernel = {("elman", "forward"): "elman_step", ("elman", "backward"): "elman_backward_delta",
              ("gru", "forward"): "gru_step", ("gru", "backward"): "gru_backward_step",
              ("lstm", "forward"): "lstm_step", ("lstm", "backward"): "lstm_backward_step"}[
        (family, phase)]
    return [_elementwise_launch(kernel, dtype, batch * hidden, spec, threads)]


def elementwise_grid(items: int, threads: int, max_blocks: int) -> int:
    """Blocks of a grid-stride launch over ``items``: one item a thread, at most
    ``max_blocks`` (the launchers' 32 per SM; the loop covers the rest)."""
    return max(1, min(-(-items // threads), max_blocks))


def _elementwise_launch(kernel, dtype, items, spec, threads) -> Launch:
    grid = elementwise_grid(items, threads, 32 * spec.sms)
    used = resources(_function(kernel, dtype), spec.arch)
    occ = occupancy(spec, threads, used["registers"], 0, used["static_shared"])
    reason = "" if occ.blocks_per_sm > 0 else f"one block is over the {occ.limited_by} limit"
    return Launch(kernel, grid, threads, 0, used["registers"], occ, False, not reason, reason)


def kernel_chunk_length(steps: int) -> int:
    """Steps per chunk of the scan kernels, ⌈√T⌉: balances the chunks' L steps against the
    carries' C = ⌈T / L⌉ (a thread's depth; the host's chunked scan picks its chunk for
    cache and operation count instead, :func:`gpurnn.engine.sweeps.scan.chunk_length`)."""
    return math.isqrt(max(steps, 1) - 1) + 1


def scan_phases(steps: int, lanes: int, chunk: int | None = None) -> list:
    """[(kernel, items)] the scan kernels (:mod:`gpurnn.engine.gpu.scan`) launch for a
    (steps, lanes) problem in ``chunk``-step chunks (default :func:`kernel_chunk_length`),
    in order: the totals and carries only where there is more than one chunk."""
    chunk = chunk or kernel_chunk_length(steps)
    chunks = -(-steps // chunk)
    last = [("scan_chunk_states", chunks * lanes)]
    if chunks == 1:
        return last
    return [("scan_chunk_totals", (chunks - 1) * lanes), ("scan_carries", lanes)] + last


def scan_launches(steps, batch, hidden, dtype, spec, threads=256, chunk=None) -> list:
    """The launches of one block's scan over time of a diagonal cell
    (:func:`scan_phases`: chunk totals, carries, chunk states; one launch for a single
    chunk), checked the same way."""
    spec = gpu_spec(spec)
    return [_elementwise_launch(kernel, dtype, items, spec, threads)
            for kernel, items in scan_phases(steps, batch * hidden, chunk)]


# ------------------------------------------------------------------------ the cost model
# Each constant is a figure the model cannot derive from the data sheet; calibrate them with
# the self-test's timings on a GPU (they are per call of a CuPy operation or a kernel).
COSTS = {
    "launch": 6e-6,           # s: a CuPy call from Python (kernel launch, array checks)
    "gemm_launch": 9e-6,      # s: a cuBLAS GEMM from CuPy (heuristics, handle, launch)
    "grid_barrier": 1.5e-6,   # s: one grid barrier of a persistent kernel (atomics, fence)
    "block_sync": 40,         # clocks: one __syncthreads of a persistent block
    "gemm_efficiency": 0.5,   # of the tensor cores' peak for the small GEMMs of a step
    # array operations per step of the plain path (forward, backward) and of the fused one
    "plain_ops": {"elman": (3, 4), "gru": (14, 9), "lstm": (16, 10)},
    "step_ops": {"elman": (1, 1), "gru": (1, 2), "lstm": (1, 2)},
}


def _gemm_time(spec, batch, hidden, gates, itemsize):
    flops = 2 * batch * hidden * gates * hidden
    peak = spec.tensor_flops32 if itemsize <= 4 else spec.flops64   # 16-bit: as TF32 (low)
    bytes_ = (gates * hidden * hidden + batch * hidden * (1 + gates)) * itemsize
    return max(flops / (peak * COSTS["gemm_efficiency"]), bytes_ / spec.memory_bandwidth)


def sweep_costs(family, phase, dtype, steps, batch, hidden, spec, threads=256) -> dict:
    """Estimated seconds of one block's ``phase`` ("forward" or "backward") over ``steps``
    steps on each path: {"plain": s, "step": s, "persistent": s or None where its launch
    does not fit}, with the terms in ``["terms"]`` for :meth:`Plan.explain`.

    plain: per step its array operations (launch each, and one pass over the step's gate
    values each) and the GEMM; step: the same with one kernel for the elementwise work;
    persistent: one launch, then per step a grid barrier and the block's dot products from
    shared memory (FP32/FP64 pipes, no tensor cores), its reductions' block barriers, and W
    read once.
    """
    spec = gpu_spec(spec)
    itemsize = numpy.dtype(dtype).itemsize
    gates = {"elman": 1, "gru": 3, "lstm": 4}[family]
    index = 0 if phase == "forward" else 1
    gemm = COSTS["gemm_launch"] + _gemm_time(spec, batch, hidden, gates, itemsize)
    pass_time = batch * hidden * gates * itemsize * 3 / spec.memory_bandwidth
    plain_ops = COSTS["plain_ops"][family][index]
    step_ops = COSTS["step_ops"][family][index]
    plain = steps * (gemm + plain_ops * (COSTS["launch"] + pass_time))
    step = steps * (gemm + step_ops * COSTS["launch"] + pass_time)
    if phase == "backward" and family != "elman":
        step += COSTS["launch"] + steps * pass_time          # the factors kernel, all steps
        plain += 8 * COSTS["launch"] + steps * 4 * pass_time
    kernel = PERSISTENT_KERNELS[(family, phase)]
    launch = persistent_launch(kernel, dtype, hidden, batch, spec, threads)
    terms = {"gemm per step": gemm, "plain ops per step": plain_ops,
             "fused ops per step": step_ops}
    persistent = None
    if launch.fits:
        lanes = min(32, threads)
        groups = threads // lanes
        units = launch.rows * (gates if phase == "forward" else 1)
        length = hidden * (1 if phase == "forward" else gates)
        rounds = -(-units * batch // groups)              # block_rows_times' iterations
        flops_per_sm = (spec.flops32 if itemsize <= 4 else spec.flops64) / spec.sms
        # each round: a lane's share of a dot product (FMA pipes shared by the block), then
        # log2(lanes) + 2 block barriers of the reduction
        dot = 2 * units * batch * length / flops_per_sm
        syncs = rounds * (int(math.log2(lanes)) + 2) * COSTS["block_sync"] / spec.clock
        per_step = COSTS["grid_barrier"] + dot + syncs
        load = gates * hidden * hidden * itemsize / spec.memory_bandwidth
        persistent = COSTS["launch"] + load + steps * per_step
        if phase == "backward" and family != "elman":
            persistent += COSTS["launch"] + steps * pass_time   # the factors kernel
        terms.update({"persistent per step": per_step, "persistent dot": dot,
                      "persistent block syncs": syncs})
    return {"plain": plain, "step": step, "persistent": persistent, "terms": terms,
            "launch": launch}


def _main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(prog="python -m gpurnn.engine.gpu.launches",
                                     description="print or rewrite the kernels' ptxas table")
    parser.add_argument("--write", action="store_true", help="rewrite kernels/resources.json")
    args = parser.parse_args(argv)
    table = write_resources() if args.write else {"kernels": ptxas_resources()}
    for arch, rows in table["kernels"].items():
        for function, used in sorted(rows.items()):
            print(arch, function, used)


if __name__ == "__main__":
    _main()
