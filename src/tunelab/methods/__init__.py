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


def unregister(name: str) -> None:
    """Remove a method (a test's, or a plugin's being reloaded); unknown names are ignored."""
    _REGISTRY.pop(name, None)


def method_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def method_of_adapter(adapter_config: dict, method: str | None = None) -> Method | None:
    """The method that made a saved adapter: the one its run names, else the first whose peft_type it has (a LORA
    adapter from outside tunelab is a lora adapter); None for a peft type no method here declares."""
    if method in _REGISTRY:
        return _REGISTRY[method]
    peft_type = str(adapter_config.get("peft_type", "")).upper()
    return next((m for m in _REGISTRY.values() if m.peft_type and m.peft_type == peft_type), None)


# Registration order is the order users see in --help and `tunelab compare` listings.
from tunelab.methods import full, lora, ia3, prompt, lycoris, vera, oft  # noqa: E402,F401

__all__ = ["ApplyContext", "Method", "get_method", "method_names", "method_of_adapter", "register", "unregister"]
