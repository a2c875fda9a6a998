"""MkDocs hooks (mkdocs.yml, `hooks:`): the notebooks and new guide pages.

* The notebooks live in `colab/`, outside the docs directory: each
  `colab/NAME.ipynb` becomes the page `colab/NAME.ipynb` of the site (link
  it as `colab/NAME.ipynb` from `docs/notebooks.md`), which mkdocs-jupyter
  renders from its stored outputs (nothing is executed).
* Every `docs/guide/*.md` that the nav does not list is appended to the
  "User guide" section, titled by its first heading, so that a helper adding a
  page does not have to edit mkdocs.yml, and strict mode never fails on it.
* A relative link from a page to a file of the repository outside `docs/`
  (`../../benchmarks/trace.py`, `../README.md`) points to that file on GitHub
  (`repo_url`), so that it works on the site as on GitHub; a link to a file
  that exists nowhere stays as it is, and strict mode reports it.
"""

import os
import pathlib
import posixpath
import re

from mkdocs import plugins
from mkdocs.structure import files as files_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent
GUIDE = 'User guide'
# [text](target) and ![alt](target), target without a scheme or an anchor only.
_LINK = re.compile(r'(!?\[[^\]]*\]\()([^)\s#]+)((?:#[^)\s]*)?\))')


def _title(path):
  for line in path.read_text().splitlines():
    if line.startswith('# '):
      return line[2:].strip()
  return path.stem.replace('_', ' ').capitalize()


def _listed(nav):
  """Every page path in a nav (nested lists of {title: path or list})."""
  for item in nav:
    value = next(iter(item.values())) if isinstance(item, dict) else item
    if isinstance(value, list):
      yield from _listed(value)
    else:
      yield value


def on_config(config):
  nav = config['nav']
  listed = set(_listed(nav))
  extra = [{_title(p): f'guide/{p.name}'}
           for p in sorted((ROOT / 'docs' / 'guide').glob('*.md'))
           if f'guide/{p.name}' not in listed]
  for item in nav:
    if isinstance(item, dict) and GUIDE in item:
      item[GUIDE].extend(extra)
  return config


@plugins.event_priority(100)  # before mkdocs-jupyter's on_files sees them
def on_files(files, config):
  for notebook in sorted((ROOT / 'colab').glob('*.ipynb')):
    files.append(files_lib.File(
        f'colab/{notebook.name}', src_dir=str(ROOT),
        dest_dir=config['site_dir'],
        use_directory_urls=config['use_directory_urls']))
  return files


def _outside_docs(target, page_uri):
  """The repository path of a relative link that leaves docs/, or None."""
  if re.match(r'^[a-z][a-z0-9+.-]*:', target) or target.startswith('/'):
    return None
  path = posixpath.normpath(posixpath.join('docs', posixpath.dirname(page_uri),
                                           target))
  if path.startswith('docs/') or path.startswith('..'):
    return None
  return path if os.path.exists(ROOT / path) else None


def on_page_markdown(markdown, page, config, files):
  blob = config['repo_url'].rstrip('/') + '/blob/main/'

  def repoint(match):
    path = _outside_docs(match.group(2), page.file.src_uri)
    if path is None:
      return match.group(0)
    return match.group(1) + blob + path + match.group(3)

  return _LINK.sub(repoint, markdown)
