"""A small but real MRI segmentation task, built offline from the MNI ICBM152 2009 template.

Demos, tutorials and end-to-end tests need a dataset that behaves like brain MRI (real anatomy, real
T1 contrast, labels that agree with the image) without downloading anything. The nilearn wheel ships
the 1 mm ICBM152 2009a symmetric T1 template together with its grey- and white-matter probability
maps, so every subject here is that template, anti-aliased down to a coarse grid, pushed through a
random affine plus a smooth elastic warp, and given scanner-like intensity changes (bias field,
gamma, contrast, Rician noise). Labels come from the same warped tissue maps, so they stay
voxel-exact with the image whatever the random transform was.

Everything is driven by a seeded ``numpy.random.Generator`` and the NIfTI files are gzip-compressed
with a fixed header, so one seed always yields the same bytes.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = ["LABELS", "make_subject", "write_demo_task"]

LABELS: dict[str, int] = {"background": 0, "CSF": 1, "grey matter": 2, "white matter": 3}

_TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
_REFERENCE = (
    "Fonov VS, Evans AC, McKinstry RC, Almli CR, Collins DL. Unbiased nonlinear average age-appropriate "
    "brain templates from birth to adulthood. NeuroImage 47 (2009) S102; Fonov VS et al. Unbiased average "
    "age-appropriate atlases for pediatric studies. NeuroImage 54 (2011) 313-327. MNI ICBM152 2009a "
    "nonlinear symmetric T1 template and tissue probability maps (copyright McConnell Brain Imaging "
    "Centre, Montreal Neurological Institute, McGill University; terms at "
    "http://www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009), as shipped inside the nilearn package."
)
_GENERATOR = "bnrank.engine.demo_volumes"
_DATASET_NAME = re.compile(r"^Dataset(\d{3})_([A-Za-z0-9][A-Za-z0-9_-]*)$")

# Order of the channels sampled together by one map_coordinates pass per subject.
_T1, _BRAIN, _GM, _WM = range(4)


@dataclass(frozen=True)
class _Template:
    """The template anti-aliased for one target spacing, kept at 1 mm so each subject resamples once.

    Resampling the 1 mm data straight onto each subject's warped grid (instead of first downsampling
    and then warping the coarse volume) avoids a second linear interpolation that would blur the thin
    cortex away at 4 mm.
    """

    channels: np.ndarray  # (4, X, Y, Z) float32: T1 (0-255), brain fraction, GM and WM probability
    world_to_voxel: np.ndarray  # 4x4, template world mm -> index into ``channels``
    brain_lo: np.ndarray  # world-mm corner of the brain's bounding box
    brain_hi: np.ndarray


def _template_path(key: str) -> Path:
    """Point at the copy inside the installed nilearn wheel without importing nilearn.

    Importing ``nilearn.datasets`` costs about a second (it pulls in scikit-learn and pandas) and its
    loaders rescale and resample; only the files are needed, and reading them cannot touch the network.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("nilearn is not installed; its bundled MNI152 template builds the demo task")
    path = Path(spec.origin).parent / "datasets" / "data" / _TEMPLATE_FILES[key]
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the MNI152 template that ships inside the nilearn package is needed "
            "to build the demo task (reinstall nilearn>=0.10)."
        )
    return path


@functools.lru_cache(maxsize=4)
def _load_template(spacing_mm: float) -> _Template:
    """Read and anti-alias the template once per spacing; it is the slow part (about a second)."""
    images = {key: nib.load(_template_path(key)) for key in _TEMPLATE_FILES}
    affine = images["t1"].affine
    t1 = np.asarray(images["t1"].dataobj, dtype=np.float32)
    # The T1 template is already skull-stripped: the non-zero voxels are the brain mask, CSF included.
    # nilearn's load_mni152_brain_mask thresholds at 20 % of the maximum instead, which would punch
    # holes where the ventricles are darkest, so the strict non-zero mask is the better one here.
    brain = ndimage.binary_fill_holes(t1 > 0).astype(np.float32)
    # The probability maps leak a little outside the skull-strip mask; the mask has the last word.
    gm = np.asarray(images["gm"].dataobj, dtype=np.float32) / 255.0 * brain
    wm = np.asarray(images["wm"].dataobj, dtype=np.float32) / 255.0 * brain

    # Gaussian with a FWHM of one target voxel (less the 1 mm the template already integrates, in
    # quadrature): roughly the box average a coarse MRI voxel integrates over, so partial-volume
    # fractions come out right and the coarse sampling does not alias.
    source_mm = float(np.mean(np.abs(np.diag(affine)[:3])))
    sigma = float(np.sqrt(max(spacing_mm**2 - source_mm**2, 0.0))) / 2.355 / source_mm
    margin = int(np.ceil(3 * sigma)) + 2
    idx = np.argwhere(brain > 0)
    lo = np.maximum(idx.min(axis=0) - margin, 0)
    hi = np.minimum(idx.max(axis=0) + margin + 1, t1.shape)
    crop = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    channels = np.stack([t1[crop], brain[crop], gm[crop], wm[crop]])
    if sigma > 0:
        for c in range(channels.shape[0]):
            ndimage.gaussian_filter(channels[c], sigma, output=channels[c], mode="constant")

    crop_affine = affine.copy()
    crop_affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    corners = affine[:3, :3] @ np.stack([idx.min(axis=0), idx.max(axis=0)]).T + affine[:3, 3:4]
    channels.setflags(write=False)
    return _Template(
        channels=channels,
        world_to_voxel=np.linalg.inv(crop_affine),
        brain_lo=corners.min(axis=1),
        brain_hi=corners.max(axis=1),
    )


def _rotation(angles_rad: np.ndarray) -> np.ndarray:
    """Compose rotations about x, y and z; small angles make the order irrelevant in practice."""
    cx, cy, cz = np.cos(angles_rad)
    sx, sy, sz = np.sin(angles_rad)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], n_ctrl: int, std: float) -> np.ndarray:
    """Random values on a coarse control grid, cubic-upsampled: smooth by construction and cheap.

    Smoothing white noise at full resolution would need a renormalisation to control the amplitude;
    a control grid gives the amplitude (``std``) and the length scale (extent / ``n_ctrl``) directly,
    like the B-spline deformations used by TorchIO and nnU-Net-style augmentation.
    """
    field = rng.normal(0.0, std, size=(n_ctrl,) * len(shape))
    # Spline zoom is separable and linear, so it is one small matrix per axis; applying them with
    # tensordot is ~50x faster than ndimage.zoom on the full volume and gives the same field.
    for size in shape:
        field = np.tensordot(field, _upsampling_matrix(n_ctrl, size), axes=([0], [1]))
    return field.astype(np.float32)


@functools.lru_cache(maxsize=64)
def _upsampling_matrix(n_ctrl: int, size: int) -> np.ndarray:
    """(size, n_ctrl) weights of a cubic-spline zoom from ``n_ctrl`` control points to ``size`` samples."""
    # Zooming the identity along one axis gives the weight of every control point at every sample.
    matrix = ndimage.zoom(np.eye(n_ctrl), (size / n_ctrl, 1.0), order=3, mode="nearest", grid_mode=True)
    matrix.setflags(write=False)  # shared through the cache
    return matrix


def make_subject(
    rng: np.random.Generator,
    *,
    spacing_mm: float = 4.0,
    max_rotation_deg: float = 10.0,
    scale_range: tuple[float, float] = (0.9, 1.1),
    max_translation_vox: float = 2.0,
    elastic_std_mm: float = 3.0,
    margin_vox: int = 3,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one synthetic subject: a T1-weighted image, its tissue labels and their shared affine.

    The image is float32 on the template's 0-255 scale (skull-stripped, so the background is only
    Rician noise); the label is uint8 with the values of ``LABELS``; the 4x4 affine maps voxel
    indices to millimetres in the subject's own space (near MNI coordinates, off by the random
    transform), with ``spacing_mm`` isotropic voxels. The volume is cropped to the brain plus
    ``margin_vox`` voxels, which at 4 mm is roughly 40-50 voxels per side.
    """
    if spacing_mm <= 0:
        raise ValueError(f"spacing_mm must be positive, got {spacing_mm}")
    template = _load_template(float(spacing_mm))

    # Random affine around the brain centre, as the map from template to subject space; the sampler
    # needs the inverse (subject -> template), applied together with the elastic displacement.
    angles = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, size=3))
    scales = rng.uniform(*scale_range, size=3)
    shift = rng.uniform(-max_translation_vox, max_translation_vox, size=3) * spacing_mm
    forward = _rotation(angles) @ np.diag(scales)
    inverse = np.linalg.inv(forward)

    # Output grid on world-aligned axes: the box around the moved brain-box corners, padded by four
    # standard deviations of the warp and the crop margin, so the brain is never cut by the grid.
    # Sampling only this box (not a fixed worst-case one) also keeps the per-subject cost down.
    centre = (template.brain_lo + template.brain_hi) / 2
    corners = np.array(np.meshgrid(*zip(template.brain_lo, template.brain_hi, strict=True))).reshape(3, -1)
    moved = forward @ (corners - centre[:, None]) + (centre + shift)[:, None]
    pad = 4 * elastic_std_mm + (margin_vox + 1) * spacing_mm
    origin = moved.min(axis=1) - pad
    shape = tuple(int(n) for n in np.ceil((moved.max(axis=1) + pad - origin) / spacing_mm) + 1)

    # Elastic warp: displacement (mm) on control points ~40 mm apart, a gyral-to-lobar-scale shape
    # change; the spline keeps it smooth, so it folds nothing at these amplitudes.
    n_ctrl = max(round(float(np.max(shape)) * spacing_mm / 40.0), 3)
    displacement = [_smooth_field(rng, shape, n_ctrl, elastic_std_mm) for _ in range(3)]

    grid = np.indices(shape, dtype=np.float32).reshape(3, -1)
    subject_mm = origin[:, None] + spacing_mm * grid
    template_mm = (inverse @ (subject_mm - centre[:, None] - shift[:, None])) + centre[:, None]
    template_mm += np.stack([d.reshape(-1) for d in displacement])
    coords = template.world_to_voxel[:3, :3] @ template_mm + template.world_to_voxel[:3, 3:4]
    sampled = np.stack(
        [
            ndimage.map_coordinates(channel, coords, order=1, mode="constant", cval=0.0, prefilter=False)
            for channel in template.channels
        ]
    ).reshape((4, *shape))

    # Labels: arg-max of the four partial-volume fractions of each coarse voxel. CSF has no map of
    # its own, so it is what the brain mask holds that neither GM nor WM explains. This is the
    # threshold rule "tissue where its probability is the largest", with CSF winning wherever
    # GM + WM falls below about one half inside the brain: the ventricles and the deep sulci, which
    # are the dark voxels of the T1. Warping the soft fractions and taking the arg-max afterwards is
    # the label resampling the image gets (linear), so the two cannot drift apart the way a
    # nearest-neighbour warp of a coarse label map would.
    brain = np.clip(sampled[_BRAIN], 0.0, 1.0)
    gm = np.clip(sampled[_GM], 0.0, None)
    wm = np.clip(sampled[_WM], 0.0, None)
    fractions = np.stack([1.0 - brain, np.clip(brain - gm - wm, 0.0, None), gm, wm])
    label = np.argmax(fractions, axis=0).astype(np.uint8)

    inside = np.argwhere(label > 0)
    lo = np.maximum(inside.min(axis=0) - margin_vox, 0)
    hi = np.minimum(inside.max(axis=0) + margin_vox + 1, shape)
    crop = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    label = np.ascontiguousarray(label[crop])
    image = sampled[_T1][crop].astype(np.float64)
    brain = brain[crop]

    image = _scanner_intensities(rng, image, brain)

    affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    affine[:3, 3] = origin + spacing_mm * lo
    return image.astype(np.float32), label, affine


def _scanner_intensities(rng: np.random.Generator, image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Change what a different scanner or protocol would change, never the anatomy.

    Magnitudes are those of common MRI augmentation (nnU-Net, TorchIO): strong enough that a model
    cannot key on absolute intensity, weak enough that WM > GM > CSF still holds on average.
    """
    full_scale = 255.0
    # Gamma: a non-linear contrast change of the tissue intensities, symmetric in log space.
    gamma = float(np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
    image = full_scale * (np.clip(image, 0.0, None) / full_scale) ** gamma
    # Bias field: receive-coil inhomogeneity, a smooth multiplicative field of about +-15 %.
    image *= np.exp(_smooth_field(rng, image.shape, 3, 0.15))
    # Contrast: stretch or squeeze around the brain mean, only inside the brain so that the
    # background stays at zero signal instead of turning into a grey pedestal.
    mean = float(np.sum(image * brain) / max(float(np.sum(brain)), 1.0))
    contrast = rng.uniform(0.8, 1.2)
    image = np.clip(image + (contrast - 1.0) * (image - mean) * brain, 0.0, None)
    # Rician noise: a magnitude image of complex Gaussian noise, so the background has the Rayleigh
    # floor a real scan has and the tissue noise is nearly Gaussian.
    sigma = rng.uniform(0.01, 0.04) * full_scale
    real = image + rng.normal(0.0, sigma, size=image.shape)
    imaginary = rng.normal(0.0, sigma, size=image.shape)
    return np.sqrt(real**2 + imaginary**2)


def nifti_bytes(data: np.ndarray, affine: np.ndarray) -> bytes:
    """Gzip the NIfTI with mtime 0 and no file name so that one seed always gives the same bytes."""
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


def _is_demo_task(dataset_dir: Path) -> bool:
    """Recognise a folder this module wrote, by the marker it leaves in dataset.json."""
    try:
        meta = json.loads((dataset_dir / "dataset.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("generator") == _GENERATOR


def write_demo_task(
    out_dir: str | Path,
    *,
    n_cases: int = 12,
    spacing_mm: float = 4.0,
    seed: int = 0,
    name: str = "Dataset501_MNIBrain",
    channel_name: str = "T1",
) -> Path:
    """Write ``n_cases`` subjects in the nnU-Net v2 raw layout and return the dataset folder.

    Case ``i`` is drawn from its own child of ``SeedSequence(seed)``, so it is the same subject
    whatever ``n_cases`` is: a larger demo extends a smaller one instead of replacing it.

    Re-running into the same folder replaces an earlier demo task, stale cases from a bigger run
    included (they would disagree with ``numTraining``); any other non-empty folder of that name is
    refused, because it may be a real dataset that deleting case files would destroy.
    """
    match = _DATASET_NAME.match(name)
    if match is None:
        raise ValueError(f"name must look like 'Dataset501_MNIBrain' (nnU-Net v2 convention), got {name!r}")
    if n_cases < 1:
        raise ValueError(f"n_cases must be at least 1, got {n_cases}")
    prefix = match.group(2)

    dataset_dir = Path(out_dir) / name
    images_dir = dataset_dir / "imagesTr"
    labels_dir = dataset_dir / "labelsTr"
    if dataset_dir.exists() and any(dataset_dir.iterdir()):
        if not _is_demo_task(dataset_dir):
            raise FileExistsError(f"{dataset_dir} exists and is not a bnrank demo task; left alone")
        for stale in [*images_dir.glob("*.nii.gz"), *labels_dir.glob("*.nii.gz")]:
            stale.unlink()
    images_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)

    for index, child in enumerate(np.random.SeedSequence(seed).spawn(n_cases)):
        image, label, affine = make_subject(np.random.default_rng(child), spacing_mm=spacing_mm)
        case = f"{prefix}_{index:03d}"
        (images_dir / f"{case}_0000.nii.gz").write_bytes(nifti_bytes(image, affine))
        (labels_dir / f"{case}.nii.gz").write_bytes(nifti_bytes(label, affine))

    dataset = {
        "name": name,
        "generator": _GENERATOR,
        "description": (
            f"Synthetic skull-stripped T1-weighted brain MRI at {spacing_mm:g} mm isotropic. Each case is "
            "the MNI ICBM152 2009a T1 template, anti-aliased to the target spacing and resampled through "
            "a random affine (rotation up to 10 degrees, scale 0.9-1.1, shift up to 2 voxels) and a "
            "smooth random elastic warp, then given a multiplicative bias field, a gamma change, a "
            "contrast change and Rician noise. Labels are the arg-max of the warped partial-volume "
            "fractions of background, CSF (brain mask minus GM and WM), grey matter and white matter "
            f"from the template's tissue probability maps. Generated by bnrank with seed {seed}."
        ),
        "reference": _REFERENCE,
        "channel_names": {"0": channel_name},
        "labels": dict(LABELS),
        "numTraining": n_cases,
        "file_ending": ".nii.gz",
    }
    (dataset_dir / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
    return dataset_dir
