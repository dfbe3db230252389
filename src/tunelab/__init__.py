"""tunelab: fine-tune a Hugging Face model fully or with a PEFT method, and measure what each costs, learns and
forgets.

The Python API mirrors the command line, one function per command, with the same option names::

    import tunelab
    result = tunelab.train(model="smollm2-135m", dataset="data.jsonl", method="lora", max_steps=50,
                           output_dir="out/lora")
    comparison = tunelab.compare("demo", max_steps=10)
    comparison.table()
"""

__version__ = "0.1.0"

from tunelab.errors import TunelabError  # noqa: E402

_API = {"train", "evaluate", "compare", "estimate", "Comparison", "MemoryEstimate", "read_results", "generate",
        "merge", "export_gguf", "push", "AdapterSession"}


def __getattr__(name: str):
    # The API pulls in torch and transformers; load it on first use so `import tunelab` stays instant.
    if name in _API:
        from tunelab import api

        return getattr(api, name)
    raise AttributeError(f"module 'tunelab' has no attribute {name!r}")


__all__ = ["TunelabError", "__version__", *sorted(_API)]
