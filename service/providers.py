"""ONNX Runtime execution providers and session options, chosen once at start for every graph.

CUDA when onnxruntime-gpu and a GPU are present (or when asked for), the CPU otherwise; every
graph of a model (step, init, and the slab graphs that move rows in device memory) runs on the
same provider with the same options.
"""

from __future__ import annotations

import logging

import onnxruntime as ort

from service.settings import Settings

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


Providers = list[str | tuple[str, dict[str, str]]]

#: CUDA provider options. TF32 matmuls are off: on Ampere and later they move an LSTM's logits
#: by ~3e-4 (measured on an H100), past the golden trace's 1e-4 tolerance, so the model would be
#: refused at load; fp32 keeps CUDA within 1e-5 of the CPU (6.2e-6 measured).
CUDA_OPTIONS = {"use_tf32": "0"}


def missing_cuda() -> str:
    """Why ``--provider cuda`` cannot work here, or "" when this onnxruntime has the CUDA provider."""
    available = ort.get_available_providers()
    return "" if CUDA in available else f"this onnxruntime has no CUDA provider (it offers {', '.join(available)})"


def choose_providers(requested: str) -> Providers:
    """CUDA when asked for or when ``auto`` finds it, CPU otherwise (always as the fallback)."""
    missing = missing_cuda()
    if requested == "cuda" and missing:
        raise RuntimeError(f"--provider cuda, but {missing}")
    if requested == "cuda" or (requested == "auto" and not missing):
        _preload_cuda_libraries()
        return [(CUDA, dict(CUDA_OPTIONS)), CPU]
    return [CPU]


def _preload_cuda_libraries() -> None:
    """Loads the CUDA/cuDNN libraries of pip's nvidia-* packages, where onnxruntime-gpu can use them.

    Without it, onnxruntime-gpu finds them only on the system's library path, and otherwise falls
    back to the CPU with one error line. ``preload_dlls`` exists from onnxruntime-gpu 1.21 on.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception as exc:  # a missing library is reported by the CUDA provider itself
            log.warning("onnxruntime.preload_dlls failed: %s", exc)


def session_options(settings: Settings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.ort_intra_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    spinning = "1" if settings.ort_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
    return options
