"""A stand-in for TouchDesigner's ``td`` module, strict where TouchDesigner is strict.

It records the operator graph a script builds and runs the callbacks TouchDesigner would, so a
builder can be tested without TouchDesigner. What it enforces, from Derivative's UserGuide:

* ``COMP.create(OPtype, name)`` takes one of the operator type classes below (or its name);
  a taken name gets a number appended, as TouchDesigner does ("COMP Class").
* Each operator type has only the built-in parameters listed for it (the operator's UserGuide
  page); reading or setting any other raises ``AttributeError``, as ``td.tdAttributeError`` does.
* Custom parameters exist only through ``COMP.appendCustomPage(name).appendFloat/appendInt/
  appendStr/appendToggle/appendPulse/appendMenu``, with the signatures of Derivative's "Page
  Class" page (docs.derivative.ca/Page_Class): ``appendFloat(name, label=None, size=1,
  order=None, replace=True)``, ``appendInt`` alike, ``appendStr/appendToggle/appendPulse/
  appendMenu(name, label=None, order=None, replace=True)``; so ``label`` may come second by
  position or by keyword. The name is an uppercase letter followed by lowercase letters and
  digits ("Custom Parameters"); ``size`` is a number of values (this fake builds size 1 only).
* Wires go ``outputConnectors[i].connect(target)`` / ``inputConnectors[i]`` ("Connector
  Class"), only between operators of one family and only into inputs the type has.
* ``oscoutDAT.sendOSC(address, values)`` really sends the OSC message over UDP to the DAT's
  Network Address and Port ("OSC Out DAT"); an active ``oscinDAT`` really listens on its
  Network Port and calls its Callbacks DAT's ``onReceiveOSC`` ("OSC In DAT") on :func:`frame`.
* Value changes of custom parameters reach a Parameter Execute DAT's ``onValueChange(par,
  prev)`` at the next :func:`frame` (TouchDesigner calls it once a frame), pulses reach
  ``onPulse(par)`` at once; only with the DAT's OPs, Parameters, Custom, Value Change / On
  Pulse and Active set as TouchDesigner needs them.
* Extensions: pulsing ``reinitextensions`` evaluates ``ext0object`` with ``me`` the COMP
  ("Extensions"); ``COMP.ext.<class>`` reaches it; destroying the COMP calls ``onDestroyTD``.
* A DAT's ``module`` is its text run as a module, with ``me``, ``op`` and ``parent`` bound.
"""

from __future__ import annotations

import re
import socket
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket

CUSTOM_NAME = re.compile(r"[A-Z][a-z0-9]*\Z")  # "Custom Parameters": Xxxx, no other capitals
OP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

ParValue = Any  # float, int, str, bool or an OP, as the parameter's style allows


class Par:
    """One parameter ("Par Class"). Only its documented members can be set."""

    _MEMBERS: ClassVar[frozenset[str]] = frozenset(
        {"val", "default", "label", "min", "max", "normMin", "normMax", "clampMin", "clampMax",
         "readOnly", "menuNames", "menuLabels"}
    )  # fmt: skip

    def __init__(self, owner: OP, name: str, style: str, value: ParValue, *, custom: bool):
        d = self.__dict__
        d.update(owner=owner, name=name, style=style, isCustom=custom, _val=value)
        d.update(default=value, label=name, readOnly=False, menuNames=[], menuLabels=[])
        d.update(min=0.0, max=1.0, normMin=0.0, normMax=1.0, clampMin=False, clampMax=False)
        d.update(page=None, pulses=0)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._MEMBERS:
            raise AttributeError(f"Par {self.name!r} has no member {name!r} (Par Class)")
        if name == "val":
            self._set(value)
        else:
            self.__dict__[name] = value

    @property
    def val(self) -> ParValue:
        return self.__dict__["_val"]

    def eval(self) -> ParValue:
        return self.val

    def pulse(self) -> None:
        if self.style != "Pulse":
            raise TypeError(f"{self.name} is a {self.style} parameter, not a Pulse")
        self.__dict__["pulses"] += 1
        self.owner._pulsed(self)

    def _set(self, value: Any) -> None:
        style = self.style
        if style == "Pulse":
            raise TypeError(f"a Pulse parameter ({self.name}) has no value; call .pulse()")
        if style == "Float" and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise TypeError(f"{self.name} takes a number, got {value!r}")
        if style == "Int" and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{self.name} takes a whole number, got {value!r}")
        if style == "Toggle" and not isinstance(value, bool | int):
            raise TypeError(f"{self.name} takes True/False, got {value!r}")
        if style in ("Str", "Menu") and not isinstance(value, str):
            raise TypeError(f"{self.name} takes a string, got {value!r}")
        if style == "Menu" and self.menuNames and value not in self.menuNames:
            raise ValueError(f"{self.name}: {value!r} is not one of {list(self.menuNames)}")
        if style == "OP" and not isinstance(value, str | OP):
            raise TypeError(f"{self.name} takes an operator or a path, got {value!r}")
        if style == "Float":
            value = float(value)
        if style == "Toggle":
            value = bool(value)
        previous = self.val
        self.__dict__["_val"] = value
        if previous != value and self.isCustom:
            self.owner._changed(self, previous)

    def __repr__(self) -> str:
        return f"<Par {self.owner.path}.{self.name}={self.val!r}>"


class ParCollection:
    """``op.par``: ``op.par.name`` is the Par, ``op.par.name = v`` sets its value."""

    def __init__(self, owner: OP) -> None:
        self.__dict__["_pars"] = {}
        self.__dict__["_owner"] = owner

    def _add(self, par: Par) -> None:
        self.__dict__["_pars"][par.name] = par

    def __getattr__(self, name: str) -> Par:
        pars: dict[str, Par] = self.__dict__["_pars"]
        if name not in pars:
            raise AttributeError(
                f"{self._owner.OPType} {self._owner.path} has no parameter {name!r}"
            )
        return pars[name]

    def __setattr__(self, name: str, value: Any) -> None:
        self.__getattr__(name).val = value

    def __iter__(self) -> Iterator[Par]:
        return iter(self.__dict__["_pars"].values())


class ParGroup(tuple[Par, ...]):
    """What ``Page.append*`` returns: the parameters on one line, ``[0]`` the first."""


class Page:
    """A custom page ("Page Class"); ``append*`` have the documented signatures."""

    def __init__(self, owner: COMP, name: str) -> None:
        self.owner, self.name, self.pars = owner, name, list[Par]()

    def _append(self, style: str, name: str, label: str | None, value: ParValue) -> ParGroup:
        if not isinstance(name, str) or not CUSTOM_NAME.match(name):
            raise ValueError(
                f"custom parameter name {name!r}: an uppercase letter, then only lowercase "
                "letters and digits"
            )
        if label is not None and not isinstance(label, str):
            raise TypeError(f"label must be a string, got {label!r}")
        par = Par(self.owner, name, style, value, custom=True)
        par.__dict__.update(label=label or name, page=self)
        self.pars.append(par)
        self.owner.par._add(par)
        return ParGroup((par,))

    @staticmethod
    def _one_value(size: object) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size is the number of values, 1 or more: got {size!r}")
        if size != 1:
            raise NotImplementedError("the fake builds one-value parameters only")

    def appendFloat(
        self, name: str, label: str | None = None, size: int = 1, order: Any = None,
        replace: bool = True,
    ) -> ParGroup:  # fmt: skip
        self._one_value(size)
        return self._append("Float", name, label, 0.0)

    def appendInt(
        self, name: str, label: str | None = None, size: int = 1, order: Any = None,
        replace: bool = True,
    ) -> ParGroup:  # fmt: skip
        self._one_value(size)
        return self._append("Int", name, label, 0)

    def appendStr(
        self, name: str, label: str | None = None, order: Any = None, replace: bool = True
    ) -> ParGroup:
        return self._append("Str", name, label, "")

    def appendToggle(
        self, name: str, label: str | None = None, order: Any = None, replace: bool = True
    ) -> ParGroup:
        return self._append("Toggle", name, label, False)

    def appendPulse(
        self, name: str, label: str | None = None, order: Any = None, replace: bool = True
    ) -> ParGroup:
        return self._append("Pulse", name, label, None)

    def appendMenu(
        self, name: str, label: str | None = None, order: Any = None, replace: bool = True
    ) -> ParGroup:
        return self._append("Menu", name, label, "")


class Connector:
    """An input or output of an operator ("Connector Class")."""

    def __init__(self, owner: OP, index: int, *, is_input: bool) -> None:
        self.owner, self.index, self.isInput, self.isOutput = owner, index, is_input, not is_input
        self.connections: list[Connector] = []

    def connect(self, target: OP | Connector) -> None:
        if isinstance(target, OP):
            if target.family != self.owner.family:
                raise TypeError(f"cannot wire a {self.owner.family} and a {target.family}")
            ends = target.outputConnectors if self.isInput else target.inputConnectors
            free = [c for c in ends if not c.connections or not c.isInput]
            if not free:
                raise ValueError(f"{target.path} has no free connector for {self.owner.path}")
            target = free[0]
        if not isinstance(target, Connector) or target.isInput == self.isInput:
            raise TypeError("connect an output to an input")
        source, sink = (target, self) if self.isInput else (self, target)
        if source.owner.family != sink.owner.family:
            raise TypeError(f"cannot wire a {source.owner.family} into a {sink.owner.family}")
        for old in sink.connections:  # an input takes one wire: a new one replaces it
            old.connections.remove(sink)
        sink.connections = [source]
        source.connections.append(sink)

    def disconnect(self) -> None:
        for other in self.connections:
            other.connections.remove(self)
        self.connections = []


class OP:
    """An operator ("OP Class"). Attributes other than the documented ones cannot be set."""

    family: ClassVar[str] = ""
    INPUTS: ClassVar[int] = 0  # how many inputs the type has
    OUTPUTS: ClassVar[int] = 1
    PARS: ClassVar[dict[str, tuple[str, ParValue]]] = {}  # built-in: name -> (style, default)
    _SETTABLE: ClassVar[frozenset[str]] = frozenset({"name", "nodeX", "nodeY", "comment"})

    def __init__(self, parent: COMP | None, name: str) -> None:
        d = self.__dict__
        d.update(_parent=parent, name=name, nodeX=0, nodeY=0, comment="", valid=True)
        d["par"] = ParCollection(self)
        for cls in reversed(type(self).__mro__):
            for par_name, (style, default) in vars(cls).get("PARS", {}).items():
                d["par"]._add(Par(self, par_name, style, default, custom=False))
        d["inputConnectors"] = [Connector(self, i, is_input=True) for i in range(self.INPUTS)]
        d["outputConnectors"] = [Connector(self, i, is_input=False) for i in range(self.OUTPUTS)]

    @property
    def OPType(self) -> str:
        return type(self).__name__

    @property
    def path(self) -> str:
        parent = self._parent
        if parent is None:
            return "/"
        return ("" if parent.path == "/" else parent.path) + "/" + self.name

    def parent(self, n: int = 1) -> COMP:
        node: OP = self
        for _ in range(n):
            if node._parent is None:
                raise LookupError(f"{self.path} has no parent {n} levels up")
            node = node._parent
        assert isinstance(node, COMP)
        return node

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._SETTABLE:
            raise AttributeError(f"{self.OPType} has no settable member {name!r}")
        if name in ("nodeX", "nodeY") and not isinstance(value, int):
            raise TypeError(f"{name} takes an int, got {value!r}")
        self.__dict__[name] = value

    def destroy(self) -> None:
        for connector in (*self.inputConnectors, *self.outputConnectors):
            connector.disconnect()
        if self._parent is not None:
            del self._parent._children[self.name]
        self.__dict__["valid"] = False

    def resolve(self, path: str | OP) -> OP | None:
        """An OP reference as TouchDesigner reads it from this operator: ``name`` a sibling,
        ``./name`` a child, ``..`` the parent, ``/a/b`` absolute."""
        if isinstance(path, OP):
            return path
        if path.startswith("/"):
            node: OP | None = root(self)
            parts = [p for p in path.split("/") if p]
        else:
            parts = path.split("/")
            node = self if parts[0] in (".", "..") else self._parent
        for part in parts:
            if node is None:
                return None
            if part == "..":
                node = node._parent
            elif part not in (".", ""):
                node = node._children.get(part) if isinstance(node, COMP) else None
        return node

    def _changed(self, par: Par, previous: ParValue) -> None:
        pass

    def _pulsed(self, par: Par) -> None:
        pass

    def __repr__(self) -> str:
        return f"<{self.OPType} {self.path}>"


class TOP(OP):
    family = "TOP"


class DAT(OP):
    family = "DAT"
    INPUTS = 0
    _SETTABLE = OP._SETTABLE | {"text"}

    def __init__(self, parent: COMP | None, name: str) -> None:
        super().__init__(parent, name)
        self.__dict__.update(text="", _module=None, _module_text=None)

    @property
    def module(self) -> types.ModuleType:
        """The DAT's text as a module, rebuilt when the text changes."""
        if self.__dict__["_module_text"] != self.text:
            module = types.ModuleType(self.name)
            module.__dict__.update(script_globals(self))
            exec(compile(self.text, self.path, "exec"), module.__dict__)
            self.__dict__.update(_module=module, _module_text=self.text)
        return self.__dict__["_module"]


class COMP(OP):
    family = "COMP"
    OUTPUTS = 0
    PARS: ClassVar[dict[str, tuple[str, ParValue]]] = {
        # "COMP Extensions Page"
        "ext0object": ("Str", ""), "ext0name": ("Str", ""), "ext0promote": ("Toggle", False),
        "reinitextensions": ("Pulse", None), "initextonstart": ("Toggle", True),
    }  # fmt: skip

    def __init__(self, parent: COMP | None, name: str) -> None:
        super().__init__(parent, name)
        self.__dict__.update(_children={}, customPages=[], extensions=[])

    @property
    def children(self) -> list[OP]:
        return list(self._children.values())

    @property
    def inputConnectors(self) -> list[Connector]:  # type: ignore[override]
        return [c for child in self.children if isinstance(child, inTOP) for c in [child._outer]]

    @property
    def outputConnectors(self) -> list[Connector]:  # type: ignore[override]
        return [c for child in self.children if isinstance(child, outTOP) for c in [child._outer]]

    @property
    def ext(self) -> types.SimpleNamespace:
        return types.SimpleNamespace(**{type(e).__name__: e for e in self.extensions})

    def create(
        self, OPtype: type[OP] | str, name: str | None = None, initialize: bool = True
    ) -> OP:
        if isinstance(OPtype, str):
            if OPtype not in OP_TYPES:
                raise ValueError(f"unknown operator type {OPtype!r}")
            OPtype = OP_TYPES[OPtype]
        if OPtype not in OP_TYPES.values():
            raise TypeError(f"create() takes an operator type such as baseCOMP, got {OPtype!r}")
        base = name or OPtype.__name__.removesuffix(OPtype.family) + "1"
        if not OP_NAME.match(base):
            raise ValueError(f"invalid operator name {base!r}")
        unique, number = base, 1
        while unique in self._children:  # TouchDesigner renames instead of failing
            number += 1
            unique = re.sub(r"\d*$", "", base) + str(number)
        created = OPtype(self, unique)
        self._children[unique] = created
        return created

    def op(self, path: str) -> OP | None:
        """Relative to this component: ``name`` is a child ("COMP Class": op())."""
        if path.startswith(("/", ".")):
            return self.resolve(path)
        return self.resolve("./" + path)

    def appendCustomPage(self, name: str) -> Page:
        if not isinstance(name, str) or not name:
            raise ValueError(f"page name {name!r}")
        page = Page(self, name)
        self.customPages.append(page)
        return page

    @property
    def customPars(self) -> list[Par]:
        return [par for page in self.customPages for par in page.pars]

    def destroy(self) -> None:
        for extension in self.extensions:
            if hasattr(extension, "onDestroyTD"):
                extension.onDestroyTD()
        self.__dict__["extensions"] = []
        for child in self.children:
            child.destroy()
        super().destroy()

    def _pulsed(self, par: Par) -> None:
        if par.name == "reinitextensions":
            self._reinit_extensions()
            return
        for parexec in _listeners(self, par, "onpulse"):
            parexec.module.onPulse(par)

    def _changed(self, par: Par, previous: ParValue) -> None:
        PENDING.append((par, previous))

    def _reinit_extensions(self) -> None:
        for extension in self.extensions:
            if hasattr(extension, "onDestroyTD"):
                extension.onDestroyTD()
        source = self.par.ext0object.eval()
        namespace = script_globals(self)
        namespace["op"] = self.op  # from the component: './name' is a child
        self.__dict__["extensions"] = [eval(source, namespace)] if source else []


def _listeners(comp: COMP, par: Par, switch: str) -> list[DAT]:
    """The Parameter Execute DATs set up to hear ``par`` of ``comp``."""
    found = []
    for node in walk(root(comp)):
        if not isinstance(node, parameterexecuteDAT):
            continue
        p = node.par
        if not (p.active.eval() and getattr(p, switch).eval() and p.custom.eval()):
            continue
        if node.resolve(p.op.eval()) is comp and p.pars.eval() in ("*", par.name):
            found.append(node)
    return found


# -- the operator types a builder may create, with the built-in parameters it may touch ------


class baseCOMP(COMP):
    pass


class inTOP(TOP):
    INPUTS = 0

    def __init__(self, parent: COMP | None, name: str) -> None:
        super().__init__(parent, name)
        # the COMP's input connector: wires into it feed this TOP
        self.__dict__["_outer"] = Connector(self, 0, is_input=True)


class outTOP(TOP):
    INPUTS = 1

    def __init__(self, parent: COMP | None, name: str) -> None:
        super().__init__(parent, name)
        self.__dict__["_outer"] = Connector(self, 0, is_input=False)


class nullTOP(TOP):
    INPUTS = 1


class switchTOP(TOP):
    INPUTS = 8  # "Switch TOP": any number of inputs; enough here
    PARS: ClassVar[dict[str, tuple[str, ParValue]]] = {"index": ("Int", 0)}


class syphonspoutoutTOP(TOP):
    INPUTS = 1
    OUTPUTS = 1
    PARS: ClassVar[dict[str, tuple[str, ParValue]]] = {
        "active": ("Toggle", True), "sendername": ("Str", "TDSyphonSpoutOut")
    }  # fmt: skip


class syphonspoutinTOP(TOP):
    INPUTS = 0
    PARS: ClassVar[dict[str, tuple[str, ParValue]]] = {"sendername": ("Str", "")}


class ndioutTOP(TOP):
    INPUTS = 1
    PARS: ClassVar[dict[str, tuple[str, ParValue]]] = {  # "NDI Out TOP"
        "active": ("Toggle", True), "name": ("Str", "TDNDIOut"), "fps": ("Float", 60.0),
    }  # fmt: skip


class ndiinTOP(TOP):
    INPUTS = 0
    PARS: ClassVar[dict[str, tuple[str, ParValue]]] = {  # "NDI In TOP"
        "active": ("Toggle", True), "name": ("Str", ""), "extraips": ("Str", ""),
    }  # fmt: skip


class textDAT(DAT):
    PARS: ClassVar[dict[str, tuple[str, ParValue]]] = {"file": ("Str", "")}


class tableDAT(DAT):
    PARS: ClassVar[dict[str, tuple[str, ParValue]]] = {"file": ("Str", "")}


class parameterexecuteDAT(DAT):
    PARS: ClassVar[dict[str, tuple[str, ParValue]]] = {  # "Parameter Execute DAT"
        "active": ("Toggle", True), "op": ("OP", ""), "pars": ("Str", ""),
        "custom": ("Toggle", True), "builtin": ("Toggle", True),
        "valuechange": ("Toggle", True), "onpulse": ("Toggle", True),
    }  # fmt: skip


class executeDAT(DAT):
    PARS: ClassVar[dict[str, tuple[str, ParValue]]] = {  # "Execute DAT"
        "active": ("Toggle", True), "start": ("Toggle", False), "create": ("Toggle", False),
        "exit": ("Toggle", False), "framestart": ("Toggle", False), "frameend": ("Toggle", False),
    }  # fmt: skip


class oscoutDAT(DAT):
    PARS: ClassVar[dict[str, tuple[str, ParValue]]] = {  # "OSC Out DAT": Connect page
        "active": ("Toggle", True), "protocol": ("Menu", "msging"),
        "address": ("Str", "localhost"), "port": ("Int", 10000),
    }  # fmt: skip

    def __init__(self, parent: COMP | None, name: str) -> None:
        super().__init__(parent, name)
        self.par.protocol.menuNames = ["msging", "multicastmsging", "reliablemsging"]
        self.__dict__["sent"] = []

    def sendOSC(
        self, address: str, values: Sequence[Any], asBundle: bool = False,
        useNonStandardTypes: bool = True, use64BitPrecision: bool = False,
    ) -> None:  # fmt: skip
        if not isinstance(address, str) or not address.startswith("/"):
            raise ValueError(f"OSC address {address!r}")
        if isinstance(values, str | bytes) or not isinstance(values, Sequence):
            raise TypeError(f"sendOSC takes a list of values, got {values!r}")
        builder = OscMessageBuilder(address=address)
        for value in values:
            if isinstance(value, bool):  # how a build sends a bool is not documented
                raise TypeError(f"send bools as 0/1 ints: {address} {value!r}")
            if isinstance(value, int):
                builder.add_arg(value, "i")
            elif isinstance(value, float):
                builder.add_arg(value, "d" if use64BitPrecision else "f")
            elif isinstance(value, str):
                builder.add_arg(value, "s")
            else:
                raise TypeError(f"cannot send {value!r} over OSC")
        self.sent.append((address, list(values)))
        if self.par.active.eval() and self.par.protocol.eval() == "msging":
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                target = (self.par.address.eval(), self.par.port.eval())
                sock.sendto(builder.build().dgram, target)


class oscinDAT(DAT):
    PARS: ClassVar[dict[str, tuple[str, ParValue]]] = {  # "OSC In DAT"
        "active": ("Toggle", True), "port": ("Int", 10000), "callbacks": ("OP", ""),
    }  # fmt: skip

    def __init__(self, parent: COMP | None, name: str) -> None:
        super().__init__(parent, name)
        self.__dict__.update(_socket=None, _bound=None, received=[])

    def _poll(self) -> None:
        port = self.par.port.eval()
        if not self.par.active.eval() or not self.valid:
            self._close()
            return
        if self._bound != port:
            self._close()
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", port))
            sock.setblocking(False)
            self.__dict__.update(_socket=sock, _bound=port)
        while True:
            try:
                data, peer = self._socket.recvfrom(65_535)
            except BlockingIOError:
                return
            for timed in OscPacket(data).messages:
                self._deliver(timed.message, data, peer)

    def _deliver(self, message: OscMessage, data: bytes, peer: tuple[str, int]) -> None:
        args = list(message.params)
        self.received.append((message.address, args))
        callbacks = self.resolve(self.par.callbacks.eval()) if self.par.callbacks.eval() else None
        if isinstance(callbacks, DAT) and hasattr(callbacks.module, "onReceiveOSC"):
            text = " ".join([message.address, *map(str, args)])
            row = len(self.received) - 1
            callbacks.module.onReceiveOSC(self, row, text, data, 0.0, message.address, args, peer)

    def _close(self) -> None:
        if self._socket is not None:
            self._socket.close()
        self.__dict__.update(_socket=None, _bound=None)

    def destroy(self) -> None:
        self._close()
        super().destroy()


OP_TYPES: dict[str, type[OP]] = {
    cls.__name__: cls
    for cls in (
        baseCOMP, inTOP, outTOP, nullTOP, switchTOP, syphonspoutoutTOP, syphonspoutinTOP,
        ndioutTOP, ndiinTOP, textDAT, tableDAT, parameterexecuteDAT, executeDAT, oscoutDAT,
        oscinDAT,
    )
}  # fmt: skip

PENDING: list[tuple[Par, ParValue]] = []  # value changes waiting for the end of the frame
FRAME = [0]


def root(node: OP) -> OP:
    while node._parent is not None:
        node = node._parent
    return node


def walk(node: OP) -> Iterator[OP]:
    yield node
    if isinstance(node, COMP):
        for child in node.children:
            yield from walk(child)


def new_project() -> COMP:
    """A fresh ``/`` with ``/project1`` in it, as a new TouchDesigner file has."""
    PENDING.clear()
    top = baseCOMP(None, "")
    return top.create(baseCOMP, "project1")  # type: ignore[return-value]


def script_globals(me: OP) -> dict[str, Any]:
    """What a DAT script sees: the operator types, ``me``, ``op`` (relative to ``me``),
    ``parent()`` and ``debug``."""
    return {
        **OP_TYPES,
        "me": me,
        "op": me.resolve,
        "parent": me.parent,
        "debug": print,
        "__name__": me.name,
    }


def run_script(dat: DAT) -> dict[str, Any]:
    """Run a Text DAT as Run Script does; returns the script's globals."""
    namespace = script_globals(dat)
    exec(compile(dat.text, dat.path, "exec"), namespace)
    return namespace


def frame(project: OP) -> None:
    """One frame: value-change callbacks, Execute DATs' onFrameStart, OSC In DATs."""
    FRAME[0] += 1
    while PENDING:
        par, previous = PENDING.pop(0)
        if par.owner.valid:
            for parexec in _listeners(par.owner, par, "valuechange"):  # type: ignore[arg-type]
                parexec.module.onValueChange(par, previous)
    for node in list(walk(root(project))):
        if not node.valid:
            continue
        if isinstance(node, executeDAT) and node.par.active.eval() and node.par.framestart.eval():
            node.module.onFrameStart(FRAME[0])
        if isinstance(node, oscinDAT):
            node._poll()


def frames_until(project: OP, done: Callable[[], bool], timeout: float) -> bool:
    """Run frames (at about 60 a second) until ``done()`` or ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frame(project)
        if done():
            return True
        time.sleep(1 / 60)
    return done()
