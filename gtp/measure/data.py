"""The images an evaluation runs on: a data folder, its labels, the ImageNet-1k classes.

The data folder is one of:
  * labelled, ImageFolder layout (also the usual ImageNet val layout): one subfolder per
    class, images anywhere below it. A folder name gives the ImageNet-1k class index as
      - a WordNet id, e.g. `n01440764` (tench)                 -> timm's ImageNet synsets;
      - an index number, e.g. `0` or `281`                     -> that class index;
      - a class name, e.g. `tabby` / `tabby cat` / `Egyptian_cat` (case, '_' and '-'
        ignored) matching the whole timm description or one of its comma-separated
        synonyms; a name shared by two classes (e.g. `crane`) is refused: use the wnid.
  * flat with a label file (`--labels FILE`), as ImageNet's validation set is shipped:
    image files directly in DIR, and FILE gives each one's class. FILE is either
      - Kaggle's `LOC_val_solution.csv` (ImageId,PredictionString; the first wnid counts), or
      - one line per image, "NAME LABEL" or "NAME,LABEL" (e.g. the common `val.txt`),
        LABEL being a wnid, an index number or a class name as for folders above.
    NAME may leave out the extension. Every image in DIR needs a label; extra lines are ignored.
  * unlabelled: image files directly in DIR (no subfolder) and no label file. Then only
    label-free fidelity is reported: top-1 agreement with the full model, KL(full || reduced), cosine.
Files PIL can open with the extensions in IMAGE_EXTENSIONS are used; the rest ignored.
`--limit N` takes N images chosen by a seeded (seed 0) random permutation, so a
small limit still spans the classes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")
LIMIT_SEED = 0
_WNID = re.compile(r"^n\d{8}$")


def imagenet_classes() -> tuple[list[str], list[str]]:
    """(wnids, descriptions) of the 1000 ImageNet-1k classes, from timm's offline tables."""
    from timm.data import ImageNetInfo
    info = ImageNetInfo()
    n = info.num_classes()
    return ([info.index_to_label_name(i) for i in range(n)],
            [info.index_to_description(i) for i in range(n)])


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").replace("-", " ").lower().split())


def class_index(name: str, class_names: Sequence[str], wnids: Sequence[str] = ()) -> int:
    """The class index a folder name stands for (wnid, index number or class name).

    class_names: one description per class ("tabby, tabby cat"); wnids: one WordNet id
    per class (may be empty). ValueError for an unknown or ambiguous name.
    """
    if _WNID.match(name):
        if name in wnids:
            return list(wnids).index(name)
        raise ValueError(f"folder {name!r} looks like a WordNet id but is not an ImageNet-1k class")
    if name.isdigit():
        idx = int(name)
        if idx < len(class_names):
            return idx
        raise ValueError(f"folder {name!r}: class index out of range 0..{len(class_names) - 1}")
    key = _norm(name)
    hits = [i for i, desc in enumerate(class_names)
            if key == _norm(desc) or key in (_norm(s) for s in desc.split(","))]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise ValueError(f"folder {name!r} matches no class name; name folders by wnid "
                         "(n01440764), index (0) or class name (tench)")
    raise ValueError(f"folder {name!r} is ambiguous (classes {', '.join(map(str, hits))}); "
                     "name it by wnid or index instead")


@dataclass
class ImageSet:
    """The images of a data folder, in a fixed order; labels[i] is image i's class or None."""
    root: Path
    paths: list[Path]
    labels: Optional[list[int]]
    folders: dict[str, int] = field(default_factory=dict)  # class folder -> class index
    limit: Optional[int] = None

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def __len__(self) -> int:
        return len(self.paths)


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def read_labels(path: Union[str, Path], class_names: Sequence[str], wnids: Sequence[str]) -> dict[str, int]:
    """Image name -> class index from a label file (the formats of the module docstring).

    Names are kept as written and also without their extension, so either matches.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"label file not found: {path}")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    kaggle = bool(lines) and lines[0].replace(" ", "").lower() == "imageid,predictionstring"
    labels: dict[str, int] = {}
    for number, line in enumerate(lines[1:] if kaggle else lines, start=2 if kaggle else 1):
        if kaggle:
            name, _, rest = line.partition(",")
            label = rest.split()[0] if rest.split() else ""
        else:
            name, _, label = line.replace(",", " ", 1).partition(" ")
            label = label.strip()
        if not label:
            raise ValueError(f"{path.name} line {number}: expected 'NAME LABEL', got {line!r}")
        try:
            index = class_index(label, class_names, wnids)
        except ValueError as e:
            if number == 1 and not kaggle:
                continue  # a header line such as "filename,label"
            raise ValueError(f"{path.name} line {number}: {e}") from None
        labels[name] = labels[Path(name).stem] = index
    if not labels:
        raise ValueError(f"{path.name} gives no labels")
    return labels


def scan_folder(
        root: Union[str, Path],
        class_names: Optional[Sequence[str]] = None,
        wnids: Optional[Sequence[str]] = None,
        limit: Optional[int] = None,
        labels_file: Union[str, Path, None] = None,
) -> ImageSet:
    """Find the images of a data folder (see the module docstring for the layouts).

    class_names / wnids default to ImageNet-1k's. limit: keep this many images,
    chosen by a seeded permutation, in their original order. labels_file: the
    labels of a flat folder.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ValueError(f"data folder not found: {root}")
    if class_names is None or wnids is None:
        w, d = imagenet_classes()
        wnids = w if wnids is None else wnids
        class_names = d if class_names is None else class_names
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = sorted(p for p in root.iterdir() if _is_image(p))
    paths: list[Path] = []
    labels: Optional[list[int]] = None
    folders: dict[str, int] = {}
    class_dirs = [(d, sorted(p for p in d.rglob("*") if _is_image(p))) for d in subdirs]
    class_dirs = [(d, files) for d, files in class_dirs if files]
    if class_dirs:
        if labels_file is not None:
            raise ValueError(f"{root} has class subfolders: a label file is for a flat folder of images")
        if loose:
            raise ValueError(f"{root} has both class subfolders and loose images "
                             f"(e.g. {loose[0].name}); use one layout")
        labels = []
        for d, files in class_dirs:
            folders[d.name] = class_index(d.name, class_names, wnids)
            paths += files
            labels += [folders[d.name]] * len(files)
    else:
        paths = loose
    if not paths:
        raise ValueError(f"no images found in {root} (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    if labels_file is not None:
        table = read_labels(labels_file, class_names, wnids)
        missing = [p.name for p in paths if p.name not in table and p.stem not in table]
        if missing:
            raise ValueError(f"{len(missing)} image(s) have no label in {Path(labels_file).name} "
                             f"(e.g. {missing[0]})")
        labels = [table.get(p.name, table.get(p.stem)) for p in paths]
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be >= 1; got {limit}")
        if limit < len(paths):
            gen = torch.Generator().manual_seed(LIMIT_SEED)
            keep = sorted(torch.randperm(len(paths), generator=gen)[:limit].tolist())
            paths = [paths[i] for i in keep]
            labels = None if labels is None else [labels[i] for i in keep]
    return ImageSet(root=root, paths=paths, labels=labels, folders=folders, limit=limit)


class ImageDataset(torch.utils.data.Dataset):
    """(transformed image [3, H, W], index) for each path."""

    def __init__(self, paths: Sequence[Path], transform: Callable):
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from ..models import load_image  # timm and PIL: imported when images are read
        return self.transform(load_image(self.paths[i])), i

