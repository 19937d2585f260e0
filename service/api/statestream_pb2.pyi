from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_TYPE_UNSPECIFIED: _ClassVar[DataType]
    DATA_TYPE_FLOAT32: _ClassVar[DataType]
    DATA_TYPE_INT64: _ClassVar[DataType]
    DATA_TYPE_INT32: _ClassVar[DataType]
    DATA_TYPE_INT16: _ClassVar[DataType]
DATA_TYPE_UNSPECIFIED: DataType
DATA_TYPE_FLOAT32: DataType
DATA_TYPE_INT64: DataType
DATA_TYPE_INT32: DataType
DATA_TYPE_INT16: DataType

class Tensor(_message.Message):
    __slots__ = ("name", "dtype", "shape", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class TensorInfo(_message.Message):
    __slots__ = ("name", "dtype", "shape", "doc")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DOC_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    doc: str
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., doc: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "task", "description", "inputs", "outputs", "state", "state_bytes", "vocabulary_size", "scores", "active_sessions", "task_info", "context", "init_inputs")
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_BYTES_FIELD_NUMBER: _ClassVar[int]
    VOCABULARY_SIZE_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    TASK_INFO_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    INIT_INPUTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    task: str
    description: str
    inputs: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    state: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    state_bytes: int
    vocabulary_size: int
    scores: _containers.ScalarMap[str, float]
    active_sessions: int
    task_info: TaskInfo
    context: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    init_inputs: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., task: _Optional[str] = ..., description: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ..., state: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ..., state_bytes: _Optional[int] = ..., vocabulary_size: _Optional[int] = ..., scores: _Optional[_Mapping[str, float]] = ..., active_sessions: _Optional[int] = ..., task_info: _Optional[_Union[TaskInfo, _Mapping]] = ..., context: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ..., init_inputs: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ...) -> None: ...

class TaskInfo(_message.Message):
    __slots__ = ("sends", "returns", "generates", "run", "run_options", "run_moves_state", "init", "max_run_steps")
    SENDS_FIELD_NUMBER: _ClassVar[int]
    RETURNS_FIELD_NUMBER: _ClassVar[int]
    GENERATES_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    RUN_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    RUN_MOVES_STATE_FIELD_NUMBER: _ClassVar[int]
    INIT_FIELD_NUMBER: _ClassVar[int]
    MAX_RUN_STEPS_FIELD_NUMBER: _ClassVar[int]
    sends: str
    returns: str
    generates: bool
    run: str
    run_options: _containers.RepeatedCompositeFieldContainer[RunOption]
    run_moves_state: bool
    init: str
    max_run_steps: int
    def __init__(self, sends: _Optional[str] = ..., returns: _Optional[str] = ..., generates: _Optional[bool] = ..., run: _Optional[str] = ..., run_options: _Optional[_Iterable[_Union[RunOption, _Mapping]]] = ..., run_moves_state: _Optional[bool] = ..., init: _Optional[str] = ..., max_run_steps: _Optional[int] = ...) -> None: ...

class RunOption(_message.Message):
    __slots__ = ("name", "default", "doc")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FIELD_NUMBER: _ClassVar[int]
    DOC_FIELD_NUMBER: _ClassVar[int]
    name: str
    default: float
    doc: str
    def __init__(self, name: _Optional[str] = ..., default: _Optional[float] = ..., doc: _Optional[str] = ...) -> None: ...

class OpenSession(_message.Message):
    __slots__ = ("model", "version", "options", "restore", "init")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    RESTORE_FIELD_NUMBER: _ClassVar[int]
    INIT_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    options: SessionOptions
    restore: bytes
    init: InitPayload
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., options: _Optional[_Union[SessionOptions, _Mapping]] = ..., restore: _Optional[bytes] = ..., init: _Optional[_Union[InitPayload, _Mapping]] = ...) -> None: ...

class InitPayload(_message.Message):
    __slots__ = ("tensors", "data")
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    data: bytes
    def __init__(self, tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., data: _Optional[bytes] = ...) -> None: ...

class SessionOptions(_message.Message):
    __slots__ = ("top_k", "return_tensors")
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    RETURN_TENSORS_FIELD_NUMBER: _ClassVar[int]
    top_k: int
    return_tensors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, top_k: _Optional[int] = ..., return_tensors: _Optional[_Iterable[str]] = ...) -> None: ...

class AttachSession(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class SessionOpened(_message.Message):
    __slots__ = ("session_id", "model", "version", "last_applied_seq", "state_bytes")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_APPLIED_SEQ_FIELD_NUMBER: _ClassVar[int]
    STATE_BYTES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    model: str
    version: str
    last_applied_seq: int
    state_bytes: int
    def __init__(self, session_id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., last_applied_seq: _Optional[int] = ..., state_bytes: _Optional[int] = ...) -> None: ...

class TokenIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class TensorInput(_message.Message):
    __slots__ = ("tensors",)
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    def __init__(self, tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ...) -> None: ...

class Step(_message.Message):
    __slots__ = ("seq", "text", "tokens", "tensors", "last_only")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    LAST_ONLY_FIELD_NUMBER: _ClassVar[int]
    seq: int
    text: str
    tokens: TokenIds
    tensors: TensorInput
    last_only: bool
    def __init__(self, seq: _Optional[int] = ..., text: _Optional[str] = ..., tokens: _Optional[_Union[TokenIds, _Mapping]] = ..., tensors: _Optional[_Union[TensorInput, _Mapping]] = ..., last_only: _Optional[bool] = ...) -> None: ...

class Generate(_message.Message):
    __slots__ = ("seq", "prompt", "max_tokens", "temperature", "top_k", "seed")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    seq: int
    prompt: str
    max_tokens: int
    temperature: float
    top_k: int
    seed: int
    def __init__(self, seq: _Optional[int] = ..., prompt: _Optional[str] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("seq", "tensors", "max_steps", "options", "seed")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    seq: int
    tensors: TensorInput
    max_steps: int
    options: _containers.ScalarMap[str, float]
    seed: int
    def __init__(self, seq: _Optional[int] = ..., tensors: _Optional[_Union[TensorInput, _Mapping]] = ..., max_steps: _Optional[int] = ..., options: _Optional[_Mapping[str, float]] = ..., seed: _Optional[int] = ...) -> None: ...

class RunOutput(_message.Message):
    __slots__ = ("seq", "index", "output")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    index: int
    output: StepOutput
    def __init__(self, seq: _Optional[int] = ..., index: _Optional[int] = ..., output: _Optional[_Union[StepOutput, _Mapping]] = ...) -> None: ...

class RunDone(_message.Message):
    __slots__ = ("seq", "steps", "stop_reason", "seed", "duplicate")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    steps: int
    stop_reason: str
    seed: int
    duplicate: bool
    def __init__(self, seq: _Optional[int] = ..., steps: _Optional[int] = ..., stop_reason: _Optional[str] = ..., seed: _Optional[int] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class Close(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Fork(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Reset(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("open", "attach", "step", "generate", "close", "fork", "reset", "snapshot", "run")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    ATTACH_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    GENERATE_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    FORK_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    open: OpenSession
    attach: AttachSession
    step: Step
    generate: Generate
    close: Close
    fork: Fork
    reset: Reset
    snapshot: SnapshotRequest
    run: Run
    def __init__(self, open: _Optional[_Union[OpenSession, _Mapping]] = ..., attach: _Optional[_Union[AttachSession, _Mapping]] = ..., step: _Optional[_Union[Step, _Mapping]] = ..., generate: _Optional[_Union[Generate, _Mapping]] = ..., close: _Optional[_Union[Close, _Mapping]] = ..., fork: _Optional[_Union[Fork, _Mapping]] = ..., reset: _Optional[_Union[Reset, _Mapping]] = ..., snapshot: _Optional[_Union[SnapshotRequest, _Mapping]] = ..., run: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...

class TokenProb(_message.Message):
    __slots__ = ("id", "token", "prob")
    ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    PROB_FIELD_NUMBER: _ClassVar[int]
    id: int
    token: str
    prob: float
    def __init__(self, id: _Optional[int] = ..., token: _Optional[str] = ..., prob: _Optional[float] = ...) -> None: ...

class StepOutput(_message.Message):
    __slots__ = ("input", "top", "tensors", "label")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    input: str
    top: _containers.RepeatedCompositeFieldContainer[TokenProb]
    tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    label: str
    def __init__(self, input: _Optional[str] = ..., top: _Optional[_Iterable[_Union[TokenProb, _Mapping]]] = ..., tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., label: _Optional[str] = ...) -> None: ...

class StepResult(_message.Message):
    __slots__ = ("seq", "outputs", "duplicate")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    outputs: _containers.RepeatedCompositeFieldContainer[StepOutput]
    duplicate: bool
    def __init__(self, seq: _Optional[int] = ..., outputs: _Optional[_Iterable[_Union[StepOutput, _Mapping]]] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class Token(_message.Message):
    __slots__ = ("seq", "index", "id", "text", "prob")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PROB_FIELD_NUMBER: _ClassVar[int]
    seq: int
    index: int
    id: int
    text: str
    prob: float
    def __init__(self, seq: _Optional[int] = ..., index: _Optional[int] = ..., id: _Optional[int] = ..., text: _Optional[str] = ..., prob: _Optional[float] = ...) -> None: ...

class GenerateDone(_message.Message):
    __slots__ = ("seq", "tokens", "seed", "text", "duplicate", "ids", "probs")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    PROBS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    tokens: int
    seed: int
    text: str
    duplicate: bool
    ids: _containers.RepeatedScalarFieldContainer[int]
    probs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, seq: _Optional[int] = ..., tokens: _Optional[int] = ..., seed: _Optional[int] = ..., text: _Optional[str] = ..., duplicate: _Optional[bool] = ..., ids: _Optional[_Iterable[int]] = ..., probs: _Optional[_Iterable[float]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("seq", "code", "code_name", "message")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    CODE_NAME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    code: int
    code_name: str
    message: str
    def __init__(self, seq: _Optional[int] = ..., code: _Optional[int] = ..., code_name: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Closed(_message.Message):
    __slots__ = ("session_id", "last_applied_seq")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_APPLIED_SEQ_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    last_applied_seq: int
    def __init__(self, session_id: _Optional[str] = ..., last_applied_seq: _Optional[int] = ...) -> None: ...

class Forked(_message.Message):
    __slots__ = ("session_id", "last_applied_seq")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_APPLIED_SEQ_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    last_applied_seq: int
    def __init__(self, session_id: _Optional[str] = ..., last_applied_seq: _Optional[int] = ...) -> None: ...

class ResetDone(_message.Message):
    __slots__ = ("seq", "duplicate")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    duplicate: bool
    def __init__(self, seq: _Optional[int] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("blob", "last_applied_seq")
    BLOB_FIELD_NUMBER: _ClassVar[int]
    LAST_APPLIED_SEQ_FIELD_NUMBER: _ClassVar[int]
    blob: bytes
    last_applied_seq: int
    def __init__(self, blob: _Optional[bytes] = ..., last_applied_seq: _Optional[int] = ...) -> None: ...

class SessionResponse(_message.Message):
    __slots__ = ("opened", "result", "token", "generated", "error", "closed", "forked", "reset", "snapshot", "run_output", "run_done")
    OPENED_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    GENERATED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    FORKED_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    RUN_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    RUN_DONE_FIELD_NUMBER: _ClassVar[int]
    opened: SessionOpened
    result: StepResult
    token: Token
    generated: GenerateDone
    error: Error
    closed: Closed
    forked: Forked
    reset: ResetDone
    snapshot: Snapshot
    run_output: RunOutput
    run_done: RunDone
    def __init__(self, opened: _Optional[_Union[SessionOpened, _Mapping]] = ..., result: _Optional[_Union[StepResult, _Mapping]] = ..., token: _Optional[_Union[Token, _Mapping]] = ..., generated: _Optional[_Union[GenerateDone, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., closed: _Optional[_Union[Closed, _Mapping]] = ..., forked: _Optional[_Union[Forked, _Mapping]] = ..., reset: _Optional[_Union[ResetDone, _Mapping]] = ..., snapshot: _Optional[_Union[Snapshot, _Mapping]] = ..., run_output: _Optional[_Union[RunOutput, _Mapping]] = ..., run_done: _Optional[_Union[RunDone, _Mapping]] = ...) -> None: ...

class SessionStep(_message.Message):
    __slots__ = ("session_id", "step")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    step: Step
    def __init__(self, session_id: _Optional[str] = ..., step: _Optional[_Union[Step, _Mapping]] = ...) -> None: ...

class MultiplexRequest(_message.Message):
    __slots__ = ("steps",)
    STEPS_FIELD_NUMBER: _ClassVar[int]
    steps: _containers.RepeatedCompositeFieldContainer[SessionStep]
    def __init__(self, steps: _Optional[_Iterable[_Union[SessionStep, _Mapping]]] = ...) -> None: ...

class SessionStepResult(_message.Message):
    __slots__ = ("session_id", "result", "error")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    result: StepResult
    error: Error
    def __init__(self, session_id: _Optional[str] = ..., result: _Optional[_Union[StepResult, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class MultiplexResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SessionStepResult]
    def __init__(self, results: _Optional[_Iterable[_Union[SessionStepResult, _Mapping]]] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ("last_applied_seq",)
    LAST_APPLIED_SEQ_FIELD_NUMBER: _ClassVar[int]
    last_applied_seq: int
    def __init__(self, last_applied_seq: _Optional[int] = ...) -> None: ...
