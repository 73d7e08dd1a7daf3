"""What the benchmark scripts share: where JSON goes ($OUT when set, the GPU suite, else
benchmarks/results/<device>/) and the CPU allocator setting they measure under."""
import json
import os
from pathlib import Path


def save_result(filename: str, device: str, result: dict, quiet: bool = False) -> Path:
    """Write ``result`` as JSON (to a temporary name, then renamed: a run killed mid-write keeps
    the previous file); returns the path."""
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else (
        Path(__file__).resolve().parent / "results" / device)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / filename
    tmp = path.with_name(f"{filename}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)
    if not quiet:
        print(f"wrote {path}")
    return path


def set_allocator(device: str, default_malloc: bool) -> str:
    """On CPU, keep large buffers in glibc's heap (``keep_large_buffers``, as train.py does)
    unless ``default_malloc``; returns what the numbers were measured under, for the JSON."""
    if device != "cpu":
        return "device allocator"
    from fastnofrost.training.host import keep_large_buffers

    kept = not default_malloc and keep_large_buffers()
    return "glibc, large buffers kept in the heap" if kept else "glibc default"
