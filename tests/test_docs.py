"""The documentation agrees with the code and with itself.

Pure file checks plus imports (no MPI job, no solve):

- every section of docs/model.md cited as ``docs/model.md`` + section sign + number (or a
  range such as 2-3) in fem_dnn/, tests/, demos/, bench/ and README.md is a heading of
  docs/model.md;
- no file of the repository (tracked or new, docs/upstream excepted) names the theory
  pages the repository replaced by docs/model.md;
- every name of the ``__all__`` of every module of every subpackage is documented in the
  section of its module on the API page of its subpackage (docs/api/<subpackage>.md; the
  top-level modules: docs/api/infrastructure.md), and every entry there still names a
  name of that ``__all__``;
- every relative Markdown link of docs/*.md, docs/api/*.md and README.md points to a
  file (or folder) that exists, and to a heading that exists when it has an anchor;
- every ``fem_dnn/...py`` path mentioned in docs/ and README.md exists.
"""

import importlib
import pkgutil
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API = DOCS / "api"
MODEL = DOCS / "model.md"
README = ROOT / "README.md"
THIS = Path(__file__).resolve()

#: The theory pages docs/model.md replaced (spelled in two parts so that this file does
#: not name them itself).
RETIRED = ("MODEL" + ".md", "ARCHITECTURE" + ".md")
#: Where docs/model.md sections are cited.
CITING = ("fem_dnn", "tests", "demos", "bench")
#: The API page of each subpackage; the top-level modules share one page.
SUBPACKAGES = ("core", "network", "learning", "optimize", "hjb", "app")
TOP_LEVEL_PAGE = "infrastructure.md"

SECTION = "\u00a7"
CITATION = re.compile(r"docs/model\.md\s*" + SECTION + r"\s*(\d+(?:\.\d+)?)(?:\s*[-\u2013]\s*(\d+(?:\.\d+)?))?")
NUMBERED_HEADING = re.compile(r"^#{2,6}\s+(\d+(?:\.\d+)*)\.?\s")
MODULE_HEADING = re.compile(r"^## `(fem_dnn(?:\.\w+)*)`\s*$")
ENTRY = re.compile(r"^- `(\w+)")
LINK = re.compile(r"\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
PY_PATH = re.compile(r"(?<![\w/.])fem_dnn/[\w/]*?\w+\.py\b")


# --------------------------------------------------------------------------- helpers
def repository_files() -> list[Path]:
    """Tracked files and new files not ignored (``git ls-files``), that exist."""
    try:
        res = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                             capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:  # pragma: no cover - no git
        pytest.skip(f"git is not available: {err}")
    if res.returncode != 0:  # pragma: no cover - not a git checkout (an sdist)
        pytest.skip("not a git checkout: " + res.stderr.decode(errors="replace").strip())
    names = sorted({n for n in res.stdout.decode().split("\0") if n})
    return [ROOT / n for n in names if (ROOT / n).is_file()]


def text_of(path: Path) -> str | None:
    """The file as text, or None for a binary file."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    return data.decode("utf-8", errors="replace")


def model_sections() -> set[str]:
    return {m.group(1) for line in MODEL.read_text().splitlines() if (m := NUMBERED_HEADING.match(line))}


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    out, seen = set(), {}
    for line in strip_code_blocks(path.read_text()).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def strip_code_blocks(text: str) -> str:
    """The text with fenced code blocks blanked (line numbers kept)."""
    return re.sub(r"^```.*?^```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S | re.M)


def prose(text: str) -> str:
    """The text with code blocks, code spans and math blanked (line numbers kept): what
    is left is where Markdown links are (``$[a](y)$`` is math, not a link)."""

    def blank(m):
        return re.sub(r"[^\n]", " ", m.group(0))

    text = strip_code_blocks(text)
    text = re.sub(r"\$\$.*?\$\$", blank, text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", blank, text)
    return re.sub(r"\$[^$\n]*\$", blank, text)


def line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def public_modules() -> list[str]:
    """fem_dnn and every module of every subpackage, without fem_dnn.__main__ and the
    private modules ``_*``."""
    import fem_dnn

    names = ["fem_dnn"]
    for info in pkgutil.walk_packages(fem_dnn.__path__, "fem_dnn."):
        if info.name == "fem_dnn.__main__" or any(part.startswith("_") for part in info.name.split(".")):
            continue
        names.append(info.name)
    return names


def page_of(module: str) -> Path:
    parts = module.split(".")
    mod = importlib.import_module(module)
    if len(parts) == 1 or (len(parts) == 2 and not hasattr(mod, "__path__")):
        return API / TOP_LEVEL_PAGE
    return API / f"{parts[1]}.md"


def module_sections(page: Path) -> dict[str, str]:
    """``{module: its section's text}`` for the ``## `fem_dnn...``` headings of a page."""
    sections, current, lines = {}, None, []
    for line in page.read_text().splitlines():
        if line.startswith("## "):
            if current is not None:
                sections[current] = "\n".join(lines)
            m = MODULE_HEADING.match(line)
            current, lines = (m.group(1) if m else None), []
        elif current is not None:
            lines.append(line)
    if current is not None:
        sections[current] = "\n".join(lines)
    return sections


def documents(name: str, text: str) -> bool:
    """The name opens a code span: ```name``` or ```name(...)```."""
    return re.search("`" + re.escape(name) + r"[`(]", text) is not None


# --------------------------------------------------------------------------- (a) citations
def test_cited_model_sections_exist():
    sections = model_sections()
    kept = {"1", "2", "3", "4", "5", "6", "4.5", "4.10", "6.7"}
    assert kept <= sections, f"docs/model.md lost the headings {sorted(kept - sections)}"
    files = [p for p in repository_files() if p == README or p.relative_to(ROOT).parts[0] in CITING]
    cited, missing = 0, []
    for path in files:
        text = text_of(path)
        if text is None:
            continue
        for m in CITATION.finditer(text):
            for number in filter(None, m.groups()):
                cited += 1
                if number not in sections:
                    missing.append(f"{path.relative_to(ROOT)}:{line_of(text, m.start())}: cites docs/model.md "
                                   f"{SECTION}{number}, which is no heading of docs/model.md")
    assert cited >= 20, f"only {cited} citations of docs/model.md found: is the pattern still right?"
    assert not missing, "\n".join(missing) + f"\n(the headings are {SECTION}" + f", {SECTION}".join(sorted(sections)) + ")"


def test_model_sections_are_numbered_one_to_six():
    """The section numbering §1..§6 that the code cites is kept."""
    top = [m.group(1) for line in MODEL.read_text().splitlines() if (m := re.match(r"^## (\d+)\. ", line))]
    assert top == ["1", "2", "3", "4", "5", "6"], top


# --------------------------------------------------------------------------- (b) retired names
def test_no_file_names_the_retired_theory_pages():
    found = []
    for path in repository_files():
        rel = path.relative_to(ROOT)
        if rel.parts[:2] == ("docs", "upstream") or path.resolve() == THIS:
            continue
        if path.name in RETIRED:
            found.append(f"{rel}: a file of that name")
        text = text_of(path)
        if text is None:
            continue
        for name in RETIRED:
            for m in re.finditer(re.escape(name), text):
                found.append(f"{rel}:{line_of(text, m.start())}: names {name} (the theory is docs/model.md)")
    assert not found, "\n".join(found)


# --------------------------------------------------------------------------- (c) API pages
def test_every_subpackage_has_an_api_page():
    pages = {p.name for p in API.glob("*.md")}
    wanted = {f"{s}.md" for s in SUBPACKAGES} | {TOP_LEVEL_PAGE, "README.md"}
    assert wanted <= pages, f"missing API pages: {sorted(wanted - pages)}"
    found = {m.split(".")[1] for m in public_modules() if m.count(".") == 1 and hasattr(importlib.import_module(m), "__path__")}
    assert found == set(SUBPACKAGES), f"subpackages {sorted(found)} against the pages of {sorted(SUBPACKAGES)}: update both"
    index = (API / "README.md").read_text()
    for page in sorted(wanted - {"README.md"}):
        assert f"]({page})" in index, f"docs/api/README.md does not link {page}"


def test_every_public_name_is_on_the_api_page_of_its_subpackage():
    missing = []
    modules = public_modules()
    assert "fem_dnn.core.forms" in modules and "fem_dnn.network.schemes" in modules and len(modules) > 30, modules
    for name in modules:
        mod = importlib.import_module(name)
        names = getattr(mod, "__all__", None)
        if names is None:
            continue
        page = page_of(name)
        rel = page.relative_to(ROOT)
        if not page.is_file():
            missing.append(f"{name}: no API page {rel}")
            continue
        if hasattr(mod, "__path__") and name != "fem_dnn":  # a subpackage's re-exports: anywhere on its page
            text, where = page.read_text(), rel
        else:
            sections = module_sections(page)
            if name not in sections:
                missing.append(f"{name}: {rel} has no section '## `{name}`'")
                continue
            text, where = sections[name], f"{rel}, section {name}"
        for public in names:
            if not documents(public, text):
                missing.append(f"{name}.{public}: not documented in {where} (an entry starting `{public}` or `{public}(`)")
    assert not missing, "\n".join(missing)


def test_api_pages_document_only_what_exists():
    """Every module section names a module, and every entry ``- `name...`` of it a name
    of that module's ``__all__`` (a removed or renamed name leaves no stale entry)."""
    stale = []
    for page in sorted(API.glob("*.md")):
        for module, text in module_sections(page).items():
            rel = page.relative_to(ROOT)
            try:
                mod = importlib.import_module(module)
            except ImportError:
                stale.append(f"{rel}: section of {module}, which is no module")
                continue
            if page_of(module) != page:
                stale.append(f"{rel}: section of {module}, whose page is {page_of(module).relative_to(ROOT)}")
            names = set(getattr(mod, "__all__", ()))
            for line in text.splitlines():
                m = ENTRY.match(line)
                if m and m.group(1) not in names:
                    stale.append(f"{rel}, section {module}: entry {m.group(1)!r} is not in {module}.__all__")
    assert not stale, "\n".join(stale)


# --------------------------------------------------------------------------- (d) links
def markdown_pages() -> list[Path]:
    return sorted(DOCS.glob("*.md")) + sorted(API.glob("*.md")) + [README]


def test_relative_links_point_to_existing_files():
    assert (API / "README.md") in markdown_pages() and MODEL in markdown_pages()
    broken, checked = [], 0
    for page in markdown_pages():
        text = prose(page.read_text())
        for m in LINK.finditer(text):
            target = m.group(1).strip("<>")
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I):  # http:, https:, mailto:
                continue
            where = f"{page.relative_to(ROOT)}:{line_of(text, m.start())}"
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            checked += 1
            if not dest.exists():
                broken.append(f"{where}: link to {target}: {path} does not exist")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{where}: link to {target}: {dest.relative_to(ROOT)} has no heading #{anchor}")
    assert checked >= 30, f"only {checked} relative links checked: is the pattern still right?"
    assert not broken, "\n".join(broken)


# --------------------------------------------------------------------------- (e) paths
def test_mentioned_module_paths_exist():
    pages = sorted(p for p in DOCS.rglob("*") if p.is_file() and text_of(p) is not None) + [README]
    missing, mentioned = [], 0
    for page in pages:
        text = page.read_text()
        for m in PY_PATH.finditer(text):
            mentioned += 1
            if not (ROOT / m.group(0)).is_file():
                missing.append(f"{page.relative_to(ROOT)}:{line_of(text, m.start())}: {m.group(0)} does not exist")
    assert mentioned >= 30, f"only {mentioned} fem_dnn/...py paths found: is the pattern still right?"
    assert not missing, "\n".join(missing)
