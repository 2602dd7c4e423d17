"""DICOM pixels -> model tensor, driven by the bundle's preprocessing spec.

This is the only implementation: training (export/), calibration, validation, preview
and the runtime all reach :func:`preprocess_pixels` through :mod:`edgeinfer.intake`, which
reads and decodes; this package never touches files. The stages:

1. modality LUT: RescaleSlope/RescaleIntercept (or a Modality LUT Sequence, via pydicom);
2. VOI: the header's VOI LUT, the header's window preset, the bundle's fixed window, or an
   automatic percentile window, in the order ``window.sources`` gives; output in [0, 1]. A
   source whose output has no usable contrast (:data:`MIN_CONTRAST`) is passed over for the
   next one, and the window record lists it under ``rejected``;
3. MONOCHROME1 inversion, pixel padding set to background;
4. resize with OpenCV (optionally keeping the aspect ratio, letterboxed);
5. normalisation ``(x - mean) / std`` and channel replication.

The package, one module per seam:

* :mod:`.spec`: what the bundle declares (:class:`PreprocessSpec`) and what one frame gives
  (:class:`Prepared`);
* :mod:`.modality`: stages 0 and 1, which frame, the modality LUT and its refusals, pixel padding;
* :mod:`.window`: stage 2, the window functions, the header's VOI LUT, the automatic window and
  the choice among ``window.sources`` (:func:`voi`);
* :mod:`.stats`: what that choice is made on, the contrast of a sample and percentiles read off a
  histogram of the stored integers;
* :mod:`.frame`: one frame's modality values, computed only where they are needed, and box-averaged
  before the float work;
* :mod:`.geometry`: the sizes, the target (letterboxed), the reduction and halving factors;
* :mod:`.pipeline`: :func:`preprocess_pixels` and :func:`decode_size`, which put them together.

Stage 2 agrees with pydicom's ``apply_modality_lut``/``apply_voi_lut`` (tests check it): our
output equals pydicom's rescaled from its output range to [0, 1].

Implementation version (:data:`PREPROCESS_IMPL`)
------------------------------------------------
``"1"`` mapped every pixel at full resolution (modality LUT, window in float32, inversion,
padding) and then resized to the target. It is kept, verbatim, as the test oracle
(``tests/oracle_preprocess.py``), not as a runtime path. ``"2"`` did the float work at the
resolution the model needs (below). ``"3"`` (this package) is ``"2"`` plus one step: a large
image is first halved (see *Halving first*). Numbers change only for images that are halved.

* **The window is chosen as before.** Every decision (which source, the ``rejected`` list,
  the automatic window's percentiles, each refusal and its message) is made on the pixels
  version 1 sampled (the contrast sample of about 512 x 512, the automatic window's 1-in-N
  sample of about a million non-padding pixels), mapped pointwise: the same numbers as
  mapping every pixel and then sampling. The checks version 1 made on every pixel (a rescale
  that leaves the float32 range, a window whose output is not finite) are made on the
  image's extreme values, which decide them because both maps are monotonic.
* **Resolution is reduced before the float work.** With ``interpolation: area`` and an image
  at least as large as the (letterboxed) target on both axes, the stored values are
  converted to float32, clipped to the range of input values outside which the chosen
  window is constant, box-averaged with ``cv2.resize(INTER_AREA)`` to :data:`REDUCE_FACTOR`
  times the target size (an axis already smaller keeps its size), then rescaled, windowed and
  inverted, and finally averaged ``REDUCE_FACTOR`` x ``REDUCE_FACTOR`` down to the target.
  Pixel padding is averaged alongside: a box becomes the window of the mean of its
  non-padding pixels times its non-padding fraction (version 1: padding is 0 after windowing,
  then averaged). A Modality LUT Sequence (a table of any shape) is applied to every pixel
  first. Other interpolations (``linear``, ``cubic``, ``nearest``) and images smaller than the
  target on an axis are not reduced: for them version 2 computes what version 1 did, value
  for value.

**How far from version 1.** Area averages of area averages over boxes that tile each other are
the single area average, and a linear window is linear once its input is clipped to its
ramp, so for a rescale (or a Modality LUT) and a ``LINEAR``/``LINEAR_EXACT`` window
(header, fixed or automatic) version 2 equals version 1 up to float32 rounding: measured
|display difference| <= 4e-7 on phantoms and pydicom's test images (test tolerance 1e-5).
Where the map is curved the box mean is mapped instead of each pixel, so the difference is
the map's curvature over one intermediate box (half a target pixel on a side), at edges
inside the map's range: a VOI LUT (also applied to the box mean rounded to
an integer; clipped to the LUT's input range and its constant ends first) measured <= 0.05
(mean per image <= 1.3e-3) with a gamma-0.7 LUT over a phantom's whole range; SIGMOID
<= 0.025. A threshold window (width <= 1, a binary image) or a SIGMOID far narrower than the
image's local contrast is applied to box means too: a box that straddles the threshold gets 0
or 1 instead of the share of its pixels above it (on pure noise: max 0.57, mean 0.08).

**Halving first (version 3).** OpenCV's general area average costs about 9 ms of one core on a
9-megapixel image; its 2 x 2 path is vectorised and costs a quarter of that. So, before the area
average to twice the target, an image whose sides are both even is halved (2 x 2 block means, in
float32, after the clipping above) while at least :data:`BLOCK_MARGIN` (2) blocks remain for each
intermediate pixel on each axis: a 3000 x 3000 image for a 224 x 224 model is halved once
(1500 x 1500, then 448 x 448), a 2500 x 2048 one for 256 x 256 once. An average of block means
equals the single average only where the boxes' edges fall between blocks; where one falls inside
a block, that block's part counts at the block's mean. For a linear window that is the whole
difference from version 1: measured max |display difference| 0.0046 on phantoms (mean per image
<= 3e-4), 0.029 on pydicom's test images (a 512 x 512 CT reduced to 48 x 48, at a bone edge);
test bounds 0.05 and 1e-3. Images with an odd side, or too small to keep two blocks per pixel,
are not halved, and give version 2's numbers.

**Reduced-resolution decoding (version 4).** A JPEG 2000 codestream is a wavelet pyramid, and its
lower resolutions decode without the code-blocks of the higher ones (measured: a quarter of the
time at half the size, a fifteenth at a quarter). Version 4 is version 3 plus this: the intake asks the decoder for a grey JPEG
2000 frame at no less than :data:`DECODE_MARGIN` times the size the stored values are averaged to
(:func:`decode_size`), and the decoder leaves out as many whole levels as that allows (each halves
both sides; only while both sides divide evenly). The reduced image is a wavelet low-pass, not a
block mean, so the decoder moves it onto the blocks' centres (``edgeinfer.dicomio.codecs``), and
the margin leaves an area average of at least 2 x 2 reduced pixels after it. Not reduced: images
whose window will be the automatic one (its percentiles come from single pixels; a smoothed image
has narrower tails), images with a Modality LUT Sequence or with pixel padding to exclude (found by
exact value), and every other transfer syntax. ``decode_size`` decides; a 2500 x 2048 image for a
256 x 256 model decodes at 1250 x 1024. Measured against version 1 on JPEG 2000 phantoms (lossless
and 10:1; header window, VOI LUT, SIGMOID, signed; the bundle's spec and a letterboxed 3-channel
one): max |display difference| 0.0075, mean per image <= 6e-4, inside version 3's halving bounds,
which the tests hold it to.

``tests/edgeinfer/preprocess/test_preprocess_fast.py`` asserts these bounds and that the shipped
model's decisions are unchanged.
"""
from .geometry import BLOCK_MARGIN, DECODE_MARGIN, REDUCE_FACTOR, content_box, resize
from .modality import modality_lut, padding_mask, select_frame
from .pipeline import decode_size, preprocess_pixels
from .spec import Prepared, PreprocessSpec
from .stats import CONTRAST_PERCENTILES, MIN_CONTRAST, contrast
from .window import Window, apply_window, auto_window, voi

#: Which preprocessing implementation this is (see the package docstring): "1" mapped every pixel
#: at full resolution, "2" reduces resolution before windowing, "3" halves large images first, "4"
#: decodes JPEG 2000 at reduced resolution. A bundle records the version it was validated with, so a
#: change of the numbers a model sees is visible.
PREPROCESS_IMPL = "4"

__all__ = [
    "PREPROCESS_IMPL", "REDUCE_FACTOR", "BLOCK_MARGIN", "DECODE_MARGIN", "MIN_CONTRAST", "CONTRAST_PERCENTILES",
    "PreprocessSpec", "Window", "Prepared", "select_frame", "modality_lut", "padding_mask", "auto_window",
    "apply_window", "contrast", "voi", "resize", "content_box", "decode_size", "preprocess_pixels",
]
