"""Real PyTorch files, made by real torch: fine-tuned torchvision models saved with ``torch.save`` and TorchScript.

The synthetic ``pt`` corpus (``bench/torch_checkpoint.py``) writes torch.save's zip layout without torch. This
benchmark makes the files with torch itself — its zip writer (64-byte aligned entries, its own records),
``torch.jit.save`` archives (code, constants, debug info beside the tensors) — from real architectures
(torchvision's ``mobilenet_v3_small`` and ``resnet18``, random init: no weights are downloaded), and changes
them by real training steps:

- ``finetune``: every parameter trained (Adam, lr 1e-4, ``STEPS`` steps on random images and labels, train
  mode so BatchNorm's running statistics move too) — a low-learning-rate retrain;
- ``head``: backbone frozen and in eval mode, only the classifier trained — transfer learning;
- ``fp16``: the ``finetune`` pair with both models in half precision.

Two steps, because torch is not in lorien's environment::

    TORCHVENV/bin/python -m bench.real_torch make --out /tmp/real-torch     # needs torch + torchvision
    .venv/bin/python -m bench.real_torch run --corpus /tmp/real-torch [--tools lorien,xdelta3,…] [--only resnet18]

``make`` writes each pair as ``<name>/old.<ext>``, ``<name>/new.<ext>`` and ``pairs.json``; ``run`` measures
every tool on every pair with ``bench.run.bench_pair`` (separate processes, outputs verified by SHA-256) and
writes ``results/real-torch-<UTC timestamp>.json`` plus the markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

STEPS = 20
SEED = 0
MODELS = ("mobilenet_v3_small", "resnet18")
KINDS = ("finetune", "head", "fp16")
SAVERS = ("state_dict", "torchscript")


# --------------------------------------------------------------------------- make (needs torch)


def _train(model: Any, steps: int, head_only: bool, seed: int) -> None:
    import torch

    generator = torch.Generator().manual_seed(seed)
    if head_only:
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        head = model.fc if hasattr(model, "fc") else model.classifier
        for parameter in head.parameters():
            parameter.requires_grad_(True)
        model.eval()  # BatchNorm statistics stay: only the head's bytes change
    else:
        model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    for _ in range(steps):
        images = torch.randn(8, 3, 96, 96, generator=generator)
        labels = torch.randint(0, 1000, (8,), generator=generator)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    model.eval()


def _save(model: Any, path: Path, saver: str) -> None:
    import torch

    if saver == "state_dict":
        torch.save(model.state_dict(), path)
    else:
        example = torch.randn(1, 3, 96, 96, dtype=next(model.parameters()).dtype)
        with torch.no_grad():
            torch.jit.save(torch.jit.trace(model, example), path)


def make(out: Path) -> list[dict[str, Any]]:
    import copy

    import torch
    import torchvision

    out.mkdir(parents=True, exist_ok=True)
    pairs = []
    for model_name in MODELS:
        torch.manual_seed(SEED)
        base = getattr(torchvision.models, model_name)(weights=None)
        base.eval()
        for kind in KINDS:
            old_model = copy.deepcopy(base)
            new_model = copy.deepcopy(base)
            _train(new_model, STEPS, head_only=kind == "head", seed=SEED + 1)
            if kind == "fp16":
                old_model, new_model = old_model.half(), new_model.half()
            for saver in SAVERS:
                name = f"{model_name}-{kind}-{saver}"
                directory = out / name
                directory.mkdir(exist_ok=True)
                extension = "pth" if saver == "state_dict" else "pt"
                old, new = directory / f"old.{extension}", directory / f"new.{extension}"
                _save(old_model, old, saver)
                _save(new_model, new, saver)
                pairs.append(
                    {
                        "name": name,
                        "format": "pt",
                        "size": model_name,
                        "scenario": f"{kind}-{saver}",
                        "old": str(old.relative_to(out)),
                        "new": str(new.relative_to(out)),
                        "old_bytes": old.stat().st_size,
                        "new_bytes": new.stat().st_size,
                        "old_sha256": _sha256(old),
                        "new_sha256": _sha256(new),
                    }
                )
                print(f"{name}: old {old.stat().st_size:,} B, new {new.stat().st_size:,} B", flush=True)
    versions = {"torch": torch.__version__, "torchvision": torchvision.__version__}
    index = {"made_with": versions, "steps": STEPS, "seed": SEED, "pairs": pairs}
    (out / "pairs.json").write_text(json.dumps(index, indent=2) + "\n")
    return pairs


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- command line ("run": bench.pairs_file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.real_torch", description=__doc__.split("\n")[0])
    actions = parser.add_subparsers(dest="action", required=True)
    made = actions.add_parser("make", help="write the pairs (needs torch and torchvision)")
    made.add_argument("--out", type=Path, required=True)
    from bench.pairs_file import add_run_command, run_command

    add_run_command(actions, "lorien,bsdiff4,xdelta3,zstd-patch-from,zstd-full,hdiffpatch,detools")
    args = parser.parse_args(argv)
    if args.action == "make":
        make(args.out)
        return 0
    return run_command(parser, args, "real-torch")


if __name__ == "__main__":
    sys.exit(main())
