"""Text in any script: class names are drawn in a font that has their glyphs, in figures and annotated photos, or
said once to be drawn as boxes where no installed font has them. No test needs a CJK font installed."""
import numpy as np
import pytest
from PIL import Image, ImageFont

import fonts
import reports
from faces import Face, annotate


@pytest.fixture
def drawn(monkeypatch):
    """The matplotlib figures reports saves, kept open for inspection."""
    figures = []
    real_save = reports._save
    monkeypatch.setattr(reports, "_save", lambda fig, *a, **k: (figures.append(fig), real_save(fig, *a, **k)))
    return figures


def test_names_the_default_font_lacks_are_drawn_in_an_installed_font_that_has_them(drawn, tmp_path, recwarn):
    default = fonts._characters(fonts.default_font())
    others = sorted(set().union(*map(fonts._characters, fonts.installed_fonts())) - default)
    letter = next(chr(c) for c in others if chr(c).isprintable() and not chr(c).isspace())
    found = fonts.font_for(f"Happy {letter}")
    assert found != fonts.default_font() and ord(letter) in fonts._characters(found)
    reports.plot_confusion_matrix([[1, 0], [0, 1]], ["Happy", f"Sad {letter}"], tmp_path / "cm.png")
    (ax,) = drawn[0].axes
    assert {label.get_fontproperties().get_file() for label in ax.get_xticklabels()} == {found}
    assert not [w for w in recwarn if "missing from font" in str(w.message)]
    # Text the default font has is drawn in it; PIL's own font has ASCII only, so other text takes font_for's.
    assert fonts.font_for("Ünïcode") == fonts.default_font() and fonts.text_properties("Happy") == {}
    assert fonts.pil_font("Ünïcode", 20).path == fonts.default_font()
    assert fonts.pil_font("Happy", 20).getname() == ImageFont.load_default(size=20).getname()


def test_where_no_font_has_the_glyphs_one_warning_says_so(drawn, tmp_path, monkeypatch, capsys, recwarn):
    monkeypatch.setattr(fonts, "installed_fonts", lambda: [])  # a system without CJK fonts, whatever this one has
    monkeypatch.setattr(fonts, "_warned", [])
    classes = ["高兴", "难过"]
    reports.plot_confusion_matrix([[1, 0], [0, 1]], classes, tmp_path / "cm.png", title="测试")
    face = Face((10, 10, 40, 40), probabilities=np.array([0.8, 0.2]))
    annotate(Image.new("RGB", (64, 64)), [face], classes)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "no installed font has the characters" in err and "高" in err
    assert "fonts-noto-cjk" in err
    assert not [w for w in recwarn if "missing from font" in str(w.message)]  # not one per glyph from matplotlib
