"""tunelab: fine-tune a Hugging Face model fully or with a PEFT method, and measure what each costs, learns and
forgets."""

__version__ = "0.1.0"
