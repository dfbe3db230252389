"""The method registry: name -> Method. Adding a method is one module here and one ``register`` call."""

from __future__ import annotations

from tunelab.errors import TunelabError
from tunelab.methods.base import ApplyContext, Method

_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in _REGISTRY:
        raise ValueError(f"method {method.name} registered twice")
    _REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise TunelabError(f"--method {name}: unknown method; choose one of {', '.join(_REGISTRY)}") from None


def method_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


# Registration order is the order users see in --help and `tunelab compare` listings.
from tunelab.methods import full, lora, ia3, prompt, lycoris, vera, oft  # noqa: E402,F401

__all__ = ["ApplyContext", "Method", "get_method", "method_names", "register"]
