"""``msir-export CHECKPOINT --format onnx``: a checkpoint as an ONNX graph (+ its JSON) beside it."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from models.checkpoint import CheckpointError

FORMATS = ("onnx",)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="msir-export",
        description=(
            "Export an msir checkpoint. onnx: NAME.onnx (input 'pixels' uint8 [batch, C, H, W] as models.to_uint8 "
            "makes them; outputs 'embedding' (L2-normalised) and 'logits'; dynamic batch) and NAME.onnx.json (the "
            "checkpoint's metadata with its preprocessing spec, plus the graph's sha256), beside the checkpoint."
        ),
    )
    parser.add_argument("checkpoint", help="NAME.safetensors (with NAME.json beside it)")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="export format (onnx)")
    parser.add_argument("--out", help="output NAME.onnx (default: beside the checkpoint)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    # The exporter reports every op it translates at INFO/WARNING: not the user's concern.
    logging.getLogger("torch.onnx").setLevel(logging.DEBUG if args.verbose else logging.ERROR)
    from models.onnx import export_onnx, onnx_paths

    try:
        path = export_onnx(args.checkpoint, args.out)
    except (CheckpointError, OSError) as exc:
        sys.stderr.write(f"msir-export: error: {exc}\n")
        raise SystemExit(2) from exc
    sys.stdout.write(f"{path}\n{onnx_paths(path)[1]}\n")


if __name__ == "__main__":
    main()
