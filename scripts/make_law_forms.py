#!/usr/bin/env python3
"""Question/answer forms of the bundled de-admin law corpus, for instruction and chat tuning.

Reads data/corpora/de-admin/train.jsonl (one law section per line: {"text", "source"}) and
writes two files next to it, both generated (git ignores them):

  instruct.jsonl  Alpaca form:  {"instruction": str, "input": "", "output": str}
  chat.jsonl      chat form:    {"messages": [{"role": "system", ...}, {"role": "user", ...},
                                              {"role": "assistant", ...}]}
                  (the same records in the same order; user = instruction, assistant = output)

Only train sections are used, so nothing of valid.jsonl leaks into the questions (valid.jsonl
is read, when present, only to tell whether a heading is unique within its law). Question kinds:

  wortlaut     "Gib den Wortlaut von § 35 VwVfG wieder."  -> the section body without its heading
               (every section whose body is at most 4000 characters)
  ueberschrift "Wie lautet die Überschrift von § 35 VwVfG?" -> "Begriff des Verwaltungsaktes"
               (sections with an official heading)
  vorschrift   "Welche Vorschrift des VwVfG trägt die Überschrift „…“?" -> "§ 35 VwVfG"
               (headings that occur once in their law)
  absatz       "Gib Absatz 2 von § 35 VwVfG wieder." -> that Absatz without its "(2)" marker
               (sections made of Absätze (1) … (n), n >= 2, in order, inserted ones like (2a)
               allowed; one of the plain-numbered Absätze, picked by hash)
  abkuerzung   "Wofür steht die Abkürzung „VwVfG“?" -> the law's full name (one per law)

Each section gives its wortlaut question (when short enough) plus exactly one more question,
picked by a hash of its `source` among the kinds ueberschrift / vorschrift / absatz that it
supports (none when it supports none). The structural question "In welchem Teil … steht …?"
of the corpus' original build is not made here: train.jsonl no longer carries the Teil/Abschnitt
headings it needs. Records are sorted by a hash of (kind, source), so the kinds interleave.

Deterministic: the same input gives the same bytes. Idempotent: a file whose content would not
change is not rewritten (its modification time stays). Standard library only; runs in about a
second.

Usage: python3 scripts/make_law_forms.py [--corpus data/corpora/de-admin] [--out-dir DIR]
"""

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = ROOT / "data" / "corpora" / "de-admin"
SYSTEM = "Du bist ein Assistent für deutsche Verwaltungssprache."
MAX_BODY = 4000

# Abbreviation (the `source` prefix) -> (full name, genitive article).
LAWS = {
    "VwVfG": ("Verwaltungsverfahrensgesetz", "des"),
    "SGB X": ("Zehntes Buch Sozialgesetzbuch – Sozialverwaltungsverfahren und Sozialdatenschutz", "des"),
    "SGB I": ("Erstes Buch Sozialgesetzbuch – Allgemeiner Teil", "des"),
    "AO": ("Abgabenordnung", "der"),
    "VwZG": ("Verwaltungszustellungsgesetz", "des"),
    "VwVG": ("Verwaltungs-Vollstreckungsgesetz", "des"),
    "BGebG": ("Gesetz über Gebühren und Auslagen des Bundes", "des"),
    "VwGO": ("Verwaltungsgerichtsordnung", "der"),
    "SGG": ("Sozialgerichtsgesetz", "des"),
    "GG": ("Grundgesetz für die Bundesrepublik Deutschland", "des"),
    "IFG": ("Informationsfreiheitsgesetz (Gesetz zur Regelung des Zugangs zu Informationen des Bundes)", "des"),
    "BDSG": ("Bundesdatenschutzgesetz", "des"),
    "OZG": ("Onlinezugangsgesetz (Gesetz zur Verbesserung des Onlinezugangs zu Verwaltungsleistungen)", "des"),
    "EGovG": ("E-Government-Gesetz (Gesetz zur Förderung der elektronischen Verwaltung)", "des"),
    "BMG": ("Bundesmeldegesetz", "des"),
    "PassG": ("Passgesetz", "des"),
    "PAuswG": ("Personalausweisgesetz (Gesetz über Personalausweise und den elektronischen Identitätsnachweis)", "des"),
    "BBG": ("Bundesbeamtengesetz", "des"),
    "BDG": ("Bundesdisziplinargesetz", "des"),
    "BLV": ("Bundeslaufbahnverordnung (Verordnung über die Laufbahnen der Bundesbeamtinnen und Bundesbeamten)", "der"),
    "BeamtVG": ("Beamtenversorgungsgesetz (Gesetz über die Versorgung der Beamten und Richter des Bundes)", "des"),
    "BPersVG": ("Bundespersonalvertretungsgesetz", "des"),
    "BGleiG": ("Bundesgleichstellungsgesetz (Gesetz für die Gleichstellung von Frauen und Männern in der "
               "Bundesverwaltung und in den Gerichten des Bundes)", "des"),
    "BHO": ("Bundeshaushaltsordnung", "der"),
    "AufenthG": ("Aufenthaltsgesetz (Gesetz über den Aufenthalt, die Erwerbstätigkeit und die Integration von "
                 "Ausländern im Bundesgebiet)", "des"),
    "AsylG": ("Asylgesetz", "des"),
    "SGB II": ("Zweites Buch Sozialgesetzbuch – Grundsicherung für Arbeitsuchende", "des"),
    "SGB XII": ("Zwölftes Buch Sozialgesetzbuch – Sozialhilfe", "des"),
    "WoGG": ("Wohngeldgesetz", "des"),
    "BAföG": ("Bundesausbildungsförderungsgesetz", "des"),
    "BEEG": ("Bundeselterngeld- und Elternzeitgesetz", "des"),
    "BKGG": ("Bundeskindergeldgesetz", "des"),
    "BPolG": ("Bundespolizeigesetz (Gesetz über die Bundespolizei)", "des"),
    "GewO": ("Gewerbeordnung", "der"),
    "OWiG": ("Gesetz über Ordnungswidrigkeiten", "des"),
    "BauGB": ("Baugesetzbuch", "des"),
    "BWahlG": ("Bundeswahlgesetz", "des"),
}

ABSATZ = re.compile(r"^\((\d+[a-z]*)\)\s*")


def digest(*parts):
    """A stable integer from strings (the first 48 bits of their sha256)."""
    return int(hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:12], 16)


class Section:
    """One record of train.jsonl/valid.jsonl, taken apart."""

    def __init__(self, rec, where):
        text, source = rec.get("text"), rec.get("source")
        if not isinstance(text, str) or not isinstance(source, str):
            raise SystemExit(f"{where}: needs string fields 'text' and 'source'")
        self.source = source
        self.heading, _, self.body = text.partition("\n")
        if source.endswith(" Präambel"):
            self.law, self.kind, self.number = source[: -len(" Präambel")], "Präambel", None
        else:
            m = re.fullmatch(r"(.+) (§|Art\.) (\S+)", source)
            if not m:
                raise SystemExit(f"{where}: unexpected source {source!r}")
            self.law, self.kind, self.number = m.group(1), m.group(2), m.group(3)
        if self.law not in LAWS:
            raise SystemExit(f"{where}: unknown law {self.law!r} (add it to LAWS)")
        self.title = None
        if self.number is not None:
            # "§ 35 Begriff des Verwaltungsaktes", "Art 45d Parlamentarisches Kontrollgremium"
            m = re.fullmatch(r"(?:§|Art\.?)\s+(\S+)(?:\s+(.+))?", self.heading)
            if m and m.group(1) == self.number and m.group(2):
                self.title = m.group(2).strip()

    def ref(self):
        """"§ 35 VwVfG", "Art. 6 GG"."""
        return f"{self.kind} {self.number} {self.law}"

    def genitive(self):
        return f"{LAWS[self.law][1]} {self.law}"

    def absaetze(self):
        """[(number, text)] of the plain-numbered Absätze when the body is Absätze (1) … (n),
        n >= 2, in order (inserted ones like "(2a)" allowed, but not asked for) and nothing else."""
        lines = self.body.split("\n")
        if not lines or not ABSATZ.match(lines[0]):
            return None
        parts = []
        for line in lines:
            m = ABSATZ.match(line)
            if m:
                parts.append([m.group(1), [line[m.end():]]])
            else:
                parts[-1][1].append(line)
        keys = []
        for marker, _ in parts:
            m = re.fullmatch(r"(\d+)([a-z]*)", marker)
            keys.append((int(m.group(1)), m.group(2)))
        plain = [n for n, letters in keys if not letters]
        # inserted Absätze ("(2a)") may sit between (2) and (3); the plain ones run 1 … n
        if len(plain) < 2 or plain != list(range(1, len(plain) + 1)) or keys != sorted(set(keys)):
            return None
        out = [(marker, "\n".join(body).strip()) for marker, body in parts]
        if not all(text for _, text in out):
            return None
        return [(int(marker), text) for marker, text in out if marker.isdigit()]


def read_sections(path):
    sections = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SystemExit(f"{path}:{n}: not valid JSON ({e.msg})")
                sections.append(Section(rec, f"{path}:{n}"))
    return sections


def questions(train, valid):
    """[(kind, source, instruction, output)] in output order."""
    titles = {}
    for s in train + valid:
        if s.title:
            titles.setdefault((s.law, s.title), []).append(s.source)
    records = []
    for s in train:
        if s.number is None:  # the GG preamble
            if s.body and len(s.body) <= MAX_BODY:
                records.append(("wortlaut", s.source, f"Gib den Wortlaut der Präambel {s.genitive()} wieder.",
                                s.body))
            continue
        if s.body and len(s.body) <= MAX_BODY:
            records.append(("wortlaut", s.source, f"Gib den Wortlaut von {s.ref()} wieder.", s.body))
        options = []
        if s.title:
            options.append(("ueberschrift", f"Wie lautet die Überschrift von {s.ref()}?", s.title))
            if len(titles[(s.law, s.title)]) == 1:
                options.append(("vorschrift",
                                 f"Welche Vorschrift {s.genitive()} trägt die Überschrift „{s.title}“?",
                                 s.ref()))
        absaetze = s.absaetze()
        if absaetze:
            number, text = absaetze[digest("absatz", s.source) % len(absaetze)]
            options.append(("absatz", f"Gib Absatz {number} von {s.ref()} wieder.", text))
        if options:
            kind, instruction, output = options[digest("pick", s.source) % len(options)]
            records.append((kind, s.source, instruction, output))
    for law in sorted({s.law for s in train}):
        records.append(("abkuerzung", law, f"Wofür steht die Abkürzung „{law}“?", LAWS[law][0]))
    records.sort(key=lambda r: (digest("order", r[0], r[1]), r[0], r[1]))
    return records


def write_if_changed(path, text):
    """Writes `text` to `path` atomically unless the file already holds exactly that."""
    data = text.encode("utf-8")
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=str(DEFAULT_CORPUS),
                    help="folder with train.jsonl (and valid.jsonl) (default: %(default)s)")
    ap.add_argument("--out-dir", default=None, help="where instruct.jsonl and chat.jsonl go (default: --corpus)")
    args = ap.parse_args()
    corpus = Path(args.corpus)
    out_dir = Path(args.out_dir) if args.out_dir else corpus
    train_path = corpus / "train.jsonl"
    if not train_path.is_file():
        raise SystemExit(f"{train_path}: no such file")
    train = read_sections(train_path)
    valid_path = corpus / "valid.jsonl"
    valid = read_sections(valid_path) if valid_path.is_file() else []
    records = questions(train, valid)

    def line(obj):
        return json.dumps(obj, ensure_ascii=False) + "\n"

    instruct = "".join(line({"instruction": q, "input": "", "output": a}) for _, _, q, a in records)
    chat = "".join(line({"messages": [{"role": "system", "content": SYSTEM},
                                      {"role": "user", "content": q},
                                      {"role": "assistant", "content": a}]})
                   for _, _, q, a in records)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for kind, *_ in records:
        counts[kind] = counts.get(kind, 0) + 1
    for name, text in (("instruct.jsonl", instruct), ("chat.jsonl", chat)):
        path = out_dir / name
        changed = write_if_changed(path, text)
        print(f"{path}: {len(records)} records ({'written' if changed else 'unchanged'})", file=sys.stderr)
    print("kinds: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), file=sys.stderr)


if __name__ == "__main__":
    main()
