"""A contract fake of OBS Studio's ``obspython`` module, and a host that runs a script like OBS.

OBS is not installed here, so the OBS script is tested against this fake. It enforces what
OBS documents (obsproject/obs-studio docs/sphinx: scripting.rst, reference-properties.rst,
reference-settings.rst) and, where the docs are silent, what obs-scripting-python.c does:

* Call order: import, ``script_defaults(settings)``, ``script_description()``,
  ``script_load(settings)``, then ``script_update(settings)``; ``script_properties()`` each
  time the properties are shown; ``script_update`` after each edit; on removal every timer
  is dropped first, then ``script_unload()``.
* Properties are made only inside ``script_properties()``, on a props object made there by
  ``obs_properties_create()``, and changed (``obs_property_set_*``) only there or inside a
  button callback, on the props it was given. A props object of an earlier showing is gone.
  Two properties of one name are refused (OBS returns NULL for the second).
* Arguments are counted and typed as the C signatures say, the way SWIG converts them: a
  ``const char *`` takes a str (None only where NULL is allowed), an ``int``/``long long``
  takes an int (a float is a TypeError), a ``double`` takes an int or float, a ``bool``
  takes only a bool; enums must be one of their documented values.
* ``obs_data_*`` getters and setters take a settings object; a key never set and without a
  default reads as 0 / 0.0 / "" / False, and an int item reads as a double and back.
* ``obs_properties_add_button(props, name, text, callback)`` (obs-scripting-python.c,
  ``properties_add_button``): after ``parse_args(args, "OssO", ...)`` it checks
  ``PyFunction_Check(py_cb)`` and, for anything but a plain Python function (a bound method,
  a ``functools.partial``, a callable object, a builtin), returns ``None`` and adds no button,
  silently. The fake does the same (and notes it in ``World.dropped`` for the test's message).
  ``button_prop_clicked`` calls the callback with ``(props, prop)`` (a callback that cannot
  take them is refused here when added, stricter than OBS, which logs the ``TypeError`` at
  the click) and redraws the properties only when it returns ``True`` (``py_ret == Py_True``),
  so anything else is refused here.
* ``timer_add(callback, milliseconds)``: a callable of no arguments and an int; callbacks
  run on OBS's video thread, so ``Host.tick`` runs each once. ``timer_remove(callback)``.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

OBS_TEXT_DEFAULT, OBS_TEXT_PASSWORD, OBS_TEXT_MULTILINE, OBS_TEXT_INFO = 0, 1, 2, 3
OBS_COMBO_TYPE_INVALID, OBS_COMBO_TYPE_EDITABLE, OBS_COMBO_TYPE_LIST, OBS_COMBO_TYPE_RADIO = (
    0,
    1,
    2,
    3,
)
OBS_COMBO_FORMAT_INVALID, OBS_COMBO_FORMAT_INT, OBS_COMBO_FORMAT_FLOAT = 0, 1, 2
OBS_COMBO_FORMAT_STRING, OBS_COMBO_FORMAT_BOOL = 3, 4
OBS_PATH_FILE, OBS_PATH_FILE_SAVE, OBS_PATH_DIRECTORY = 0, 1, 2
LOG_ERROR, LOG_WARNING, LOG_INFO, LOG_DEBUG = 100, 200, 300, 400

_CONSTANTS = {name: value for name, value in globals().items() if name.startswith(("OBS_", "LOG_"))}
_TEXT_TYPES = (OBS_TEXT_DEFAULT, OBS_TEXT_PASSWORD, OBS_TEXT_MULTILINE, OBS_TEXT_INFO)
_COMBO_TYPES = (OBS_COMBO_TYPE_EDITABLE, OBS_COMBO_TYPE_LIST, OBS_COMBO_TYPE_RADIO)
_COMBO_FORMATS = (
    OBS_COMBO_FORMAT_INT,
    OBS_COMBO_FORMAT_FLOAT,
    OBS_COMBO_FORMAT_STRING,
    OBS_COMBO_FORMAT_BOOL,
)
_PATH_TYPES = (OBS_PATH_FILE, OBS_PATH_FILE_SAVE, OBS_PATH_DIRECTORY)


class ContractError(AssertionError):
    """The script did something OBS documents as wrong, or that would crash or do nothing."""


class Data:
    """An ``obs_data_t``: user values over defaults."""

    def __init__(self) -> None:
        self.values: dict[str, object] = {}
        self.defaults: dict[str, object] = {}

    def get(self, name: str, kind: type) -> Any:
        value = self.values.get(name, self.defaults.get(name))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, float):
            return int(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return kind()
        return value


@dataclass(eq=False)
class Props:
    """An ``obs_properties_t``: made in one showing, gone at the next."""

    showing: int
    items: dict[str, Prop] = field(default_factory=dict)
    alive: bool = True


@dataclass(eq=False)
class Prop:
    """An ``obs_property_t``: what a property was made with, and what was set on it since."""

    props: Props
    kind: str  # bool int float text path list button
    name: str
    description: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    slider: bool = False
    text_type: int | None = None
    list_type: int | None = None
    list_format: int | None = None
    items: list[tuple[str, object]] = field(default_factory=list)
    callback: Callable[..., object] | None = None
    long_description: str = ""
    enabled: bool = True
    visible: bool = True


@dataclass
class World:
    """Everything the fake module knows: phase, props, timers, log."""

    phase: str = "idle"  # idle, script, properties, button
    showing: int = 0
    props: Props | None = None  # the props being made, or the one on screen
    button_props: Props | None = None
    timers: dict[Callable[[], object], int] = field(default_factory=dict)
    log: list[tuple[int, str]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # buttons OBS would not have added


_ARG: dict[str, Callable[[object], bool]] = {
    "str": lambda v: isinstance(v, str),
    "str?": lambda v: v is None or isinstance(v, str),
    "int": lambda v: isinstance(v, int),
    "double": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "data": lambda v: isinstance(v, Data),
    "props": lambda v: isinstance(v, Props),
    "prop": lambda v: isinstance(v, Prop),
    "callable": callable,
    "object": lambda v: True,
}


def _check(function: str, args: tuple[object, ...], kinds: tuple[str, ...]) -> None:
    if len(args) != len(kinds):
        raise TypeError(f"{function}() takes {len(kinds)} arguments ({len(args)} given)")
    for number, (arg, kind) in enumerate(zip(args, kinds, strict=True), 1):
        if not _ARG[kind](arg):
            raise TypeError(
                f"{function}() argument {number}: expected {kind}, got {type(arg).__name__}"
            )


def _enum(function: str, value: object, allowed: tuple[int, ...]) -> None:
    if value not in allowed:
        raise ContractError(f"{function}(): {value!r} is not one of its documented values")


def build(world: World) -> types.ModuleType:
    """The ``obspython`` module over ``world``."""
    module = types.ModuleType("obspython")
    module.__dict__.update(_CONSTANTS)

    def export(function: Callable[..., Any]) -> Callable[..., Any]:
        setattr(module, function.__name__, function)
        return function

    def making(function: str, props: object) -> Props:
        if world.phase != "properties":
            raise ContractError(f"{function}() outside script_properties()")
        if not isinstance(props, Props) or props is not world.props or not props.alive:
            raise ContractError(f"{function}() on a props object not made in this showing")
        return props

    def changing(function: str, prop: Prop) -> None:
        allowed = (world.phase == "properties" and prop.props is world.props) or (
            world.phase == "button" and prop.props is world.button_props
        )
        if not allowed or not prop.props.alive:
            raise ContractError(
                f"{function}() outside script_properties() or a button callback on its props"
            )

    def add(props: Props, prop: Prop) -> Prop:
        if prop.name in props.items:
            raise ContractError(f"a second property named {prop.name!r}: OBS returns NULL")
        props.items[prop.name] = prop
        return prop

    @export
    def obs_properties_create(*args: object) -> Props:
        _check("obs_properties_create", args, ())
        if world.phase != "properties":
            raise ContractError("obs_properties_create() outside script_properties()")
        if world.props is not None and world.props.showing == world.showing:
            raise ContractError("obs_properties_create() twice in one script_properties()")
        world.props = Props(world.showing)
        return world.props

    @export
    def obs_properties_add_bool(*args: Any) -> Prop:
        _check("obs_properties_add_bool", args, ("props", "str", "str"))
        props = making("obs_properties_add_bool", args[0])
        return add(props, Prop(props, "bool", args[1], args[2]))

    def numbers(function: str, kind: str, number: str, slider: bool) -> None:
        def add_number(*args: Any) -> Prop:
            _check(function, args, ("props", "str", "str", number, number, number))
            props = making(function, args[0])
            _, name, description, low, high, step = args
            if low > high or step <= 0:
                raise ContractError(f"{function}({name!r}): min {low} max {high} step {step}")
            prop = Prop(props, kind, name, description, low, high, step, slider=slider)
            return add(props, prop)

        add_number.__name__ = function
        export(add_number)

    numbers("obs_properties_add_int", "int", "int", slider=False)
    numbers("obs_properties_add_int_slider", "int", "int", slider=True)
    numbers("obs_properties_add_float", "float", "double", slider=False)
    numbers("obs_properties_add_float_slider", "float", "double", slider=True)

    @export
    def obs_properties_add_text(*args: Any) -> Prop:
        _check("obs_properties_add_text", args, ("props", "str", "str", "int"))
        props = making("obs_properties_add_text", args[0])
        _enum("obs_properties_add_text", args[3], _TEXT_TYPES)
        return add(props, Prop(props, "text", args[1], args[2], text_type=args[3]))

    @export
    def obs_properties_add_path(*args: Any) -> Prop:
        _check("obs_properties_add_path", args, ("props", "str", "str", "int", "str?", "str?"))
        props = making("obs_properties_add_path", args[0])
        _enum("obs_properties_add_path", args[3], _PATH_TYPES)
        return add(props, Prop(props, "path", args[1], args[2]))

    @export
    def obs_properties_add_list(*args: Any) -> Prop:
        _check("obs_properties_add_list", args, ("props", "str", "str", "int", "int"))
        props = making("obs_properties_add_list", args[0])
        _enum("obs_properties_add_list", args[3], _COMBO_TYPES)
        _enum("obs_properties_add_list", args[4], _COMBO_FORMATS)
        if args[3] == OBS_COMBO_TYPE_EDITABLE and args[4] != OBS_COMBO_FORMAT_STRING:
            raise ContractError("an editable list is only for strings")
        prop = Prop(props, "list", args[1], args[2], list_type=args[3], list_format=args[4])
        return add(props, prop)

    @export
    def obs_property_list_add_string(*args: Any) -> int:
        _check("obs_property_list_add_string", args, ("prop", "str", "str"))
        prop: Prop = args[0]
        changing("obs_property_list_add_string", prop)
        if prop.kind != "list" or prop.list_format != OBS_COMBO_FORMAT_STRING:
            raise ContractError(
                f"obs_property_list_add_string() on {prop.name!r}: not a string list"
            )
        prop.items.append((args[1], args[2]))
        return len(prop.items) - 1

    @export
    def obs_properties_add_button(*args: Any) -> Prop | None:
        # obs-scripting-python.c properties_add_button: parse_args "OssO", then
        # "if (!py_cb || !PyFunction_Check(py_cb)) return python_none();"
        _check("obs_properties_add_button", args, ("props", "str", "str", "object"))
        props = making("obs_properties_add_button", args[0])
        callback = args[3]
        if type(callback) is not types.FunctionType:  # PyFunction_Check
            world.dropped.append(
                f"button {args[1]!r}: its callback is a {type(callback).__name__}, not a "
                "plain function, so OBS returns None and adds no button"
            )
            return None
        try:
            inspect.signature(callback).bind(object(), object())
        except TypeError:
            raise ContractError(
                f"button {args[1]!r}: the callback must take (props, prop)"
            ) from None
        return add(props, Prop(props, "button", args[1], args[2], callback=callback))

    @export
    def obs_properties_get(*args: Any) -> Prop | None:
        _check("obs_properties_get", args, ("props", "str"))
        props: Props = args[0]
        if not props.alive:
            raise ContractError("obs_properties_get() on props of an earlier showing")
        return props.items.get(args[1])

    def setter(function: str, kind: str, attribute: str) -> None:
        def set_value(*args: Any) -> None:
            _check(function, args, ("prop", kind))
            changing(function, args[0])
            setattr(args[0], attribute, args[1])

        set_value.__name__ = function
        export(set_value)

    setter("obs_property_set_long_description", "str", "long_description")
    setter("obs_property_set_description", "str", "description")
    setter("obs_property_set_enabled", "bool", "enabled")
    setter("obs_property_set_visible", "bool", "visible")

    for suffix, kind, python in (
        ("string", "str", str),
        ("int", "int", int),
        ("double", "double", float),
        ("bool", "bool", bool),
    ):
        data_functions(module, suffix, kind, python)

    @export
    def timer_add(*args: Any) -> None:
        _check("timer_add", args, ("callable", "int"))
        if world.phase == "idle":
            raise ContractError("timer_add() outside the script (no current script in OBS)")
        callback, milliseconds = args
        try:
            inspect.signature(callback).bind()
        except TypeError:
            raise ContractError("a timer callback takes no arguments") from None
        if milliseconds <= 0:
            raise ContractError(f"timer_add(): {milliseconds} ms")
        if callback in world.timers:
            raise ContractError("timer_add() twice for one callback: it would run twice")
        world.timers[callback] = milliseconds

    @export
    def timer_remove(*args: Any) -> None:
        _check("timer_remove", args, ("callable",))
        world.timers.pop(args[0], None)

    @export
    def script_log(*args: Any) -> None:
        _check("script_log", args, ("int", "str"))
        world.log.append((args[0], args[1]))

    return module


def data_functions(module: types.ModuleType, suffix: str, kind: str, python: type) -> None:
    def get(*args: Any) -> Any:
        _check(f"obs_data_get_{suffix}", args, ("data", "str"))
        return args[0].get(args[1], python)

    def set_value(*args: Any) -> None:
        _check(f"obs_data_set_{suffix}", args, ("data", "str", kind))
        args[0].values[args[1]] = python(args[2])

    def set_default(*args: Any) -> None:
        _check(f"obs_data_set_default_{suffix}", args, ("data", "str", kind))
        args[0].defaults[args[1]] = python(args[2])

    for function, name in (
        (get, f"obs_data_get_{suffix}"),
        (set_value, f"obs_data_set_{suffix}"),
        (set_default, f"obs_data_set_default_{suffix}"),
    ):
        function.__name__ = name
        setattr(module, name, function)


class Host:
    """Loads and drives one script the way OBS's script runner does."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.settings = Data()
        self.module: types.ModuleType | None = None
        self.props: Props | None = None
        self.description = ""

    def _call(self, phase: str, function: Callable[..., Any], *args: object) -> Any:
        previous, self.world.phase = self.world.phase, phase
        try:
            return function(*args)
        finally:
            self.world.phase = previous

    def load(self, path: Path, values: dict[str, object] | None = None) -> types.ModuleType:
        """Import ``path`` and call defaults, description, load, update; ``values`` are what a
        saved scene collection would hold."""
        self.settings.values.update(values or {})
        name = f"{path.stem}_{id(self)}"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        self._call("script", spec.loader.exec_module, module)
        self.module = module
        self._call("script", module.script_defaults, self.settings)
        self.description = self._call("script", module.script_description)
        if not isinstance(self.description, str):
            raise ContractError("script_description() must return a str")
        self._call("script", module.script_load, self.settings)
        self._call("script", module.script_update, self.settings)
        return module

    def show(self) -> Props:
        """Open the script's properties (Tools -> Scripts, select it)."""
        assert self.module is not None
        if self.props is not None:
            self.props.alive = False
        self.world.showing += 1
        self.world.props = None
        props = self._call("properties", self.module.script_properties)
        if props is not self.world.props or not isinstance(props, Props):
            raise ContractError("script_properties() must return the props it created")
        self.props = props
        return props

    def prop(self, name: str) -> Prop:
        assert self.props is not None, "show() the properties first"
        if name not in self.props.items:
            raise KeyError(f"no property {name!r}; dropped by OBS: {self.world.dropped}")
        return self.props.items[name]

    def set(self, name: str, value: object) -> None:
        """Edit one property as the user would, then call script_update as OBS does."""
        assert self.module is not None
        prop = self.prop(name)
        expected = {"bool": bool, "int": int, "float": float, "text": str, "path": str}
        kind = str if prop.kind == "list" else expected[prop.kind]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise TypeError(f"{name} holds a {kind.__name__}, not {value!r}")
        if prop.low is not None and prop.high is not None:
            assert isinstance(value, int | float)
            if not prop.low <= value <= prop.high:
                raise ValueError(f"{name}: the UI keeps it in {prop.low}..{prop.high}")
        if prop.kind == "text" and prop.text_type == OBS_TEXT_INFO:
            raise ContractError(f"{name} is read-only text")
        self.settings.values[name] = value
        self._call("script", self.module.script_update, self.settings)

    def click(self, name: str) -> bool:
        """Press a button; OBS redraws the properties when the callback returns True."""
        prop = self.prop(name)
        assert prop.kind == "button" and prop.callback is not None
        self.world.button_props = prop.props
        try:
            result = self._call("button", prop.callback, prop.props, prop)
        finally:
            self.world.button_props = None
        if not isinstance(result, bool):
            raise ContractError(f"button {name!r} returned {result!r}, not a bool")
        if result:
            self.show()
        return result

    def tick(self) -> None:
        """One turn of every timer."""
        for callback in list(self.world.timers):
            if callback in self.world.timers:
                self._call("script", callback)

    def tick_until(self, done: Callable[[], bool], seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.tick()
            if done():
                return True
            time.sleep(0.05)
        return False

    def text(self, name: str) -> str:
        """What a text property shows (its value in the settings)."""
        value = self.settings.get(name, str)
        assert isinstance(value, str)
        return value

    def unload(self) -> None:
        """Remove the script: OBS drops its callbacks (timers), then calls script_unload()."""
        assert self.module is not None
        self.world.timers.clear()
        self._call("script", self.module.script_unload)
        sys.modules.pop(self.module.__name__, None)
        self.module = None


def install(monkeypatch: pytest.MonkeyPatch) -> Host:
    """Put the fake ``obspython`` in ``sys.modules``; return a host to load a script with."""
    world = World()
    monkeypatch.setitem(sys.modules, "obspython", build(world))
    return Host(world)


def loaded(host: Host) -> Iterator[Host]:
    """Unload at the end, as OBS does on quit (for fixtures)."""
    try:
        yield host
    finally:
        if host.module is not None:
            host.unload()
