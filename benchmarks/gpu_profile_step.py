"""Kernel launches, copies and time per training step: tensorgrad on CuPy beside PyTorch eager, one GPU.

For W1 and W2 (workloads.py), plain SGD and momentum 0.9, both implementations start from the same
weights and batch, already on the GPU, and are warmed up. Then each is

  * timed: "CPU µs/step" is the wall time of N steps issued back to back without synchronizing,
    the host's cost per step while the GPU keeps up; "GPU µs/step" is the same loop between two
    device synchronizes. Medians over repeats, the implementations interleaved so that drift hits
    both alike;
  * profiled over a few steps with torch.profiler. CUPTI records every GPU activity in the process,
    CuPy's and NVRTC-compiled kernels included, so one counter serves both implementations: kernel
    launches, memcpy by direction (HtoD, DtoH, DtoD) and memsets per step. A host copy inside a
    tensorgrad step is a defect, and the notes name it.

The markdown table comes last on stdout; --json and --markdown save the results.

    PYTHONPATH=. python3 benchmarks/gpu_profile_step.py --json profile.json --markdown profile.md
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import numpy as np
from workloads import WORKLOADS, TensorgradStep, TorchStep

# "tensorgrad graph": the same step recorded once by tg.graphs.CapturedStep and replayed
IMPLEMENTATIONS = ("tensorgrad", "tensorgrad graph", "torch")
MOMENTA = (0.0, 0.9)
DEFAULT_WORKLOADS = ("W1", "W2")

KERNEL = "kernel"
MEMCPY_HTOD, MEMCPY_DTOH, MEMCPY_DTOD = "memcpy_HtoD", "memcpy_DtoH", "memcpy_DtoD"
MEMCPY_OTHER = "memcpy_other"
MEMSET = "memset"
UNCLASSIFIED = "unclassified"
CATEGORIES = (KERNEL, MEMCPY_HTOD, MEMCPY_DTOH, MEMCPY_DTOD, MEMCPY_OTHER, MEMSET, UNCLASSIFIED)
# Kineto names a copy "Memcpy HtoD (Pageable -> Device)"; peer copies (PtoP) and arrays fall under other.
_COPY_DIRECTIONS = {"HtoD": MEMCPY_HTOD, "DtoH": MEMCPY_DTOH, "DtoD": MEMCPY_DTOD}
# CUDA runtime and driver calls (cudaMemcpyAsync, cuLaunchKernel) are host-side; should a torch
# version ever file one under the device, it must not be counted as a kernel. cuBLAS's kernels
# (cublasLt::..., cublasGemv...) have a lowercase letter after "cu" and stay kernels.
_API_CALL = re.compile(r"^cu(da)?[A-Z]")
# Without kineto's category (old torch), synchronization markers and profiler overhead are told
# from kernels by name only.
_NOT_WORK_MARKERS = ("sync", "overhead")


# ---------------------------------------------------------------------------- classifying events

@dataclass(frozen=True)
class DeviceEvent:
    """One activity on the GPU's timeline, as torch.profiler reports it."""

    name: str
    activity_type: str | None = None  # kineto's category ("kernel", "gpu_memcpy", ...); absent on old torch
    duration_us: float = 0.0


def classify_device_event(name: str, activity_type: str | None = None) -> str:
    """One of CATEGORIES for a GPU-side event, from kineto's category where torch gives it, else its name."""
    label = name.strip()
    category = (activity_type or "").lower()
    if "memcpy" in category or label.lower().startswith("memcpy"):
        kinds = [kind for direction, kind in _COPY_DIRECTIONS.items() if direction in label]
        return kinds[0] if kinds else MEMCPY_OTHER
    if "memset" in category or label.lower().startswith("memset"):
        return MEMSET
    if category:
        return KERNEL if "kernel" in category else UNCLASSIFIED
    # Kernel names follow no pattern (C++ templates, cuBLAS's, CuPy's, NVRTC's), so without a
    # category a kernel is whatever is not recognisably something else.
    if _API_CALL.match(label) or any(marker in label.lower() for marker in _NOT_WORK_MARKERS):
        return UNCLASSIFIED
    return KERNEL


def _on_cuda(device_type) -> bool:
    # DeviceType is a pybind enum whose module path has moved between torch versions; its member
    # name has not.
    return getattr(device_type, "name", str(device_type).rsplit(".", 1)[-1]) == "CUDA"


def as_device_event(profiler_event) -> DeviceEvent:
    """A torch.profiler FunctionEvent as a DeviceEvent (activity_type is missing before torch 2.6 or so)."""
    span = profiler_event.time_range
    return DeviceEvent(name=profiler_event.name,
                       activity_type=getattr(profiler_event, "activity_type", None) or None,
                       duration_us=float(span.end - span.start))


def device_events(profiler_events) -> list[DeviceEvent]:
    """The GPU-side events of `prof.events()`: kernels, copies, memsets; CPU ops and API calls dropped."""
    return [as_device_event(event) for event in profiler_events if _on_cuda(event.device_type)]


@dataclass
class Tally:
    """GPU activity summed over one profiled window."""

    categories: Counter = field(default_factory=Counter)  # category -> events
    kernels: Counter = field(default_factory=Counter)  # kernel name -> launches
    copies: Counter = field(default_factory=Counter)  # memcpy event name -> copies
    busy_us: float = 0.0  # summed durations of kernels, copies and memsets
    unclassified_names: set = field(default_factory=set)


def tally_device_events(events) -> Tally:
    """Sum DeviceEvents by category, and kernels and copies by name."""
    tally = Tally()
    for event in events:
        category = classify_device_event(event.name, event.activity_type)
        tally.categories[category] += 1
        if category == UNCLASSIFIED:
            tally.unclassified_names.add(event.name)
            continue  # a sync marker's span is waiting, not work
        tally.busy_us += event.duration_us
        if category == KERNEL:
            tally.kernels[event.name] += 1
        elif category != MEMSET:
            tally.copies[event.name] += 1
    return tally


@dataclass
class StepActivity:
    """What the GPU did per step: the difference of two profiled windows divided by their step difference."""

    per_step: dict  # category -> events per step
    busy_us_per_step: float  # summed durations of kernels, copies and memsets
    kernels_per_step: dict  # kernel name -> launches per step, most frequent first
    copies_per_step: dict  # memcpy event name -> copies per step
    unclassified_names: list  # names of GPU events that are neither kernels, copies nor memsets
    profile_windows: list  # [{"steps": n, "counts": {category: events}}, ...] as profiled
    profile_windows_agree: bool  # every category's count proportional to its window's steps


def _difference_per_step(longer: Counter, shorter: Counter, steps: int) -> dict:
    names = list(longer) + [name for name in shorter if name not in longer]
    per_step = {name: (longer[name] - shorter[name]) / steps for name in names}
    return dict(sorted(((name, n) for name, n in per_step.items() if n), key=lambda item: -item[1]))


def activity_per_step(shorter: Tally, short_steps: int, longer: Tally, long_steps: int) -> StepActivity:
    """Per-step activity from two windows that start alike and differ in length only.

    Whatever the profiler loses or adds at a window's start is the same in both and cancels; the
    profiler is known to drop the first kernels of a session whose GPU timestamps fall before the
    window opened (pytorch/pytorch#192021). Identical steps give counts proportional to the window's
    length; `profile_windows_agree` says whether they were.
    """
    if not 0 <= short_steps < long_steps:
        raise ValueError(f"activity_per_step: expected 0 <= short_steps < long_steps, "
                         f"got {short_steps} and {long_steps}")
    steps = long_steps - short_steps
    return StepActivity(
        per_step={c: (longer.categories[c] - shorter.categories[c]) / steps for c in CATEGORIES},
        busy_us_per_step=(longer.busy_us - shorter.busy_us) / steps,
        kernels_per_step=_difference_per_step(longer.kernels, shorter.kernels, steps),
        copies_per_step=_difference_per_step(longer.copies, shorter.copies, steps),
        unclassified_names=sorted(shorter.unclassified_names | longer.unclassified_names),
        profile_windows=[{"steps": n, "counts": {c: tally.categories[c] for c in CATEGORIES}}
                         for n, tally in ((short_steps, shorter), (long_steps, longer)) if n],
        profile_windows_agree=all(longer.categories[c] * short_steps == shorter.categories[c] * long_steps
                          for c in CATEGORIES if c != UNCLASSIFIED))


def count_device_events(events, steps: int) -> StepActivity:
    """Per-step activity of one window of `steps` steps (a window of none subtracted)."""
    return activity_per_step(Tally(), 0, tally_device_events(events), steps)


# ---------------------------------------------------------------------------- formatting

def cuda_version_text(version: int) -> str:
    """CUDA's integer version (13000, 12080) as "13.0", "12.8"."""
    return f"{version // 1000}.{version % 1000 // 10}"


def case_label(result: dict) -> str:
    momentum = f", momentum {result['momentum']:g}" if result["momentum"] else ""
    return f"{result['workload']}{momentum}, {result['impl']}"


def gpu_time_ratios(results: list) -> dict:
    """{(workload, momentum, tensorgrad impl): its GPU µs/step over PyTorch's}, where both were measured."""
    gpu_us = {(r["workload"], r["momentum"], r["impl"]): r.get("gpu_us_per_step") for r in results}
    ratios = {}
    for workload, momentum, impl in gpu_us:
        ours, theirs = gpu_us[(workload, momentum, impl)], gpu_us.get((workload, momentum, "torch"))
        if impl.startswith("tensorgrad") and ours and theirs:
            ratios[(workload, momentum, impl)] = ours / theirs
    return ratios


def _per_step_text(value) -> str:
    if value is None:
        return "–"
    return str(round(value)) if abs(value - round(value)) < 1e-9 else f"{value:.1f}"


def _us_text(value) -> str:
    return "–" if value is None else f"{value:.1f}"


TABLE_HEADER = ("| workload | momentum | impl | kernels/step | HtoD/step | DtoH/step | DtoD/step "
                "| memset/step | CPU µs/step | GPU µs/step | busy µs/step | GPU ÷ torch |")
TABLE_RULE = "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"


def render_table(results: list) -> str:
    """The markdown table: one row per (workload, momentum, implementation), "–" where not measured."""
    ratios = gpu_time_ratios(results)
    lines = [TABLE_HEADER, TABLE_RULE]
    for r in results:
        per_step = r.get("per_step") or {}
        ratio = ratios.get((r["workload"], r["momentum"], r["impl"]))
        cells = [WORKLOADS[r["workload"]].name if r["workload"] in WORKLOADS else r["workload"],
                 f"{r['momentum']:g}", r["impl"] + (" (failed)" if r.get("error") else ""),
                 *(_per_step_text(per_step.get(c)) for c in (KERNEL, MEMCPY_HTOD, MEMCPY_DTOH, MEMCPY_DTOD,
                                                             MEMSET)),
                 _us_text(r.get("cpu_us_per_step")), _us_text(r.get("gpu_us_per_step")),
                 _us_text(r.get("busy_us_per_step")), _ratio_text(ratio, r["impl"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio_text(ratio, impl: str) -> str:
    if not impl.startswith("tensorgrad"):
        return ""  # the reference row
    return "–" if ratio is None else f"{ratio:.2f}"


def _names_text(counts: dict) -> str:
    return "; ".join(f"{name} ×{_per_step_text(n)}" for name, n in counts.items())


def render_notes(results: list) -> list:
    """Lines worth a human's eye: failures, host copies in tensorgrad steps, events not counted as work."""
    notes = []
    for r in results:
        label = case_label(r)
        if r.get("error"):
            notes.append(f"- {label} failed: {r['error']}")
            continue
        per_step = r.get("per_step")
        if per_step is None:
            continue
        host_copies = per_step.get(MEMCPY_HTOD, 0) + per_step.get(MEMCPY_DTOH, 0)
        if r["impl"].startswith("tensorgrad") and host_copies:
            notes.append(f"- **defect**: {label} copies between host and device inside the step: "
                         f"{_per_step_text(per_step.get(MEMCPY_HTOD, 0))} HtoD and "
                         f"{_per_step_text(per_step.get(MEMCPY_DTOH, 0))} "
                         f"DtoH per step ({_names_text(r['copies_per_step'])})")
        if per_step.get(MEMCPY_OTHER):
            notes.append(f"- {label}: {_per_step_text(per_step[MEMCPY_OTHER])} copies per step of another "
                         f"kind ({_names_text(r['copies_per_step'])})")
        if not per_step.get(KERNEL):
            notes.append(f"- {label}: the profiler saw no kernels, so CUPTI did not record its launches and "
                         "its counts are not usable")
        if not r.get("profile_windows_agree", True):
            windows = r["profile_windows"]
            kernels = " and ".join(f"{w['counts'][KERNEL]} in {w['steps']}" for w in windows)
            notes.append(f"- {label}: the profiled windows do not scale with their steps (kernels: "
                         f"{kernels}), so the profiler lost or added events at a window's edge; the per-step "
                         "figures are the windows' difference")
        if r.get("unclassified_names"):
            notes.append(f"- {label}: GPU events counted neither as kernels nor as copies: "
                         + ", ".join(repr(name) for name in r["unclassified_names"]))
    return notes


def render_markdown(meta: dict, results: list) -> str:
    """A heading line, the column legend, the notes, then the table (last: the device tool shows the tail)."""
    settings = meta["settings"]
    lines = [f"tensorgrad (CuPy {meta['cupy']}, CUDA {meta['cupy_cuda_runtime']}) against PyTorch "
             f"{meta['torch']} eager (CUDA {meta['torch_cuda_runtime']}) on {meta['device']}, driver CUDA "
             f"{meta['cuda_driver']}, NumPy {meta['numpy']}; {meta['date']}",
             "",
             f"Counts per step: a {2 * settings['profiled_steps']}-step profile less a "
             f"{settings['profiled_steps']}-step one. CPU µs: {settings['steps']} steps issued "
             "without synchronizing. GPU µs: the same loop between device synchronizes. Medians of "
             f"{settings['repeats']} repeats. busy µs: summed durations of the GPU activities profiled. "
             "GPU ÷ torch: tensorgrad's GPU µs over PyTorch's."]
    notes = render_notes(results)
    if notes:
        lines += ["", *notes]
    lines += ["", render_table(results)]
    return "\n".join(lines)


def results_document(meta: dict, results: list) -> dict:
    """Everything measured, as the JSON file holds it."""
    ratios = gpu_time_ratios(results)
    return {"meta": meta, "results": results,
            "tensorgrad_over_torch_gpu_time": [{"workload": w, "momentum": m, "impl": impl, "ratio": ratio}
                                               for (w, m, impl), ratio in ratios.items()]}


# ---------------------------------------------------------------------------- measuring on the GPU

@dataclass
class Case:
    """One implementation of one (workload, momentum) step, and what was measured of it."""

    workload: str
    momentum: float
    impl: str
    step: object = None  # a zero-argument callable running one training step
    error: str | None = None
    cpu_seconds: list = field(default_factory=list)
    gpu_seconds: list = field(default_factory=list)
    activity: StepActivity | None = None

    def fail(self, stage: str, exc: Exception) -> None:
        # The full traceback goes to the log; the table and notes keep one line.
        print(f"{case_label(self.result())}: {stage} failed", file=sys.stderr)
        traceback.print_exc()
        self.error = f"{stage}: {type(exc).__name__}: {exc}"

    def result(self) -> dict:
        result = {"workload": self.workload, "workload_name": WORKLOADS[self.workload].name,
                  "momentum": self.momentum, "impl": self.impl, "error": self.error,
                  "cpu_us_per_step": statistics.median(self.cpu_seconds) * 1e6 if self.cpu_seconds else None,
                  "gpu_us_per_step": statistics.median(self.gpu_seconds) * 1e6 if self.gpu_seconds else None,
                  "cpu_us_repeats": [s * 1e6 for s in self.cpu_seconds],
                  "gpu_us_repeats": [s * 1e6 for s in self.gpu_seconds]}
        if self.activity is not None:
            result.update(asdict(self.activity))
        return result


def missing_requirements() -> list:
    """What stops a run here: PyTorch, its CUDA, CuPy or a GPU CuPy can use; empty when nothing does."""
    missing = []
    try:
        import torch
    except ImportError as exc:
        missing.append(f"PyTorch is not importable ({exc})")
    else:
        if not torch.cuda.is_available():
            missing.append(f"PyTorch {torch.__version__} has no usable CUDA device "
                           f"(built for CUDA {torch.version.cuda})")
    from tensorgrad import backend

    try:
        backend.cupy()
    except RuntimeError as exc:
        missing.append(f"CuPy: {exc}")
    return missing


def environment(torch, cupy, settings: dict) -> dict:
    """Where and with what the run happened: the JSON's "meta" and the markdown's heading."""
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(0),
            "cuda_driver": cuda_version_text(cupy.cuda.runtime.driverGetVersion()),
            "cupy_cuda_runtime": cuda_version_text(cupy.cuda.runtime.runtimeGetVersion()),
            "torch_cuda_runtime": torch.version.cuda,
            "cupy": cupy.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "settings": settings}


def build_step(workload: str, momentum: float, impl: str, torch):
    """A zero-argument callable running one training step on the GPU, inputs already there."""
    w = WORKLOADS[workload]
    x, y = w.batch_data()
    if impl.startswith("tensorgrad"):
        import tensorgrad as tg

        model = TensorgradStep(w, momentum=momentum, device="cuda")
        xt, yt = tg.tensor(x, device="cuda"), tg.tensor(y, device="cuda")
        if impl == "tensorgrad graph":
            captured = tg.graphs.CapturedStep(model.step, xt, yt)
            return lambda: captured(xt, yt)
    else:
        model = TorchStep(w, torch, momentum=momentum, device="cuda")
        xt, yt = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
    return lambda: model.step(xt, yt)


def device_synchronizer(torch, cupy):
    """Wait for all GPU work. CuPy and PyTorch may link different CUDA runtimes; both synchronize the
    device's primary context, and asking both costs microseconds, only at loop boundaries."""
    device = cupy.cuda.Device(0)

    def synchronize() -> None:
        device.synchronize()
        torch.cuda.synchronize()
    return synchronize


def time_steps(step, steps: int, synchronize) -> tuple:
    """(host seconds per step, synchronized seconds per step) over `steps` steps issued back to back."""
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    host = (time.perf_counter() - start) / steps
    synchronize()  # the queue the host loop left behind must not count against the next loop
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize()
    return host, (time.perf_counter() - start) / steps


# The GPU's timestamps can drift from the host clock that opens and closes the profiler's window;
# a pause after opening and before closing keeps every step's activity inside it.
PROFILER_SETTLE_SECONDS = 0.05


def profile_window(step, steps: int, synchronize) -> Tally:
    """GPU activity over `steps` steps, recorded by torch.profiler (CUPTI: every kernel in the process)."""
    from torch.profiler import ProfilerActivity, profile

    synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        time.sleep(PROFILER_SETTLE_SECONDS)
        for _ in range(steps):
            step()
        synchronize()  # activities still queued when the profiler stops would be lost
        time.sleep(PROFILER_SETTLE_SECONDS)
    return tally_device_events(device_events(prof.events()))


def profile_steps(step, steps: int, synchronize) -> StepActivity:
    """Per-step GPU activity from windows of `steps` and 2 x `steps` steps (see activity_per_step)."""
    shorter = profile_window(step, steps, synchronize)
    longer = profile_window(step, 2 * steps, synchronize)
    return activity_per_step(shorter, steps, longer, 2 * steps)


def _print_activity(case: Case) -> None:
    activity = case.activity
    counts = ", ".join(f"{_per_step_text(activity.per_step[c])} {c}" for c in CATEGORIES)
    print(f"{case_label(case.result())}: per step {counts}; busy {activity.busy_us_per_step:.1f} µs")
    for name, n in {**activity.kernels_per_step, **activity.copies_per_step}.items():
        print(f"    {_per_step_text(n):>4} × {name[:150]}")
    for name in activity.unclassified_names:
        print(f"    unclassified: {name}")
    sys.stdout.flush()


def run_cases(args, torch, synchronize) -> list:
    """Build and warm up every case, time them (interleaved), then profile them, in that order: the
    profiler can leave CUPTI hooks behind that would slow later timed loops."""
    groups = [[Case(workload, momentum, impl) for impl in IMPLEMENTATIONS]
              for workload in args.workloads for momentum in MOMENTA]
    cases = [case for group in groups for case in group]
    for case in cases:
        try:
            case.step = build_step(case.workload, case.momentum, case.impl, torch)
            for _ in range(args.warmup):  # NVRTC compiles, memory pools fill, momentum buffers appear
                case.step()
            synchronize()
        except Exception as exc:
            case.fail("build and warm-up", exc)
    for group in groups:
        for _ in range(args.repeats):
            for case in group:
                if case.error:
                    continue
                try:
                    cpu, gpu = time_steps(case.step, args.steps, synchronize)
                except Exception as exc:
                    case.fail("timing", exc)
                    continue
                case.cpu_seconds.append(cpu)
                case.gpu_seconds.append(gpu)
        for case in group:
            if not case.error:
                r = case.result()
                print(f"{case_label(r)}: CPU {r['cpu_us_per_step']:.1f} µs/step, "
                      f"GPU {r['gpu_us_per_step']:.1f} µs/step", flush=True)
    for case in cases:
        if case.error:
            continue
        try:
            case.activity = profile_steps(case.step, args.profiled_steps, synchronize)
        except Exception as exc:
            case.fail("profiling", exc)
            continue
        _print_activity(case)
    return cases


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=list(DEFAULT_WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--steps", type=int, default=200, help="steps per timed loop (default 200)")
    parser.add_argument("--repeats", type=int, default=7, help="timed loops per case; medians are kept")
    parser.add_argument("--warmup", type=int, default=20, help="steps before anything is measured")
    parser.add_argument("--profiled-steps", type=int, default=5,
                        help="steps the two profiled windows differ by; they hold N and 2N steps (default 5)")
    parser.add_argument("--json", help="write the full results here")
    parser.add_argument("--markdown", help="write the notes and table here")
    args = parser.parse_args(argv)
    for option in ("steps", "repeats", "profiled_steps"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1, got {getattr(args, option)}")

    missing = missing_requirements()
    if missing:
        print("gpu_profile_step.py needs a CUDA GPU usable from both CuPy and PyTorch; missing:\n  - "
              + "\n  - ".join(missing), file=sys.stderr)
        return 2
    import cupy
    import torch

    settings = {"workloads": args.workloads, "momenta": list(MOMENTA), "steps": args.steps,
                "repeats": args.repeats, "warmup": args.warmup, "profiled_steps": args.profiled_steps}
    meta = environment(torch, cupy, settings)
    print(f"{meta['device']}, driver CUDA {meta['cuda_driver']}; cupy {meta['cupy']}, torch {meta['torch']}",
          flush=True)
    cases = run_cases(args, torch, device_synchronizer(torch, cupy))
    results = [case.result() for case in cases]

    markdown = render_markdown(meta, results)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results_document(meta, results), f, indent=1)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(markdown + "\n")
    print()
    print(markdown)
    return 1 if any(case.error for case in cases) else 0


if __name__ == "__main__":
    sys.exit(main())
