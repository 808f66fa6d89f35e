"""One registry per extension point, filled by a decorator, so a new method is one file.

Registries are filled when the module defining an entry is imported; each package that owns a registry
imports all of its submodules on first use (``Registry.discover``), so dropping a file into the package is
enough to register it.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from datakd.errors import ConfigError, choice_error

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to classes or factories; unknown names fail with the list of valid ones."""

    def __init__(self, kind: str, packages: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._packages = packages
        self._discovered = False

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            key = name or getattr(obj, "__name__", None)
            if key is None:
                raise TypeError("registry entries need a name")
            if key in self._entries and self._entries[key] is not obj:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = obj
            return obj

        return decorator

    def discover(self) -> None:
        """Import every submodule of the owning packages once, so their decorators run."""
        if self._discovered:
            return
        self._discovered = True
        for package_name in self._packages:
            package = importlib.import_module(package_name)
            for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
                importlib.import_module(info.name)

    def get(self, name: str) -> T:
        self.discover()
        if name not in self._entries:
            raise choice_error(self.kind, name, self._entries)
        return self._entries[name]

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        self.discover()
        for key in sorted(self._entries):
            yield key, self._entries[key]

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._entries

    def build(self, name: str, /, **kwargs: Any) -> Any:
        """Instantiate entry `name` with `kwargs`, rejecting keyword arguments it does not accept."""
        factory = self.get(name)
        check_kwargs(f"{self.kind} {name!r}", factory, kwargs)
        return factory(**kwargs)  # type: ignore[operator]


def describe(obj: object) -> str:
    """First line of an entry's docstring: the one-line description `datakd list` prints."""
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def accepted_kwargs(factory: object) -> set[str] | None:
    """Names a callable accepts as keywords, or None when it takes **kwargs."""
    if inspect.isclass(factory):
        owner = next((c for c in factory.__mro__ if "__init__" in vars(c)), object)
        if owner.__module__.startswith("torch.") or owner is object:
            return set()  # no constructor of its own: it takes no options
        target = factory.__init__  # type: ignore[misc]
    else:
        target = factory
    params = inspect.signature(target).parameters  # type: ignore[arg-type]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return {
        n
        for n, p in params.items()
        if n != "self" and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }


def check_kwargs(what: str, factory: object, kwargs: dict[str, Any], reserved: tuple[str, ...] = ()) -> None:
    """Fail with a one-line error when `kwargs` holds keys the factory does not take."""
    accepted = accepted_kwargs(factory)
    if accepted is None:
        return
    accepted -= set(reserved)
    for key in kwargs:
        if key not in accepted:
            raise choice_error(f"option of {what}:", key, accepted, ConfigError)
