"""Opening user photos safely: every way an upload can be wrong becomes a `PhotoError` with a
sentence a person can act on; odd but usable files (greyscale, RGBA, 16-bit, CMYK, animated
GIF) are converted to RGB by the library's `gtp.images.to_rgb`, with a note saying what happened.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from PIL import Image, UnidentifiedImageError

from gtp.images import to_rgb

from .errors import InputError, file_names_only
from .limits import MAX_FRAMES_COUNTED, MAX_PHOTO_BYTES, MAX_PIXELS, MIN_SIDE, WORKING_SIDE

# PIL refuses (DecompressionBombError) images over 2x this many pixels and warns over 1x;
# the app turns the warning into a refusal too, so a 30000 x 30000 file is never decoded.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class PhotoError(InputError):
    """An upload the app cannot use; the message says why and what to do."""


@dataclass
class Photo:
    """An RGB photo ready for the model, and what was done to make it so."""
    image: Image.Image
    original_size: tuple[int, int]
    original_mode: str
    notes: list[str] = field(default_factory=list)


def _describe(mode: str) -> str:
    return {
        "L": "greyscale", "LA": "greyscale with transparency", "1": "black-and-white",
        "P": "palette", "PA": "palette with transparency", "RGBA": "RGBA (transparent)",
        "CMYK": "CMYK", "YCbCr": "YCbCr", "LAB": "Lab", "HSV": "HSV",
        "I": "32-bit integer", "F": "32-bit float", "I;16": "16-bit", "I;16B": "16-bit",
        "I;16L": "16-bit", "I;16N": "16-bit",
    }.get(mode, mode)


def _count_frames(img: Image.Image) -> int:
    """Frames in an animation, counted up to MAX_FRAMES_COUNTED + 1 (PIL's `n_frames` walks the
    whole file: a 50 MB GIF of a million 1-pixel frames costs seconds of CPU); leaves frame 0."""
    if not getattr(img, "is_animated", False):
        return 1
    count = 1
    try:
        while count <= MAX_FRAMES_COUNTED:
            img.seek(count)
            count += 1
    except EOFError:
        pass
    img.seek(0)
    return count


def open_photo(path: Union[str, Path, None]) -> Photo:
    """Open an uploaded file as an RGB photo, or raise PhotoError saying what is wrong."""
    if path is None or not str(path).strip():
        raise PhotoError("No photo given: upload, paste or take one, or pick an example.")
    path = Path(path)
    if not path.is_file():
        raise PhotoError("The uploaded file could not be found on the server; please upload it again.")
    if os.path.getsize(path) > MAX_PHOTO_BYTES:
        raise PhotoError(f"The file is larger than {MAX_PHOTO_BYTES // 2**20} MB; please upload a smaller photo.")
    if os.path.getsize(path) == 0:
        raise PhotoError("The file is empty.")
    with warnings.catch_warnings():
        # Between 1x and 2x MAX_PIXELS PIL only warns; refuse those too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as img:
                size, mode = img.size, img.mode
                frames = _count_frames(img)
                if min(size) < MIN_SIDE:
                    raise PhotoError(
                        f"The image is only {size[0]} x {size[1]} pixels; it needs at least "
                        f"{MIN_SIDE} pixels on each side.")
                if img.format == "JPEG":
                    img.draft("RGB", (WORKING_SIDE, WORKING_SIDE))  # decode big JPEGs at reduced size
                img.load()
                rgb = to_rgb(img)
        except PhotoError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise PhotoError(
                f"The image is too large to open safely (over {MAX_PIXELS // 1_000_000} megapixels, "
                "a possible decompression bomb); please upload a smaller photo.") from None
        except UnidentifiedImageError:
            raise PhotoError(
                "This file is not an image the app can read; upload a photo "
                "(JPEG, PNG, WebP, GIF, BMP or TIFF).") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            # PIL reports truncated and corrupt files as OSError (sometimes SyntaxError/EOFError).
            raise PhotoError(f"The image file is damaged or truncated and cannot be decoded "
                             f"({file_names_only(str(e))}).") from None
    notes = []
    if mode != "RGB":
        notes.append(f"converted a {_describe(mode)} image to RGB")
    if frames > 1:
        many = f"more than {MAX_FRAMES_COUNTED}" if frames > MAX_FRAMES_COUNTED else str(frames)
        notes.append(f"used the first of {many} frames")
    if max(rgb.size) > WORKING_SIDE:
        rgb.thumbnail((WORKING_SIDE, WORKING_SIDE), Image.Resampling.BICUBIC)
    return Photo(image=rgb, original_size=size, original_mode=mode, notes=notes)
