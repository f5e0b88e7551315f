#!/usr/bin/env python3
"""Regenerate Dinoscope's bundled sample library (``assets/sample``) from freely licensed images.

Every image comes from one of these, installed on the machine that runs this script:

* Debian packages ``mate-backgrounds``, ``plasma-workspace-wallpapers``, ``gnome-backgrounds``,
  ``openclipart-png`` and ``tuxpaint-stamps-default``::

      sudo apt-get install --no-install-recommends mate-backgrounds plasma-workspace-wallpapers \\
          gnome-backgrounds openclipart-png tuxpaint-stamps-default

* the sample files bundled inside scikit-image (``skimage/data``; scikit-image is in requirements-dev.txt).

Usage::

    python tools/make_sample.py --out assets/sample

Needs only the standard library and Pillow. The output is deterministic for a given Pillow version and the
same package versions (the ones used are recorded in ``PACKAGE_VERSIONS``), and the script is idempotent: files
whose bytes would not change are not rewritten, and images in the theme folders that are no longer in ``ITEMS``
are deleted. ``LICENSES.md`` is generated from the same table, so the listing always matches the files.

What is done to each image (and recorded in the "Modifications" column):

* photos: shrunk with Lanczos so the longest side is at most ``max_side`` (never enlarged), re-encoded as
  baseline (non-progressive) JPEG quality 88; the ICC profile and the camera's EXIF (make, model, capture time,
  exposure...) are kept, except the maker note and the embedded thumbnail;
* a few stay PNG (lossless, optimised) or WebP (quality 88) so the formats vary; clip art stays PNG with its alpha
  channel and its PNG text chunks (title, author);
* two photos are stored rotated by 90 degrees with an EXIF Orientation tag (6 and 8) that turns them upright
  again, so a viewer that ignores EXIF shows them sideways. ``rocket-launch.jpg`` also gets a DateTimeOriginal.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

try:
    from PIL import Image, PngImagePlugin
except ModuleNotFoundError:  # pragma: no cover - depends on the interpreter used
    sys.exit("make_sample.py needs Pillow: run it with the project's venv (.venv/bin/python) or pip install pillow")

JPEG_QUALITY = 88
WEBP_QUALITY = 88
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")

# The package versions the committed sample was built from. Other versions may ship different files.
PACKAGE_VERSIONS = {
    "mate-backgrounds": "1.26.0-1",
    "plasma-workspace-wallpapers": "4:5.27.5-2",
    "gnome-backgrounds": "43.1-1",
    "openclipart-png": "1:0.18+dfsg-19",
    "tuxpaint-stamps-default": "2022.06.04-1",
    "scikit-image": "0.26.0",
}

MATE = "/usr/share/backgrounds/mate"
PLASMA = "/usr/share/wallpapers"
GNOME = "/usr/share/backgrounds/gnome"
OCAL = "/usr/share/openclipart/png"
TUX = "/usr/share/tuxpaint/stamps"


def plasma(name: str) -> str:
    """The full-size image of a Plasma wallpaper (every photo wallpaper there is 2560x1600)."""
    return f"{PLASMA}/{name}/contents/images/2560x1600.jpg"


# Licence statements, each with where it was read from.
MATE_GPL = "GPL-2.0-or-later (copyright file: `GPL-2+`)"
PLASMA_LGPL = (
    "LGPL-3.0-only (metadata.json: `LGPLv3`, no 'or later'); the package's copyright file says `GPL-2+` for "
    "`Files: *`"
)
GNOME_CCBYSA = (
    "CC-BY-SA-3.0 (AUTHORS: `Wood*` by Jakub Steiner, CC BY-SA 3.0; the copyright file's per-file list predates "
    "these files, its package licence is GPL-2+)"
)
OCAL_PD = "CC-PDDC (public domain: Creative Commons Public Domain Dedication, per the copyright file)"
TUX_GPL = "GPL-2.0-or-later (copyright file: `License: GPL-2`, whose text says 'version 2 ... or any later version')"


@dataclass(frozen=True)
class Item:
    out: str  # path under --out; the suffix picks the output format
    package: str  # a Debian package name, or "scikit-image"
    src: str  # absolute path for Debian packages, file name inside skimage/data for scikit-image
    credit: str  # author / copyright line, as the source states it
    licence: str  # SPDX identifier where one fits, then where the statement comes from
    max_side: int | None = 1280  # longest side after resizing; None keeps the source size
    orientation: int = 1  # 6 or 8: store the pixels rotated and tag them so a viewer shows them upright
    date_original: str | None = None  # EXIF DateTimeOriginal to set ("YYYY:MM:DD HH:MM:SS")
    offset_original: str | None = None  # EXIF OffsetTimeOriginal, e.g. "-05:00"
    note: str = ""  # shown in the Modifications column


ITEMS: tuple[Item, ...] = (
    # ---------------------------------------------------------------- nature
    Item("nature/yellow-flower.jpg", "mate-backgrounds", f"{MATE}/nature/YellowFlower.jpg",
         "2008, Charles Barbin <barbinch@free.fr>", MATE_GPL),
    Item("nature/fresh-flower.jpg", "mate-backgrounds", f"{MATE}/nature/FreshFlower.jpg",
         "2005, Jens Ansorg <jens@ansorg-web.de>", MATE_GPL),
    Item("nature/marigold-garden.jpg", "mate-backgrounds", f"{MATE}/nature/Garden.jpg",
         "2008, Charles Barbin <barbinch@free.fr>", MATE_GPL),
    Item("nature/dandelion-seeds.jpg", "mate-backgrounds", f"{MATE}/nature/TwoWings.jpg",
         "2008, Charles Barbin <barbinch@free.fr>; 2008, Hylke Bons <hylkebons@gmail.com>", MATE_GPL),
    Item("nature/water-drop.jpg", "mate-backgrounds", f"{MATE}/nature/Aqua.jpg",
         "2008, Charles Barbin <barbinch@free.fr>", MATE_GPL),
    Item("nature/raindrops-on-leaf.jpg", "mate-backgrounds", f"{MATE}/nature/RainDrops.jpg",
         '2008, "blackcombwhistler07" <blackcombwhistler07@googlemail.com>', MATE_GPL),
    Item("nature/leaf-veins.jpg", "mate-backgrounds", f"{MATE}/nature/Blinds.jpg",
         "2008, Lennart Poettering <mztabzr@0pointer.de>; 2008, Andrea Cimitan", MATE_GPL),
    Item("nature/dune-grass.jpg", "mate-backgrounds", f"{MATE}/nature/Dune.jpg",
         "2007, Marco Cogoni <cogoni@gmail.com>; 2008, Hylke Bons <hylkebons@gmail.com>", MATE_GPL),
    Item("nature/storm.jpg", "mate-backgrounds", f"{MATE}/nature/Storm.jpg",
         "2008, Sergey Nazarov <phearnot@renee.ru>", MATE_GPL),
    Item("nature/fallen-leaf.jpg", "plasma-workspace-wallpapers", plasma("FallenLeaf"),
         "Martin Klapetek <mklapetek@kde.org> (metadata.json)", PLASMA_LGPL),
    Item("nature/forest-path.jpg", "plasma-workspace-wallpapers", plasma("Path"),
         "Risto Saukonpää <paristo@gmail.com> (metadata.json)", PLASMA_LGPL, max_side=1600, orientation=8),
    Item("nature/forest-path-screenshot.jpg", "plasma-workspace-wallpapers", f"{PLASMA}/Path/contents/screenshot.jpg",
         "Risto Saukonpää <paristo@gmail.com> (metadata.json)", PLASMA_LGPL, max_side=None,
         note="the wallpaper's own 400×250 preview: a near-duplicate of forest-path.jpg"),
    Item("nature/boats-evening-glow.jpg", "plasma-workspace-wallpapers", plasma("EveningGlow"),
         "Ian Hex (metadata.json)", PLASMA_LGPL, max_side=1600),
    Item("nature/boats-evening-glow-screenshot.jpg", "plasma-workspace-wallpapers",
         f"{PLASMA}/EveningGlow/contents/screenshot.jpg", "Ian Hex (metadata.json)", PLASMA_LGPL, max_side=None,
         note="the wallpaper's own 400×250 preview: a near-duplicate of boats-evening-glow.jpg"),
    Item("nature/kite-in-sky.jpg", "plasma-workspace-wallpapers", plasma("Kite"),
         "Risto Saukonpää <paristo@gmail.com> (metadata.json)", PLASMA_LGPL),
    Item("nature/foggy-jetty.jpg", "plasma-workspace-wallpapers", plasma("ColdRipple"),
         "Risto Saukonpää <paristo@gmail.com> (metadata.json)", PLASMA_LGPL),
    Item("nature/moss-one-stands-out.jpg", "plasma-workspace-wallpapers",
         plasma("OneStandsOut"),
         "Risto Saukonpää <paristo@gmail.com> (metadata.json)", PLASMA_LGPL),
    # ---------------------------------------------------------------- animals
    Item("animals/ladybird.jpg", "mate-backgrounds", f"{MATE}/nature/LadyBird.jpg",
         "2008, Charles Barbin <barbinch@free.fr>", MATE_GPL, max_side=1600),
    Item("animals/chelsea-the-cat.png", "scikit-image", "chelsea.png",
         "Stefan van der Walt (skimage.data.chelsea)", "CC0-1.0 (skimage.data.chelsea docstring)", max_side=None),
    Item("animals/elephants-1600.jpg", "mate-backgrounds", f"{MATE}/abstract/Elephants_5640x3172.jpg",
         "2020, Wyng Stancikaite <wyng.stancikaite@gmail.com>", MATE_GPL, max_side=1600,
         note="near-duplicate of elephants-960.jpg (the package ships this picture at three sizes)"),
    Item("animals/elephants-960.jpg", "mate-backgrounds", f"{MATE}/abstract/Elephants.jpg",
         "2020, Wyng Stancikaite <wyng.stancikaite@gmail.com>", MATE_GPL, max_side=960,
         note="near-duplicate of elephants-1600.jpg"),
    # ---------------------------------------------------------------- objects
    Item("objects/coffee.jpg", "scikit-image", "coffee.png",
         "Rachel Michetti; courtesy of Pikolo Espresso Bar (skimage.data.coffee)",
         "CC0-1.0 (skimage.data.coffee docstring)", max_side=None),
    Item("objects/rocket-launch.jpg", "scikit-image", "rocket.jpg",
         "SpaceX: launch of DSCOVR on Falcon 9 (skimage.data.rocket)",
         "LicenseRef-PublicDomain (skimage.data.rocket docstring: 'released in the public domain' by SpaceX)",
         max_side=None, orientation=6, date_original="2015:02:11 18:03:42", offset_original="-05:00"),
    Item("objects/motorcycle-left.jpg", "scikit-image", "motorcycle_left.png",
         "Middlebury 2014 stereo dataset: N. Nesic, P. Westling, X. Wang, Y. Kitajima, G. Krathwohl, D. Scharstein "
         "(skimage.data.stereo_motorcycle)",
         "not stated: the docstring gives no licence; covered only by scikit-image's package licence "
         "(BSD-3-Clause, `Files: *`)", max_side=None, note="left/right stereo pair: near-duplicates"),
    Item("objects/motorcycle-right.jpg", "scikit-image", "motorcycle_right.png",
         "Middlebury 2014 stereo dataset: N. Nesic, P. Westling, X. Wang, Y. Kitajima, G. Krathwohl, D. Scharstein "
         "(skimage.data.stereo_motorcycle)",
         "not stated: the docstring gives no licence; covered only by scikit-image's package licence "
         "(BSD-3-Clause, `Files: *`)", max_side=None, note="left/right stereo pair: near-duplicates"),
    Item("objects/colorful-cups.jpg", "plasma-workspace-wallpapers",
         plasma("ColorfulCups"), "Dmitri Popov <dmpop@linux.com> (metadata.json)",
         PLASMA_LGPL),
    Item("objects/facade-waves-grey.jpg", "plasma-workspace-wallpapers", plasma("Grey"),
         "Sigi Sagi <sigi-sagi@gmx.de> (metadata.json)", PLASMA_LGPL, note="greyscale JPEG"),
    Item("objects/greek-coins.png", "scikit-image", "coins.png",
         "Greek coins from Pompeii, Brooklyn Museum Collection (skimage.data.coins)",
         "LicenseRef-NoKnownCopyrightRestrictions (skimage.data.coins docstring)", max_side=None,
         note="greyscale PNG"),
    Item("objects/wood-slats-light.webp", "gnome-backgrounds", f"{GNOME}/wood-l.webp",
         "© 2011-2022 Jakub Steiner <jimmac@gmail.com> (AUTHORS)", GNOME_CCBYSA, max_side=1024,
         note="light/dark variants of one render: near-duplicates"),
    Item("objects/wood-slats-dark.webp", "gnome-backgrounds", f"{GNOME}/wood-d.webp",
         "© 2011-2022 Jakub Steiner <jimmac@gmail.com> (AUTHORS)", GNOME_CCBYSA, max_side=1024,
         note="light/dark variants of one render: near-duplicates"),
    # ---------------------------------------------------------------- space and science
    Item("space-and-science/astronaut-eileen-collins.jpg", "scikit-image", "astronaut.png",
         "NASA (NASA Great Images database; skimage.data.astronaut)",
         "LicenseRef-PublicDomain (skimage.data.astronaut docstring: 'No known copyright restrictions, released "
         "into the public domain')", max_side=None),
    Item("space-and-science/hubble-deep-field.jpg", "scikit-image", "hubble_deep_field.jpg",
         "NASA, Hubble eXtreme Deep Field, HubbleSite release 2012-37 (skimage.data.hubble_deep_field)",
         "LicenseRef-PublicDomain (skimage.data.hubble_deep_field docstring: NASA, 'may be freely used in the "
         "public domain')", max_side=None),
    Item("space-and-science/immunohistochemistry.jpg", "scikit-image", "ihc.png",
         "Center for Microscopy And Molecular Imaging (CMMI) (skimage.data.immunohistochemistry)",
         "LicenseRef-NoKnownCopyrightRestrictions (skimage.data.immunohistochemistry docstring)", max_side=None),
    Item("space-and-science/retina.jpg", "scikit-image", "retina.jpg",
         "Mikael Häggström, Wikimedia Commons 'Fundus photograph of normal left eye' (skimage.data.retina)",
         "CC0-1.0 (skimage.data.retina docstring)", max_side=1024),
    # ---------------------------------------------------------------- clip art (PNG with alpha)
    Item("clipart/ladybug-openclipart.png", "openclipart-png", f"{OCAL}/animals/bugs/ladybug_01.png",
         "vance (PNG Author chunk)", OCAL_PD, max_side=None,
         note="near-duplicate of ladybug-tuxpaint.png (same drawing, other size)"),
    Item("clipart/ladybug-tuxpaint.png", "tuxpaint-stamps-default", f"{TUX}/animals/insects/cartoon/ladybug.png",
         "Tux Paint stamps (copyright file: 2002-2022 Bill Kendrick); drawing by vance (Open Clip Art, per "
         "ladybug.svg's metadata, which says Public Domain)", TUX_GPL, max_side=None,
         note="near-duplicate of ladybug-openclipart.png"),
    Item("clipart/cat.png", "openclipart-png", f"{OCAL}/animals/mammals/housecats/gatto_cat_architetto_fra_01.png",
         "Architetto Francesco Rollandin (PNG Author chunk)", OCAL_PD, max_side=None),
    Item("clipart/rocket.png", "openclipart-png", f"{OCAL}/transportation/vehicles/rocket.png",
         "Nicu Buculei (PNG Author chunk)", OCAL_PD, max_side=None),
    Item("clipart/motorcycle.png", "openclipart-png", f"{OCAL}/transportation/motorcycle_jarno_vasama_.png",
         "Jarno Vasamaa (PNG Author chunk)", OCAL_PD, max_side=640),
    Item("clipart/coffee-mug.png", "openclipart-png", f"{OCAL}/food/beverages/coffee_ganson.png",
         "Gerald G. (PNG Author chunk)", OCAL_PD, max_side=None),
    Item("clipart/elephant-cutout.png", "tuxpaint-stamps-default", f"{TUX}/animals/mammals/elephant.png",
         "Tux Paint stamps (copyright file: 2002-2022 Bill Kendrick); no per-stamp credit in the package", TUX_GPL,
         max_side=None),
    Item("clipart/apollo-lunar-lander.png", "tuxpaint-stamps-default", f"{TUX}/space/apollo_lander.png",
         "Tux Paint stamps (copyright file: 2002-2022 Bill Kendrick); no per-stamp credit in the package", TUX_GPL,
         max_side=None),
)

THEMES = ("nature", "animals", "objects", "space-and-science", "clipart")

# EXIF tags that point to other IFDs or hold data that would be wrong after re-encoding.
_IFD0_DROP = {0x8769, 0x8825, 0xA005, 0xC4A5, 0x0201, 0x0202}  # Exif/GPS/Interop pointers, PrintIM, JPEG thumb
_EXIF_IFD_DROP = {0x927C, 0xA005}  # MakerNote (vendor blob, offsets break), Interop pointer
_EXIF_IFD = 0x8769
_GPS_IFD = 0x8825
_TAG_ORIENTATION = 0x0112
_TAG_DATETIME_ORIGINAL = 0x9003
_TAG_OFFSET_TIME_ORIGINAL = 0x9011
_TAG_PIXEL_X, _TAG_PIXEL_Y = 0xA002, 0xA003


# -------------------------------------------------------------------------------------------------------------
# Sources


def skimage_data_dir(override: str | None) -> Path | None:
    if override:
        return Path(override)
    spec = importlib.util.find_spec("skimage")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def source_path(item: Item, skdata: Path | None) -> Path | None:
    if item.package == "scikit-image":
        return None if skdata is None else skdata / item.src
    return Path(item.src)


def check_sources(skdata: Path | None) -> None:
    """Exit with one clear message naming the apt / pip command when any source file is missing."""
    missing_pkgs: dict[str, list[str]] = {}
    for item in ITEMS:
        path = source_path(item, skdata)
        if path is None or not path.is_file():
            missing_pkgs.setdefault(item.package, []).append(str(path or item.src))
    if not missing_pkgs:
        return
    lines = ["make_sample.py: source images are missing:"]
    for pkg, paths in missing_pkgs.items():
        lines.append(f"  {pkg}: {paths[0]}" + (f" (and {len(paths) - 1} more)" if len(paths) > 1 else ""))
    debs = [p for p in missing_pkgs if p != "scikit-image"]
    if debs:
        lines.append("Install the Debian packages with:")
        lines.append("  sudo apt-get install --no-install-recommends " + " ".join(debs))
    if "scikit-image" in missing_pkgs:
        lines.append(
            "scikit-image's bundled data was not found: run with the project's venv (.venv/bin/python, "
            f"scikit-image=={PACKAGE_VERSIONS['scikit-image']} from requirements-dev.txt) or pass --skimage-data DIR"
        )
    sys.exit("\n".join(lines))


def installed_version(package: str, skdata: Path | None) -> str | None:
    if package == "scikit-image":
        if skdata is None:
            return None
        for dist_info in skdata.parent.parent.glob("scikit_image-*.dist-info"):
            return dist_info.name.removeprefix("scikit_image-").removesuffix(".dist-info")
        return None
    if shutil.which("dpkg-query") is None:
        return None
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or None if result.returncode == 0 else None


def warn_on_version_drift(skdata: Path | None) -> None:
    for package, wanted in PACKAGE_VERSIONS.items():
        have = installed_version(package, skdata)
        if have is not None and have != wanted:
            print(f"warning: {package} {have} is installed, the sample was built from {wanted}; "
                  "the output may differ", file=sys.stderr)


# -------------------------------------------------------------------------------------------------------------
# Image processing


def target_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    width, height = size
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def build_exif(src: Image.Image, item: Item, stored_size: tuple[int, int]) -> Image.Exif | None:
    """The source's EXIF minus pointers, maker note and thumbnail, with our orientation/date/pixel size."""
    old = src.getexif()
    new = Image.Exif()
    for tag, value in old.items():
        if tag not in _IFD0_DROP:
            new[tag] = value
    old_sub = old.get_ifd(_EXIF_IFD)
    if old_sub or item.date_original:
        sub = new.get_ifd(_EXIF_IFD)
        for tag, value in old_sub.items():
            if tag not in _EXIF_IFD_DROP:
                sub[tag] = value
        if _TAG_PIXEL_X in sub or _TAG_PIXEL_Y in sub:
            sub[_TAG_PIXEL_X], sub[_TAG_PIXEL_Y] = stored_size
        if item.date_original:
            sub[_TAG_DATETIME_ORIGINAL] = item.date_original
            if item.offset_original:
                sub[_TAG_OFFSET_TIME_ORIGINAL] = item.offset_original
    gps = old.get_ifd(_GPS_IFD)
    if gps:
        new.get_ifd(_GPS_IFD).update(gps)
    if item.orientation != 1:
        new[_TAG_ORIENTATION] = item.orientation
    elif _TAG_ORIENTATION in new:
        new[_TAG_ORIENTATION] = 1  # pixels are already upright (we apply any source orientation below)
    only_trivial = set(new.keys()) <= {_TAG_ORIENTATION} and new.get(_TAG_ORIENTATION, 1) == 1
    return None if only_trivial else new


def png_text(src: Image.Image) -> PngImagePlugin.PngInfo | None:
    """Keep the PNG text chunks (Title, Author, Description, ...): they carry the clip art's credits."""
    texts = getattr(src, "text", None) or {}
    if not texts:
        return None
    info = PngImagePlugin.PngInfo()
    for key in sorted(texts):
        info.add_text(key, texts[key])
    return info


def render(item: Item, path: Path) -> tuple[bytes, str]:
    """Encoded bytes of the output image and a description of what was done."""
    with Image.open(path) as src:
        src.load()
        source_orientation = src.getexif().get(_TAG_ORIENTATION, 1)
        image = src
        changes: list[str] = []
        if source_orientation in (3, 6, 8):
            image = image.transpose(
                {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_270, 8: Image.Transpose.ROTATE_90}[
                    source_orientation
                ]
            )
            changes.append("source EXIF orientation applied")
        suffix = Path(item.out).suffix.lower()
        fmt = {".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP"}[suffix]

        if fmt in ("JPEG", "WEBP") and image.mode not in ("RGB", "L"):
            if "A" in image.mode or "transparency" in image.info:
                rgba = image.convert("RGBA")
                flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                flat.alpha_composite(rgba)
                image = flat
                changes.append("alpha flattened on white")
            image = image.convert("RGB")

        size = target_size(image.size, item.max_side)
        if size != image.size:
            changes.append(f"resized {image.width}×{image.height} → {size[0]}×{size[1]} (Lanczos)")
            image = image.resize(size, Image.Resampling.LANCZOS)

        if item.orientation == 6:  # stored = upright turned 90° counter-clockwise; viewers turn it back clockwise
            image = image.transpose(Image.Transpose.ROTATE_90)
            changes.append("pixels rotated 90° counter-clockwise and tagged EXIF Orientation=6 (displays upright)")
        elif item.orientation == 8:  # stored = upright turned 90° clockwise
            image = image.transpose(Image.Transpose.ROTATE_270)
            changes.append("pixels rotated 90° clockwise and tagged EXIF Orientation=8 (displays upright)")
        elif item.orientation != 1:
            raise ValueError(f"{item.out}: only orientations 1, 6 and 8 are supported")
        if item.date_original:
            changes.append(
                f"EXIF DateTimeOriginal set to {item.date_original}"
                + (f" (OffsetTimeOriginal {item.offset_original})" if item.offset_original else "")
            )

        icc = src.info.get("icc_profile")
        buf = io.BytesIO()
        src_fmt = src.format or "?"
        if fmt == "JPEG":
            exif = build_exif(src, item, image.size)
            kwargs: dict = {"quality": JPEG_QUALITY, "progressive": False, "optimize": True}
            if icc:
                kwargs["icc_profile"] = icc
            if exif is not None:
                kwargs["exif"] = exif
            image.save(buf, "JPEG", **kwargs)
            changes.append(f"re-encoded {src_fmt} → JPEG q{JPEG_QUALITY} baseline")
            if exif is not None and src.getexif():
                dropped = 0x927C in src.getexif().get_ifd(_EXIF_IFD)
                changes.append("source EXIF kept" + (" (maker note dropped)" if dropped else ""))
        elif fmt == "WEBP":
            kwargs = {"quality": WEBP_QUALITY, "method": 6}
            if icc:
                kwargs["icc_profile"] = icc
            image.save(buf, "WEBP", **kwargs)
            changes.append(f"re-encoded {src_fmt} → WebP q{WEBP_QUALITY}")
        else:
            kwargs = {"optimize": True}
            if icc:
                kwargs["icc_profile"] = icc
            text = png_text(src)
            if text is not None:
                kwargs["pnginfo"] = text
            image.save(buf, "PNG", **kwargs)
            alpha = ", alpha kept" if "A" in image.mode else ""
            changes.append(f"re-encoded {src_fmt} → PNG ({image.mode}{alpha})")
        if item.note:
            changes.append(item.note)
        return buf.getvalue(), "; ".join(changes)


# -------------------------------------------------------------------------------------------------------------
# LICENSES.md


LICENCE_TEXTS: tuple[tuple[str, str], ...] = (
    ("GPL-2.0-or-later",
     "`/usr/share/common-licenses/GPL-2` on Debian; https://www.gnu.org/licenses/old-licenses/gpl-2.0.html"),
    ("LGPL-3.0-only",
     "`/usr/share/common-licenses/LGPL-3` (and `GPL-3`, which it extends) on Debian; "
     "https://www.gnu.org/licenses/lgpl-3.0.html"),
    ("CC-BY-SA-3.0",
     "https://creativecommons.org/licenses/by-sa/3.0/ "
     "(quoted in full in `/usr/share/doc/gnome-backgrounds/copyright`)"),
    ("CC0-1.0", "`/usr/share/common-licenses/CC0-1.0` on Debian; https://creativecommons.org/publicdomain/zero/1.0/"),
    ("CC-PDDC",
     "Creative Commons Public Domain Dedication and Certification, quoted in "
     "`/usr/share/doc/openclipart-png/copyright`; https://spdx.org/licenses/CC-PDDC.html"),
    ("BSD-3-Clause",
     "scikit-image's `LICENSE.txt` (in the wheel's `scikit_image-*.dist-info/`); "
     "https://opensource.org/license/bsd-3-clause"),
    ("LicenseRef-PublicDomain", "not a licence: the source says the image is in the public domain (NASA, SpaceX)"),
    ("LicenseRef-NoKnownCopyrightRestrictions",
     'not a licence: scikit-image says "No known copyright restrictions"'),
)


def licenses_md(rows: list[tuple[Item, str]]) -> str:
    lines = [
        "# Sample library: sources and licences",
        "",
        "<!-- Generated by tools/make_sample.py from its ITEMS table; edit the script, not this file. -->",
        "",
        "These images are the library Dinoscope opens on first start. None of them was made by the Dinoscope",
        "project: each one is a resized copy of a file from a Debian package or from scikit-image's bundled data,",
        "listed below with its source path, its author as the source states it, its licence (SPDX identifier where",
        "one fits, with where the statement was read) and what we changed. Rebuild the folder with",
        "`python tools/make_sample.py --out assets/sample` (it needs the packages installed and says which).",
        "",
        "Built from: " + ", ".join(f"{pkg} {ver}" for pkg, ver in PACKAGE_VERSIONS.items()) + ".",
        "",
        "## Things to know",
        "",
        "* **Copyleft and share-alike.** The MATE and Tux Paint images are GPL-2.0-or-later, the Plasma ones",
        "  LGPL-3.0-only (see below), the GNOME renders CC-BY-SA-3.0. Whoever redistributes this folder (also inside",
        "  an app bundle) must keep this file with it (credits, licence names and links, our modifications), pass",
        "  the images on under the same licences, and, for the GPL/LGPL ones, be able to point to the corresponding",
        "  source: the full-size originals in the Debian packages named below (the path column says which file).",
        "  The images are shipped alongside the app, not built into its code; the sample folder keeps these",
        "  licences whatever the app's own licence is. Only the public-domain / CC0 images carry no obligations.",
        "* **Plasma wallpapers** carry two statements: each wallpaper's `metadata.json` says `LGPLv3` (not",
        "  \"or later\"), while Debian's copyright file covers the whole package with GPL-2+. The table gives both.",
        "* **GNOME**: `/usr/share/doc/gnome-backgrounds/copyright` still lists the JPEGs of older releases; the",
        "  credit for `wood-*.webp` is from the package's `AUTHORS` file (`Wood*`: Jakub Steiner, CC BY-SA 3.0).",
        "* **Motorcycle stereo pair**: scikit-image names the Middlebury 2014 authors but states no licence for the",
        "  two images; the only licence statement that covers them is scikit-image's package-wide BSD-3-Clause",
        "  (`Files: *`). Drop them if that is not good enough for a release.",
        "* **Tux Paint stamps** have no per-stamp credits in the package; the ladybug stamp is the Open Clip Art",
        "  drawing by \"vance\" (its SVG's metadata says Public Domain), shipped by Tux Paint under the GPL.",
        "* **EXIF on purpose.** `nature/forest-path.jpg` is stored rotated 90° clockwise with EXIF Orientation=8",
        "  and `objects/rocket-launch.jpg` rotated 90° counter-clockwise with Orientation=6: both display upright",
        "  only in a viewer that honours EXIF (as Dinoscope's decoder does). `forest-path.jpg` keeps the camera's",
        "  own DateTimeOriginal (2015-09-06 18:46:57); `rocket-launch.jpg` had no EXIF, and we set its",
        "  DateTimeOriginal to the DSCOVR launch time (2015-02-11 18:03:42 -05:00, from the public launch record,",
        "  not from the file).",
        "  Other photos keep whatever EXIF their source had (camera, date), minus the maker note.",
        "* **Near-duplicates on purpose**: elephants-1600 / elephants-960 (the same picture at two sizes),",
        "  forest-path / forest-path-screenshot and boats-evening-glow / boats-evening-glow-screenshot (a wallpaper",
        "  and its own preview), motorcycle-left / motorcycle-right (a stereo pair), wood-slats-light / -dark, and",
        "  ladybug-openclipart / ladybug-tuxpaint (one drawing shipped by two packages at two sizes).",
        "",
    ]
    for theme in THEMES:
        lines += [f"## {theme}", "", "| File | Source | Author / credit | Licence | Modifications |"]
        lines.append("|---|---|---|---|---|")
        for item, changes in rows:
            if item.out.split("/")[0] != theme:
                continue
            src = f"scikit-image `skimage/data/{item.src}`" if item.package == "scikit-image" else (
                f"{item.package} `{item.src}`"
            )
            cells = [f"`{item.out}`", src, item.credit, item.licence, changes]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    lines += ["## Licence texts", "", "Full texts are not copied here; they are at these places:", ""]
    lines += ["| Identifier | Where to read it |", "|---|---|"]
    lines += [f"| {ident} | {where} |" for ident, where in LICENCE_TEXTS]
    lines.append("")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------------------


def write_if_changed(path: Path, data: bytes) -> bool:
    if path.is_file() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder (normally assets/sample)")
    parser.add_argument("--skimage-data", help="scikit-image's data folder (default: the installed package's)")
    args = parser.parse_args(argv)

    outs = [item.out for item in ITEMS]
    if len(set(outs)) != len(outs) or any(o.split("/")[0] not in THEMES for o in outs):
        raise SystemExit("ITEMS: duplicate output names or unknown theme folder")

    skdata = skimage_data_dir(args.skimage_data)
    check_sources(skdata)
    warn_on_version_drift(skdata)

    out: Path = args.out
    written = 0
    rows: list[tuple[Item, str]] = []
    for item in ITEMS:
        data, changes = render(item, source_path(item, skdata))
        written += write_if_changed(out / item.out, data)
        rows.append((item, changes))

    wanted = {out / item.out for item in ITEMS}
    removed = 0
    for theme in THEMES:
        for path in sorted((out / theme).glob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and path not in wanted:
                path.unlink()
                removed += 1

    written += write_if_changed(out / "LICENSES.md", licenses_md(rows).encode("utf-8"))
    total = sum((out / item.out).stat().st_size for item in ITEMS)
    print(f"{len(ITEMS)} images, {total / 1e6:.2f} MB in {out}; {written} file(s) written, {removed} removed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
