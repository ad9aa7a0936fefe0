"""The imaging modalities BSAFusion knows: one table read by every check and every per-modality choice.

A pair is a fixed MRI and a moving CT, PET or SPECT image. What differs between modalities is
stated here once, so that a new modality (or a changed default) is one row, not a hunt through
the modules that validate names:

* ``class_index``: the modality's class in the network's modality classifier (MDF-FR). The
  order CT, PET, SPECT, MRI is baked into the shipped weights' classifier rows, so it can
  never change.
* ``colour``: the Harvard slices show it in pseudo-colour (PET, SPECT): the network fuses the
  luma Y and the chroma is put back; volumes, which carry no colour, are rendered with
  ``lut`` (:func:`bsafusion.colour.pseudo_colour`) first.
* ``refine_steps`` / ``refine_on_translation``: the default per-pair refinement
  (:mod:`bsafusion.inference.refine` says why it is off everywhere, and why each similarity).
* ``dicom``: the values of the DICOM Modality tag (0008,0060) that mean this modality.

The order of :data:`TABLE` (MRI, CT, PET, SPECT) seeds the phantom's random streams, so it is
fixed too.
"""

from __future__ import annotations

from dataclasses import dataclass

from bsafusion.errors import InputError

__all__ = ["Modality", "TABLE", "ALL", "MOVING", "COLOUR", "CLASS_NAMES", "get", "moving"]


@dataclass(frozen=True)
class Modality:
    """One row of :data:`TABLE`; see the module docstring for what each field decides."""

    name: str
    class_index: int
    is_moving: bool
    colour: bool
    refine_steps: int
    refine_on_translation: bool
    dicom: frozenset[str]

    @property
    def lut(self) -> str | None:
        """Name of the pseudo-colour lookup table (:func:`bsafusion.colour.pseudo_colour`), if any."""
        return self.name if self.colour else None


TABLE: tuple[Modality, ...] = (
    Modality("MRI", 3, is_moving=False, colour=False, refine_steps=0, refine_on_translation=False, dicom=frozenset({"MR"})),
    Modality("CT", 0, is_moving=True, colour=False, refine_steps=0, refine_on_translation=False, dicom=frozenset({"CT"})),
    Modality("PET", 1, is_moving=True, colour=True, refine_steps=0, refine_on_translation=True, dicom=frozenset({"PT"})),
    Modality("SPECT", 2, is_moving=True, colour=True, refine_steps=0, refine_on_translation=False,
             dicom=frozenset({"NM", "ST"})),
)

_BY_NAME = {m.name: m for m in TABLE}
#: Every modality, in table order.
ALL: tuple[str, ...] = tuple(m.name for m in TABLE)
#: The modalities a moving image (and a trained model) can have.
MOVING: tuple[str, ...] = tuple(m.name for m in TABLE if m.is_moving)
#: Moving modalities shown in pseudo-colour.
COLOUR: tuple[str, ...] = tuple(m.name for m in TABLE if m.colour)
#: Modality names in classifier order: ``CLASS_NAMES[m.class_index] == m.name``.
CLASS_NAMES: tuple[str, ...] = tuple(m.name for m in sorted(TABLE, key=lambda m: m.class_index))


def get(modality: object, choices: tuple[str, ...] = ALL) -> Modality:
    """The row of ``modality`` (case-insensitive, surrounding spaces ignored), which must be in ``choices``.

    Raises
    ------
    InputError
        The one message for an unknown modality, naming the choices.
    """
    name = str(modality).strip().upper()
    if name not in choices:
        raise InputError(f"unknown modality {modality!r}; choose one of {', '.join(choices)}")
    return _BY_NAME[name]


def moving(modality: object) -> Modality:
    """The row of a moving modality (CT, PET or SPECT): what a model is trained for and a pair fuses."""
    return get(modality, MOVING)
