"""The import spec: a TOML file naming a foreign graph's state, constants and carry (docs/your-model.md).

Only the spec's own shape is checked here (keys, types, ranges); what it says about the graph is
checked against the graph in ``service.importer.signature``. Every refusal is an
``ImportRefused`` whose message is one line naming the key and what to write instead.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.contract import ContractError

#: A constant's value: a TOML scalar or a (nested) list of them.
ConstantValue = bool | int | float | list[Any]


class ImportRefused(ContractError):
    """The spec or the graph cannot become a model folder; the message says which check failed."""


@dataclass(frozen=True)
class StateRule:
    """``[[state]]``: a graph input read as the previous state and the output that writes the next."""

    input: str
    output: str
    batch_axis: int = 0


@dataclass(frozen=True)
class CarryRule:
    """``[carry]``: the last ``keep`` values of ``input``'s previous step, prepended to its next step."""

    input: str
    keep: int


@dataclass(frozen=True)
class StepLayout:
    """``[steps]`` (optional): where per-step inputs and outputs keep their batch and time axes.

    ``time_axis`` None: the graph takes one step per call (the importer adds the contract's time
    axis, fixed at 1); an axis: the graph runs a chunk of steps in one call.
    """

    batch_axis: int = 0
    time_axis: int | None = None


@dataclass(frozen=True)
class ImportSpec:
    """What a spec file says; ``shapes`` (``[shape]``) fills in per-session axes the graph leaves dynamic."""

    state: tuple[StateRule, ...]
    constants: dict[str, ConstantValue] = field(default_factory=dict)
    carry: CarryRule | None = None
    steps: StepLayout = StepLayout()
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> ImportSpec:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ImportRefused(f"spec {path}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ImportRefused(f"spec {path}: cannot be read ({exc})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ImportRefused(f"spec {path}: not valid TOML ({exc})") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImportSpec:
        _keys("the spec", data, ("state", "constant", "carry", "steps", "shape"))
        tables = data.get("state", [])
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise ImportRefused("spec: state must be [[state]] tables (input, output, batch_axis)")
        state = tuple(_state_rule(t) for t in tables)
        spec = cls(
            state=state,
            constants=_constants(data.get("constant", {})),
            carry=_carry(data["carry"]) if "carry" in data else None,
            steps=_steps(data.get("steps", {})),
            shapes=_shapes(data.get("shape", {})),
        )
        spec._check_names()
        return spec

    def to_dict(self) -> dict[str, Any]:
        """The spec as TOML-shaped data (recorded in the manifest's ``training``)."""
        data: dict[str, Any] = {"state": [vars(rule).copy() for rule in self.state]}
        if self.constants:
            data["constant"] = dict(self.constants)
        if self.carry is not None:
            data["carry"] = vars(self.carry).copy()
        if self.steps != StepLayout():
            data["steps"] = {k: v for k, v in vars(self.steps).items() if v is not None}
        if self.shapes:
            data["shape"] = {name: list(shape) for name, shape in self.shapes.items()}
        return data

    def _check_names(self) -> None:
        named = [s.input for s in self.state] + list(self.constants)
        twice = sorted({n for n in named if named.count(n) > 1})
        if twice:
            raise ImportRefused(f"spec: input(s) {twice} are named twice (as state or constant)")
        outputs = [s.output for s in self.state]
        twice = sorted({n for n in outputs if outputs.count(n) > 1})
        if twice:
            raise ImportRefused(f"spec: state output(s) {twice} are named twice")
        if self.carry is not None and self.carry.input in named:
            raise ImportRefused(f"spec: [carry] input {self.carry.input!r} is also a state or a constant")
        if self.carry is not None and self.steps.time_axis is not None:
            raise ImportRefused("spec: [carry] needs a graph that takes one step per call; drop [steps] time_axis")


def _keys(where: str, data: Mapping[str, Any], allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ImportRefused(f"{where}: unknown key(s) {unknown}; allowed: {list(allowed)}")
    missing = [key for key in required if key not in data]
    if missing:
        raise ImportRefused(f"{where}: missing key(s) {missing}")


def _name(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ImportRefused(f"{where} must be a graph tensor's name (a string), got {value!r}")
    return value


def _axis(where: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ImportRefused(f"{where} must be an axis number (0 or more), got {value!r}")
    return value


def _state_rule(table: Mapping[str, Any]) -> StateRule:
    _keys("[[state]]", table, ("input", "output", "batch_axis"), ("input", "output"))
    name = _name("[[state]] input", table["input"])
    return StateRule(
        name,
        _name(f"[[state]] {name!r} output", table["output"]),
        _axis(f"[[state]] {name!r} batch_axis", table.get("batch_axis", 0)),
    )


def _constants(table: Any) -> dict[str, ConstantValue]:
    if not isinstance(table, dict):
        raise ImportRefused("spec: [constant] must be a table of name = value")
    for name, value in table.items():
        if not isinstance(value, bool | int | float | list):
            raise ImportRefused(f"[constant] {name}: {value!r} is not a number, a boolean or a list of them")
    return dict(table)


def _carry(table: Any) -> CarryRule:
    if not isinstance(table, dict):
        raise ImportRefused("spec: [carry] must be a table (input, keep)")
    _keys("[carry]", table, ("input", "keep"), ("input", "keep"))
    keep = table["keep"]
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise ImportRefused(f"[carry] keep must be a whole number of values, 1 or more, got {keep!r}")
    return CarryRule(_name("[carry] input", table["input"]), keep)


def _steps(table: Any) -> StepLayout:
    if not isinstance(table, dict):
        raise ImportRefused("spec: [steps] must be a table (batch_axis, time_axis)")
    _keys("[steps]", table, ("batch_axis", "time_axis"))
    batch = _axis("[steps] batch_axis", table.get("batch_axis", 0))
    time = _axis("[steps] time_axis", table["time_axis"]) if "time_axis" in table else None
    if time == batch:
        raise ImportRefused(f"[steps]: batch_axis and time_axis are both {batch}")
    return StepLayout(batch, time)


def _shapes(table: Any) -> dict[str, tuple[int, ...]]:
    if not isinstance(table, dict):
        raise ImportRefused("spec: [shape] must be a table of name = [dims]")
    shapes = {}
    for name, dims in table.items():
        if not isinstance(dims, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims
        ):
            raise ImportRefused(f"[shape] {name}: {dims!r} must be a list of positive whole numbers")
        shapes[name] = tuple(dims)
    return shapes
