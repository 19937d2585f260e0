"""The driver contract: everything a model kind decides on the serving side, in one class.

The server core (servicers, sessions, scheduler, slabs) knows a model only through its manifest
and its driver. A driver is chosen by the manifest's ``task`` when the model loads
(``service.tasks``) and held on the model's runtime. For its kind it owns: checking session
options, the init payload, decoding a step into the contract's tensors, the batch-wide
postprocess (run on the scheduler's worker thread), building answers and bounding their size
(``service.drivers.bounds``), and any server-side loop (``service.drivers.loops``).

Adding a kind = a driver file that subclasses ``Driver`` and registers its task, plus its
training files; nothing else on the serving side changes (docs/architecture.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np

from service.answer_bytes import OutputTensors, step_result
from service.api import statestream_pb2 as pb
from service.contract import Arrays, Manifest
from service.drivers import bounds
from service.drivers.step_bytes import StepBytes
from service.drivers.steps import WIRE_IS_NATIVE, StepDecoder, StepHeader, StepInputs, named_tensors
from service.errors import InvalidArgument, ResourceExhausted
from service.scheduler import Postprocess
from service.session_options import ResolvedOptions
from service.tensors import add_proto

if TYPE_CHECKING:  # pragma: no cover - typing only
    from service.drivers.loops import Loop
    from service.drivers.session_view import SessionView

#: Distinct session options whose answer bound a driver keeps (see ``Driver.answer_bytes_bound``).
MAX_CACHED_BOUNDS = 256


class Driver:
    """The default behaviour of every kind: raw tensors in, raw tensors out, no loop.

    A subclass overrides what its kind does differently. Instances are per model and hold
    nothing per session; per-session data lives in the session (its rows and ``scratch``).
    """

    task: ClassVar[str] = ""
    #: For a person: what a Step carries, what a StepResult holds, what an init payload may be.
    sends: ClassVar[str] = "tensors: one per model input, [K, *shape]"
    returns: ClassVar[str] = "the outputs named in SessionOptions.return_tensors"
    init_payload: ClassVar[str] = "tensors: one per init input, with its shape"
    #: A Run of this kind: what it does, its options (name → (default, doc)), whether it moves
    #: the session's state. An empty ``run`` means the kind has none.
    run: ClassVar[str] = ""
    run_options: ClassVar[dict[str, tuple[float, str]]] = {}
    run_moves_state: ClassVar[bool] = True

    def __init__(self, manifest: Manifest) -> None:
        self.check_manifest(manifest)
        self.manifest = manifest
        #: Decodes a Step's raw tensors into the model's inputs (``decode_step``).
        self.step_decoder = StepDecoder(manifest)
        #: Reads a streamed step of one time step from its bytes (``service.drivers.step_bytes``);
        #: None for a kind that decodes its steps its own way (it overrides ``decode_step`` or
        #: ``decode_session_step``), and on a big-endian machine: every step is then parsed and
        #: goes through them.
        self.step_bytes = StepBytes(manifest) if WIRE_IS_NATIVE and self._decodes_plain_tensors() else None
        #: Writes the outputs' ``StepOutput.tensors`` entries as bytes (``encode_output``).
        self.output_tensors = OutputTensors(manifest.outputs)
        #: Runs after each batched call, on the worker thread, over the whole batch; its arrays
        #: join each step's outputs (see ``Scheduler.postprocess``). None: nothing to derive.
        self.postprocess: Postprocess | None = None
        self._output_bounds: dict[tuple[int, tuple[str, ...]], int] = {}

    @classmethod
    def _decodes_plain_tensors(cls) -> bool:
        """Whether a step of this kind is its tensors and nothing else: the default decoding."""
        return cls.decode_step is Driver.decode_step and cls.decode_session_step is Driver.decode_session_step

    @classmethod
    def check_manifest(cls, manifest: Manifest) -> None:
        """Refuses (ContractError) a manifest this kind cannot serve; called at load."""

    # -- what ModelInfo says -------------------------------------------------------------

    @property
    def vocabulary_size(self) -> int:
        return 0

    @property
    def run_steps_bound(self) -> int | None:
        """The most steps a Run of this model takes, where the model itself bounds it (None: only
        the server's --max-run-steps does); ModelInfo reports the smaller of the two."""
        return None

    def task_info(self) -> pb.TaskInfo:
        return pb.TaskInfo(
            sends=self.sends,
            returns=self.returns,
            generates=False,
            run=self.run,
            run_options=[pb.RunOption(name=n, default=d, doc=doc) for n, (d, doc) in self.run_options.items()],
            run_moves_state=self.run_moves_state,
            init=self.init_payload if self.manifest.init is not None else "",
        )

    # -- opening a session ---------------------------------------------------------------

    def resolve_options(self, options: pb.SessionOptions) -> ResolvedOptions:
        """Fills in defaults and checks the options against the model before a session exists."""
        outputs = {t.name for t in self.manifest.outputs}
        unknown = sorted(set(options.return_tensors) - outputs)
        if unknown:
            raise InvalidArgument(f"return_tensors names unknown output(s) {unknown}; the model has {sorted(outputs)}")
        return ResolvedOptions(top_k=0, return_tensors=tuple(options.return_tensors))

    def decode_init(self, payload: pb.InitPayload, max_init_bytes: int, has_restore: bool) -> Arrays | None:
        """The init graph's feed (``[1, *shape]`` per init input), or None when none is run.

        Refuses a payload for a model without init graph, a missing one, an oversized one,
        and tensors of the wrong name, dtype, shape or with NaN/Inf: nothing is opened then.
        """
        given = payload.ByteSize() > 0
        init = self.manifest.init
        if init is None:
            if given:
                raise InvalidArgument(
                    f"model {self.manifest.name!r} has no init graph: open it without an init payload"
                )
            return None
        if has_restore:
            if given:
                raise InvalidArgument(
                    "open: give either restore or init, not both (a snapshot holds the init's result)"
                )
            return None
        if not given:
            names = [t.name for t in init.inputs]
            raise InvalidArgument(f"model {self.manifest.name!r} needs an init payload: tensors {names}")
        size = payload.ByteSize()
        if size > max_init_bytes:
            raise ResourceExhausted("max_init_bytes", max_init_bytes, f"the init payload is {size} bytes")
        if payload.data:
            if payload.tensors:
                raise InvalidArgument("init: give tensors or data, not both")
            return self.decode_init_bytes(payload.data)
        return self.decode_init_tensors(payload)

    def decode_init_bytes(self, data: bytes) -> Arrays:
        """Encoded bytes → init inputs; a kind that takes them (an image) overrides this."""
        raise InvalidArgument(f"model {self.manifest.name!r} takes its init payload as tensors, not bytes")

    def decode_init_tensors(self, payload: pb.InitPayload) -> Arrays:
        init = self.manifest.init
        assert init is not None
        expected = {t.name: t for t in init.inputs}
        given = named_tensors(payload.tensors, expected, "init")
        feed: Arrays = {}
        for name, array in given.items():
            spec = expected[name]
            if array.dtype != np.dtype(spec.np_dtype):
                raise InvalidArgument(
                    f"init tensor {name!r} has dtype {array.dtype.name}, the model takes {spec.dtype}"
                )
            if tuple(array.shape) != spec.shape:
                raise InvalidArgument(
                    f"init tensor {name!r} has shape {list(array.shape)}, the model takes {list(spec.shape)}"
                )
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise InvalidArgument(f"init tensor {name!r} holds NaN or Inf")
            feed[name] = array[np.newaxis]
        return feed

    # -- steps ---------------------------------------------------------------------------

    def decode_step(self, step: pb.Step, max_chunk: int) -> StepInputs:
        """Validates a Step against the model; every problem is an InvalidArgument naming it."""
        kind = step.WhichOneof("input")
        if kind is None:
            raise InvalidArgument("step has no input: set one of text, tokens or tensors")
        if kind != "tensors":
            raise InvalidArgument(f"model {self.manifest.name!r} does not take text or token ids; send tensors")
        return self.step_decoder.decode(step.tensors, max_chunk)

    def decode_session_step(self, session: SessionView, step: pb.Step, max_chunk: int) -> StepInputs:
        """``decode_step`` for a kind whose step also reads the session (a partial audio frame).

        Called by the engine under the session's lock. It must change nothing: what the step
        leaves in the session is written by ``encode_session_result``, once the step is applied.
        A step may decode to 0 model steps (it only fills a buffer): the engine applies it at
        once, without a model call."""
        return self.decode_step(step, max_chunk)

    def encode_session_result(
        self, session: SessionView, step: StepHeader, decoded: StepInputs, outputs: Arrays
    ) -> bytes:
        """The answer of an applied step (``encode_result``), where a kind also writes its scratch.

        Called once per step, only when it is applied: after its model call succeeded and its
        state was written, or at once for a step of 0 model steps (``outputs`` then empty)."""
        return self.encode_result(session.options, step, decoded, outputs)

    def answer_bytes_bound(self, options: ResolvedOptions, steps: int) -> int:
        """An upper bound of the encoded answer to a Step returning ``steps`` steps.

        Checked before every step, so the per-step bound is computed once per distinct options
        (it walks the manifest's outputs) and kept; the cache is emptied past
        ``MAX_CACHED_BOUNDS`` entries, since clients choose the options.
        """
        key = (options.top_k, options.return_tensors)
        per_step = self._output_bounds.get(key)
        if per_step is None:
            if len(self._output_bounds) >= MAX_CACHED_BOUNDS:
                self._output_bounds.clear()
            per_step = self._output_bounds[key] = self.output_bytes_bound(options)
        return bounds.step_result(per_step, steps)

    def output_bytes_bound(self, options: ResolvedOptions) -> int:
        """An upper bound of one encoded StepOutput of this kind."""
        return bounds.step_output(self.manifest, options.return_tensors)

    def build_output(
        self, options: ResolvedOptions, decoded: StepInputs, outputs: Arrays, t: int, out: pb.StepOutput
    ) -> None:
        """Fills one time step's StepOutput from the step's outputs (``[K, ...]`` each)."""
        for name in options.return_tensors:
            add_proto(out.tensors, name, outputs[name][t])

    def build_result(
        self, options: ResolvedOptions, step: StepHeader, decoded: StepInputs, outputs: Arrays
    ) -> pb.StepResult:
        """One StepOutput per time step (or only the last), as the session's options ask.

        It needs only the options, not the session, so a server without sessions (the bench's
        ``minimal`` variant) answers with the same code."""
        result = pb.StepResult(seq=step.seq)
        first = decoded.steps - 1 if step.last_only else 0
        for t in range(first, decoded.steps):
            self.build_output(options, decoded, outputs, t, result.outputs.add())
        return result

    def encode_result(self, options: ResolvedOptions, step: StepHeader, decoded: StepInputs, outputs: Arrays) -> bytes:
        """The answer's StepResult as wire bytes: what a Session stream sends and the reply cache keeps.

        The same bytes as ``build_result``'s message serialized: each StepOutput written by
        ``encode_output`` where the kind can, else (a kind that does not, or outputs not as the
        manifest says) the message, serialized."""
        first = decoded.steps - 1 if step.last_only else 0
        encoded = []
        for t in range(first, decoded.steps):
            output = self.encode_output(options, decoded, outputs, t)
            if output is None:
                return self.build_result(options, step, decoded, outputs).SerializeToString()
            encoded.append(output)
        return step_result(step.seq, encoded)

    def encode_output(self, options: ResolvedOptions, decoded: StepInputs, outputs: Arrays, t: int) -> bytes | None:
        """``build_output``'s StepOutput as bytes (``service.answer_bytes``), or None: build the message.

        A kind on the hot path writes them directly; by default the message is built, since
        ``build_output`` is what most kinds override."""
        return None

    def after_step(self, session: SessionView, outputs: Arrays) -> None:
        """Keeps what a later request of the session needs (a language model's last logits)."""

    # -- server-side loops ---------------------------------------------------------------

    def plan_generate(self, session: SessionView, request: pb.Generate, limits: bounds.Limits) -> Loop:
        raise InvalidArgument(f"model {self.manifest.name!r} ({self.manifest.task}) does not generate tokens")

    def plan_run(self, session: SessionView, request: pb.Run, limits: bounds.Limits) -> Loop:
        """Validates a Run before anything runs; the returned Loop runs it."""
        raise InvalidArgument(f"model {self.manifest.name!r} ({self.manifest.task}) has no server-side run")

    def check_run_steps(self, request: pb.Run, limits: bounds.Limits) -> None:
        """A Run's max_steps is required and bounded by --max-run-steps."""
        if request.max_steps == 0:
            raise InvalidArgument("max_steps is required (1 or more)")
        if request.max_steps > limits.max_run_steps:
            raise ResourceExhausted("max_run_steps", limits.max_run_steps, f"asked for {request.max_steps}")

    def run_options_of(self, request: pb.Run) -> dict[str, float]:
        """The Run's options with defaults filled in; an unknown name is refused."""
        unknown = sorted(set(request.options) - set(self.run_options))
        if unknown:
            raise InvalidArgument(
                f"unknown run option(s) {unknown} for task {self.task!r}; it takes {sorted(self.run_options)}"
            )
        return {name: float(request.options.get(name, default)) for name, (default, _) in self.run_options.items()}
