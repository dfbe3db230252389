"""What `tunelab train --merge_adapter_with_base / --convert_to_gguf` does once training has finished.

The same functions as `tunelab merge` and `tunelab export gguf`, run on the run's own output directory:
the merged model goes to OUTPUT_DIR/merged, the GGUF file to OUTPUT_DIR/model-<outtype>.gguf, and both paths are
recorded under ``exports`` in train_results.json. Flag combinations that cannot work are refused before training.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.fileio import atomic_write_json
from tunelab import run_files
from tunelab.records import TrainRecord

log = logging.getLogger(__name__)

MERGED_DIR = "merged"


def gguf_name(outtype: str) -> str:
    return f"model-{outtype}.gguf"


def check(opts) -> None:
    """Refuse --merge_adapter_with_base / --convert_to_gguf where they cannot work, before anything is trained."""
    if not (getattr(opts, "merge_adapter_with_base", False) or getattr(opts, "convert_to_gguf", False)):
        return
    from tunelab.methods import get_method

    method = get_method(opts.method)
    if opts.merge_adapter_with_base and not method.peft:
        raise TunelabError("--merge_adapter_with_base: --method full saves the whole model already, there is no "
                           "adapter to merge; drop the flag")
    if method.peft and not method.mergeable:
        flag = "--merge_adapter_with_base" if opts.merge_adapter_with_base else "--convert_to_gguf"
        raise TunelabError(f"{flag}: --method {method.name} adapters cannot be merged into the base (they add learned "
                           "prompt or prefix inputs, not weight updates); drop the flag, or train a method that "
                           "changes weights (lora, qlora, dora, ia3, loha, lokr, vera, adalora, oft)")
    if opts.convert_to_gguf:
        from tunelab.gguf_export import check_exportable

        if opts.task_type not in ("auto", "causal_lm"):
            raise TunelabError(f"--convert_to_gguf: GGUF export writes causal language models, not --task_type "
                               f"{opts.task_type}; drop one of the two")
        from tunelab.models import peek_config

        # (a check installs nothing: peek_config reads a built-in model's config without fetching it)
        check_exportable(peek_config(opts.model_name_or_path, trust_remote_code=opts.trust_remote_code),
                         "--convert_to_gguf")


def run(opts, out: Path, results: TrainRecord, results_path: Path) -> dict[str, Any] | None:
    """Make the exports the flags ask for that OUT does not hold yet; record them under ``exports`` in RESULTS
    and in RESULTS_PATH (the run's train_results.json)."""
    if not (getattr(opts, "merge_adapter_with_base", False) or getattr(opts, "convert_to_gguf", False)):
        return None
    from tunelab.methods import get_method

    check(opts)
    out = Path(out)
    peft = get_method(results.method or opts.method).peft
    exports = dict(results.exports or {})
    merged = out / MERGED_DIR
    if opts.merge_adapter_with_base:
        from tunelab.merge import merge

        if not (merged / run_files.MERGE_INFO).is_file():
            log.info("merging the adapter into the base: %s", merged)
            merge(opts.model_name_or_path, str(out), merged, overwrite_output_dir=True, use_cpu=opts.use_cpu)
        exports["merged_model_dir"] = str(merged)
    if opts.convert_to_gguf:
        from tunelab.gguf_export import export_gguf

        path = out / gguf_name(opts.gguf_outtype)
        if not path.is_file():
            log.info("writing %s", path)
            if not peft:
                result = export_gguf(str(out), path, outtype=opts.gguf_outtype, use_cpu=opts.use_cpu)
            elif (merged / "config.json").is_file():
                result = export_gguf(str(merged), path, outtype=opts.gguf_outtype, use_cpu=opts.use_cpu)
            else:
                result = export_gguf(opts.model_name_or_path, path, adapter=str(out), outtype=opts.gguf_outtype,
                                     use_cpu=opts.use_cpu)
            exports.setdefault("gguf", {})[opts.gguf_outtype] = result.as_dict()
        elif opts.gguf_outtype not in exports.get("gguf", {}):
            exports.setdefault("gguf", {})[opts.gguf_outtype] = {"gguf_file": str(path),
                                                                 "gguf_file_bytes": path.stat().st_size}
    if exports != results.exports:
        results.exports = exports
        atomic_write_json(results_path, results.to_json())
    return exports
