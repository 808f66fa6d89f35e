"""The shared op library against PIL, and both methods' translate conventions through it.

PBA's parameter is PIL's affine offset (content moves by −t); TST's magnitude is the content shift (+v).
Both go through `image_ops.translate`, so each method's output is what it was before the library existed;
the last two tests pin that down pixel by pixel.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

from datakd.augmenters import image_ops
from datakd.augmenters.pba_ops import apply_op
from datakd.augmenters.tst.ops import apply_pixel_op
from datakd.errors import DatakdError


def _images(n: int = 3, size: int = 12) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    return torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8)


def _pil_affine(image: torch.Tensor, coeffs: tuple[float, ...]) -> torch.Tensor:
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    out = pil.transform(pil.size, Image.AFFINE, coeffs, resample=Image.NEAREST, fillcolor=(0, 0, 0))
    return torch.from_numpy(np.array(out)).permute(2, 0, 1)


@pytest.mark.parametrize("t", [-3, -1, 2, 5])
def test_translate_is_pil_affine_with_the_opposite_offset(t: int) -> None:
    images = _images()
    for i, image in enumerate(images):
        x = image_ops.translate(images, -t, 0)[i]
        y = image_ops.translate(images, 0, -t)[i]
        assert torch.equal(x, _pil_affine(image, (1, 0, t, 0, 1, 0)))
        assert torch.equal(y, _pil_affine(image, (1, 0, 0, 0, 1, t)))


def test_translate_moves_content_right_and_down() -> None:
    image = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    image[0, 0, 2, 3] = 255
    assert image_ops.translate(image, 2, 0)[0, 0, 2, 5] == 255
    assert image_ops.translate(image, 0, 1)[0, 0, 3, 3] == 255


@pytest.mark.parametrize("m", [-0.3, 0.09, 0.27])
def test_shear_is_pil_affine(m: float) -> None:
    images = _images()
    for i, image in enumerate(images):
        assert torch.equal(image_ops.shear(images, "x", m)[i], _pil_affine(image, (1, m, 0, 0, 1, 0)))
        assert torch.equal(image_ops.shear(images, "y", m)[i], _pil_affine(image, (1, 0, 0, m, 1, 0)))


def test_rotate_turns_counter_clockwise_like_pil() -> None:
    images = _images(size=11)  # odd size: the centre is a pixel, so 90° is exact in both
    for i, image in enumerate(images):
        pil = Image.fromarray(image.permute(1, 2, 0).numpy()).rotate(90, resample=Image.NEAREST)
        expected = torch.from_numpy(np.array(pil)).permute(2, 0, 1)
        assert torch.equal(image_ops.rotate(images, 90.0)[i], expected)


def test_enhance_identity_and_pil_brightness() -> None:
    images = _images()
    for kind in image_ops.ENHANCE:
        assert torch.equal(image_ops.enhance(images, kind, 1.0), images), kind
    for i, image in enumerate(images):
        pil = ImageEnhance.Brightness(Image.fromarray(image.permute(1, 2, 0).numpy())).enhance(1.5)
        ours = image_ops.enhance(images, "Brightness", 1.5)[i]
        assert (ours.int() - torch.from_numpy(np.array(pil)).permute(2, 0, 1).int()).abs().max() <= 1


def test_pba_and_tst_translate_keep_their_own_sign() -> None:
    """PBA's TranslateX t = PIL offset (content moves −t); TST's TranslateX v moves content by +v."""
    images = _images()
    fill = [0, 0, 0]
    for t in (-4.0, 3.0):
        pba = apply_op("TranslateX", images, t, fill)
        tst = apply_pixel_op(images, "TranslateX", t)
        assert torch.equal(pba, image_ops.translate(images, -int(t), 0, [0.0, 0.0, 0.0]))
        assert torch.equal(tst, image_ops.translate(images, int(t), 0, 0))
        for i, image in enumerate(images):
            assert torch.equal(pba[i], _pil_affine(image, (1, 0, t, 0, 1, 0)))
            assert torch.equal(tst[i], _pil_affine(image, (1, 0, -t, 0, 1, 0)))
        pba_y = apply_op("TranslateY", images, t, fill)
        tst_y = apply_pixel_op(images, "TranslateY", t)
        for i, image in enumerate(images):
            assert torch.equal(pba_y[i], _pil_affine(image, (1, 0, 0, 0, 1, t)))
            assert torch.equal(tst_y[i], _pil_affine(image, (1, 0, 0, 0, 1, -t)))


def test_unknown_shear_axis_and_enhancement_are_named() -> None:
    with pytest.raises(DatakdError, match="'z'"):
        image_ops.shear(_images(), "z", 0.1)
    with pytest.raises(DatakdError, match="Hue"):
        image_ops.enhance(_images(), "Hue", 1.0)
