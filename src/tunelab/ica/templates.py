"""The ICA template format: one versioned JSON layout that `tunelab ica build` writes and `tunelab train` reads.

```json
{
  "format": "tunelab-ica-templates",
  "version": 1,
  "layout": {"model_type": "llama", "architecture": "LlamaForCausalLM", "num_layers": 30, "hidden_size": 576},
  "model_name_or_path": "smollm2-135m",
  "build": {"dataset_name_or_path": "...", "samples": 100, "components": 10, "percentile": 98.0, ...},
  "components": [
    {"id": 0, "size": 346, "layers": {"0": [12, 301], "7": [5]}},
    ...
  ]
}
```

A component is a set of (layer, channel) pairs: ``layers`` maps a decoder-layer index (a JSON string key) to the
sorted channel indices of that layer's MLP output (the hidden dimension). ``layout`` describes the model the
templates were built for; a model with another layout is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.fileio import atomic_write_json

FORMAT = "tunelab-ica-templates"
VERSION = 1


@dataclass(frozen=True)
class Layout:
    """What a template depends on: the decoder's type, depth and width."""

    model_type: str
    architecture: str | None
    num_layers: int
    hidden_size: int

    def describe(self) -> str:
        arch = f" ({self.architecture})" if self.architecture else ""
        return f"{self.model_type}{arch}, {self.num_layers} layers, hidden size {self.hidden_size}"

    def matches(self, other: "Layout") -> bool:
        return (self.model_type, self.num_layers, self.hidden_size) == (
            other.model_type, other.num_layers, other.hidden_size)

    def as_dict(self) -> dict[str, Any]:
        return {"model_type": self.model_type, "architecture": self.architecture, "num_layers": self.num_layers,
                "hidden_size": self.hidden_size}


@dataclass
class IcaTemplates:
    layout: Layout
    components: list[dict[int, list[int]]]          # per component: layer -> sorted channel indices
    build: dict[str, Any] = field(default_factory=dict)
    model_name_or_path: str | None = None

    # --- JSON -------------------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "layout": self.layout.as_dict(),
            "model_name_or_path": self.model_name_or_path,
            "build": self.build,
            "components": [{"id": i, "size": sum(len(c) for c in comp.values()),
                            "layers": {str(layer): list(map(int, comp[layer])) for layer in sorted(comp)}}
                           for i, comp in enumerate(self.components)],
        }

    @classmethod
    def from_json(cls, data: Any, source: str) -> "IcaTemplates":
        def bad(what: str) -> TunelabError:
            return TunelabError(f"{source}: {what}; rebuild it with `tunelab ica build`")

        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise bad(f"not an ICA template file (expected \"format\": \"{FORMAT}\")")
        version = data.get("version")
        if not isinstance(version, int) or version > VERSION:
            raise TunelabError(f"{source}: template format version {version!r} is newer than this tunelab reads "
                               f"(version {VERSION}); upgrade tunelab or rebuild the templates")
        if version < 1:
            raise bad(f"template format version {version!r} is not valid")
        lay = data.get("layout")
        try:
            layout = Layout(model_type=str(lay["model_type"]), architecture=lay.get("architecture"),
                            num_layers=int(lay["num_layers"]), hidden_size=int(lay["hidden_size"]))
        except (TypeError, KeyError, ValueError):
            raise bad("'layout' needs model_type, num_layers and hidden_size") from None
        raw = data.get("components")
        if not isinstance(raw, list) or not raw:
            raise bad("'components' must be a non-empty list")
        components: list[dict[int, list[int]]] = []
        for i, comp in enumerate(raw):
            if not isinstance(comp, dict) or comp.get("id") != i or not isinstance(comp.get("layers"), dict):
                raise bad(f"component {i} must be {{\"id\": {i}, \"layers\": {{layer: [channels]}}}} (ids in order "
                          "from 0)")
            layers: dict[int, list[int]] = {}
            for key, channels in comp["layers"].items():
                try:
                    layer = int(key)
                    chans = sorted({int(c) for c in channels})
                except (TypeError, ValueError):
                    raise bad(f"component {i}: layer {key!r} must map to a list of channel indices") from None
                if not 0 <= layer < layout.num_layers:
                    raise bad(f"component {i}: layer {layer} is outside the layout's {layout.num_layers} layers")
                if chans and not (0 <= chans[0] and chans[-1] < layout.hidden_size):
                    raise bad(f"component {i}, layer {layer}: channel indices must be in [0, {layout.hidden_size})")
                if chans:
                    layers[layer] = chans
            components.append(layers)
        return cls(layout=layout, components=components, build=dict(data.get("build") or {}),
                   model_name_or_path=data.get("model_name_or_path"))

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path, flag: str = "--ica_templates") -> "IcaTemplates":
        path = Path(path)
        if not path.is_file():
            raise TunelabError(f"{flag} {path}: file not found; build templates with `tunelab ica build ... "
                               "--output FILE.json`, or leave the flag out to build them from the training data")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TunelabError(f"{flag} {path}: not valid JSON ({e}); rebuild it with `tunelab ica build`") \
                from None
        return cls.from_json(data, f"{flag} {path}")

    # --- use ----------------------------------------------------------------------------------------------------
    def check_layout(self, layout: Layout, *, source: str, model: str) -> None:
        """Refuse templates built for a model of another layout, naming both."""
        if not self.layout.matches(layout):
            built_for = f" ({self.model_name_or_path})" if self.model_name_or_path else ""
            raise TunelabError(f"{source}: built for {self.layout.describe()}{built_for}, but {model} is "
                               f"{layout.describe()}; build templates for this model with `tunelab ica build "
                               f"--model_name_or_path {model} ...` or leave --ica_templates out")

    def select(self, component_ids: list[int] | None = None, layers: list[int] | None = None) -> dict[int, list[int]]:
        """The union of the chosen components' channels, restricted to the chosen layers: layer -> channels."""
        ids = list(range(len(self.components))) if component_ids is None else list(component_ids)
        for i in ids:
            if not 0 <= i < len(self.components):
                raise TunelabError(f"--ica_component_ids {i}: the templates hold components 0 to "
                                   f"{len(self.components) - 1}; pick ids in that range")
        union: dict[int, set[int]] = {}
        for i in ids:
            for layer, channels in self.components[i].items():
                if layers is None or layer in layers:
                    union.setdefault(layer, set()).update(channels)
        return {layer: sorted(ch) for layer, ch in sorted(union.items()) if ch}


def parse_layers(spec: str | None, num_layers: int | None = None, flag: str = "--ica_mask_layers") -> list[int] | None:
    """``"0,2:5"`` -> [0, 2, 3, 4]: indices and end-exclusive ranges (``:3`` and ``5:`` are open). Without
    ``num_layers`` only the syntax is checked (open-ended ranges then stay unresolved and None is returned)."""
    if spec is None:
        return None
    text = str(spec).replace(" ", "")
    if not text:
        raise TunelabError(f"{flag}: empty; give layer indices and ranges such as 0,2:5")
    chosen: set[int] = set()
    for part in text.split(","):
        try:
            if ":" in part:
                start_s, end_s = part.split(":", 1)
                start = int(start_s) if start_s else 0
                if end_s == "" and num_layers is None:
                    end = start + 1
                else:
                    end = int(end_s) if end_s else num_layers
                if start < 0 or end <= start:
                    raise ValueError
                chosen.update(range(start, end))
            else:
                index = int(part)
                if index < 0:
                    raise ValueError
                chosen.add(index)
        except ValueError:
            raise TunelabError(f"{flag} {spec}: {part!r} is not a layer index or a range start:end with "
                               "start < end (e.g. 0,2:5 means layers 0, 2, 3 and 4)") from None
    if num_layers is not None:
        outside = sorted(i for i in chosen if i >= num_layers)
        if outside:
            raise TunelabError(f"{flag} {spec}: layer {outside[0]} does not exist; the model has layers 0 to "
                               f"{num_layers - 1}")
    return sorted(chosen)
