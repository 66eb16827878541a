"""Reading a dataset's dataset.json and listing its cases, for the two layouts people actually ship.

Only the listing happens here (names, paths, containment); what is inside the files is judged by
`checks.py`. Everything a single case can get wrong becomes a `Problem` so one bad case never sinks
a dataset; only a dataset.json that cannot be understood at all raises `DatasetError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnrank.engine.errors import DatasetError

NIFTI_ENDINGS = (".nii.gz", ".nii")

# Channel names are free text in both layouts. These tokens are what real datasets use (MSD: "MRI",
# "FLAIR", "T1w", "t1gd", "T2w", "ADC"; nnU-Net: "T1", "T2", "CT", "noNorm", ...). Tokens, not
# substrings, so "ACT" or "CTRL" do not pass for CT.
_CT_TOKENS = frozenset({"ct", "cta", "cect", "ncct", "cbct", "hu"})
_MR_TOKEN = re.compile(
    r"^(mr|mri|mra|t1\w*|t2\w*|flair|adc|dwi|dti|pd|pdw|swi|dce|dsc|perfusion|bold|b\d+|gd|gad)$"
)


@dataclass(frozen=True)
class Case:
    """One training example; `images` has one path per channel, except MSD 4D where one file holds all."""

    case_id: str
    images: tuple[Path, ...]
    label: Path


@dataclass(frozen=True)
class Problem:
    """Why a case was left out, phrased for the person who has to fix the file."""

    case_id: str
    message: str


@dataclass
class Dataset:
    """A parsed dataset: the usable cases plus, by name, the ones that were left out and why."""

    root: Path
    name: str
    layout: str
    modality: str
    channel_names: list[str]
    labels: dict[str, int]
    cases: list[Case] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def n_classes(self) -> int:
        """Output channels a segmentation network needs, background included."""
        return len(self.labels)

    @property
    def channel_modalities(self) -> list[str]:
        """Per-channel kind, because normalisation is chosen per channel, not per dataset."""
        return [channel_modality(name) for name in self.channel_names]


def channel_modality(name: str) -> str:
    """Classify a free-text channel name as "CT", "MR" or "other" (PET, "noNorm", ...)."""
    tokens = [t for t in re.split(r"[^0-9a-z]+", name.lower()) if t]
    if any(t in _CT_TOKENS for t in tokens):
        return "CT"
    if any(_MR_TOKEN.match(t) for t in tokens):
        return "MR"
    return "other"


def dataset_modality(channel_names: list[str]) -> str:
    """One word for the whole dataset; mixed stacks (PET/CT) are "other" rather than a guess."""
    kinds = {channel_modality(n) for n in channel_names}
    return kinds.pop() if len(kinds) == 1 else "other"


def read_dataset_json(root: Path) -> dict[str, Any]:
    """Load dataset.json, turning every way it can fail into a message that names the file."""
    path = root / "dataset.json"
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist or is not a folder")
    if not path.is_file():
        raise DatasetError(f"{path} is missing: every dataset needs a dataset.json (nnU-Net v2 or MSD)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path} cannot be read as JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise DatasetError(f"{path} must hold a JSON object, not {type(meta).__name__}")
    return meta


def detect_layout(meta: Mapping[str, Any], path: Path) -> str:
    """MSD lists its cases explicitly under "training"; nnU-Net v2 names channels instead."""
    if "training" in meta:
        return "msd"
    if "channel_names" in meta:
        return "nnunet"
    raise DatasetError(
        f"{path} is neither nnU-Net v2 (needs 'channel_names') nor Medical Segmentation Decathlon "
        f"(needs 'training'); keys found: {sorted(meta)}"
    )


def resolve_inside(root: Path, relative: str) -> Path:
    """Resolve a path from dataset.json, refusing anything that ends up outside the dataset folder.

    A dataset.json is user input; without this a crafted entry ("../../etc/...", an absolute
    path, or a symlink pointing elsewhere) would make the service read files it was never given.
    `root` must already be resolved.
    """
    if not relative or Path(relative).is_absolute() or re.match(r"^[A-Za-z]:[\\/]", relative):
        raise ValueError(f"path {relative!r} must be relative to the dataset folder")
    resolved = (root / relative).resolve()
    if not resolved.is_relative_to(root):
        raise ValueError(f"path {relative!r} leads outside the dataset folder")
    return resolved


def _int_key(text: str, what: str, path: Path) -> int:
    try:
        return int(text)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: {what} key {text!r} is not an integer") from exc


def _ordered_channels(mapping: Any, key: str, path: Path) -> list[str]:
    """Channels are keyed "0", "1", ...; a gap would silently shift every later channel, so refuse it."""
    if not isinstance(mapping, dict) or not mapping:
        raise DatasetError(f"{path}: '{key}' must be a non-empty object like {{\"0\": \"CT\"}}")
    by_index = {_int_key(k, key, path): str(v) for k, v in mapping.items()}
    if sorted(by_index) != list(range(len(by_index))):
        raise DatasetError(f"{path}: '{key}' keys must be 0..{len(by_index) - 1}, got {sorted(by_index)}")
    return [by_index[i] for i in range(len(by_index))]


def _label_value(value: Any, name: str, path: Path) -> int:
    if isinstance(value, list | tuple):
        raise DatasetError(
            f"{path}: label {name!r} is a region (list of values {list(value)}); region-based "
            "training is not supported, give every label a single integer value"
        )
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise DatasetError(f"{path}: label {name!r} has value {value!r}, expected an integer")
    try:
        number = int(value)
    except ValueError as exc:
        raise DatasetError(f"{path}: label {name!r} has value {value!r}, expected an integer") from exc
    if number < 0:
        raise DatasetError(f"{path}: label {name!r} has negative value {number}")
    return number


def _validated_labels(labels: dict[str, int], path: Path) -> dict[str, int]:
    """Two names for one value or no background would make class indices ambiguous downstream."""
    values = list(labels.values())
    if len(set(values)) != len(values):
        raise DatasetError(f"{path}: two labels share a value: {labels}")
    if 0 not in values:
        raise DatasetError(f"{path}: labels must declare the background as value 0, got {labels}")
    if len(labels) < 2:
        raise DatasetError(f"{path}: labels declare only the background; nothing to segment")
    return dict(sorted(labels.items(), key=lambda item: item[1]))


def _strip_nifti(name: str) -> str:
    for ending in NIFTI_ENDINGS:
        if name.endswith(ending):
            return name[: -len(ending)]
    return name


def parse_nnunet(root: Path, meta: Mapping[str, Any]) -> Dataset:
    """nnU-Net v2 raw layout: cases are discovered from imagesTr/labelsTr file names."""
    path = root / "dataset.json"
    channel_names = _ordered_channels(meta.get("channel_names"), "channel_names", path)
    raw_labels = meta.get("labels")
    if not isinstance(raw_labels, dict):
        raise DatasetError(f"{path}: 'labels' must be an object like {{\"background\": 0, \"tumor\": 1}}")
    if "regions_class_order" in meta:
        raise DatasetError(f"{path}: region-based datasets (regions_class_order) are not supported")
    labels = _validated_labels({str(k): _label_value(v, str(k), path) for k, v in raw_labels.items()}, path)
    file_ending = meta.get("file_ending", ".nii.gz")
    if file_ending not in NIFTI_ENDINGS:
        raise DatasetError(f"{path}: file_ending {file_ending!r} is not supported; use .nii.gz or .nii")

    problems: list[Problem] = []
    images: dict[str, dict[int, Path]] = {}
    channel_pattern = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
    for file in _listing(root, "imagesTr", file_ending, problems):
        stem = file.name[: -len(file_ending)]
        match = channel_pattern.match(stem)
        if match is None:
            problems.append(Problem(stem, f"imagesTr/{file.name} does not end in _XXXX (channel index)"))
            continue
        images.setdefault(match["case"], {})[int(match["channel"])] = file
    labels_found = {
        file.name[: -len(file_ending)]: file for file in _listing(root, "labelsTr", file_ending, problems)
    }

    cases: list[Case] = []
    for case_id in sorted(set(images) | set(labels_found)):
        channels = images.get(case_id, {})
        missing = [i for i in range(len(channel_names)) if i not in channels]
        extra = sorted(i for i in channels if i >= len(channel_names))
        label = labels_found.get(case_id)
        if not channels:
            problems.append(Problem(case_id, f"missing image file imagesTr/{case_id}_0000{file_ending}"))
        elif missing:
            names = ", ".join(f"imagesTr/{case_id}_{i:04d}{file_ending}" for i in missing)
            problems.append(Problem(case_id, f"missing image file(s) {names}"))
        elif extra:
            problems.append(
                Problem(case_id, f"has channel(s) {extra} but dataset.json declares {len(channel_names)}")
            )
        elif label is None:
            problems.append(Problem(case_id, f"missing label file labelsTr/{case_id}{file_ending}"))
        else:
            try:
                safe = tuple(_inside(root, channels[i]) for i in range(len(channel_names)))
                cases.append(Case(case_id, safe, _inside(root, label)))
            except ValueError as exc:
                problems.append(Problem(case_id, str(exc)))

    return Dataset(
        root=root,
        name=str(meta.get("name") or root.name),
        layout="nnunet",
        modality=dataset_modality(channel_names),
        channel_names=channel_names,
        labels=labels,
        cases=cases,
        problems=problems,
    )


def _listing(root: Path, folder: str, ending: str, problems: list[Problem]) -> list[Path]:
    """Files of one nnU-Net folder; dot-files (macOS "._x.nii.gz" litter) are not cases."""
    directory = root / folder
    if not directory.is_dir():
        problems.append(Problem(folder, f"folder {folder}/ is missing"))
        return []
    return sorted(
        p for p in directory.iterdir() if p.name.endswith(ending) and not p.name.startswith(".")
    )


def _inside(root: Path, file: Path) -> Path:
    """Listed files can still be symlinks to elsewhere; the same containment rule applies."""
    return resolve_inside(root, file.relative_to(root).as_posix())


def parse_msd(root: Path, meta: Mapping[str, Any]) -> Dataset:
    """Medical Segmentation Decathlon layout: cases are listed in dataset.json, labels keyed by value."""
    path = root / "dataset.json"
    channel_names = _ordered_channels(meta.get("modality"), "modality", path)
    raw_labels = meta.get("labels")
    if not isinstance(raw_labels, dict):
        raise DatasetError(
            f"{path}: 'labels' must be an object like {{\"0\": \"background\", \"1\": \"edema\"}}"
        )
    labels: dict[str, int] = {}
    for value, name in raw_labels.items():
        number = _label_value(value, str(name), path)
        if str(name) in labels:
            raise DatasetError(f"{path}: label name {name!r} is used for two values")
        labels[str(name)] = number
    labels = _validated_labels(labels, path)
    training = meta["training"]
    if not isinstance(training, list):
        raise DatasetError(f"{path}: 'training' must be a list of {{\"image\": ..., \"label\": ...}}")

    cases: list[Case] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for index, entry in enumerate(training):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            problems.append(Problem(f"training[{index}]", "entry needs an 'image' path"))
            continue
        case_id = _strip_nifti(Path(entry["image"]).name)
        if not isinstance(entry.get("label"), str):
            problems.append(Problem(case_id, "entry has no 'label' path"))
            continue
        if case_id in seen:
            problems.append(Problem(case_id, "listed twice in 'training'"))
            continue
        seen.add(case_id)
        try:
            image = resolve_inside(root, entry["image"])
            label = resolve_inside(root, entry["label"])
        except ValueError as exc:
            problems.append(Problem(case_id, str(exc)))
            continue
        missing = [entry[k] for k, p in (("image", image), ("label", label)) if not p.is_file()]
        if missing:
            problems.append(Problem(case_id, f"missing file(s): {', '.join(missing)}"))
            continue
        cases.append(Case(case_id, (image,), label))

    return Dataset(
        root=root,
        name=str(meta.get("name") or root.name),
        layout="msd",
        modality=dataset_modality(channel_names),
        channel_names=channel_names,
        labels=labels,
        cases=cases,
        problems=problems,
    )


def list_dataset(root: str | Path) -> Dataset:
    """Parse dataset.json and list cases without opening any image (see `open_dataset` for checks)."""
    folder = Path(root).expanduser().resolve()
    meta = read_dataset_json(folder)
    layout = detect_layout(meta, folder / "dataset.json")
    return parse_msd(folder, meta) if layout == "msd" else parse_nnunet(folder, meta)
