"""Rewrite the README's settings table from serving/settings.py (tests/serving/test_settings.py
fails until this ran after a knob changed)."""

from pathlib import Path

from serving.settings import markdown_table

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- settings table", "<!-- end of settings table -->"

text = README.read_text()
head = text[:text.index("\n", text.index(START)) + 1]
tail = text[text.index(END):]
README.write_text(head + markdown_table() + "\n" + tail)
