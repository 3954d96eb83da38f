"""The code, tests, tools and docs refer only to what is in the repository: no developer notes
kept elsewhere and no absolute paths of one machine. Cite the paper by section or table instead
("the paper, Sec. 3.1")."""

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEARCHED = ("vim_tf", "tests", "tools", "docs", "README.md")
# Built from parts so that this file, which names them, is not itself a reference.
_NOTES = ("PAPER", "DESIGN", "STYLE", "STACK-NOTES")
FORBIDDEN = tuple(f"{name}.md" for name in _NOTES) + ("../" + "shared", "/" + "work/")


def _text_files():
    for name in SEARCHED:
        path = ROOT / name
        paths = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for p in paths:
            if "__pycache__" in p.parts or p.resolve() == pathlib.Path(__file__).resolve():
                continue
            try:
                yield p, p.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue  # binary files (test data) hold no references


def mentions(needle):
    """'path:line' of every line in the searched files that contains `needle`."""
    return [
        f"{path.relative_to(ROOT)}:{number}"
        for path, text in _text_files()
        for number, line in enumerate(text.splitlines(), start=1)
        if needle in line
    ]


@pytest.mark.parametrize("needle", FORBIDDEN)
def test_no_reference_outside_the_repository(needle):
    found = mentions(needle)
    assert not found, f"{needle!r} is mentioned in {found}"


def test_the_search_reads_every_searched_place():
    # A search that read no files would pass vacuously.
    files = {path.relative_to(ROOT).parts[0] for path, _ in _text_files()}
    missing = [name for name in SEARCHED if (ROOT / name).exists() and name not in files]
    assert not missing, f"no text files read under {missing}"


def test_the_search_finds_a_known_line():
    assert [m for m in mentions("(docs/architecture.md)") if m.startswith("README.md:")]


def test_the_architecture_doc_cites_the_paper_by_section():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert "the paper, Sec." in text and "the paper, Table 1" in text
