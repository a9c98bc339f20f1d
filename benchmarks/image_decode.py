"""JPEG decode + resize to 224 (shortest edge 256, center crop 224, as EfficientNet-Lite0's
version records it) with Pillow, simplejpeg and PyTurboJPEG, on real photographs (scikit-learn's
two sample images and scikit-image's colour ones) encoded as JPEG (quality 90) at a few sizes;
rounds interleaved, medians of per-image milliseconds, and each decoder's pixels compared with
Pillow's (the pixels the optimizer judged variants on).

    python -m benchmarks.image_decode [--rounds 5]

Candidates (and ``served``: what serving.images does now): each library's full decode, then the same Pillow resize/crop/normalise
(:mod:`serving.images`); and each one's DCT-domain downscaling (Pillow's ``draft``,
simplejpeg's ``min_width``/``min_height``, PyTurboJPEG's ``scaling_factor``), which decodes
a large JPEG at 1/2..1/8 of its size and so is faster, but is not the same pixels.

Measured here (2 cores, shared; 2026-12-04, 7 rounds interleaved, medians; ms per image of
decode + resize 256 + crop 224 + normalise; pixel difference of the model's input against
Pillow's, in steps of 0..255, mean / max):

    long side   pillow   simplejpeg             pillow-draft          simplejpeg-min
      512        3.06    2.73 1.12x  0.00/0     2.59 1.18x 0.36/49    1.99 1.54x 3.14/95
     1024        7.91    6.97 1.13x  0.00/0     3.62 2.19x 1.51/58    3.01 2.63x 3.88/151
     2048       24.20   20.34 1.19x  0.00/0     6.25 3.87x 1.85/131   5.81 4.16x 1.85/131
     4032      119.53  96.64 1.24x  0.00/0    13.28 9.00x 2.56/114   12.68 9.43x 2.56/114

simplejpeg's full decode gives exactly Pillow's pixels (the same libjpeg-turbo, accurate DCT
and fancy upsampling) 1.12-1.24x faster: serving/images.py uses it for YCbCr and greyscale
JPEGs (its wheels carry their own libjpeg-turbo). DCT-domain downscaling (Pillow's draft,
simplejpeg's min_width/min_height) is 2-9x faster on large photos but moves pixels by up to
half the range: not used (the optimizer's fidelity would no longer be the served one).
PyTurboJPEG 2.6 was not measured: it needs the system's libjpeg-turbo >= 3.0 and Debian's
apt has 2.1.5 (it refuses to load), and a system library is what the install must not need.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np


def spec():
    from serving.repository import ImagePreprocessing

    return ImagePreprocessing(height=224, width=224, resize_to=256, mean=[127 / 255] * 3,
                              std=[128 / 255] * 3)


def photos_at(long_side: int) -> list[bytes]:
    from PIL import Image

    from tests.support.image_models import photos

    out = []
    for rgb in photos():
        img = Image.fromarray(rgb)
        w, h = img.size
        img = img.resize((long_side, round(long_side * h / w)) if w >= h
                         else (round(long_side * w / h), long_side), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def decoders(sp):
    """name -> (encoded JPEG -> the model's pixels)."""
    from PIL import Image

    from serving.images import decode, open_header, preprocess_one, resized, to_pixels

    def finish(rgb: np.ndarray) -> np.ndarray:
        return to_pixels(resized(Image.fromarray(rgb), sp), sp)

    def short_side_scale(w: int, h: int) -> int:
        """The smallest of 1/8, 1/4, 1/2, 1 leaving the short side >= resize_to."""
        for d in (8, 4, 2):
            if min(w, h) // d >= sp.resize_to:
                return d
        return 1

    def pillow(b):  # Pillow's own decode (no ``data``: serving.images' JPEG fast path is off)
        return to_pixels(resized(decode(open_header(b, sp, "image", 0), "image", 0), sp), sp)

    out = {"pillow": pillow, "served": lambda b: preprocess_one(b, sp)}

    def pillow_draft(b):
        img = Image.open(io.BytesIO(b))
        img.draft("RGB", (sp.resize_to, sp.resize_to))
        return to_pixels(resized(img.convert("RGB"), sp), sp)

    out["pillow-draft"] = pillow_draft
    try:
        import simplejpeg

        out["simplejpeg"] = lambda b: finish(simplejpeg.decode_jpeg(b, colorspace="RGB"))

        def sj_min(b):
            return finish(simplejpeg.decode_jpeg(b, colorspace="RGB", min_height=sp.resize_to,
                                                 min_width=sp.resize_to))
        out["simplejpeg-min"] = sj_min
    except ImportError:
        pass
    try:
        from turbojpeg import TJPF_RGB, TurboJPEG

        tj = TurboJPEG()
        out["turbojpeg"] = lambda b: finish(tj.decode(b, pixel_format=TJPF_RGB))

        def tj_scaled(b):
            w, h, _, _ = tj.decode_header(b)
            d = short_side_scale(w, h)
            return finish(tj.decode(b, pixel_format=TJPF_RGB, scaling_factor=(1, d)))
        out["turbojpeg-scaled"] = tj_scaled
    except (ImportError, RuntimeError, OSError) as e:  # no system libturbojpeg
        print(f"PyTurboJPEG unavailable: {e}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sizes", default="640,1280,2560", help="Long sides of the test JPEGs.")
    args = ap.parse_args()
    sp = spec()
    decs = decoders(sp)
    sizes = [int(s) for s in args.sizes.split(",")]
    sets = {s: photos_at(s) for s in sizes}
    times: dict[tuple[int, str], list[float]] = {}
    diffs: dict[tuple[int, str], tuple[float, float]] = {}
    for s, images in sets.items():  # fidelity first: against Pillow's pixels, in 0..255 steps
        ref = [decs["pillow"](b) for b in images]
        for name, fn in decs.items():
            d = np.concatenate([np.abs(fn(b) - r).ravel() for b, r in zip(images, ref)])
            d = d * 128  # std 128/255: one step of 255 is 1/128 of the normalised value
            diffs[s, name] = (float(d.mean()), float(d.max()))
    for r in range(args.rounds):  # rounds interleave decoders and sizes
        order = list(decs)
        if r % 2:
            order.reverse()
        for s, images in sets.items():
            for name in order:
                fn = decs[name]
                t0 = time.perf_counter()
                for b in images:
                    fn(b)
                times.setdefault((s, name), []).append(
                    (time.perf_counter() - t0) / len(images) * 1000)
    print(f"{'size':>6} {'decoder':>18} {'ms/image':>9} {'vs pillow':>9} "
          f"{'mean diff':>9} {'max diff':>8}")
    for s in sizes:
        base = statistics.median(times[s, "pillow"])
        for name in decs:
            ms = statistics.median(times[s, name])
            print(f"{s:>6} {name:>18} {ms:9.2f} {base / ms:8.2f}x {diffs[s, name][0]:9.2f} "
                  f"{diffs[s, name][1]:8.1f}")


if __name__ == "__main__":
    main()
