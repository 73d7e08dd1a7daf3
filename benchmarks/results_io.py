"""Where benchmark JSON goes: $OUT when set (the GPU suite), else benchmarks/results/<device>/."""
import json
import os
from pathlib import Path


def save_result(filename: str, device: str, result: dict) -> Path:
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else (
        Path(__file__).resolve().parent / "results" / device)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / filename
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return path
