"""DataSpec: what a LightningModule needs to know about its data, given to it rather than read from the DataModule.

The modules need the class names (checkpoint records, teacher checks), the clip geometry (noise
initialisation, teacher checks) and the normalisation (pixel-space saliency, clamping). The CLI links
:attr:`VideoDataModule.spec <tsgf_lightning.data.datamodule.VideoDataModule.spec>` into every
module's ``data_spec`` (``link_arguments(..., apply_on="instantiate")``), so a module is built
knowing its data and never reads the DataModule during training or in checkpoint hooks. As a link
target the key is not user-settable and not printed by ``--print_config``; the modules leave it out
of their hyper-parameters (checkpoints load with ``weights_only=True``: plain types only) and write
its values as plain lists into their ``tsgf`` record instead. A module built by hand without it
takes its DataModule's spec once, in ``setup`` (:func:`resolve_spec`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class DataSpec:
    """Class names (label order), frames per clip, network input size, and per-channel normalisation.

    Sequences are stored as tuples (so two specs of the same data compare equal whatever was passed).
    """

    class_names: tuple[str, ...]
    frames: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != len(self.std):
            raise ValueError(f"Expected `mean` and `std` of one length (one value per channel) but got "
                             f"{len(self.mean)} and {len(self.std)}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def record(self) -> dict:
        """The spec as plain types, for checkpoint records and ``distilled.pt``."""
        return {"class_names": list(self.class_names), "frames": int(self.frames), "size": int(self.size),
                "mean": list(self.mean), "std": list(self.std)}


def resolve_spec(given: DataSpec | None, trainer, owner: str) -> DataSpec | None:
    """The spec a module works with: ``given`` (linked by the CLI), else its DataModule's (None if neither).

    Called once in ``setup``. A module given a spec and fitted on a DataModule of other data is
    refused, naming the fields that differ.
    """
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    theirs = getattr(datamodule, "spec", None)
    if given is not None and theirs is not None and given != theirs:
        detail = "; ".join(_difference(f.name, getattr(given, f.name), getattr(theirs, f.name))
                           for f in fields(DataSpec) if getattr(given, f.name) != getattr(theirs, f.name))
        raise ValueError(f"{owner} was built with a `data_spec` other than its DataModule's ({detail}): build it "
                         "with the DataModule's `spec` (the CLI links it), or leave `data_spec` unset")
    return given if given is not None else theirs


def _difference(name: str, given, theirs) -> str:
    if name == "class_names" and set(given) == set(theirs):
        return "class_names: the same classes in another order"
    if name == "class_names":
        return f"class_names: {len(given)} vs {len(theirs)} classes, differing {sorted(set(given) ^ set(theirs))[:5]}"
    return f"{name}: {given} vs {theirs}"
