"""gpu_profile_step.py's logic without a GPU: classifying and counting profiler events, the table, the JSON.

The profile itself needs CUDA, CuPy and PyTorch (benchmarks/gpu_run.sh runs it); these tests feed
its plain functions hand-made events and numbers whose expected counts were worked out by hand.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import gpu_profile_step as profile
import pytest
from gpu_profile_step import (
    KERNEL,
    MEMCPY_DTOD,
    MEMCPY_DTOH,
    MEMCPY_HTOD,
    MEMCPY_OTHER,
    MEMSET,
    UNCLASSIFIED,
    DeviceEvent,
    activity_per_step,
    classify_device_event,
    count_device_events,
    tally_device_events,
)

TORCH_ELEMENTWISE = ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>, "
                     "at::detail::Array<char*, 3> >(int, at::native::CUDAFunctor_add<float>, "
                     "at::detail::Array<char*, 3>)")


# ---------------------------------------------------------------------------- classifying

@pytest.mark.parametrize("name,expected", [
    ("Memcpy HtoD (Pageable -> Device)", MEMCPY_HTOD),
    ("Memcpy DtoH (Device -> Pinned)", MEMCPY_DTOH),
    ("Memcpy DtoD (Device -> Device)", MEMCPY_DTOD),
    ("Memcpy PtoP (Device -> Device)", MEMCPY_OTHER),
    ("Memset (Device)", MEMSET),
    (TORCH_ELEMENTWISE, KERNEL),
    ("activation_forward_relu_f32", KERNEL),
    ("sgd_update_multi_f32", KERNEL),
    ("cupy_add__float32_float32_float32", KERNEL),
    ("sm90_xmma_gemm_f32f32_tf32f32_f32_nn_n_tilesize128x128x32", KERNEL),
    ("void cublasLt::splitKreduce_kernel<32, 16, int, float, float, float>(...)", KERNEL),
    ("cudaStreamSynchronize", UNCLASSIFIED),
    ("cuLaunchKernel", UNCLASSIFIED),
    ("Context Sync", UNCLASSIFIED),
])
def test_classify_by_name_alone_as_old_torch_reports(name, expected):
    assert classify_device_event(name) == expected


@pytest.mark.parametrize("name,activity_type,expected", [
    ("Memcpy HtoD (Pinned -> Device)", "gpu_memcpy", MEMCPY_HTOD),
    ("Memcpy DtoH (Device -> Pageable)", "gpu_memcpy", MEMCPY_DTOH),
    ("Memcpy DtoD (Device -> Device)", "gpu_memcpy", MEMCPY_DTOD),
    ("Memset (Device)", "gpu_memset", MEMSET),
    ("activation_forward_relu_f32", "kernel", KERNEL),
    # the category decides where a name alone would mislead: a kernel whose name says "sync" ...
    ("grid_sync_reduce_kernel", "kernel", KERNEL),
    # ... and activities that are not work, whatever they are called
    ("Stream Sync", "cuda_sync", UNCLASSIFIED),
    ("step 3", "gpu_user_annotation", UNCLASSIFIED),
])
def test_classify_by_kineto_category(name, activity_type, expected):
    assert classify_device_event(name, activity_type) == expected


# ---------------------------------------------------------------------------- counting

def _two_steps_with_host_copies():
    """Two steps of: kernels A (10 µs), B (5 µs), C (1.5 µs), an HtoD copy (2 µs), a DtoH copy (3 µs)
    and a memset (0.5 µs); and one sync marker (100 µs) that is waiting, not work."""
    one_step = [DeviceEvent("kernel_a", duration_us=10.0), DeviceEvent("kernel_b", duration_us=5.0),
                DeviceEvent("kernel_c", duration_us=1.5),
                DeviceEvent("Memcpy HtoD (Pageable -> Device)", duration_us=2.0),
                DeviceEvent("Memcpy DtoH (Device -> Pageable)", duration_us=3.0),
                DeviceEvent("Memset (Device)", duration_us=0.5)]
    return one_step + one_step + [DeviceEvent("Stream Sync", duration_us=100.0)]


def test_count_device_events_per_step():
    activity = count_device_events(_two_steps_with_host_copies(), steps=2)
    assert activity.per_step == {KERNEL: 3.0, MEMCPY_HTOD: 1.0, MEMCPY_DTOH: 1.0, MEMCPY_DTOD: 0.0,
                                 MEMCPY_OTHER: 0.0, MEMSET: 1.0, UNCLASSIFIED: 0.5}
    # (2 x 10 + 2 x 5 + 2 x 1.5 + 2 x 2 + 2 x 3 + 2 x 0.5) / 2 steps; the sync marker is not work
    assert activity.busy_us_per_step == pytest.approx(22.0)
    assert activity.kernels_per_step == {"kernel_a": 1.0, "kernel_b": 1.0, "kernel_c": 1.0}
    assert activity.copies_per_step == {"Memcpy HtoD (Pageable -> Device)": 1.0,
                                        "Memcpy DtoH (Device -> Pageable)": 1.0}
    assert activity.unclassified_names == ["Stream Sync"]
    assert activity.profile_windows == [{"steps": 2, "counts": {KERNEL: 6, MEMCPY_HTOD: 2, MEMCPY_DTOH: 2,
                                                                MEMCPY_DTOD: 0, MEMCPY_OTHER: 0, MEMSET: 2,
                                                                UNCLASSIFIED: 1}}]


def test_count_device_events_rejects_no_steps():
    with pytest.raises(ValueError, match="short_steps < long_steps"):
        count_device_events([], steps=0)


def test_difference_of_windows_cancels_what_the_profiler_dropped_at_the_start():
    dtod = DeviceEvent("Memcpy DtoD (Device -> Device)", "gpu_memcpy", 1.0)
    step = [DeviceEvent("gemm", "kernel", 8.0), DeviceEvent("relu", "kernel", 2.0),
            DeviceEvent("relu", "kernel", 2.0), dtod]
    # 2- and 4-step windows that both lost their first two events (gemm and one relu)
    shorter = tally_device_events((step * 2)[2:])
    longer = tally_device_events((step * 4)[2:])
    activity = activity_per_step(shorter, 2, longer, 4)
    assert activity.per_step[KERNEL] == 3.0  # (10 - 4 kernels) / 2 steps
    assert activity.per_step[MEMCPY_DTOD] == 1.0  # (4 - 2) / 2
    assert activity.busy_us_per_step == pytest.approx(13.0)  # (42 - 16 µs) / 2
    assert activity.kernels_per_step == {"relu": 2.0, "gemm": 1.0}
    assert not activity.profile_windows_agree  # 4 kernels in 2 steps against 10 in 4


def test_windows_that_scale_agree():
    step = [DeviceEvent("gemm", "kernel", 8.0), DeviceEvent("Memset (Device)", "gpu_memset", 0.5)]
    activity = activity_per_step(tally_device_events(step * 5), 5, tally_device_events(step * 10), 10)
    assert activity.profile_windows_agree
    assert activity.per_step[KERNEL] == 1.0 and activity.per_step[MEMSET] == 1.0


# ---------------------------------------------------------------------------- reading profiler events

def _function_event(name, device_type, start, end, **extra):
    return SimpleNamespace(name=name, device_type=device_type,
                           time_range=SimpleNamespace(start=start, end=end), **extra)


def test_device_events_keeps_the_gpu_side_only():
    cuda, cpu = SimpleNamespace(name="CUDA"), SimpleNamespace(name="CPU")
    events = [_function_event("aten::addmm", cpu, 0.0, 9.0, activity_type="cpu_op"),
              _function_event("cudaLaunchKernel", cpu, 1.0, 3.0, activity_type="cuda_runtime"),
              _function_event("activation_forward_relu_f32", cuda, 4.0, 6.5, activity_type="kernel"),
              # torch versions before FunctionEvent.activity_type, and a DeviceType that prints as text
              _function_event("Memcpy HtoD (Pageable -> Device)", "DeviceType.CUDA", 7.0, 8.0)]
    assert profile.device_events(events) == [
        DeviceEvent("activation_forward_relu_f32", "kernel", 2.5),
        DeviceEvent("Memcpy HtoD (Pageable -> Device)", None, 1.0)]


def test_device_events_reads_real_profiler_events():
    """The FunctionEvent attributes the script reads exist in the installed torch (CPU profile: no
    GPU events, so each CPU event is converted directly)."""
    torch = pytest.importorskip("torch")
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    x = torch.ones(8, 8)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        (x @ x).relu()
    events = list(prof.events())
    assert events and profile.device_events(events) == []
    converted = profile.as_device_event(events[0])
    assert converted.name == events[0].name and converted.duration_us >= 0
    assert not profile._on_cuda(events[0].device_type)
    assert profile._on_cuda(torch.autograd.DeviceType.CUDA)


# ---------------------------------------------------------------------------- formatting

def _result(workload, momentum, impl, cpu_us, gpu_us, kernels, htod=0.0, dtoh=0.0, copies=None):
    return {"workload": workload, "momentum": momentum, "impl": impl, "error": None,
            "cpu_us_per_step": cpu_us, "gpu_us_per_step": gpu_us, "busy_us_per_step": gpu_us / 4,
            "per_step": {KERNEL: kernels, MEMCPY_HTOD: htod, MEMCPY_DTOH: dtoh, MEMCPY_DTOD: 0.0,
                         MEMCPY_OTHER: 0.0, MEMSET: 1.0, UNCLASSIFIED: 0.0},
            "kernels_per_step": {}, "copies_per_step": copies or {}, "unclassified_names": [],
            "profile_windows": [], "profile_windows_agree": True}


def _hand_made_results():
    failed = {"workload": "W2", "momentum": 0.9, "impl": "torch",
              "error": "build and warm-up: RuntimeError: CUDA out of memory"}
    return [_result("W1", 0.0, "tensorgrad", 412.34, 300.0, 14.0),
            _result("W1", 0.0, "torch", 180.0, 150.0, 22.0),
            _result("W2", 0.9, "tensorgrad", 900.0, 812.5, 20.5, htod=2.0, dtoh=1.0,
                    copies={"Memcpy HtoD (Pageable -> Device)": 2.0,
                            "Memcpy DtoH (Device -> Pageable)": 1.0}),
            failed]


def test_gpu_time_ratios():
    # 300 / 150; W2's torch failed
    assert profile.gpu_time_ratios(_hand_made_results()) == {("W1", 0.0, "tensorgrad"): 2.0}


def test_render_table():
    lines = profile.render_table(_hand_made_results()).splitlines()
    assert lines[0] == profile.TABLE_HEADER and lines[1] == profile.TABLE_RULE
    assert lines[2:] == [
        "| W1 784-128-10 relu b64 | 0 | tensorgrad | 14 | 0 | 0 | 0 | 1 | 412.3 | 300.0 | 75.0 | 2.00 |",
        "| W1 784-128-10 relu b64 | 0 | torch | 22 | 0 | 0 | 0 | 1 | 180.0 | 150.0 | 37.5 |  |",
        "| W2 784-512-512-10 relu b256 | 0.9 | tensorgrad | 20.5 | 2 | 1 | 0 | 1 | 900.0 | 812.5 | 203.1 "
        "| – |",
        "| W2 784-512-512-10 relu b256 | 0.9 | torch (failed) | – | – | – | – | – | – | – | – |  |",
    ]
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_notes_name_host_copies_in_tensorgrad_and_failures():
    results = _hand_made_results()
    results[1]["per_step"][MEMCPY_HTOD] = 1.0  # a copy in PyTorch's step is no tensorgrad defect
    notes = profile.render_notes(results)
    assert notes == [
        "- **defect**: W2, momentum 0.9, tensorgrad copies between host and device inside the step: 2 HtoD "
        "and 1 DtoH per step (Memcpy HtoD (Pageable -> Device) ×2; Memcpy DtoH (Device -> Pageable) ×1)",
        "- W2, momentum 0.9, torch failed: build and warm-up: RuntimeError: CUDA out of memory",
    ]


def test_notes_flag_a_case_without_kernels_and_unclassified_events():
    result = _result("W1", 0.0, "tensorgrad", 400.0, 300.0, 0.0)
    result["unclassified_names"] = ["Stream Sync"]
    notes = profile.render_notes([result])
    assert len(notes) == 2
    assert "saw no kernels" in notes[0]
    assert notes[1] == "- W1, tensorgrad: GPU events counted neither as kernels nor as copies: 'Stream Sync'"


def _meta():
    return {"date": "2026-11-23T12:00:00+00:00", "device": "NVIDIA H100 80GB HBM3", "cuda_driver": "13.0",
            "cupy_cuda_runtime": "13.0", "torch_cuda_runtime": "12.8", "cupy": "13.6.0", "torch": "2.13.0",
            "numpy": "2.4.6", "python": "3.11.7",
            "settings": {"workloads": ["W1", "W2"], "momenta": [0.0, 0.9], "steps": 200, "repeats": 7,
                         "warmup": 20, "profiled_steps": 5}}


def test_render_markdown_ends_with_the_table():
    results = _hand_made_results()
    markdown = profile.render_markdown(_meta(), results)
    assert markdown.startswith("tensorgrad (CuPy 13.6.0, CUDA 13.0) against PyTorch 2.13.0 eager (CUDA 12.8) "
                               "on NVIDIA H100 80GB HBM3, driver CUDA 13.0")
    assert "a 10-step profile less a 5-step one" in markdown
    assert markdown.endswith(profile.render_table(results))


def test_results_document_is_json():
    document = json.loads(json.dumps(profile.results_document(_meta(), _hand_made_results())))
    assert document["meta"]["device"] == "NVIDIA H100 80GB HBM3"
    expected = {"workload": "W1", "momentum": 0.0, "impl": "tensorgrad", "ratio": 2.0}
    assert document["tensorgrad_over_torch_gpu_time"] == [expected]
    assert len(document["results"]) == 4


@pytest.mark.parametrize("version,text", [(13000, "13.0"), (12080, "12.8"), (12040, "12.4")])
def test_cuda_version_text(version, text):
    assert profile.cuda_version_text(version) == text


# ---------------------------------------------------------------------------- without a GPU

def test_main_names_what_is_missing(monkeypatch, capsys):
    monkeypatch.setattr(profile, "missing_requirements", lambda: ["CuPy: not installed"])
    assert profile.main([]) == 2
    assert "missing:\n  - CuPy: not installed" in capsys.readouterr().err


def test_missing_requirements_without_cuda():
    from tensorgrad import backend

    if backend.cuda_available():
        pytest.skip("CuPy sees a GPU here")
    missing = profile.missing_requirements()
    assert any(reason.startswith("CuPy:") for reason in missing)
