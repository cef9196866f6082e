"""The user documents (README.md and docs/*.md) are for anyone who clones the repository: they name no
machine's paths, no tracker, no notes outside the repository and no commit hashes, and every link and
image they show points at a file of the repository."""
import os
import re

import pytest

from conftest import ROOT

FORBIDDEN = {
    "a machine's absolute path": re.compile(r"(?<![\w.~-])/(?:work|home|tmp|usr)/"),
    "the tracker": re.compile(r"\bissues?\s*#?\d+", re.IGNORECASE),
    "notes outside the repository": re.compile(r"\.\./shared\b"),
    # letters and digits both, so that plain numbers and words such as "effaced" are not hashes
    "a commit hash": re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b"),
}

COMMAND = re.compile(r"\bpython3?\s+((?:[\w.-]+/)*[\w.-]+\.py)\b")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_SOURCE = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)=\"([^\"]+)\"", re.IGNORECASE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+).+?\1", re.DOTALL)


def documents():
    docs = os.path.join(ROOT, "docs")
    names = sorted(f for f in os.listdir(docs) if f.endswith(".md")) if os.path.isdir(docs) else []
    return ["README.md"] + [os.path.join("docs", f) for f in names]


def read(document):
    with open(os.path.join(ROOT, document), encoding="utf-8") as f:
        return f.read()


def forbidden_mentions(text):
    """(kind, line number, the text that matched) for each mention a user document must not make."""
    return [(kind, text.count("\n", 0, m.start()) + 1, m.group(0))
            for kind, pattern in FORBIDDEN.items() for m in pattern.finditer(text)]


def link_targets(text):
    """The targets of the Markdown links and images and of the HTML img/a tags, outside code."""
    prose = CODE_SPAN.sub("", FENCE.sub("", text))
    return [m.group(1) for pattern in (LINK, HTML_SOURCE) for m in pattern.finditer(prose)]


def missing_scripts(text):
    """Each script that a `python some/script.py` command of a document runs and the repository lacks."""
    return sorted({path for path in COMMAND.findall(text) if not os.path.isfile(os.path.join(ROOT, path))})


def heading_anchors(text):
    """GitHub's anchors of a document's headings: lower case, punctuation dropped, spaces to hyphens,
    and -1, -2, ... appended to repeats."""
    anchors, seen = set(), {}
    for line in FENCE.sub("", text).splitlines():
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).replace("`", "").lower()).replace(" ", "-")
            anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def broken_links(document, text):
    """Each relative link or image of a document that names no file or heading of the repository."""
    broken = []
    for target in link_targets(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
            continue  # https:, mailto:: outside the repository
        path, _, anchor = target.partition("#")
        if path.startswith("/"):
            broken.append(f"{target}: absolute; a link inside the repository is relative to its document")
            continue
        resolved = os.path.normpath(os.path.join(os.path.dirname(document), path)) if path else document
        if resolved.startswith(".."):
            broken.append(f"{target}: outside the repository")
        elif not os.path.exists(os.path.join(ROOT, resolved)):
            broken.append(f"{target}: no such file")
        elif anchor and resolved.endswith(".md") and anchor not in heading_anchors(read(resolved)):
            broken.append(f"{target}: no heading with this anchor in {resolved}")
    return broken


@pytest.mark.parametrize("document", documents())
def test_document_names_nothing_private(document):
    assert forbidden_mentions(read(document)) == []


@pytest.mark.parametrize("document", documents())
def test_every_link_and_image_exists(document):
    assert broken_links(document, read(document)) == []


@pytest.mark.parametrize("document", documents())
def test_every_command_runs_a_script_that_exists(document):
    assert missing_scripts(read(document)) == []


def test_docs_folder_is_read():
    """The parametrisation above must cover docs/, or a broken docs file would pass unseen."""
    assert any(d.startswith("docs" + os.sep) for d in documents())
