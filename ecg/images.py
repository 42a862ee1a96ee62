"""The one image decoder: PNG/JPEG bytes -> a fully decoded PIL image, or an ``ImageError`` naming where the
bytes came from. Prepare (ECGBench images), training, batch prediction and serving all decode through it.

Example::

    image = decode_image(png, "record 17")                      # RGB, pixels decoded
    decode_image(png[:100], "record 17")                        # ImageError: record 17: unreadable image, does not decode (...)
    decode_image(huge, "upload", max_pixels=20_000_000)         # ImageError(too_large=True), before decoding
"""

from __future__ import annotations

import io
import warnings


class ImageError(ValueError):
    """Bytes that are not an image we take; ``too_large`` when refused for size (a 413 to an HTTP client)."""

    def __init__(self, message: str, *, too_large: bool = False):
        super().__init__(message)
        self.too_large = too_large


def decode_image(data, where: str, *, mode: str | None = "RGB", max_pixels: int | None = None,
                 formats: tuple[str, ...] | None = None):
    """``data`` decoded to a PIL image (converted to ``mode``; None keeps the file's own).

    The size is read from the header before any pixel is decoded, so a decompression bomb (a few KB that
    inflate to gigapixels) is refused at ``Image.open``: over ``max_pixels``, or PIL's own bomb limit. The pixels
    are then decoded in full, so a truncated file fails here and not inside a processor or a model. ``formats``
    limits what is accepted (serving takes PNG and JPEG only; None: any format PIL reads).
    """
    from PIL import Image

    if data is None or len(data) == 0:
        raise ImageError(f"{where}: empty image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=formats)
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageError(f"{where} is {width}x{height} = {width * height} pixels, over the limit of "
                                 f"{max_pixels}", too_large=True)
            image.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
        raise ImageError(f"{where} refused as a decompression bomb ({err}); the limit is {limit} pixels",
                         too_large=True) from None
    except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError... for broken files
        kinds = f" as {'/'.join(formats)}" if formats else ""
        raise ImageError(f"{where}: unreadable image, does not decode{kinds} ({type(err).__name__}: {err})") from None
    return image.convert(mode) if mode and image.mode != mode else image
