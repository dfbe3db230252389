"""Process set-up of logging, for the programs tunelab starts: the `tunelab` command and the comparison's worker.

Library modules only log through ``logging.getLogger(__name__)``; what a process shows, and which third-party
notices it silences, is decided here, once per process, never as a side effect of importing a module (a Python
user of tunelab keeps their own logging and warnings configuration).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from typing import Iterator


class _DropNotices(logging.Filter):
    """Drops a logger's records whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


# logger -> the notices dropped from it
NOTICES = {
    # bitsandbytes warns on import, on CPUs with AVX512-BF16, that it cannot fetch an optional inference kernel from
    # the Hub (the `kernels` package); it then uses its own CPU kernel, so the warning only alarms users.
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward from kernels-community",),
    # lm-eval warns, twice per benchmark probe, when it is handed a model object rather than a name: tunelab's probes
    # score the model in memory, in one process, on purpose.
    "lm_eval.models.huggingface": ("`pretrained` model kwarg is not of type `str`",
                                   "Passed an already-initialized model through `pretrained`"),
}


def quiet_library_notices() -> None:
    """Silence third-party notices that tell a tunelab user nothing they can act on."""
    for name, prefixes in NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotices) for f in logger.filters):
            logger.addFilter(_DropNotices(prefixes))
    # peft 0.21 still reads the attribute that transformers 5 renamed; the warning is theirs to fix, not the user's.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def setup_logging() -> None:
    """tunelab's log lines on stderr as ``[tunelab] ...``, at TUNELAB_LOG_LEVEL (default INFO)."""
    quiet_library_notices()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[tunelab] %(message)s"))
    root = logging.getLogger("tunelab")
    root.handlers[:] = [handler]
    from tunelab.distributed import is_main_process

    # [distributed] the other processes of a launch say only what goes wrong (their warnings repeat the main one's)
    root.setLevel(os.environ.get("TUNELAB_LOG_LEVEL", "INFO") if is_main_process() else "ERROR")
    root.propagate = False


@contextlib.contextmanager
def progress_shown() -> Iterator[None]:
    """Around a long API call (``tunelab.compare``): tunelab's progress lines (which run of how many is done, the
    time left, each search trial) on stderr as the command prints them, for a Python user who has not configured
    logging, who would otherwise see the runs' own progress bars and nothing of the comparison's. Where the user
    configured logging (a handler on the root or the "tunelab" logger, or a level on "tunelab"), their set-up
    decides. Taken off afterwards."""
    logger = logging.getLogger("tunelab")
    if logger.handlers or logging.getLogger().handlers or logger.level != logging.NOTSET:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[tunelab] %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
