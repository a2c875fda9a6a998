"""README.md keeps its promises: its example runs and prints what the README
shows, its commands are the ones CI runs, and it stays short."""

import contextlib
import io
import pathlib
import re

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / 'README.md').read_text()
NUMBER = re.compile(r'-?\d+\.\d+|\d+')


def code_blocks(text):
  """[(language, code)] of the fenced blocks, in order."""
  return re.findall(r'^```(\w*)\n(.*?)^```$', text, re.MULTILINE | re.DOTALL)


def example():
  """The Python block of the "Example" section and the text block after it."""
  section = README.split('\n## Example\n', 1)[1].split('\n## ', 1)[0]
  blocks = code_blocks(section)
  assert [lang for lang, _ in blocks] == ['python', 'text']
  return blocks[0][1], blocks[1][1]


def test_the_example_prints_what_the_readme_shows():
  code, shown = example()
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(code, 'README.md', 'exec'), {'__name__': 'readme'})  # pylint: disable=exec-used
  printed = out.getvalue()
  assert [NUMBER.sub('#', line) for line in printed.splitlines()] == [
      NUMBER.sub('#', line) for line in shown.splitlines()]
  got = np.array([float(x) for x in NUMBER.findall(printed)])
  want = np.array([float(x) for x in NUMBER.findall(shown)])
  # Float32 on however many devices the process has: the printed digits move
  # with the summation order, not more.
  np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-4)
  # And SLQ is right, not only repeatable: the extreme eigenvalues against
  # the dense Hessian's (both printed), the trace within 3 standard errors.
  _, _, _, lmax, lmax_exact, lmin, lmin_exact, trace, stderr, trace_exact = got
  np.testing.assert_allclose([lmax, lmin], [lmax_exact, lmin_exact],
                             rtol=1e-4)
  assert abs(trace - trace_exact) < 3 * stderr


def test_the_commands_come_first_and_ci_runs_the_test_command():
  blocks = code_blocks(README)
  main_job, tests = blocks[0][1].strip(), blocks[1][1].strip()
  assert main_job.startswith("pip install -e '.[experiments]' && python -m "
                             'experiments.main --config=configs/')
  install, command = tests.split(' && ')
  assert install == "pip install -e '.[test]'"
  ci = (ROOT / '.ci' / 'run').read_text()
  assert "pip install --quiet -e '.[test]'" in ci
  assert '\n' + command + '\n' in ci


def test_the_readme_stays_short_and_links_only_inside_the_repository():
  assert len(README.splitlines()) <= 210
  for target in re.findall(r'\]\(([^)#]+)', README):
    if not target.startswith('http'):
      assert (ROOT / target).exists(), target
  assert 'shared/' not in README and 'OWNER' not in README
