"""Data folders for `python -m gtp eval` (gtp.measure.data): class folders named by wnid,
index or class name, label files, seeded limits, clear refusals."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gtp.measure.data import class_index, imagenet_classes, read_labels, scan_folder




def _put(folder: Path, photo: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(photo, folder / photo.name)


def test_class_index_from_folder_names():
    wnids, names = imagenet_classes()
    assert class_index("n01440764", names, wnids) == 0
    assert class_index("281", names, wnids) == 281
    assert class_index("tabby", names, wnids) == 281
    assert class_index("Tabby_Cat", names, wnids) == 281
    assert class_index("egyptian-cat", names, wnids) == 285
    assert class_index("tench, Tinca tinca", names, wnids) == 0
    with pytest.raises(ValueError, match="ambiguous"):
        class_index("crane", names, wnids)       # a bird and a machine
    with pytest.raises(ValueError, match="no class"):
        class_index("not a class", names, wnids)
    with pytest.raises(ValueError):
        class_index("n99999999", names, wnids)
    with pytest.raises(ValueError):
        class_index("1000", names, wnids)


def test_scan_folder_layouts(tmp_path, photos):
    flat = tmp_path / "flat"
    for p in photos:
        _put(flat, p)
    (flat / "notes.txt").write_text("not an image")
    s = scan_folder(flat)
    assert not s.labelled and len(s) == 4
    lab = tmp_path / "lab"
    _put(lab / "n01440764", photos[0])
    _put(lab / "281" / "deeper", photos[1])   # images anywhere below a class folder
    _put(lab / "281", photos[2])
    s = scan_folder(lab)
    assert s.labelled and s.labels == [281, 281, 0] and s.folders == {"281": 281, "n01440764": 0}
    sub = scan_folder(lab, limit=2)
    assert len(sub) == 2 and sub.labels == [s.labels[s.paths.index(p)] for p in sub.paths]
    _put(lab, photos[3])
    with pytest.raises(ValueError, match="both"):
        scan_folder(lab)
    with pytest.raises(ValueError, match="flat folder"):
        scan_folder(lab, labels_file=tmp_path / "any.txt")
    labels = tmp_path / "labels.csv"
    labels.write_text(f"filename,label\n{photos[0].name},tabby\n{photos[1].stem},n01440764\n")
    with pytest.raises(ValueError, match=r"2 image\(s\) have no label in labels.csv"):
        scan_folder(flat, labels_file=labels)
    labels.write_text(labels.read_text() + f"{photos[2].name},281\n{photos[3].name},999\n")
    s = scan_folder(flat, labels_file=labels)
    assert s.labelled and dict(zip((p.name for p in s.paths), s.labels)) == {
        photos[0].name: 281, photos[1].name: 0, photos[2].name: 281, photos[3].name: 999}
    labels.write_text(f"name label\n{photos[0].name} not-a-class\n")  # a header, then a bad label
    with pytest.raises(ValueError, match="line 2: .*matches no class"):
        read_labels(labels, *reversed(imagenet_classes()))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        scan_folder(tmp_path / "empty")
    with pytest.raises(ValueError, match="not found"):
        scan_folder(tmp_path / "missing")
