#!/usr/bin/python3
"""The training corpus: the King James Version from Debian's `bible-kjv-text` (read with `bible-kjv`).

Extracts every verse with `bible -l9999 Gen1:1-Rev22:21`, and writes one chapter per line (verses joined by a
space, no verse numbers, no headings). The last HELDOUT_BOOKS books (1 John .. Revelation) are held out for
evaluation and never seen by the tokenizer or the model.

  corpus.py OUT_DIR        -> OUT_DIR/train.txt, OUT_DIR/heldout.txt, OUT_DIR/provenance.json
"""
import json
import os
import re
import subprocess
import sys

HELDOUT_BOOKS = ["1 John", "2 John", "3 John", "Jude", "Revelation"]
BIBLE = "/usr/bin/bible"
DATA = "/usr/lib/bible.data"


def debian_version(pkg):
    try:
        return subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], check=True, capture_output=True,
                              text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def chapters():
    """[(book, chapter, text)] in canonical order."""
    if not os.path.exists(BIBLE) or not os.path.exists(DATA):
        sys.exit(f"corpus.py: error: {BIBLE} or {DATA} missing: apt-get install bible-kjv bible-kjv-text")
    raw = subprocess.run([BIBLE, "-l9999", "Gen1:1-Rev22:21"], check=True, capture_output=True,
                         text=True).stdout
    out, book, chap, verses = [], None, None, []
    head = re.compile(r"^(\S.*?) (\d+)$")
    verse = re.compile(r"^\s+(\d+) (.*)$")
    for line in raw.splitlines():
        m = verse.match(line)
        if m:
            verses.append(m.group(2).strip())
            continue
        m = head.match(line)
        if m:
            if verses:
                out.append((book, chap, " ".join(verses)))
            book, chap, verses = m.group(1), int(m.group(2)), []
        elif line.strip():
            sys.exit(f"corpus.py: error: unexpected line from bible: {line[:60]!r}")
    if verses:
        out.append((book, chap, " ".join(verses)))
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: corpus.py OUT_DIR")
    od = sys.argv[1]
    os.makedirs(od, exist_ok=True)
    ch = chapters()
    if len(ch) != 1189:
        sys.exit(f"corpus.py: error: expected 1189 chapters, got {len(ch)}")
    train = [t for b, c, t in ch if b not in HELDOUT_BOOKS]
    held = [t for b, c, t in ch if b in HELDOUT_BOOKS]
    for name, rows in (("train.txt", train), ("heldout.txt", held)):
        with open(os.path.join(od, name), "w", encoding="utf-8") as f:
            f.write("\n".join(rows) + "\n")
    prov = {
        "corpus": "King James Version (1611/1769), public domain in most of the world; "
                  "Crown patent (Letters Patent) in the United Kingdom",
        "debian_packages": {"bible-kjv-text": debian_version("bible-kjv-text"),
                            "bible-kjv": debian_version("bible-kjv")},
        "source_file": DATA,
        "extracted_with": f"{BIBLE} -l9999 Gen1:1-Rev22:21",
        "chapters": len(ch), "train_chapters": len(train), "heldout_chapters": len(held),
        "heldout_books": HELDOUT_BOOKS,
    }
    with open(os.path.join(od, "provenance.json"), "w") as f:
        json.dump(prov, f, indent=2)
    print(json.dumps(prov))


if __name__ == "__main__":
    main()
