"""The method registry: name -> Method. Adding a method is one module here and one ``register`` call."""

from __future__ import annotations

from tunelab.errors import TunelabError
from tunelab.methods.base import ApplyContext, Method, MethodFlag, MethodOption

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


# --- text generated from the declarations: --help, the API's docstrings, the README's method table -----------------

def used_by(option: str) -> tuple[str, ...]:
    """The methods that read a flag (their declared ``options``)."""
    return tuple(name for name, m in _REGISTRY.items() if any(o.name == option for o in m.options))


def flag_declaration(name: str) -> MethodFlag:
    """The declaration of a method flag (--lora_r) by the method family that owns it; one name, one declaration."""
    found = {o for m in _REGISTRY.values() for o in m.options if o.name == name}
    if len(found) != 1:
        raise ValueError(f"method flag {name!r}: {len(found)} declarations among the registered methods (expected "
                         "exactly one, named by every method that reads it)")
    return found.pop()


def option_help(option: str, text: str) -> str:
    """A method option's help text, naming the methods that read it (so --help groups them by method)."""
    users = used_by(option)
    return f"[{', '.join(users)}] {text}" if users else text


def own_options_help() -> str:
    """--method_options' help: every registered method's own options (computed when --help is built)."""
    own = [f"{name}: " + ", ".join(f"{o.name} (default {o.default!r}{'; ' + o.help if o.help else ''})"
                                   for o in m.own_options)
           for name, m in _REGISTRY.items() if m.own_options]
    return ("options of a method's own that no flag holds, as NAME=VALUE (e.g. a method added as a plugin); "
            + ("; ".join(own) if own else "none of the registered methods has any"))


def _rate(x: float) -> str:
    """2e-4, not 0.0002 (how papers and peft's guides write learning rates)."""
    mantissa, exponent = f"{x:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def default_learning_rates() -> str:
    """'5e-05 for full; 0.0002 for lora, qlora, ...': each method's default, methods that share one together."""
    by_rate: dict[float, list[str]] = {}
    for name, m in _REGISTRY.items():
        by_rate.setdefault(m.default_learning_rate, []).append(name)
    return "; ".join(f"{_rate(rate)} for {', '.join(names)}" for rate, names in by_rate.items())


def method_table() -> str:
    """The README's table of methods (markdown), from each method's declaration."""
    rows = ["| method | what it trains | its options | default learning rate | merges | packs | model kinds |",
            "|---|---|---|---|---|---|---|"]
    for name, m in _REGISTRY.items():
        why = f": {m.default_learning_rate_why}" if m.default_learning_rate_why else ""
        options = ", ".join([f"`--{o.name}`" for o in m.options]
                            + [f"`--method_options {o.name}=…`" for o in m.own_options]) or "none"
        rows.append(f"| `{name}` | {m.summary} | {options} | {_rate(m.default_learning_rate)}{why} | "
                    f"{'yes' if m.mergeable else 'no'} | {'yes' if m.supports_packing else 'no'} | "
                    f"{', '.join(m.task_kinds)} |")
    return "\n".join(rows)


# Registration order is the order users see in --help and `tunelab compare` listings.
from tunelab.methods import full, lora, ia3, prompt, lycoris, vera, oft  # noqa: E402,F401

__all__ = ["ApplyContext", "Method", "MethodFlag", "MethodOption", "get_method", "method_names", "method_of_adapter", "register", "unregister"]
