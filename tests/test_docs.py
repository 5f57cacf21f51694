"""The documentation agrees with the code and with itself.

Pure file checks plus imports (no MPI job, no solve):

- every section of docs/model.md cited as ``docs/model.md`` + section sign + number (or a
  range such as 2-3) in fem_dnn/, tests/, demos/, bench/ and README.md is a heading of
  docs/model.md;
- every section sign + number there and in docs/ (bare, ``model.md`` + it, or a list such
  as "6.3, 6.8" after one) that does not cite the paper ("LM" + it) is a heading of
  docs/model.md, a Markdown link of one points to that heading, and where the citing
  sentence names a topic of :data:`TOPICS` the cited sections hold it;
- no file of the repository (tracked or new, docs/upstream excepted) names the theory
  pages the repository replaced by docs/model.md;
- every name of the ``__all__`` of every module of every subpackage is documented in the
  section of its module on the API page of its subpackage (docs/api/<subpackage>.md; the
  top-level modules: docs/api/infrastructure.md), and every entry there still names a
  name of that ``__all__``;
- docs/api/README.md's table lists every public module of every subpackage;
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


#: Topics a citing sentence can name, each with the docs/model.md sections that hold it
#: (checked: every phrase is in the text of each of its sections). A citation whose
#: sentence (or, for a bare "see", its paragraph) names topics cites, for one of them,
#: one of its sections, a section that contains one (6 covers 6.8), or a section whose
#: text has the phrase.
TOPICS = {
    r"semi-lagrangian": ("6.8",),
    r"lax.friedrichs|graph viscosity|\bcfl\b": ("6.3",),
    r"reachable set": ("6.4",),
    r"closed loop|feedback": ("6.5",),
    r"open.loop": ("6.6",),
    r"exact (value|solution)": ("6.7",),
    r"hamiltonian": ("3.5", "6.2"),
    r"a posteriori|dual-weighted|width error|depth error|adaptive loop|indicators": ("4.11", "4.12", "4.15"),
    r"width (error|order|estimat)|enriched|two-level": ("4.12",),
    r"fused layer": ("4.13",),
    r"slabs?\b": ("4.14",),
    r"goal.oriented|goal functional|validation loss|dual problem": ("4.15",),
    r"checkpointing": ("4.10",),
    r"transpose|costate": ("3.1", "4.8"),
    r"node space|node weights|mass operators": ("4.2",),
    r"depth grid|depth cell": ("4.4",),
    r"diffusion off|diffusion splitting|strang": ("4.6",),
    r"kernel operator|low-rank|image x channels": ("4.3",),
    r"riesz|inner product": ("5.2",),
    r"\bmsa\b|successive approximations": ("5.9",),
    r"proximal": ("5.8",),
    r"mini-batch|\badam\b": ("5.7",),
    r"multilevel": ("5.10",),
}
#: A section sign of a citation of the paper (Liu-Markowich): "LM", "LM's" or the names.
PAPER = re.compile(r"(\bLM('s)?|Liu[-\u2013]Markowich)\s*$")
SIGN = re.compile(SECTION + r"\s*(\d+(?:\.\d+)?)(?:\s*[-\u2013]\s*(\d+(?:\.\d+)?))?")
#: A list continuing a citation: ", 6.8" or " and 6.8" after it.
CONTINUED = re.compile(r"\s*(?:,|and)\s*(\d+\.\d+)\b(?![.\d])")


def model_texts() -> dict[str, str]:
    """``{number: heading and text}`` of every numbered section of docs/model.md (a
    section's text includes its subsections')."""
    lines = MODEL.read_text().splitlines()
    starts = [(i, m.group(1)) for i, line in enumerate(lines) if (m := NUMBERED_HEADING.match(line))]
    out = {}
    for j, (i, number) in enumerate(starts):
        end = next((k for k, n in starts[j + 1:] if not n.startswith(number + ".")), len(lines))
        out[number] = "\n".join(lines[i:end])
    return out


def section_range(first: str, last: str | None) -> list[str]:
    """The sections from ``first`` to ``last`` (siblings, as "4.11-4.12" or "3-4")."""
    if last is None:
        return [first]
    head, _, a = first.rpartition(".")
    _, _, b = last.rpartition(".")
    if not (a.isdigit() and b.isdigit()) or last.rpartition(".")[0] != head or int(b) < int(a):
        return [first, last]
    return [f"{head}.{i}" if head else str(i) for i in range(int(a), int(b) + 1)]


def citations(text: str):
    """``(start, end, [numbers])`` of every docs/model.md citation of ``text`` (the
    paper's excepted): a range ("4.11-4.12") is every section in it, and a list after a
    citation ("6.3, 6.8") is part of it."""
    for m in SIGN.finditer(text):
        if PAPER.search(text[max(0, m.start() - 20):m.start()]):
            continue
        numbers, end = section_range(m.group(1), m.group(2)), m.end()
        while more := CONTINUED.match(text, end):
            numbers, end = numbers + [more.group(1)], more.end()
        yield m.start(), end, numbers


def flat(text: str) -> str:
    """Comment markers, docstring indentation and line breaks as single spaces."""
    return re.sub(r"\s*\n\s*(?:#+\s*)?", " ", text)


def enclosing(text: str, start: int, reach: int = 400) -> tuple[int, int] | None:
    """The span of the innermost parenthesis around ``start`` (None: there is none near)."""
    depth, i = 0, start
    while i > max(0, start - reach):
        i -= 1
        depth += {")": 1, "(": -1}.get(text[i], 0)
        if depth < 0:
            break
    else:
        return None
    depth, j = 0, start
    while j < min(len(text), start + reach):
        depth += {"(": 1, ")": -1}.get(text[j], 0)
        if depth < 0:
            return i, j
        j += 1
    return None


def citing_context(text: str, start: int, previous: int = 0) -> list[str]:
    """Where a citation's topic is named: the sentence before it (before its parenthesis,
    if it is in one; other parentheses left out; after the ``previous`` citation), and,
    when that is only a "see", its paragraph."""
    span = enclosing(text, start)
    stop = span[0] if span else start
    para_start = max(text.rfind("\n\n", 0, stop), text.rfind('"""', 0, stop), text.rfind("\n#\n", 0, stop), 0)
    before = text[para_start:stop]
    if para_start < previous < stop:
        before = text[previous:stop].lstrip(")]")
    cut = max((m.end() for m in re.finditer(r"[.:;!?](?:\s|$)|^\s*[-*] ", before, flags=re.M)), default=0)
    sentence = before[cut:]
    while (fewer := re.sub(r"\([^()]*\)", "", sentence)) != sentence:
        sentence = fewer
    sentence = flat(sentence)
    if re.fullmatch(r"(?i)\W*see\W+(docs/)?(model\.md\W*)?", sentence):
        return [sentence, flat(before)]
    return [sentence]


def cited_topics(context: list[str]) -> list[str]:
    for window in context:
        found = [t for t in TOPICS if re.search(t, window, flags=re.I)]
        if found:
            return found
    return []


def covers(cited: list[str], held: tuple[str, ...]) -> bool:
    return any(h == c or h.startswith(c + ".") for c in cited for h in held)


def citing_files() -> list[Path]:
    return [p for p in repository_files()
            if p.resolve() != THIS and (p.relative_to(ROOT).parts[0] in CITING or p == README
                                        or (p.suffix == ".md" and p.parent in (DOCS, API)))]


def test_topics_are_in_their_sections():
    texts = model_texts()
    wrong = [f"{topic!r}: docs/model.md {SECTION}{n} " + ("is no heading" if n not in texts else "does not hold it")
             for topic, held in TOPICS.items() for n in held
             if n not in texts or not re.search(topic, flat(texts[n]), flags=re.I)]
    assert not wrong, "\n".join(wrong)


def test_every_section_sign_cites_the_section_that_holds_it():
    """Every docs/model.md section a docstring, comment or page cites with a section sign
    exists, a link of the citation points to it, and it holds the topic the citing
    sentence names (:data:`TOPICS`)."""
    texts = model_texts()
    sections = set(texts)
    wrong, cited = [], 0
    for path in citing_files():
        text = text_of(path)
        if text is None or SECTION not in text:
            continue
        rel = path.relative_to(ROOT)
        found = list(citations(text))
        previous = 0
        for start, end, numbers in found:
            cited += 1
            span = enclosing(text, start)
            group = [n for s_, _, ns in found if span and span[0] < s_ < span[1] for n in ns] or numbers
            context, previous = citing_context(text, start, previous), (span[1] if span else end)
            own = [m.group(1) for line in text[:start].splitlines() if (m := NUMBERED_HEADING.match(line))] \
                if path == MODEL else []  # in docs/model.md a topic of the section the citation is in is its own
            where = f"{rel}:{line_of(text, start)}: {SECTION}{'/'.join(numbers)}"
            missing = [n for n in numbers if n not in sections]
            if missing:
                wrong.append(f"{where}: no heading {', '.join(missing)} in docs/model.md")
                continue
            link = re.match(r"\]\((?:\.\./)?(?:docs/)?model\.md#(\d+)-", text[end:])
            if link and not any(link.group(1) in (n.replace(".", ""), n.split(".")[0]) for n in numbers):
                wrong.append(f"{where}: its link points to #{link.group(1)}-...")
            topics = cited_topics(context)
            if own:
                topics = [t for t in topics if not covers([own[-1]], TOPICS[t]) and not covers(TOPICS[t], (own[-1],))]
            if topics and not any(covers(group, TOPICS[t]) or any(re.search(t, flat(texts.get(n, "")), flags=re.I)
                                                                  for n in group) for t in topics):
                held = "; ".join(f"{t!r} in {SECTION}{', '.join(TOPICS[t])}" for t in topics)
                wrong.append(f"{where}: the citing text names {held}, none in the cited sections")
    assert cited >= 100, f"only {cited} section signs found: is the pattern still right?"
    assert not wrong, "\n".join(wrong)


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


def test_api_index_lists_every_module():
    """The modules column of docs/api/README.md's table names exactly the public modules
    of each subpackage (and the top-level ones on the infrastructure row)."""
    rows = {}
    for line in (API / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and (m := re.match(r"\[(\w+)\.md\]", cells[0])):
            rows[m.group(1)] = set(re.findall(r"`(\w+)`", cells[2]))
    modules = [m for m in public_modules() if m != "fem_dnn"]
    wrong = []
    for page in SUBPACKAGES + (TOP_LEVEL_PAGE[:-3],):
        if page == TOP_LEVEL_PAGE[:-3]:
            wanted = {"fem_dnn"} | {m.split(".")[1] for m in modules if m.count(".") == 1 and page_of(m).name == TOP_LEVEL_PAGE}
        else:
            wanted = {m.split(".")[2] for m in modules if m.count(".") == 2 and m.split(".")[1] == page}
        if rows.get(page) != wanted:
            wrong.append(f"{page}: the table lists {sorted(rows.get(page, ()))}, the modules are {sorted(wanted)}")
    assert not wrong, "docs/api/README.md:\n" + "\n".join(wrong)


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


def test_markdown_has_no_control_characters():
    """No tab, carriage return or other control character in the Markdown files: a
    Python string that wrote LaTeX without a raw prefix turns ``\\rangle`` into a carriage
    return (then ``angle``) and ``\\to`` into a tab (then ``o``)."""
    bad = []
    for path in [README, *sorted(DOCS.rglob("*.md"))]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"[\x00-\x09\x0b-\x1f\x7f]", line) or re.match(r"(angle|ightarrow|abla|imes|heta)\b", line):
                bad.append(f"{path.relative_to(ROOT)}:{n}: {line[:60]!r}")
    assert not bad, "\n".join(bad)
