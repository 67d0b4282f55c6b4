"""The font text is drawn in, for figures (matplotlib) and annotated photos (PIL) alike: the usual one where it has
every glyph, else a font installed on the system that has them (class names in Chinese were drawn as empty boxes).

matplotlib's font_manager lists the system's fonts; CJK families most systems ship (Noto Sans CJK, Source Han Sans,
WenQuanYi, Droid Sans Fallback, Microsoft YaHei, PingFang) are tried first, then every other font. Where none has
the glyphs, one warning says so, once per process, and the text is drawn as before. matplotlib is imported when a
font is looked for, not with this module (its font list is read, or built, on import).
"""
import functools
import re
import sys
from pathlib import Path

from PIL import ImageFont

PREFERRED_FAMILIES = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans CJK TC", "Noto Sans CJK KR",
                      "Source Han Sans SC", "Source Han Sans", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
                      "Droid Sans Fallback", "Microsoft YaHei", "SimHei", "PingFang SC", "Hiragino Sans GB",
                      "AR PL UMing CN", "Noto Sans", "Arial Unicode MS")
# Fonts whose glyphs for every character are placeholders (Apple's and Unicode's Last Resort, which matplotlib ships
# as LastResortHE-Regular.ttf, draws a box naming the script): they "have" every glyph and show none.
PLACEHOLDER_FONTS = ("lastresort",)
# Styles a label is not drawn in, by file name: a family's regular face is tried before these.
STYLED = re.compile(r"bold|black|heavy|italic|oblique|light|thin|medium|semi|extra|condensed|mono", re.IGNORECASE)
_warned = []


@functools.lru_cache(maxsize=None)
def _characters(path):
    """The code points a font file has glyphs for (its first face, for a .ttc collection)."""
    from matplotlib import ft2font

    try:
        return frozenset(ft2font.FT2Font(path).get_charmap())
    except (OSError, RuntimeError, ValueError):
        return frozenset()


def default_font():
    """The file of matplotlib's font for ordinary text (DejaVu Sans unless configured otherwise)."""
    import matplotlib
    from matplotlib import font_manager

    return font_manager.findfont(font_manager.FontProperties(family=matplotlib.rcParams["font.family"]))


@functools.lru_cache(maxsize=1)
def installed_fonts():
    """Font files to try, PREFERRED_FAMILIES first, then every other font font_manager knows or finds on the system
    now (its list is cached from when matplotlib first ran, before a font installed since), placeholders left out."""
    from matplotlib import font_manager

    preferred = []
    for family in PREFERRED_FAMILIES:
        try:
            preferred.append(font_manager.findfont(font_manager.FontProperties(family=family),
                                                   fallback_to_default=False))
        except ValueError:  # not installed
            continue
    others = {f.fname for f in font_manager.fontManager.ttflist} | set(font_manager.findSystemFonts())
    others = [p for p in others if not Path(p).name.lower().replace(" ", "").startswith(PLACEHOLDER_FONTS)]
    return list(dict.fromkeys(preferred + sorted(others, key=lambda p: (bool(STYLED.search(Path(p).name)), p))))


def font_for(text):
    """The file of a font that has a glyph for every character of text (blanks aside) -> default_font() when it
    has them, else the first of installed_fonts() that has, else None: the text is then drawn in the default font,
    some characters as boxes, and the first such call in a process prints one warning naming them."""
    needed = {ord(c) for c in text if not c.isspace()}
    default = default_font()
    if needed <= _characters(default):
        return default
    found = next((path for path in installed_fonts() if needed <= _characters(path)), None)
    if found is None and not _warned:
        _warned.append(text)
        missing = "".join(sorted({chr(c) for c in needed - _characters(default)}))
        print(f"warning: no installed font has the characters {missing} (of {text!r}); they are drawn as empty "
              "boxes in figures and annotated photos (install one that has them, e.g. Noto Sans CJK: apt-get install "
              "fonts-noto-cjk)", file=sys.stderr)
    return found


def text_properties(*texts):
    """matplotlib keyword arguments that draw texts in font_for's font: {} for the default font (or none found),
    else {"fontproperties": FontProperties of that font}."""
    from matplotlib import font_manager

    found = font_for(" ".join(texts))
    if found is None or found == default_font():
        return {}
    return {"fontproperties": font_manager.FontProperties(fname=found)}


def pil_font(text, size):
    """A PIL font of size pixels that draws text: PIL's own (its Aileron has ASCII letters only) for ASCII text,
    else font_for's, else PIL's own."""
    found = None if text.isascii() else font_for(text)
    return ImageFont.truetype(found, size) if found else ImageFont.load_default(size=size)
