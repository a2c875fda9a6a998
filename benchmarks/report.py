"""Dated reports with provenance: what a script measured, where, and how.

A benchmark (or `experiments.reproduce`) ends its `__main__` block with

  report.run('benchmark', main)

which runs `main()` as before, printing its tables, and also writes what it
printed to `docs/reports/NAME_YYYY-MM-DDTHHMMZ.md` under a header that says
the commit, the date, the machine (CPU model and cores, the accelerator when
JAX runs on one) and the command. `docs/reports/index.md` lists every report,
the latest of each name first, and is what the README and the guide link to:
nobody retypes a measured number by hand.

$SPECTRAL_DENSITY_REPORT_DIR writes the reports elsewhere (the tests do);
`--no_report` is not needed: a run that fails writes nothing.
"""

import contextlib
import datetime
import io
import os
import pathlib
import platform
import re
import shlex
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
REPORT_DIR_ENV = 'SPECTRAL_DENSITY_REPORT_DIR'
INDEX = 'index.md'
_NAME = re.compile(r'^[a-z0-9_]+$')
_FILE = re.compile(r'^([a-z0-9_]+)_(\d{4}-\d\d-\d\d(?:T\d{4}Z)?)\.md$')


def report_dir():
  """Where reports go: $SPECTRAL_DENSITY_REPORT_DIR or docs/reports/."""
  return pathlib.Path(os.environ.get(REPORT_DIR_ENV, ROOT / 'docs' / 'reports'))


def _git(*args):
  try:
    return subprocess.run(('git', *args), cwd=ROOT, capture_output=True,
                          text=True, check=True, timeout=30).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None


def commit():
  """The checkout's commit, `+dirty` when tracked files differ from it, or
  'unknown' outside a git checkout."""
  head = _git('rev-parse', 'HEAD')
  if head is None:
    return 'unknown'
  dirty = _git('status', '--porcelain', '--untracked-files=no')
  return head + ('+dirty' if dirty else '')


def cpu_model():
  """The CPU's model name from /proc/cpuinfo (Linux), else `platform`'s."""
  try:
    for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
      if line.startswith('model name'):
        return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def accelerator():
  """`'N x KIND (platform)'` of JAX's devices when JAX is in use and runs on
  an accelerator; None on CPU or when the script never imported JAX."""
  jax = sys.modules.get('jax')
  if jax is None:
    return None
  devices = jax.devices()
  if devices[0].platform == 'cpu':
    return None
  return f'{len(devices)} x {devices[0].device_kind} ({devices[0].platform})'


def command(argv=None):
  """The command line that ran this process, as a user would type it."""
  argv = sys.argv if argv is None else argv
  spec = getattr(sys.modules.get('__main__'), '__spec__', None)
  program = (['python', '-m', spec.name] if spec is not None and spec.name
             else ['python', argv[0]])
  return shlex.join(program + list(argv[1:]))


def provenance(argv=None, now=None):
  """{commit, date, machine, load, command, versions, stamp} of this run."""
  now = now or datetime.datetime.now(datetime.timezone.utc)
  machine = f'{cpu_model()}, {os.cpu_count()} cores'
  if accelerator():
    machine += f'; accelerator {accelerator()}'
  versions = f'Python {platform.python_version()}'
  if 'jax' in sys.modules:
    versions += f', jax {sys.modules["jax"].__version__}'
  return {'commit': commit(), 'date': now.strftime('%Y-%m-%d %H:%M UTC'),
          'machine': machine, 'load': load_average(), 'command': command(argv),
          'versions': versions, 'stamp': now.strftime('%Y-%m-%dT%H%MZ')}


def load_average():
  """The 1-minute load average, as text: a shared machine's timings need
  its load to be read."""
  if not hasattr(os, 'getloadavg'):
    return 'unknown'
  return f'{os.getloadavg()[0]:.1f} (1-minute)'


def write(name, body, prov=None, directory=None):
  """Writes `body` (Markdown) as report `name` under its provenance header;
  updates the index. Returns the report's path."""
  if not _NAME.match(name):
    raise ValueError(f'name: lower-case letters, digits and _ only, got '
                     f'{name!r}.')
  prov = prov or provenance()
  directory = pathlib.Path(directory or report_dir())
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / f'{name}_{prov["stamp"]}.md'
  header = '\n'.join((
      f'# {name}, {prov["date"]}', '',
      '| | |', '|---|---|',
      f'| commit | `{prov["commit"]}` |',
      f'| date | {prov["date"]} |',
      f'| machine | {prov["machine"]} |',
      f'| load average | {prov.get("load", "unknown")} |',
      f'| command | `{prov["command"]}` |',
      f'| versions | {prov["versions"]} |', '', ''))
  path.write_text(header + as_markdown(body))
  write_index(directory)
  return path


def as_markdown(body):
  """Printed output as Markdown: Markdown tables (lines starting with `|`)
  stay tables, each other line its own paragraph; output without tables
  (fixed-width columns) becomes one code block."""
  lines = body.rstrip('\n').splitlines()
  if not any(line.startswith('|') for line in lines):
    return '```text\n' + '\n'.join(lines) + '\n```\n'
  out = []
  for line in lines:
    if not (line.startswith('|') and out and out[-1].startswith('|')):
      out.append('')
    out.append(line)
  return '\n'.join(out).lstrip('\n') + '\n'


def reports(directory=None):
  """{name: [file names, newest first]} of the reports in `directory`."""
  found = {}
  for path in pathlib.Path(directory or report_dir()).glob('*.md'):
    match = _FILE.match(path.name)
    if match:
      found.setdefault(match.group(1), []).append(path.name)
  return {name: sorted(files, reverse=True)
          for name, files in sorted(found.items())}


def write_index(directory=None):
  """Rewrites `index.md`: per report name, the latest first, then the rest."""
  directory = pathlib.Path(directory or report_dir())
  lines = ['# Reports', '',
           'Written by the scripts that measure them (`benchmarks/report.py`),'
           ' each stamped with its commit, date, machine and command. The '
           'latest of each:', '',
           '| report | latest | earlier |', '|---|---|---|']
  for name, files in reports(directory).items():
    earlier = ', '.join(f'[{f[len(name) + 1:-3]}]({f})' for f in files[1:])
    lines.append(f'| {name} | [{files[0][len(name) + 1:-3]}]({files[0]}) | '
                 f'{earlier} |')
  (directory / INDEX).write_text('\n'.join(lines) + '\n')


class _Tee(io.TextIOBase):
  """Writes to the terminal and keeps a copy."""

  def __init__(self, stream):
    self.stream, self.copy = stream, io.StringIO()

  def write(self, text):
    self.copy.write(text)
    return self.stream.write(text)

  def flush(self):
    self.stream.flush()


def run(name, main, *args, **kwargs):
  """Runs `main(*args, **kwargs)`, printing as usual, then writes what it
  printed to stdout as report `name`. Returns `main`'s result."""
  prov = provenance()  # the commit and date of the start, not of the end
  tee = _Tee(sys.stdout)
  with contextlib.redirect_stdout(tee):
    result = main(*args, **kwargs)
  prov['load'] = f"{prov['load']} at the start, {load_average()} at the end"
  path = write(name, tee.copy.getvalue(), prov)
  print(f'report: {path}', file=sys.stderr)
  return result
