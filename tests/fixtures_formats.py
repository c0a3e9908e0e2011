"""Tiny datasets written in the real on-disk formats, for tests (readers, cache, indexer).

Plain functions, no pytest magic: call them with a ``tmp_path``. Each returns the path to give
``open_dataset`` (the dataset root, or the CSV for a manifest). Pixel values encode the class so a test can
check that ``reader.load`` returns the right image: :func:`class_colour` gives the colour of class ``c``.
"""

from __future__ import annotations

import csv
import gzip
import io
import pickle
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
ISIC_DX = ["mel", "nv", "bcc", "akiec", "bkl", "df", "vasc"]  # in the ground-truth column order
NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
# Finding Labels cycled over a patient's images: single, none, multi-label.
NIH_FINDINGS = [
    "Cardiomegaly",
    "No Finding",
    "Cardiomegaly|Emphysema",
    "Effusion",
    "Atelectasis|Effusion|Infiltration",
    "Hernia",
    "No Finding",
    "Pleural_Thickening|Pneumothorax",
]


def class_colour(c: int) -> tuple[int, int, int]:
    """The colour images of class ``c`` are filled with (distinct for c < 12, far from JPEG rounding)."""
    return ((c * 20) % 256, 255 - (c * 20) % 256, (c * 60) % 256)


# -- images ------------------------------------------------------------------------------------------------
def write_image(path: Path, size: tuple[int, int] = (16, 16), colour: int = 0, mode: str = "RGB") -> Path:
    """A solid image of :func:`class_colour` ``colour``; the format follows the extension (png, jpg...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = class_colour(colour)
    img = Image.new("RGB", size, rgb)
    if mode != "RGB":
        img = img.convert(mode)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF"}.get(path.suffix.lower())
    img.save(path, format=fmt)
    return path


def write_truncated_jpeg(path: Path, size: tuple[int, int] = (32, 32)) -> Path:
    """A JPEG cut in half: the header parses, the decode fails."""
    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, format="JPEG", quality=95)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def write_not_an_image(path: Path) -> Path:
    """A text file with an image extension (a ``.txt`` renamed ``.jpg``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is not an image\n", encoding="utf-8")
    return path


# -- CIFAR (official python-version pickles) -----------------------------------------------------------------
class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined,misc]
    """Writes ``bytes`` as Python 2 ``str`` opcodes (BINSTRING), as the official CIFAR files hold them.

    Python 3's protocol-2 pickles encode bytes through ``_codecs.encode``, a global the official files never
    contain (and the restricted unpickler refuses).
    """

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def _save_str8(self, obj: bytes) -> None:
        n = len(obj)
        opcode = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(opcode + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_str8


def py2_pickle(obj: object) -> bytes:
    """Pickle like Python 2's ``cPickle.dump(obj, f, 2)`` of the CIFAR files (``numpy.core`` module names)."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def cifar_rows(labels: Sequence[int], seed: int = 0) -> np.ndarray:
    """``uint8 [N, 3072]`` rows (R, G, B planes); pixel (0, 0) is :func:`class_colour` of the label."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8)
    for i, label in enumerate(labels):
        rows[i, :, 0, 0] = class_colour(label)
    return rows.reshape(len(labels), 3072)


def _cifar_batch(labels: list[int], label_keys: Sequence[str], name: str, seed: int) -> dict[bytes, object]:
    batch: dict[bytes, object] = {
        b"batch_label": name.encode(),
        b"data": cifar_rows(labels, seed),
        b"filenames": [f"img_{seed}_{i:05d}.png".encode() for i in range(len(labels))],
    }
    for key in label_keys:
        batch[key.encode()] = list(labels) if key != "coarse_labels" else [x // 5 for x in labels]
    return batch


def write_cifar10(root: Path, n_per_class: int = 1) -> Path:
    """``root/cifar-10-batches-py``: 5 train batches + a test batch, ``n_per_class`` images per class each."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        b"label_names": [n.encode() for n in CIFAR10_CLASSES],
        b"num_cases_per_batch": 10 * n_per_class,
        b"num_vis": 3072,
    }
    (folder / "batches.meta").write_bytes(py2_pickle(meta))
    labels = [c for c in range(10) for _ in range(n_per_class)]
    names = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    for seed, name in enumerate(names):
        batch = _cifar_batch(labels, ["labels"], f"batch {name}", seed)
        (folder / name).write_bytes(py2_pickle(batch))
    return root


def write_cifar100(root: Path, n_per_class: int = 1) -> Path:
    """``root/cifar-100-python/{train,test,meta}``: 100 fine classes (coarse = fine // 5), ``n_per_class``."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        b"fine_label_names": [f"fine_{i:02d}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse_{i:02d}".encode() for i in range(20)],
    }
    (folder / "meta").write_bytes(py2_pickle(meta))
    labels = [c for c in range(100) for _ in range(n_per_class)]
    for seed, name in enumerate(["train", "test"]):
        batch = _cifar_batch(labels, ["fine_labels", "coarse_labels"], name, seed)
        (folder / name).write_bytes(py2_pickle(batch))
    return root


# -- IDX (MNIST / Fashion-MNIST) -----------------------------------------------------------------------------
def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: magic ``0x0000 08 <ndim>``, big-endian dimensions, raw bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(
    root: Path,
    n_train: int = 20,
    n_test: int = 10,
    *,
    gzipped: bool = True,
    size: tuple[int, int] = (28, 28),
    num_classes: int = 10,
) -> Path:
    """``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` in ``root``.

    Image ``i`` has label ``i % num_classes`` and every pixel equal to ``label * 20``.
    """
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n, dtype=np.uint8) % num_classes
        images = np.broadcast_to((labels * 20).astype(np.uint8)[:, None, None], (n, *size))
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            data = idx_bytes(array)
            name = f"{prefix}-{kind}-ubyte"
            if gzipped:
                (root / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
            else:
                (root / name).write_bytes(data)
    return root


# -- image folders -------------------------------------------------------------------------------------------
def write_image_folder(
    root: Path,
    classes: Sequence[str] = ("cat", "dog"),
    n: int = 3,
    size: tuple[int, int] = (16, 16),
    split_dirs: bool = True,
    *,
    splits: Sequence[str] = ("train", "test"),
    ext: str = "png",
) -> Path:
    """``root/<split>/<class>/NNNN.<ext>`` (``root/<class>/...`` without ``split_dirs``), ``n`` per class."""
    parents = [root / s for s in splits] if split_dirs else [root]
    for parent in parents:
        for c, name in enumerate(classes):
            for i in range(n):
                write_image(parent / name / f"{i:04d}.{ext}", size, c)
    return root


# -- ISIC-2018 / HAM10000 ------------------------------------------------------------------------------------
def write_isic(
    root: Path,
    n_per_class: int = 2,
    *,
    fmt: str = "ham",
    images_per_lesion: int = 2,
    size: tuple[int, int] = (12, 9),
    images_dir: str = "images",
) -> Path:
    """ISIC_<7 digits>.jpg images + ``HAM10000_metadata.csv`` (``fmt="ham"``) or the ISIC-2018 Task 3
    ground-truth CSV ``ISIC2018_Task3_Training_GroundTruth.csv`` (``fmt="onehot"``, values ``0.0``/``1.0``).

    Image ``k`` of class ``c`` belongs to lesion ``HAM_<c><k // images_per_lesion>``.
    """
    rows = []
    for c, dx in enumerate(ISIC_DX):
        for k in range(n_per_class):
            image_id = f"ISIC_{24306 + c * 100 + k:07d}"
            lesion_id = f"HAM_{c:03d}{k // images_per_lesion:04d}"
            write_image(root / images_dir / f"{image_id}.jpg", size, c)
            rows.append((lesion_id, image_id, dx))
    root.mkdir(parents=True, exist_ok=True)
    if fmt == "ham":
        lines = ["lesion_id,image_id,dx,dx_type,age,sex,localization"]
        lines += [f"{lesion},{image},{dx},histo,45.0,male,back" for lesion, image, dx in rows]
        (root / "HAM10000_metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    elif fmt == "onehot":
        lines = ["image,MEL,NV,BCC,AKIEC,BKL,DF,VASC"]
        for _, image, dx in rows:
            hot = ["1.0" if d == dx else "0.0" for d in ISIC_DX]
            lines.append(",".join([image, *hot]))
        (root / "ISIC2018_Task3_Training_GroundTruth.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        raise ValueError(f"fmt must be 'ham' or 'onehot', got {fmt!r}")
    return root


def write_isic_task3_64px(
    root: Path, train_per_class: tuple[int, ...], test_per_class: int = 2, *, images_per_lesion: int = 3
) -> Path:
    """The layout of ``shared/datasets/isic2018_task3_64px.tar``: ``images/ISIC_*.jpg`` (64x64 in the real set),
    ``ISIC2018_Task3_Training_GroundTruth.csv`` and ``ISIC2018_Task3_Test_GroundTruth.csv`` (one-hot, ``0.0`` /
    ``1.0``), ``HAM10000_metadata.csv`` (training images only, with their lesion ids), ``labels.csv``
    (``id,label,split,lesion_id``; lesion empty for test) and ``SOURCE.txt``.

    Class ``c`` has ``train_per_class[c]`` training images, lesion ``HAM_<c><k // images_per_lesion>``, and
    ``test_per_class`` test images numbered from ISIC_0034524 as the official test set is.
    """
    header = "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC"
    train, test, ham, labels = [header], [header], ["lesion_id,image_id,dx,dx_type,age,sex,localization"], []
    labels.append("id,label,split,lesion_id")
    test_no = 34524
    for c, dx in enumerate(ISIC_DX):
        hot = ",".join("1.0" if d == dx else "0.0" for d in ISIC_DX)
        for k in range(train_per_class[c]):
            image_id = f"ISIC_{24306 + c * 1000 + k:07d}"
            lesion = f"HAM_{c:03d}{k // images_per_lesion:04d}"
            write_image(root / "images" / f"{image_id}.jpg", (16 + k, 16), c)  # distinct files, not duplicates
            train.append(f"{image_id},{hot}")
            ham.append(f"{lesion},{image_id},{dx},histo,50.0,female,back")
            labels.append(f"{image_id},{dx.upper()},train,{lesion}")
        for _ in range(test_per_class):
            image_id = f"ISIC_{test_no:07d}"
            test_no += 1
            write_image(root / "images" / f"{image_id}.jpg", (16, 16 + test_no % 64), c)
            test.append(f"{image_id},{hot}")
            labels.append(f"{image_id},{dx.upper()},test,")
    files = {
        "ISIC2018_Task3_Training_GroundTruth.csv": train,
        "ISIC2018_Task3_Test_GroundTruth.csv": test,
        "HAM10000_metadata.csv": ham,
        "labels.csv": labels,
        "SOURCE.txt": ["ISIC 2018 Task 3 at 64x64 (test fixture in the layout of the shared tar)"],
    }
    for name, lines in files.items():
        (root / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


# -- NIH ChestX-ray14 ----------------------------------------------------------------------------------------
def nih_row(name: str, findings: str, follow_up: int, patient: int) -> str:
    return f"{name},{findings},{follow_up},{patient},57,M,PA,2682,2749,0.143,0.143"


def write_chestxray(
    root: Path,
    patients: int = 6,
    images_per_patient: int = 3,
    *,
    official_split: bool = False,
    nested: bool = False,
    size: tuple[int, int] = (16, 16),
    extra_rows: Iterable[str] = (),
) -> Path:
    """``images/<patient:08d>_<follow-up:03d>.png`` (grey) + ``Data_Entry_2017_v2020.csv`` (NIH v2020 header,
    CRLF). ``nested``: the official ``images_001/images/`` archive layout (two archives).
    ``official_split``: also ``train_val_list.txt`` / ``test_list.txt`` (the last patient in test).
    ``extra_rows``: raw CSV lines appended.
    """
    lines = [NIH_HEADER]
    train_val, test = [], []
    k = 0
    for p in range(1, patients + 1):
        for f in range(images_per_patient):
            name = f"{p:08d}_{f:03d}.png"
            folder = root / (f"images_{1 + k % 2:03d}/images" if nested else "images")
            write_image(folder / name, size, k % 8, mode="L")
            lines.append(nih_row(name, NIH_FINDINGS[k % len(NIH_FINDINGS)], f, p))
            (test if p == patients else train_val).append(name)
            k += 1
    lines += list(extra_rows)
    root.mkdir(parents=True, exist_ok=True)
    (root / "Data_Entry_2017_v2020.csv").write_bytes(("\r\n".join(lines) + "\r\n").encode())
    if official_split:
        (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n", encoding="utf-8")
        (root / "test_list.txt").write_text("\n".join(test) + "\n", encoding="utf-8")
    return root


# -- CSV manifest --------------------------------------------------------------------------------------------
def write_manifest(
    csv_path: Path,
    rows: Sequence[Sequence[str]],
    *,
    header: Sequence[str] | None = None,
    missing: Iterable[str] = (),
    size: tuple[int, int] = (8, 8),
) -> Path:
    """A manifest CSV with ``rows`` of ``(path, label[, split])``; returns the CSV path.

    Each image is created (relative paths against the CSV's folder) unless listed in ``missing``.
    """
    header = list(header) if header is not None else ["path", "label", "split"][: len(rows[0]) if rows else 2]
    missing = set(missing)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    for c, row in enumerate(rows):
        raw = row[0]
        if raw in missing:
            continue
        path = Path(raw) if Path(raw).is_absolute() else csv_path.parent / raw
        if not path.exists():
            write_image(path, size, c % 8)
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return csv_path
