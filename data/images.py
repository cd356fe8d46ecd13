"""Encoded images (JPEG, PNG) to one uint8 tensor, every failure naming its file.

A truncated JPEG, a non-image saved as .jpg, an empty file or an image of another size raises a ValueError that names
the file. Damage the decoder gets through (libjpeg's "Corrupt JPEG data: 23 extraneous bytes before marker 0xd9":
ten bytes changed near a JPEG's end decode to pixels 15/255 off on average) is an error too: libjpeg only prints
those warnings to the process's stderr, so the decoder runs with that file descriptor captured.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings

import numpy as np
import torch
from PIL import Image

__all__ = ["ImageDecodeError", "decode_images", "decode_with_pil"]

_JPEG_START = b"\xff\xd8\xff"
_MAX_NAMED = 10  # files named in one error; the count says how many more


class ImageDecodeError(ValueError):
    """An image file that cannot be used: named, with what is wrong with it."""


def decode_with_pil(payload: bytes) -> torch.Tensor:
    with Image.open(io.BytesIO(payload)) as image:
        pixels = np.array(image.convert("RGB"))  # a writable copy the tensor can own
    return torch.from_numpy(pixels).permute(2, 0, 1)


def _torchvision_jpeg_decoder():
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None

    def decode(payloads: list[bytes]) -> list[torch.Tensor]:
        encoded = [torch.frombuffer(bytearray(payload), dtype=torch.uint8) for payload in payloads]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_jpeg(encoded, mode=ImageReadMode.RGB)

    return decode


@contextlib.contextmanager
def _captured_stderr():
    """What C code writes to file descriptor 2 meanwhile (libjpeg's warnings), as a list holding one str after."""
    captured: list[str] = []
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode(errors="replace").strip())


def _decode_one(payload: bytes, name: str, jpeg_decoder) -> tuple[torch.Tensor, str]:
    """(the image, what the decoder printed about it)."""
    if not payload:
        raise ImageDecodeError(f"{name} is empty (0 bytes): replace or remove it")
    use_jpeg = jpeg_decoder is not None and payload[:3] == _JPEG_START
    with _captured_stderr() as printed:
        try:
            image = jpeg_decoder([payload])[0] if use_jpeg else decode_with_pil(payload)
        except Exception as e:  # PIL's UnidentifiedImageError / OSError, torchvision's RuntimeError
            raise ImageDecodeError(f"{name} cannot be decoded as an image (truncated, damaged or not an image: "
                                   f"{type(e).__name__}: {str(e).splitlines()[-1][:200]}); replace or remove it") from e
    return image, printed[0]


def _named(lines: list[str]) -> str:
    more = f"\n  ... and {len(lines) - _MAX_NAMED} more" if len(lines) > _MAX_NAMED else ""
    return "\n  " + "\n  ".join(lines[:_MAX_NAMED]) + more


def decode_images(payloads: list[bytes], names: list[str], size: tuple[int, int] | None = None) -> torch.Tensor:
    """Encoded images -> uint8 (N, 3, H, W); `names[i]` says where `payloads[i]` came from, `size` the (H, W) every
    image must have (default: the first one's). JPEGs go through torchvision's batch decoder, about 3x faster than
    PIL with identical pixels; any failure or decoder warning in the batch is then traced to its files one by one."""
    jpeg_decoder = _torchvision_jpeg_decoder()
    images, batch_printed = None, ""
    if jpeg_decoder is not None and payloads and all(p[:3] == _JPEG_START for p in payloads):
        with _captured_stderr() as printed:
            try:
                images = jpeg_decoder(payloads)
            except RuntimeError:
                images = None  # one bad file: found below, by name
        batch_printed = printed[0]
        if batch_printed:
            images = None
    if images is None:
        decoded = [_decode_one(payload, name, jpeg_decoder) for payload, name in zip(payloads, names, strict=True)]
        damaged = [f"{name}: {printed}" for name, (_, printed) in zip(names, decoded, strict=True) if printed]
        if not damaged and batch_printed:
            print(batch_printed, file=sys.stderr)  # not the decoder's: another thread's output, given back
        if damaged:
            raise ImageDecodeError(f"{len(damaged)} image file(s) are damaged (the decoder reported corrupt data and "
                                   f"would have guessed the pixels): replace or remove them:{_named(damaged)}")
        images = [image for image, _ in decoded]
    if not images:
        return torch.empty(0, 3, *(size or (0, 0)), dtype=torch.uint8)
    expected = tuple(size) if size is not None else tuple(images[0].shape[1:])
    wrong = [f"{name}: {tuple(image.shape[1:])}" for name, image in zip(names, images, strict=True)
             if tuple(image.shape[1:]) != expected]
    if wrong:
        raise ImageDecodeError(f"{len(wrong)} image file(s) are not {expected[0]}x{expected[1]} pixels (height x "
                               f"width), as the others are: resize or remove them:{_named(wrong)}")
    return torch.stack(list(images))
