"""`tunelab estimate --validate`: predicted against measured peak memory for the issue's cases, saved for the
README. On a GPU, measured = torch.cuda.max_memory_allocated; on the CPU it is the same live-tensor-byte counter
run on real tensors during a real step (so the CPU figures check the fake-tensor trace, not an allocator).

    .venv/bin/python bench/estimate_validate.py [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from common import write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    cmd = ["tunelab", "estimate", "--validate", "--device", args.device]
    done = subprocess.run([sys.executable, "-m", *cmd, "--json"], capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise SystemExit(done.stderr[-3000:])
    result = json.loads(done.stdout)
    for c in result["cases"]:
        print(f"{c['model']:<14}{c['method']:<7}{'ckpt' if c['gradient_checkpointing'] else '    '} "
              f"{c['max_seq_length']:>5} {100 * c['error']:+.3f}%")
    write_result("estimate-validate", {"command": " ".join(cmd), "passed": done.returncode == 0, **result})


if __name__ == "__main__":
    main()
