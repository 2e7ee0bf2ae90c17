"""scripts/bench_table.py: benchmark JSON + junit XML -> a markdown section, put into the docs
between markers (appended once, then replaced in place), and one combined JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_table", ROOT / "scripts" / "bench_table.py")
bench_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_table)

FRAME = {  # the keys csm_service/tools/bench.py writes
    "benchmark": "frame",
    "config": "csm-1b",
    "device": "NVIDIA H100 80GB HBM3",
    "torch": "2.11.0+cu128",
    "frames": 64,
    "prompt_tokens": 16,
    "date": "2026-12-01",
    "command": "csm-service bench frame --config csm-1b --dtypes bfloat16,float32 --frames 64",
    "results": [
        {
            "dtype": "bfloat16",
            "ours": {
                "total_s": 0.3,
                "prefill_s": 0.01,
                "ms_per_frame": 4.6875,
                "ms_per_step": 4.53,
                "cuda_graphs": True,
            },
            "real_time_factor": 0.0566,
            "transformers": {"total_s": 3.2, "ms_per_frame": 50.0},
            "speedup_vs_transformers": 10.67,
        },
        {
            "dtype": "float32",
            "ours": {
                "total_s": 0.6,
                "prefill_s": 0.02,
                "ms_per_frame": 9.375,
                "ms_per_step": 9.06,
                "cuda_graphs": True,
            },
            "real_time_factor": 0.1133,
        },
    ],
}
ENGINE = {  # the keys csm_service/tools/bench_engine.py writes
    "benchmark": "engine",
    "model": "random csm-1b",
    "device": "NVIDIA H100 80GB HBM3",
    "dtype": "bfloat16",
    "cuda_graphs": True,
    "torch": "2.11.0+cu128",
    "date": "2026-12-01",
    "command": "csm-service bench engine --config csm-1b --concurrency 1,8",
    "startup_s": 41.2,
    "ttfa_ms_median": 21.5,
    "single_stream_ms_per_frame": 5.12,
    "single_stream_real_time_factor": 0.064,
    "audio_ms_per_request": 2000,
    "concurrency": [
        {
            "streams": 1,
            "frame_interval_ms_mean": 5.1,
            "frame_interval_ms_p99": 5.1,
            "ttfa_ms_p50": 22.0,
            "ttfa_ms_p99": 22.0,
            "real_time_streams": 1,
            "all_finished": True,
        },
        {
            "streams": 8,
            "frame_interval_ms_mean": 7.25,
            "frame_interval_ms_p99": 7.9,
            "ttfa_ms_p50": 30.0,
            "ttfa_ms_p99": 41.0,
            "real_time_streams": 8,
            "all_finished": True,
        },
    ],
}
JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="5" time="12.3">
<testcase classname="tests.gpu.test_cuda_graphs" name="test_a"/>
<testcase classname="tests.gpu.test_batch_invariance" name="test_b"><failure message="x">boom</failure></testcase>
</testsuite></testsuites>
"""


@pytest.fixture
def inputs(tmp_path) -> dict[str, Path]:
    paths = {"frame": tmp_path / "frame.json", "engine": tmp_path / "engine.json", "tests": tmp_path / "t.xml"}
    paths["frame"].write_text(json.dumps(FRAME))
    paths["engine"].write_text(json.dumps(ENGINE))
    paths["tests"].write_text(JUNIT)
    return paths


def test_tables_carry_every_figure_with_device_date_and_command(inputs):
    report = {
        "command": "scripts/gpu_report.sh",
        "frame": FRAME,
        "engine": ENGINE,
        "tests": bench_table.read_junit(inputs["tests"]),
    }
    text = bench_table.render(report)
    assert text.startswith("### NVIDIA H100 80GB HBM3, 2026-12-01\n")
    assert "- Command: `scripts/gpu_report.sh`; torch 2.11.0+cu128" in text
    assert "| bfloat16 | 4.69 | 4.53 | 0.0566 | on | 50.0 | 10.7x |" in text
    assert "| float32 | 9.38 | 9.06 | 0.1133 | on | - | - |" in text
    assert "| 8 | 7.25 | 7.90 | 8/8 | 30 | 41 |" in text
    assert "time to first audio (median, short sentence): 21.5 ms" in text
    assert "3 passed, 1 failed, 0 errors, 1 skipped; failed: tests.gpu.test_batch_invariance::test_b" in text
    assert f"`{FRAME['command']}`" in text and f"`{ENGINE['command']}`" in text


def test_docs_section_appended_once_then_replaced(inputs, tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## GPU\n\nText before.\n")
    args = [f"--{k}={v}" for k, v in inputs.items()] + [f"--docs={docs}", f"--report-json={tmp_path / 'r.json'}"]
    assert bench_table.main(args) == 0
    first = docs.read_text()
    assert first.startswith("# Benchmarks\n\n## GPU\n\nText before.\n\n## First GPU run: results\n\n")
    assert first.count(bench_table.BEGIN) == 1 and first.rstrip().endswith(bench_table.END)
    docs.write_text(first + "\n## Later section\n\nkept\n")
    changed = dict(ENGINE, ttfa_ms_median=19.0)
    inputs["engine"].write_text(json.dumps(changed))
    assert bench_table.main(args) == 0
    second = docs.read_text()
    assert second.count(bench_table.BEGIN) == 1 and second.count("## First GPU run: results") == 1
    assert "19.0 ms" in second and "21.5 ms" not in second
    assert second.endswith("\n## Later section\n\nkept\n") and "Text before." in second
    combined = json.loads((tmp_path / "r.json").read_text())
    assert combined["engine"]["ttfa_ms_median"] == 19.0 and combined["tests"]["failed"] == 1
    assert bench_table.main(args) == 0 and docs.read_text() == second  # idempotent


def test_missing_inputs_are_reported_not_fatal(tmp_path, inputs):
    text = bench_table.render({"command": "c", "frame": None, "engine": ENGINE, "tests": None})
    assert "- GPU tests: not run" in text and "not run (no frame JSON)" in text
    assert bench_table.main([f"--frame={tmp_path / 'none.json'}"]) == 1
