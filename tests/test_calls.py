"""The one place the server calls ONNX Runtime's private API is pinned to the versions it was checked on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.calls import ORT_CHECKED_VERSIONS, run_bound
from tests.float_rnn import FEATURES, HIDDEN, build


def _version() -> tuple[int, int]:
    major, minor = ort.__version__.split(".")[:2]
    return int(major), int(minor)


def test_onnxruntime_is_a_version_the_bound_call_was_checked_on() -> None:
    """A newer onnxruntime may move ``_sess.run_with_iobinding``: widen the range only after this file passes on it."""
    low, high = ORT_CHECKED_VERSIONS
    assert low <= _version() <= high, f"onnxruntime {ort.__version__} is outside the checked range {low}..{high}"


def test_run_bound_writes_the_bound_outputs_as_run_does(tmp_path: Path) -> None:
    folder = build(tmp_path / "rnn")
    session = ort.InferenceSession(str(folder / "step.onnx"), providers=["CPUExecutionProvider"])
    x = np.linspace(-1, 1, 2 * 3 * FEATURES, dtype=np.float32).reshape(2, 3, FEATURES)
    h = np.zeros((2, 1, HIDDEN), np.float32)
    want_y, want_h = session.run(["y", "h_out"], {"x": x, "h": h})
    y, h_out = np.zeros_like(want_y), np.zeros_like(want_h)
    binding = session.io_binding()
    for name, array in (("x", x), ("h", h)):
        binding.bind_cpu_input(name, array)
    for name, array in (("y", y), ("h_out", h_out)):
        binding.bind_output(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
    run_bound(session, binding)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(h_out, want_h)
