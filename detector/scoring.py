"""The scoring component: a batch of windows -> scored output records. Pure: no Kafka, no files, no logging.

``serve`` and ``replay --offline`` both score through :class:`Scorer`, so a window gets the same record
whichever path it takes. Scores do not depend on the batch a window is scored in (to within 1e-5).
In bf16 on the CPU (``cpu_bf16``) they are within ~0.03 of fp32 in probability.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from detector.codec import Window
from detector.model import calibration
from detector.model.checkpoint import Checkpoint
from detector.model.context import cold_contexts, context_width
from detector.model.features import InputStats, prepare

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
# Windows per forward pass. On the CPU an LSTM over 128-256 windows keeps its working set in cache, which a
# pass over many more does not; a GPU wants as many as the input allows.
CPU_CHUNK = 128
CUDA_CHUNK = 16384
WARMUP_CALLS = 3  # calls of a fresh TorchScript graph before it serves: profiling, then optimisation


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX, through oneDNN)."""
    try:
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without the check
        return False


def effective_precision(device: torch.device, precision: str, cpu_bf16: bool = False) -> str:
    """The precision a scorer on ``device`` runs in.

    CUDA: ``precision`` (autocast). CPU: fp32, whatever ``precision`` says (oneDNN has no fp16 LSTM for most
    CPUs: it raises, or crawls), unless ``cpu_bf16`` asks for bf16 and the CPU computes it natively (emulated
    bf16 is slower than fp32).
    """
    if device.type == "cuda":
        return precision
    return "bf16" if cpu_bf16 and cpu_has_bf16() else "fp32"


def resolve_device(name: str) -> torch.device:
    """``auto`` is the first CUDA device when one is present, else the CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but no CUDA device is available")
    return device


class _Graph(torch.nn.Module):
    """prepare + network with tensor outputs only (TorchScript has no None): absent heads give empty tensors.
    The network runs in ``dtype`` (its own copy of the weights); inputs and outputs stay float32."""

    def __init__(self, net: torch.nn.Module, stats: InputStats, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.net = net if dtype == torch.float32 else copy.deepcopy(net).to(dtype)
        self.stats, self.dtype = stats, dtype

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.net(prepare(x, context, self.stats).to(self.dtype))
        window = out.window.float()
        empty = window.new_zeros(0)
        step = out.step.float() if out.step is not None else empty
        return window, step, out.event.float() if out.event is not None else empty


def _compile(
    net: torch.nn.Module, stats: InputStats, shape: tuple[int, int], dtype: torch.dtype = torch.float32
) -> torch.jit.ScriptModule | None:
    """The frozen traced graph of :class:`_Graph`, or None where tracing fails (the eager path then serves)."""
    example = torch.zeros((2, *shape), dtype=torch.float32)
    example_context = torch.from_numpy(cold_contexts(example.numpy()))
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the normalisation constants are baked in, as intended
            graph = torch.jit.freeze(
                torch.jit.trace(_Graph(net, stats, dtype).eval(), (example, example_context), check_trace=False)
            )
            # TorchScript profiles the first calls and optimises the graph on a later one: that cost is paid
            # here, by whoever builds the scorer, not by its first batch.
            for _ in range(WARMUP_CALLS):
                graph(example, example_context)
            return graph
    except Exception:  # any tracing failure leaves the (slower) eager path, never a broken one
        return None


@dataclass(frozen=True)
class Scores:
    """Raw logits and calibrated decisions for a batch of B windows of T steps (numpy, on the host)."""

    window_logit: np.ndarray  # (B,)
    probability: np.ndarray  # (B,) calibrated
    flag: np.ndarray  # (B,) bool
    step_logit: np.ndarray | None  # (B, T)
    step_probability: np.ndarray | None  # (B, T) calibrated
    step_flag: np.ndarray | None  # (B, T) bool
    event_probability: np.ndarray | None  # (B, K) softmax over event types


class Scorer:
    """Normalise -> forward -> calibrate -> threshold, for one checkpoint. Safe to call from one thread."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        device: str = "cpu",
        precision: str = "fp32",
        chunk: int | None = None,
        cpu_bf16: bool = False,
    ) -> None:
        self.checkpoint = checkpoint
        self.device = resolve_device(device)
        # What it runs in may differ from what was asked for on the CPU (see effective_precision).
        self.precision = effective_precision(self.device, precision, cpu_bf16)
        self.autocast_dtype = PRECISIONS[self.precision]
        self.net = checkpoint.build().to(self.device)
        self.stats = checkpoint.stats
        self.shape = (checkpoint.window_length, checkpoint.n_features)
        # Windows per forward pass; a larger batch is scored in chunks of this size (scores do not depend on it).
        self.chunk = chunk or (CUDA_CHUNK if self.device.type == "cuda" else CPU_CHUNK)
        self._staging: torch.Tensor | None = None  # pinned host buffer for copies to the GPU, grown on demand
        # On the CPU, normalisation and network run as one frozen TorchScript graph, which runs without the GIL
        # from end to end: a scoring thread keeps its speed while another thread runs Python (eager, every
        # small op takes the GIL back).
        self.compiled: torch.jit.ScriptModule | None = (
            _compile(self.net, self.stats, self.shape, self.autocast_dtype or torch.float32)
            if self.device.type == "cpu"
            else None
        )

    @property
    def version(self) -> str:
        return self.checkpoint.version

    def logits(
        self, values: np.ndarray, contexts: np.ndarray | None = None, pool: Executor | None = None
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Raw logits for windows (B, T, F): window (B,), step (B, T) or None, event (B, K) or None.

        ``contexts`` (B, 7F + 1) place each window against its series' history
        (:mod:`detector.model.context`); None scores every window as a cold series (its own context).

        A batch larger than ``chunk`` is scored a chunk at a time; with ``pool`` (CPU only) the chunks are
        scored concurrently on its threads, which pays when each runs torch on one thread
        (``torch.set_num_threads(1)``): torch releases the GIL, and N single-threaded passes side by side
        outrun one pass on N OpenMP threads, whose barriers stall whenever another process holds a core.
        """
        x = np.ascontiguousarray(values, dtype=np.float32)
        c = cold_contexts(x) if contexts is None else np.ascontiguousarray(contexts, dtype=np.float64)
        if c.shape != (len(x), context_width(x.shape[2])):
            raise ValueError(f"contexts of shape {c.shape} for {len(x)} windows of {x.shape[2]} features")
        if len(x) <= self.chunk:
            return self._forward(x, c)
        spans = [(x[lo : lo + self.chunk], c[lo : lo + self.chunk]) for lo in range(0, len(x), self.chunk)]
        if pool is not None and self.device.type == "cpu":
            parts = list(pool.map(lambda span: self._forward(*span), spans))
        else:
            parts = [self._forward(*span) for span in spans]
        window = np.concatenate([p[0] for p in parts])
        step = np.concatenate([p[1] for p in parts]) if parts[0][1] is not None else None
        event = np.concatenate([p[2] for p in parts]) if parts[0][2] is not None else None
        return window, step, event

    @torch.inference_mode()
    def _forward(
        self, values: np.ndarray, contexts: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """One forward pass over contiguous float32 windows (B, T, F) and their float64 contexts, B <= chunk."""
        x, c = torch.from_numpy(values), torch.from_numpy(contexts)
        if self.compiled is not None:
            window, step, event = self.compiled(x, c)
            has_step, has_event = self.net.step_head is not None, self.net.event_head is not None
            return (
                window.numpy(),
                step.numpy() if has_step else None,
                torch.softmax(event, dim=1).numpy() if has_event else None,
            )
        if self.device.type == "cuda":
            x, c = self._to_device(x), c.to(self.device)
        inputs = prepare(x, c, self.stats)
        with torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.float32,
            enabled=self.autocast_dtype is not None,
        ):
            out = self.net(inputs)
        # .cpu() waits for the GPU, so the staging buffer is free again when the next chunk is copied in.
        window = out.window.float().cpu().numpy()
        step = out.step.float().cpu().numpy() if out.step is not None else None
        event = torch.softmax(out.event.float(), dim=1).cpu().numpy() if out.event is not None else None
        return window, step, event

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        """Host -> GPU through a reused pinned buffer, without blocking the host on the copy."""
        n = x.numel()
        if self._staging is None or self._staging.numel() < n:
            self._staging = torch.empty(max(n, 1 << 20), dtype=torch.float32).pin_memory()
        staged = self._staging[:n].view(x.shape)
        staged.copy_(x)
        return staged.to(self.device, non_blocking=True)

    def score(self, values: np.ndarray, contexts: np.ndarray | None = None, pool: Executor | None = None) -> Scores:
        """Score windows (B, T, F) of the checkpoint's shape; ``contexts`` and ``pool`` as in :meth:`logits`."""
        if values.ndim != 3 or values.shape[1:] != self.shape:
            raise ValueError(f"windows of shape {values.shape[1:]}, the model expects {self.shape}")
        window, step, event = self.logits(values, contexts, pool)
        ck = self.checkpoint
        prob = calibration.apply(ck.window.calibration, window)
        step_prob = step_flag = None
        if step is not None:
            head = ck.step or ck.window
            step_prob = calibration.apply(head.calibration, step)
            step_flag = step_prob >= head.threshold
        return Scores(window, prob, prob >= ck.window.threshold, step, step_prob, step_flag, event)

    def records(
        self,
        windows: Sequence[Window],
        scores: Scores,
        window_ids: Sequence[str | int],
        scored_at: Sequence[int],
        latency_ms: Sequence[float],
    ) -> list[dict[str, Any]]:
        """Output records (the README's fields), one per window, in order; plain JSON types only.

        Probabilities and the threshold are the float64 numbers they are, not rounded: rounding ties the far
        steps a ranking must tell apart (at 6 decimals every logit above ~14.5 reads 1.0) and can show a
        probability equal to the threshold on a window that is not flagged.
        """
        ck = self.checkpoint
        method = ck.calibration_name
        threshold = float(ck.window.threshold)
        prob = scores.probability.tolist()
        flags = scores.flag.tolist()
        step_p = scores.step_probability.tolist() if scores.step_probability is not None else None
        step_f = scores.step_flag.astype(np.int8).tolist() if scores.step_flag is not None else None
        event_names = ck.network.event_types
        out = []
        for i, w in enumerate(windows):
            rec: dict[str, Any] = {
                "series_id": w.series_id,
                "window_id": window_ids[i],
                "start": w.start,
                "end": w.end,
                "probability": prob[i],
                "flag": flags[i],
                "threshold": threshold,
            }
            if step_p is not None and step_f is not None:
                rec["step_probabilities"] = step_p[i]
                rec["step_flags"] = step_f[i]
            if scores.event_probability is not None:
                k = int(np.argmax(scores.event_probability[i]))
                rec["event_type"] = event_names[k]
                rec["event_type_probability"] = float(scores.event_probability[i, k])
            rec["model_version"] = ck.version
            rec["calibration"] = method
            rec["scored_at"] = int(scored_at[i])
            rec["latency_ms"] = round(float(latency_ms[i]), 3)
            out.append(rec)
        return out


@contextlib.contextmanager
def chunk_pool(scorer: Scorer, threads: int) -> Iterator[Executor | None]:
    """For the block: on the CPU with ``threads`` > 1, a pool of that many threads that score a batch's
    chunks side by side (:meth:`Scorer.logits`), with torch single-threaded in each; torch's thread count is
    put back after. None (torch untouched) on a GPU or for one thread."""
    if scorer.device.type != "cpu" or threads <= 1:
        yield None
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads, thread_name_prefix="score-chunk") as pool:
            yield pool
    finally:
        torch.set_num_threads(before)
