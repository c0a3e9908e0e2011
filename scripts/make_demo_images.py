"""Select the demo image set shipped in ``demo/images/`` from the CIFAR-10 JPEG tar, reproducibly.

Rule: from the TEST split (so no image is in the demo checkpoint's training data), the first ``--per-class``
files of every class in sorted file-name order, copied byte for byte (the original JPEG bytes, no re-encoding).
``demo/SHA256SUMS`` lists every shipped file with its sha256 (``cd demo && sha256sum -c SHA256SUMS``).

    python scripts/make_demo_images.py --tar ../shared/datasets/cifar10-jpg.tar           # write demo/images
    python scripts/make_demo_images.py --tar ../shared/datasets/cifar10-jpg.tar --check   # verify, change nothing

The tar layout is ``cifar10/{train,test}/<class>/NNNN.jpg``. Exit codes: 0 ok, 1 ``--check`` found a
difference, 2 bad input.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tarfile
from collections import defaultdict
from pathlib import Path, PurePosixPath

from rich.console import Console

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo"
SPLIT = "test"
console = Console(stderr=True)


def select(tar: tarfile.TarFile, per_class: int) -> dict[str, list[tarfile.TarInfo]]:
    """``{class: members}``: the first ``per_class`` JPEG files of each test class, in sorted name order."""
    by_class: dict[str, list[tarfile.TarInfo]] = defaultdict(list)
    for member in tar.getmembers():
        parts = PurePosixPath(member.name).parts
        if member.isfile() and len(parts) == 4 and parts[1] == SPLIT and parts[3].lower().endswith(".jpg"):
            by_class[parts[2]].append(member)
    if not by_class:
        raise ValueError(f"{tar.name}: no files matching cifar10/{SPLIT}/<class>/*.jpg")
    chosen: dict[str, list[tarfile.TarInfo]] = {}
    for name in sorted(by_class):
        members = sorted(by_class[name], key=lambda m: m.name)
        if len(members) < per_class:
            raise ValueError(f"{tar.name}: class {name!r} has {len(members)} {SPLIT} images, fewer than {per_class}")
        chosen[name] = members[:per_class]
    return chosen


def source_note(tar: tarfile.TarFile) -> str | None:
    """The tar's ``cifar10/SOURCE.txt`` when it has one."""
    try:
        handle = tar.extractfile("cifar10/SOURCE.txt")
    except KeyError:
        return None
    return handle.read().decode("utf-8") if handle is not None else None


def build(tar_path: Path, out: Path, per_class: int) -> dict[str, bytes]:
    """``{relative path: bytes}`` of the selection (paths relative to ``demo/``)."""
    files: dict[str, bytes] = {}
    with tarfile.open(tar_path) as tar:
        note = source_note(tar)
        for name, members in select(tar, per_class).items():
            for member in members:
                handle = tar.extractfile(member)
                if handle is None:
                    raise ValueError(f"{tar_path}: {member.name} is not a regular file")
                rel = out.relative_to(DEMO) / name / PurePosixPath(member.name).name
                files[rel.as_posix()] = handle.read()
    if note is not None:
        console.print(f"{tar_path}: cifar10/SOURCE.txt says:\n{note}", highlight=False)
    else:
        console.print(f"{tar_path}: has no cifar10/SOURCE.txt (provenance as in shared/datasets/README.md)")
    return files


def sums_text(files: dict[str, bytes]) -> str:
    return "".join(f"{hashlib.sha256(data).hexdigest()}  {rel}\n" for rel, data in sorted(files.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tar", type=Path, required=True, help="cifar10-jpg.tar")
    parser.add_argument("--per-class", type=int, default=100, help="images per class (default 100)")
    parser.add_argument("--check", action="store_true", help="verify demo/images against the tar")
    args = parser.parse_args(argv)
    out = DEMO / "images"
    sums = DEMO / "SHA256SUMS"
    if not args.tar.is_file():
        console.print(f"[red]error:[/] {args.tar}: no such file (expected the CIFAR-10 JPEG tar)")
        return 2
    try:
        files = build(args.tar, out, args.per_class)
    except (ValueError, tarfile.TarError) as error:
        console.print(f"[red]error:[/] {error}")
        return 2
    expected = sums_text(files)
    if args.check:
        shipped = {p.relative_to(DEMO).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
        problems = []
        if shipped != files:
            missing = sorted(set(files) - set(shipped))
            extra = sorted(set(shipped) - set(files))
            changed = sorted(k for k in set(files) & set(shipped) if files[k] != shipped[k])
            problems.append(f"images differ: missing {missing[:5]}, extra {extra[:5]}, changed {changed[:5]}")
        if not sums.is_file() or sums.read_text() != expected:
            problems.append(f"{sums} is missing or out of date")
        for problem in problems:
            console.print(f"[red]mismatch:[/] {problem}")
        if not problems:
            console.print(f"demo/images matches the selection rule: {len(files)} files")
        return 1 if problems else 0
    if out.exists():
        shutil.rmtree(out)
    for rel, data in files.items():
        path = DEMO / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    sums.write_text(expected)
    total = sum(len(d) for d in files.values())
    classes = len({PurePosixPath(rel).parts[1] for rel in files})
    console.print(f"wrote {len(files)} images ({classes} classes, {total / 1e6:.2f} MB) to {out} and {sums}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
