"""The hardware: which device, which precision, how many CPU threads, and the device's peak speed.

Shared by train.py, sample.py, eval and the benchmarks, so that they all make the same choices:

    device = resolve_device("auto")            # cuda if present, then mps, then cpu
    dtype = resolve_dtype("auto", device)      # the one precision policy (see its docstring)
    with autocast(device, dtype): ...          # mixed precision, or nothing for float32
    peak = peak_flops(device, dtype)           # dense FLOP/s of one such device, for MFU; None if unknown
    torch.set_num_threads(free_cpu_threads(torch.get_num_threads(), since=cpu_snapshot()))
"""

import contextlib
import functools
import os
import shutil
import time

import torch

from smallgpt.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """torch.device for auto|cpu|cuda|cuda:N|mps, or UserError when that device is not here."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name} is not available (no CUDA GPU found): use --device=cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device {name} is not there: this machine has {torch.cuda.device_count()} GPU(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("device mps is not available on this machine: use --device=cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unsupported device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


# oneDNN runs CPU bf16 matmuls; ONEDNN_MAX_CPU_ISA caps the instructions it may use (people set it to try
# an older CPU's speed). These caps keep the bf16 dot-product instructions; any lower cap emulates bf16.
_ONEDNN_ISAS_WITH_BF16 = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10", "ALL", "DEFAULT")


@functools.lru_cache(maxsize=None)  # the CPU does not change while a process runs: read /proc/cpuinfo once
def cpu_has_bf16_units() -> bool:
    """True when this CPU multiplies bfloat16 in hardware (AMX-BF16 or AVX512-BF16) and oneDNN may use it.

    Elsewhere bf16 matmuls are emulated and slower than float32, so `dtype=auto` keeps float32.
    """
    isa_cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if isa_cap and not isa_cap.startswith(_ONEDNN_ISAS_WITH_BF16):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
        return "amx_bf16" in flags or "avx512_bf16" in flags
    except OSError:  # not Linux: ask oneDNN, which answers for the CPU it runs on
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False


def cpu_class() -> str:
    """The class of CPU the README's expectations are given for: "bf16 units: AMX", "bf16 units: AVX-512 BF16",
    "AVX2, no bf16 units" or "no AVX2", after the usable cores; a CPU run's start line names it."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        flags = set()
    cores = len(_usable_cpus() or range(os.cpu_count() or 1))
    if cpu_has_bf16_units():
        units = "AMX" if "amx_bf16" in flags else "AVX-512 BF16" if "avx512_bf16" in flags else "oneDNN's"
        return f"{cores} cores, bf16 units: {units}"
    if os.environ.get("ONEDNN_MAX_CPU_ISA") and flags & {"amx_bf16", "avx512_bf16"}:
        return f"{cores} cores, bf16 units capped by ONEDNN_MAX_CPU_ISA: as AVX2"
    return f"{cores} cores, " + ("AVX2, no bf16 units" if "avx2" in flags else "no AVX2" if flags else "unknown ISA")


def cuda_has_bf16_units(device: torch.device) -> bool:
    """bfloat16 tensor cores: compute capability 8.0 (Ampere) and newer.

    torch.cuda.is_bf16_supported() also says yes on older GPUs where bf16 is emulated (slowly),
    so it cannot choose between bf16 and float16 + a gradient scaler.
    """
    return torch.cuda.get_device_capability(device)[0] >= 8


# Below this model width (n_embd) bf16 autocast on a CPU may not beat float32: the casts around small
# matmuls cost about what the matmuls save. Chosen by bench/train_speed.py (docs/results.md, "Training
# speed on CPUs"): bf16 steps were faster from 64 wide up.
CPU_BF16_MIN_WIDTH = 64


def resolve_dtype(name: str, device: torch.device, width: int | None = None) -> torch.dtype:
    """The compute precision for `dtype=name` on `device`: one policy for training and sampling.

    auto: bfloat16 on GPUs with bf16 tensor cores, float16 on older GPUs (training adds a gradient
    scaler), bfloat16 on CPUs with bf16 matrix units (AMX or AVX512-BF16) for models at least
    CPU_BF16_MIN_WIDTH wide (`width`: n_embd, when known), float32 elsewhere (mps, as nanoGPT trains
    there; narrower models; CPUs that would emulate bf16). An explicit name is taken as it is, except
    bfloat16 on a GPU that would emulate it, which is refused.
    """
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if cuda_has_bf16_units(device) else torch.float16
        if device.type == "cpu" and cpu_has_bf16_units() and (width is None or width >= CPU_BF16_MIN_WIDTH):
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}: use auto, float32, bfloat16 or float16")
    if name == "bfloat16" and device.type == "cuda" and not cuda_has_bf16_units(device):
        raise UserError(f"{torch.cuda.get_device_name(device)} has no bfloat16 tensor cores (compute capability "
                        f"below 8.0): use --dtype=float16 (or auto)")
    return DTYPES[name]


def inference_dtype(name: str, device: torch.device) -> torch.dtype:
    """The precision for sampling and evaluation: resolve_dtype's, except that auto stays float32 on
    a CPU. There, training's bf16 (autocast, with float32 master weights) is about speed, while a
    score or a sample should not depend on the CPU it ran on: on CPUs with bf16 units, bf16 logits
    differ from float32's in the 4th digit and can change sampled tokens. Ask for --dtype=bfloat16
    to have it anyway. (On GPUs, auto is the same bf16 / float16 as training's.)"""
    if name == "auto" and device.type == "cpu":
        return torch.float32
    return resolve_dtype(name, device)


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed-precision context for forward passes: matmuls in dtype, reductions in float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def enable_tf32(device: torch.device) -> None:
    """float32 matmuls on tensor cores (TF32): what float32 means on a GPU here."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def repeatable_cpu_runs(device: torch.device) -> None:
    """Compiled CPU code adds the token embedding's gradient rows from several threads with atomics, in
    an order that changes from run to run (the last bits of its gradient, then of every weight: a split
    run was not bitwise one run); torch's deterministic mode compiles that sum in order, at no cost
    here (shakespeare_char_cpu's steps: 0.99x). Eager CPU training was repeatable already; GPUs keep
    their fast nondeterministic kernels."""
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)  # an op without such a kernel warns, never fails
        torch.utils.deterministic.fill_uninitialized_memory = False  # no NaN-filling of every torch.empty


# Dense bf16/fp16 tensor-core peaks of one GPU (FLOP/s), from the vendors' data sheets; float32 runs
# as TF32 at half of it. Checked in order: the first name contained in the device name wins.
GPU_PEAKS = [("H100 PCIe", 756e12), ("H200", 989e12), ("H100", 989e12), ("GH200", 989e12),
             ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10G", 125e12),
             ("A10", 125e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12), ("V100", 125e12), ("T4", 65e12)]


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Data-sheet peak FLOP/s of ONE device of this kind in dtype; None where unknown (MFU omitted).

    MFU under DDP divides the FLOPs of all processes by this times the number of processes.
    """
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in GPU_PEAKS:
        if key in name:
            return peak if dtype != torch.float32 else peak / 2
    return None


def mfu(flops_per_update: float, seconds_per_update: float, device: torch.device, dtype: torch.dtype,
        world_size: int = 1) -> float | None:
    """Model FLOPs utilization: an update's FLOPs (the global batch, every process together) per second
    over the data-sheet peak of all the devices that did them; None where the peak is unknown (CPUs)."""
    peak = peak_flops(device, dtype)
    if not peak:
        return None
    return flops_per_update / seconds_per_update / (peak * world_size)


def should_compile(choice: str, device: torch.device, log=print) -> bool:
    """Whether compile=auto|true|false means torch.compile here. auto: on GPUs. On CPUs the configs ask
    for it where it measured faster (it costs compilation time up front); there torch.compile
    needs a C++ compiler, and without one `log` gets a line and training goes on uncompiled. A CPU
    process that will compile also gets its cache set apart when it emulates another CPU capability
    (separate_compile_cache): every torch.compile of the project passes through here first."""
    wanted = device.type == "cuda" if choice == "auto" else choice == "true"
    if wanted and device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++",
                                                                               "clang++")):
        log("compile=true needs a C++ compiler on a CPU and none was found (set CXX or install g++); "
            "training without torch.compile")
        return False
    if wanted and device.type == "cpu":
        separate_compile_cache()
    return wanted


def separate_compile_cache() -> None:
    """Give a process whose ATEN_CPU_CAPABILITY narrows the CPU's vector instructions (avx2 on an
    AVX-512 CPU: how an AVX2 laptop is emulated) a compile cache of its own. Inductor generates its
    kernels for that capability but does not key its cache on it, so a kernel cached by one setting
    and loaded by the other corrupts the heap (`malloc(): unaligned tcache chunk detected`)."""
    capability = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if not capability or capability == "default" or os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = f"{default_cache_dir()}_{capability}"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timings of asynchronous GPU work need it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def measure_matmul_flops(device: torch.device, dtype: torch.dtype, size: int = 1024, seconds: float = 1.0,
                         min_repeats: int = 5) -> float:
    """Measured dense matmul FLOP/s: the median time of size^3 matmuls in dtype, after a warm-up.

    Each timed sample is a chain of matmuls long enough (about 5 ms) that launch overhead does not
    count; samples are taken for about `seconds` (at least min_repeats). On a GPU use size >= 8192:
    smaller matmuls do not fill it.
    """
    generator = torch.Generator().manual_seed(0)  # its own: a run's RNG streams must not move
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)

    def chain(n: int) -> float:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(n):
            torch.mm(a, b)
        synchronize(device)
        return time.perf_counter() - start

    chain(2)  # warm-up: kernels chosen, caches and clocks up
    per_matmul = chain(3) / 3
    n = max(1, int(0.005 / max(per_matmul, 1e-9)))
    samples = []
    deadline = time.perf_counter() + seconds
    while len(samples) < min_repeats or time.perf_counter() < deadline:
        samples.append(chain(n) / n)
    samples.sort()
    return 2 * size ** 3 / samples[len(samples) // 2]


# ----------------------------------------------------------------------------- CPU threads

def _usable_cpus() -> set[int] | None:
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):  # not Linux
        return None


def cpu_snapshot():
    """A reading of CPU time for `cores_used_by_others`; None where there is no /proc/stat (not Linux)."""
    cpus = _usable_cpus()
    busy_ticks = 0
    try:
        with open("/proc/stat") as f:
            for line in f:  # "cpuN user nice system idle iowait irq softirq steal ..." (in clock ticks)
                name, *fields = line.split()
                if name.startswith("cpu") and name[3:].isdigit() and (cpus is None or int(name[3:]) in cpus):
                    ticks = [int(v) for v in fields[:8]]
                    busy_ticks += sum(ticks) - ticks[3] - ticks[4]
    except (OSError, ValueError, IndexError):
        return None
    clock_ticks = os.sysconf("SC_CLK_TCK")
    own = os.times()  # this process, and its children that ended (e.g. compile workers waited for)
    own_seconds = own.user + own.system + own.children_user + own.children_system
    own_seconds += _live_descendants_ticks() / clock_ticks  # torch.compile's worker processes: ours too
    return busy_ticks / clock_ticks, own_seconds, time.monotonic()


def _live_descendants_ticks() -> int:
    """CPU ticks used so far by this process's live descendants (from /proc/PID/stat; 0 if unreadable)."""
    parents, ticks = {}, {}
    try:
        entries = [e.name for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return 0
    for name in entries:
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after "PID (command)": state ppid ...
        except (OSError, IndexError):
            continue  # ended meanwhile
        parents[int(name)], ticks[int(name)] = int(fields[1]), sum(int(v) for v in fields[11:15])
    ours, grew = {os.getpid()}, True
    while grew:  # children of ours are ours, to any depth
        found = {pid for pid, parent in parents.items() if parent in ours} - ours
        ours |= found
        grew = bool(found)
    return sum(ticks[pid] for pid in ours - {os.getpid()})  # utime, stime and their ended children's


def cores_used_by_others(since) -> float | None:
    """Cores (of those this process may run on) kept busy by other processes since `since`, on average.

    `since` is a `cpu_snapshot()`. None when it cannot be known: no /proc/stat, or under 0.2 s.
    """
    now = cpu_snapshot()
    if since is None or now is None or now[2] - since[2] < 0.2:
        return None
    others = (now[0] - since[0]) - (now[1] - since[1])  # busy CPU seconds of all processes but this one
    return max(0.0, others / (now[2] - since[2]))


def free_cpu_threads(default: int, since) -> int:
    """`default` threads (torch's: one per core) scaled down by the share of cores others kept busy.

    torch runs CPU ops as OpenMP parallel regions whose threads spin while they wait for the next
    one. When another process holds a core, a thread that needs that core waits for the scheduler on
    every op, and a run of tiny ops (sampling: a dozen per layer per token) gets several times slower
    than on fewer threads. On 2 cores: one other busy process gives 1 thread; 0.4 of a core, 2.
    """
    return threads_left(default, cores_used_by_others(since))


def threads_left(default: int, others: float | None) -> int:
    """`default` threads less the share of the usable cores that `others` (cores) keep busy."""
    cpus = _usable_cpus()
    if others is None or not cpus:
        return default
    return max(1, min(default, round(default * (1 - others / len(cpus)))))


class CpuThreads:
    """Torch's CPU threads fitted to the cores other programs leave free: at start (measured from
    `since`, a cpu_snapshot taken when the process began) and again every CHECK_EVERY_S seconds of a
    long run, so that a program started later does not stall training (torch's OpenMP threads spin,
    waiting for a thread the OS parked) and one that ends gives its cores back. `fit()` is cheap to call
    every step: it reads /proc/stat at most that often. A change is one line to `log`."""

    CHECK_EVERY_S = 5.0

    def __init__(self, default: int, since, log=print):
        self.default, self.since, self.log = default, since, log
        self.checked_at = time.monotonic()
        self.fit(now=True)

    def fit(self, now: bool = False) -> None:
        if self.since is None or (not now and time.monotonic() - self.checked_at < self.CHECK_EVERY_S):
            return
        others = cores_used_by_others(self.since)
        self.since, self.checked_at = cpu_snapshot(), time.monotonic()
        threads, before = threads_left(self.default, others), torch.get_num_threads()
        if threads != before:
            torch.set_num_threads(threads)
            self.log(f"other programs keep {others:.1f} of {len(_usable_cpus())} cores busy: torch now uses "
                     f"{threads} thread(s), was {before} (--threads=N fixes the number)")
